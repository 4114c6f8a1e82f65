"""Multi-scale fusion (tpm_jax.models.multiscale.MultiScale) against the independent NumPy float64 reference,
with every parameter overwritten by random values (the output projections start at zero)."""
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from reference_multiscale import expected_param_shapes, multiscale_reference

from tpm_jax.config import MultiscaleConfig
from tpm_jax.models.multiscale import MultiScale

C, HEADS, PATCH, CIN, B = 24, 3, 2, 3, 2

CASES = [
  pytest.param(dict(method='pool', source='pool', scales=(2, 4)), 7, id='pool-2,4-g7'),
  pytest.param(dict(method='pool', source='pool', scales=(3,)), 7, id='pool-3-g7'),
  pytest.param(dict(method='cross', source='pool', scales=(2, 4)), 7, id='cross-pool-g7'),
  pytest.param(dict(method='cross', source='patch', scales=(2, 4)), 6, id='cross-patch-g6'),
  pytest.param(dict(method='cross', source='patch', scales=(2, 4)), 7, id='cross-patch-g7'),
]


def _randomise(module, seed):
  """Overwrite every nnx.Param with random values; return them as {dotted path: float64 array}."""
  rs = np.random.RandomState(seed)
  flat = nnx.to_flat_state(nnx.state(module, nnx.Param))
  values, new = {}, []
  for path, var in flat:
    name = '.'.join(str(k) for k in path)
    shape = var.get_value().shape
    if name.endswith('scale'):  # LayerNorm scales around 1
      val = 1.0 + 0.2 * rs.randn(*shape)
    else:
      val = 0.2 * rs.randn(*shape)
    val = val.astype(np.float32)
    values[name] = val.astype(np.float64)
    new.append((path, var.replace(jnp.asarray(val))))
  nnx.update(module, nnx.from_flat_state(new))
  return values


@pytest.mark.parametrize('P', [1, 2])
@pytest.mark.parametrize('ms, g', CASES)
def test_multiscale_matches_reference(ms, g, P):
  cfg = MultiscaleConfig.from_any(ms)
  module = MultiScale(cfg, embed_dim=C, num_heads=HEADS, grid_size=g, patch_size=PATCH, in_chans=CIN,
                      dtype=jnp.float32, rngs=nnx.Rngs(0))
  params = _randomise(module, seed=10 * g + P)

  got_shapes = {k: v.shape for k, v in params.items()}
  want_shapes = expected_param_shapes(method=cfg.method, source=cfg.source, scales=cfg.scales, embed_dim=C,
                                      grid_size=g, patch_size=PATCH, in_chans=CIN)
  wrong = {k: (got_shapes[k], want_shapes[k]) for k in set(got_shapes) & set(want_shapes)
           if got_shapes[k] != want_shapes[k]}
  assert got_shapes == want_shapes, (
    f'parameters differ from the spec: not in the spec {sorted(set(got_shapes) - set(want_shapes))}, '
    f'missing {sorted(set(want_shapes) - set(got_shapes))}, shape mismatches (module, spec) {wrong}')

  rs = np.random.RandomState(g + P)
  x = rs.randn(B, P + g * g, C).astype(np.float32)
  images = rs.randn(B, g * PATCH, g * PATCH, CIN).astype(np.float32)

  # jit: one compilation per case is quicker than compiling every eager op (same numerics)
  out = nnx.jit(lambda m, a, b: m(a, b, P))(module, jnp.asarray(x), jnp.asarray(images))
  assert out.shape == x.shape and out.dtype == jnp.float32, (out.shape, out.dtype)
  out = np.asarray(out)
  np.testing.assert_array_equal(out[:, :P], x[:, :P])  # prefix tokens returned bit-exactly

  ref = multiscale_reference(params, x, images, P, method=cfg.method, source=cfg.source, scales=cfg.scales,
                             num_heads=HEADS, grid_size=g, patch_size=PATCH)
  assert np.abs(ref[:, P:] - x[:, P:]).max() > 0.1  # the update is not trivially zero
  np.testing.assert_allclose(out.astype(np.float64), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('ms', [dict(method='pool', scales=(2, 4)), dict(method='cross', source='pool')],
                         ids=['pool', 'cross'])
def test_multiscale_in_bfloat16_stays_near_the_reference(ms):
  """model.dtype=bfloat16 (parameters float32): the same function within bfloat16's rounding."""
  g, P = 7, 1
  cfg = MultiscaleConfig.from_any(ms)
  module = MultiScale(cfg, embed_dim=C, num_heads=HEADS, grid_size=g, patch_size=PATCH, in_chans=CIN,
                      dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
  params = _randomise(module, seed=3)
  rs = np.random.RandomState(4)
  x = jnp.asarray(rs.randn(B, P + g * g, C), jnp.bfloat16)
  images = rs.randn(B, g * PATCH, g * PATCH, CIN).astype(np.float32)
  out = nnx.jit(lambda m, a, b: m(a, b, P))(module, x, jnp.asarray(images))
  assert out.dtype == jnp.bfloat16
  x64 = np.asarray(x.astype(jnp.float32), np.float64)
  ref = multiscale_reference(params, x64, images, P, method=cfg.method, source=cfg.source, scales=cfg.scales,
                             num_heads=HEADS, grid_size=g, patch_size=PATCH)
  err = np.abs(np.asarray(out.astype(jnp.float32), np.float64) - ref)
  assert err.max() <= 0.02 * np.abs(ref).max(), (err.max(), np.abs(ref).max())
