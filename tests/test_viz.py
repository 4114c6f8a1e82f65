"""Visualisation on a real photograph (scikit-image's astronaut)."""
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

import tpm_jax
from tpm_jax import viz
from tpm_jax.forward import jitted_forward


def test_png_for_a_real_image(tmp_path):
  from skimage import data
  photo = np.asarray(Image.fromarray(data.astronaut()).resize((224, 224), Image.BICUBIC))
  x = (photo / 255.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  model = tpm_jax.create_model('deit_tiny_patch16_224', reduction=dict(method='tpm', keep_rate=0.5))
  paths = viz.visualize(model, jnp.asarray(x[None], jnp.float32), photo[None], tmp_path, scale=2)
  png = np.asarray(Image.open(paths[0]))
  assert png.shape == (448, 448, 3)
  assert not np.array_equal(png[::2, ::2], photo)  # it is tinted

  # The source tracking agrees with the sizes the model reports: every final token holds exactly
  # the patches that were followed into it, and each crucial token holds its own patch.
  graphdef, state = nnx.split(model)
  _, aux = jitted_forward(graphdef, return_aux=True)(state, jnp.asarray(x[None], jnp.float32))
  dest, kept = viz.patch_destinations(aux, 0, 196, 1)
  counts = np.bincount(dest, minlength=aux[-1]['sizes'].shape[1])
  np.testing.assert_allclose(counts[1:], np.asarray(aux[-1]['sizes'][0, 1:]))
  assert kept.sum() == aux[-1]['sizes'].shape[1] - 1  # one outlined patch per crucial token
  assert len(np.unique(dest[kept])) == kept.sum()
