"""Device-side mixup / cutmix and label smoothing."""
import jax
import jax.numpy as jnp
import numpy as np

from tpm_jax import augment


def test_label_smoothing_targets():
  t = np.asarray(augment.smooth_targets(jnp.array([2, 0]), 4, 0.1))
  np.testing.assert_allclose(t.sum(1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(t[0], [0.025, 0.025, 0.925, 0.025], rtol=1e-6)


def test_mixup_and_cutmix_mix_images_and_targets_by_the_same_lambda():
  rs = np.random.RandomState(0)
  x = jnp.asarray(rs.rand(8, 16, 16, 3), jnp.float32)
  y = augment.smooth_targets(jnp.arange(8) % 4, 4, 0.0)
  saw = set()
  for seed in range(20):
    xm, ym = augment.mixup_cutmix(jax.random.key(seed), x, y, mixup_alpha=0.8, cutmix_alpha=1.0)
    xm, ym = np.asarray(xm), np.asarray(ym)
    lam = float(ym[0, 0])  # image 0 has class 0; its partner (image 7) class 3
    assert 0.0 <= lam <= 1.0 and np.allclose(ym.sum(1), 1.0)
    from_self = np.isclose(xm, np.asarray(x)).all(-1)
    from_partner = np.isclose(xm, np.asarray(x)[::-1]).all(-1)
    if (from_self | from_partner).all():  # cutmix: every pixel from one of the two images
      saw.add('cutmix')
      np.testing.assert_allclose(from_self[0].mean(), lam, atol=1e-6)  # lambda = the kept area
    else:  # mixup: the convex combination
      saw.add('mixup')
      np.testing.assert_allclose(xm, lam * np.asarray(x) + (1 - lam) * np.asarray(x)[::-1], rtol=1e-5, atol=1e-6)
  assert saw == {'mixup', 'cutmix'}


def test_off_is_identity():
  x, y = jnp.ones((2, 4, 4, 3)), jnp.eye(2)
  xm, ym = augment.mixup_cutmix(jax.random.key(0), x, y, mixup_alpha=0.0, cutmix_alpha=0.0)
  assert xm is x and ym is y
