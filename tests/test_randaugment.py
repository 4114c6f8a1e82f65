"""RandAugment and RandomErasing as TensorFlow graph ops (tpm_jax.data.randaugment), checked on a
real photograph (scikit-image's astronaut) and against timm's own PIL implementation."""
import numpy as np
import pytest
from PIL import Image

tf = pytest.importorskip('tensorflow')

from tpm_jax.data import randaugment as ra  # noqa: E402


def _astronaut(size):
  from skimage import data
  return np.asarray(Image.fromarray(data.astronaut()).resize((size, size), Image.BICUBIC))


@pytest.fixture(scope='module')
def photo():
  return _astronaut(64)


@pytest.fixture(scope='module')
def photo224():
  return _astronaut(224)


def _seed(i, j=1234):
  return tf.constant([i, j], tf.int64)


# (a) determinism ---------------------------------------------------------------------------------


def test_randaugment_is_a_function_of_the_seed(photo):
  outs = [ra.randaugment(photo, _seed(i)).numpy() for i in range(8)]
  again = [ra.randaugment(photo, _seed(i)).numpy() for i in range(8)]
  for a, b in zip(outs, again):
    np.testing.assert_array_equal(a, b)
  assert len({o.tobytes() for o in outs}) >= 5  # different seeds, different augmentations
  assert sum(not np.array_equal(o, photo) for o in outs) >= 5


def test_random_erasing_is_a_function_of_the_seed(photo):
  outs = [ra.random_erasing(photo, _seed(i), probability=1.0).numpy() for i in range(6)]
  again = [ra.random_erasing(photo, _seed(i), probability=1.0).numpy() for i in range(6)]
  for a, b in zip(outs, again):
    np.testing.assert_array_equal(a, b)
  assert len({o.tobytes() for o in outs}) == 6


# (b) shape and dtype -----------------------------------------------------------------------------


@pytest.mark.parametrize('shape', [(64, 64), (40, 72)])
def test_shape_and_dtype_preserved(shape):
  image = np.asarray(Image.fromarray(_astronaut(96)).resize(shape[::-1], Image.BILINEAR))
  for i in range(4):
    for out in (ra.randaugment(image, _seed(i)),
                ra.randaugment(image, _seed(i), increasing=True, magnitude_std=0.5, fill=(124, 116, 104)),
                ra.random_erasing(image, _seed(i), probability=1.0)):
      assert out.shape == (*shape, 3) and out.dtype == tf.uint8
  for name in ra.RAND_TRANSFORMS:
    out = ra.apply_op(image, name, 9)
    assert out.shape == (*shape, 3) and out.dtype == tf.uint8, name


# (c) magnitude 0 ---------------------------------------------------------------------------------


def test_geometric_ops_are_identities_at_magnitude_zero(photo):
  for fn in (ra.rotate, ra.shear_x, ra.shear_y, ra.translate_x_rel, ra.translate_y_rel):
    np.testing.assert_array_equal(fn(photo, 0.0).numpy(), photo, err_msg=fn.__name__)
    np.testing.assert_array_equal(fn(photo, 0.0, 128, 'nearest').numpy(), photo, err_msg=fn.__name__)
  for name in ra.GEOMETRIC_TRANSFORMS:
    for negate in (False, True):
      np.testing.assert_array_equal(ra.apply_op(photo, name, 0, negate).numpy(), photo, err_msg=name)
  # increasing (inc1) ops have their no-change level at m=0, except posterize (4 bits) and the
  # parameterless ops
  for name in ('Solarize', 'SolarizeAdd', 'Color', 'Contrast', 'Brightness', 'Sharpness'):
    np.testing.assert_array_equal(ra.apply_op(photo, name, 0, increasing=True).numpy(), photo, err_msg=name)


def test_randaugment_at_magnitude_zero(photo):
  # a layer at m=0 gives exactly one of the ops at m=0, and nothing moves (geometric ops are
  # identities), so the result is the input or a point op of it
  candidates = [ra.apply_op(photo, name, 0).numpy() for name in ra.RAND_TRANSFORMS]
  for i in range(8):
    out = ra.randaugment(photo, _seed(i), magnitude=0, num_layers=1, prob=1.0).numpy()
    assert any(np.array_equal(out, c) for c in candidates)


# (d) every op changes a real image at magnitude 9 -------------------------------------------------


@pytest.mark.parametrize('increasing', [False, True])
@pytest.mark.parametrize('negate', [False, True])
def test_every_op_changes_the_photo(photo, negate, increasing):
  full_range = (photo.reshape(-1, 3).min(0) == 0).all() and (photo.reshape(-1, 3).max(0) == 255).all()
  for name in ra.RAND_TRANSFORMS:
    image = photo
    if name == 'AutoContrast':
      # a legitimate no-op on an image that already spans [0, 255] in every channel
      same = np.array_equal(ra.apply_op(photo, name, 9).numpy(), photo)
      assert same == full_range
      image = (photo // 2 + 60).astype(np.uint8)
    out = ra.apply_op(image, name, 9, negate, increasing=increasing).numpy()
    changed = (out != image).any(-1).mean()
    assert changed > 0.01, (name, changed)
    if name in ra.GEOMETRIC_TRANSFORMS:
      assert changed > 0.5 and np.abs(out.astype(int) - image).mean() > 10, name
      assert (out == 128).all(-1).mean() > 0.05, name  # the fill colour comes in


def test_geometric_ops_move_content_the_right_way(photo):
  # PIL conventions: a positive translate shifts content left / up; rotate is counter-clockwise
  out = ra.translate_x_rel(photo, 0.25).numpy()
  np.testing.assert_array_equal(out[:, :48], photo[:, 16:])
  assert (out[:, 48:] == 128).all()
  out = ra.translate_y_rel(photo, -0.25).numpy()
  np.testing.assert_array_equal(out[16:], photo[:48])
  np.testing.assert_array_equal(ra.rotate(photo, 90).numpy(), np.rot90(photo))
  out = ra.translate_x_rel(photo, 0.5, fill=(1, 2, 3)).numpy()
  assert (out[:, 32:] == [1, 2, 3]).all()


# timm parity -------------------------------------------------------------------------------------


@pytest.mark.parametrize('increasing', [False, True])
def test_ops_match_timm_pixel_for_pixel(timm, photo, increasing, monkeypatch):
  import timm.data.auto_augment as aa
  hparams = dict(img_mean=(128, 128, 128), interpolation=Image.BILINEAR)
  names = aa._RAND_INCREASING_TRANSFORMS if increasing else aa._RAND_TRANSFORMS
  assert [n.replace('Increasing', '') for n in names] == list(ra.RAND_TRANSFORMS)
  low = (photo // 2 + 60).astype(np.uint8)
  for timm_name, name in zip(names, ra.RAND_TRANSFORMS):
    for negate in (False, True):
      monkeypatch.setattr(aa.random, 'random', lambda: 0.9 if negate else 0.1)  # the sign draw
      op = aa.AugmentOp(timm_name, prob=1.0, magnitude=9, hparams=hparams)
      for image in (photo, low):
        expected = np.asarray(op(Image.fromarray(image)))
        got = ra.apply_op(image, name, 9, negate, increasing=increasing).numpy()
        np.testing.assert_array_equal(got, expected, err_msg=f'{timm_name} negate={negate}')


def test_nearest_and_other_angles_match_pil(photo):
  pil = Image.fromarray(photo)
  for deg in (-27, 13.5, 180):
    for interp, resample in (('bilinear', Image.BILINEAR), ('nearest', Image.NEAREST)):
      expected = np.asarray(pil.rotate(deg, resample=resample, fillcolor=(124, 116, 104)))
      got = ra.rotate(photo, deg, (124, 116, 104), interp).numpy()
      np.testing.assert_array_equal(got, expected, err_msg=f'{deg} {interp}')


# randaugment composition ---------------------------------------------------------------------------


def test_randaugment_picks_each_op_uniformly(photo):
  candidates = {(name, negate): ra.apply_op(photo, name, 9, negate).numpy()
                for name in ra.RAND_TRANSFORMS for negate in (False, True)}
  counts = dict.fromkeys(ra.RAND_TRANSFORMS, 0)
  n = 150
  for i in range(n):
    out = ra.randaugment(photo, _seed(i, 7), num_layers=1, prob=1.0).numpy()
    matches = {name for (name, _), c in candidates.items() if np.array_equal(out, c)}
    assert matches, i  # every result is exactly one of the ops
    for name in matches:
      counts[name] += 1 / len(matches)
  assert min(counts.values()) >= 2 and max(counts.values()) <= 25, counts  # ~10 each


def test_randaugment_probability(photo):
  for i in range(4):
    np.testing.assert_array_equal(ra.randaugment(photo, _seed(i), prob=0.0).numpy(), photo)
  # prob 0.5 and 2 layers: the image is left alone a quarter of the time
  untouched = sum(np.array_equal(ra.randaugment(photo, _seed(i, 99)).numpy(), photo) for i in range(80))
  assert 8 <= untouched <= 35, untouched


# (e) random erasing --------------------------------------------------------------------------------


def _changed_box(out, image):
  changed = (out != image).any(-1)
  rows, cols = np.nonzero(changed)
  return changed, rows.min(), rows.max() + 1, cols.min(), cols.max() + 1


def test_random_erasing_replaces_one_rectangle(photo224):
  image = photo224
  H, W = image.shape[:2]
  fractions = []
  for i in range(20):
    out = ra.random_erasing(image, _seed(i), probability=1.0).numpy()
    changed, r0, r1, c0, c1 = _changed_box(out, image)
    box = np.zeros_like(changed)
    box[r0:r1, c0:c1] = True
    np.testing.assert_array_equal(out[~box], image[~box])  # everything else is untouched
    assert changed[box].mean() > 0.98  # the rectangle is (all but chance coincidences) new noise
    frac = (r1 - r0) * (c1 - c0) / (H * W)
    fractions.append(frac)
    assert 0.02 - 0.005 <= frac <= 1 / 3 + 0.005, frac  # (h, w are rounded, as in timm)
    aspect = (r1 - r0) / (c1 - c0)
    assert 0.3 * 0.9 <= aspect <= 1 / 0.3 / 0.9, aspect
    # the rectangle is the one _erasing_box draws
    seeds = tf.random.experimental.stateless_split(_seed(i), num=3)
    found, top, left, h, w = [int(v) for v in ra._erasing_box(seeds[1], H, W)]
    assert found and (top, left, top + h, left + w) == (r0, c0, r1, c1)
  assert np.ptp(fractions) > 0.1  # the areas vary


def test_random_erasing_probability(photo):
  for i in range(10):
    np.testing.assert_array_equal(ra.random_erasing(photo, _seed(i), probability=0.0).numpy(), photo)
  erased = sum(not np.array_equal(ra.random_erasing(photo, _seed(i, 5)).numpy(), photo) for i in range(200))
  assert 30 <= erased <= 70, erased  # probability 0.25
  # no rectangle fits (h and w must stay below the image size): unchanged
  out = ra.random_erasing(photo, _seed(0), probability=1.0, min_area=1.0, max_area=1.0, min_aspect=1.0)
  np.testing.assert_array_equal(out.numpy(), photo)


# (f) inside tf.data --------------------------------------------------------------------------------


def test_inside_tf_data_map(photo):
  images = np.stack([photo, photo[::-1], photo[:, ::-1], 255 - photo])
  seeds = np.array([[i, 3] for i in range(len(images))], np.int64)

  def augment(image, seed):
    s1, s2 = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    return ra.random_erasing(ra.randaugment(image, s1, increasing=True, magnitude_std=0.5), s2, probability=0.5)

  ds = tf.data.Dataset.from_tensor_slices((images, seeds)).map(augment, num_parallel_calls=tf.data.AUTOTUNE)
  assert ds.element_spec.shape == (64, 64, 3) and ds.element_spec.dtype == tf.uint8
  graph = np.stack(list(ds.as_numpy_iterator()))
  eager = np.stack([augment(tf.constant(x), tf.constant(s)).numpy() for x, s in zip(images, seeds)])
  np.testing.assert_array_equal(graph, eager)  # graph mode = eager mode, per seed
  assert any(not np.array_equal(g, x) for g, x in zip(graph, images))

  # images of unknown static size work too
  both = lambda x, s: ra.random_erasing(ra.randaugment(x, s, num_layers=1, prob=1.0), s, probability=1.0)
  fn = tf.function(both, input_signature=[tf.TensorSpec([None, None, 3], tf.uint8), tf.TensorSpec([2], tf.int64)])
  for i in range(3):
    np.testing.assert_array_equal(fn(photo, seeds[i]).numpy(), both(photo, seeds[i]).numpy())
