"""tpm_jax.throughput, the one images/s measurement (eval.py, sweep, quickstart, benchmark): it runs
the models themselves, compiles each once, and times them interleaved; tpm_jax.jit_forward, the
public compiled forward it times. No timing comparisons."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tpm_jax
from tpm_jax import compile_options, throughput
from tpm_jax import forward as forward_module
from tpm_jax.models.vit import VisionTransformer

TINY = dict(img_size=32, patch_size=4, embed_dim=48, depth=2, num_heads=3, num_classes=10)


def _models():
  return {'none': tpm_jax.create_model('vit_custom', **TINY),
          'tpm': tpm_jax.create_model('vit_custom', reduction=dict(method='tpm', keep_rate=0.7, locations=(1,)), **TINY),
          'gray': tpm_jax.create_model('vit_custom', in_chans=1, **TINY)}


def test_forward_runs_the_model_on_its_images():
  for model in _models().values():
    f = throughput.forward_fn(model, batch_size=3)
    c = model.cfg
    assert f.image.shape == (3, c.img_size, c.img_size, c.in_chans) and f.image.dtype == jnp.float32
    np.testing.assert_array_equal(f.image, throughput.random_images(model, 3))
    out = f()
    assert out.shape == (3, 10)
    np.testing.assert_allclose(np.asarray(out), np.asarray(model(f.image, train=False)), rtol=1e-5, atol=1e-5)
    assert f.compile_s > 0 and f.batch_size == 3
  x = jnp.ones((2, 32, 32, 3), jnp.float32)
  model = _models()['none']
  np.testing.assert_allclose(np.asarray(throughput.forward_fn(model, x)()), np.asarray(model(x)), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError):
    throughput.forward_fn(model, x, batch_size=4)


def test_images_per_sec_every_model_once_compiled_and_interleaved(monkeypatch):
  traces = []  # the model's Python __call__ runs only while jax traces it (or eagerly)
  call = VisionTransformer.__call__
  monkeypatch.setattr(VisionTransformer, '__call__', lambda self, *a, **k: (traces.append(1), call(self, *a, **k))[1])
  models = _models()
  speed = throughput.images_per_sec(models, 4, rounds=3, reps=2)
  assert list(speed) == list(models)
  assert all(math.isfinite(v) and v > 0 for v in speed.values()), speed
  assert len(traces) == len(models)  # one trace (and compile) per model; warm-up and timed calls reuse it

  order = []
  times = throughput.time_interleaved({'a': lambda: order.append('a'), 'b': lambda: order.append('b')},
                                      rounds=3, reps={'a': 2, 'b': 1}, on_round=lambda r: order.append(r))
  assert order == [0, 'a', 'a', 'b', 1, 'a', 'a', 'b', 2, 'a', 'a', 'b']  # round-robin, reps in a row
  assert [len(t) for t in times.values()] == [3, 3] and all(s >= 0 for t in times.values() for s in t)
  assert throughput.per_sec(8, [1.0, 4.0, 2.0]) == 4.0  # batch / median
  assert throughput.reps_for(lambda: None, 0.0) == 1


def test_jit_forward_is_the_models_forward_compiled_once_with_the_librarys_options(monkeypatch):
  traces = []
  call = VisionTransformer.__call__
  monkeypatch.setattr(VisionTransformer, '__call__', lambda self, *a, **k: (traces.append(k.get('train')), call(self, *a, **k))[1])
  x = throughput.random_images(_models()['none'], 3)
  for name in ('none', 'tpm'):
    model = _models()[name]
    eager = np.asarray(model(x))
    traces.clear()
    forward = tpm_jax.jit_forward(model)
    out = forward(x)
    assert out.dtype == jnp.float32 and out.shape == (3, 10)
    np.testing.assert_allclose(np.asarray(out), eager, rtol=1e-5, atol=1e-5, err_msg=name)
    np.testing.assert_array_equal(np.asarray(forward(x + 0)), np.asarray(out))
    assert traces == [False], (name, traces)  # traced once, inference; the second call reuses it
  assert tpm_jax.jit_forward is forward_module.jit_forward and 'jit_forward' in tpm_jax.__all__


def test_jit_forward_snapshots_the_parameters():
  model = _models()['none']
  x = throughput.random_images(model, 2)
  forward = tpm_jax.jit_forward(model)
  before = np.asarray(forward(x))
  model.head.bias[...] = model.head.bias[...] + 1.0  # in place, into the model's Variable
  np.testing.assert_array_equal(np.asarray(forward(x)), before)  # the snapshot taken by jit_forward
  np.testing.assert_allclose(np.asarray(tpm_jax.jit_forward(model)(x)), before + 1.0, rtol=1e-5, atol=1e-5)


def test_jit_forward_compiles_with_compiler_options(monkeypatch):
  if jax.default_backend() == 'cpu' and compile_options._cpu_options_known():
    assert compile_options.compiler_options() == {'xla_cpu_experimental_ynn_fusion_type': ''}
  model = _models()['none']
  x = throughput.random_images(model, 2)
  assert tpm_jax.jit_forward(model).lower(x).compile() is not None
  # What compiler_options() returns reaches XLA: an option XLA does not know fails the compilation.
  monkeypatch.setattr(forward_module, 'compiler_options', lambda: {'xla_tpm_jax_no_such_option': 'x'})
  for f in (tpm_jax.jit_forward(model), lambda x: throughput.forward_fn(model, x)):
    with pytest.raises(Exception, match='xla_tpm_jax_no_such_option'):
      f(x)
