"""The train state <-> a checkpoint's named items, by the state's attribute names (Flax's layout):

  params     TrainState.model's parameters        rng        TrainState.model's rng streams
  opt_state  TrainState.optimizer's state          step       TrainState.optimizer.step
  ema        TrainState.ema's parameters (only when kept)

The teacher and the EMA copy's rng streams are rebuilt, not saved."""
from __future__ import annotations

import jax
import numpy as np
from flax import nnx

ARRAY_ITEMS = ('params', 'opt_state', 'ema', 'rng', 'step')


def _is_key(x):
  return hasattr(x, 'dtype') and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def item_of(path, var):
  """(item, path inside it) of one entry of a ``TrainState``'s state; (None, None) for what is rebuilt."""
  top = path[0]
  if top == 'model':
    return ('params' if isinstance(var, nnx.Param) else 'rng'), path[1:]
  if top == 'optimizer':
    return ('step', ('step',)) if path[1] == 'step' else ('opt_state', path[2:])
  if top == 'ema' and isinstance(var, nnx.Param):
    return 'ema', path[1:]
  return None, None


def set_path(tree, path, value):
  for k in path[:-1]:
    tree = tree.setdefault(str(k), {})
  tree[str(path[-1])] = value


def get_path(tree, path):
  for k in path:
    tree = tree[str(k)]
  return tree


def state_items(state, convert=None) -> dict:
  """The named items (nested dicts with string keys) of a TrainState's state; ``convert(value)`` maps
  each leaf (default: PRNG keys to their raw uint32 data, as Orbax saves them)."""
  convert = convert or (lambda v: jax.random.key_data(v) if _is_key(v) else v)
  items = {}
  for path, var in nnx.to_flat_state(state):
    name, sub = item_of(path, var)
    if name is not None:
      set_path(items.setdefault(name, {}), sub, convert(var.get_value()))
  return items


def abstract_items(abstract_state) -> dict:
  """``state_items`` of an abstract state: ShapeDtypeStructs (shardings kept), keys as their data."""
  def conv(a):
    if _is_key(a):
      s = jax.eval_shape(jax.random.key_data, a)
      return jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=getattr(a, 'sharding', None))
    return a
  return state_items(abstract_state, conv)


def items_into_state(state, items):
  """``state`` with every saved entry replaced by its value in ``items`` (keys re-wrapped)."""
  out = []
  for path, var in nnx.to_flat_state(state):
    name, sub = item_of(path, var)
    if name is not None:
      value = get_path(items[name], sub)
      old = var.get_value()
      if _is_key(old):
        value = jax.random.wrap_key_data(value, impl=jax.random.key_impl(old))
      var = var.replace(value)
    out.append((path, var))
  return nnx.from_flat_state(out)


def with_shardings(abstract_state, shardings):
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_state, shardings)


def abstract_params(model, device=None) -> dict:
  """The model's parameters as a nested dict of ShapeDtypeStructs (on ``device`` when given)."""
  sharding = None if device is None else jax.sharding.SingleDeviceSharding(device)
  tree = {}
  for path, var in nnx.to_flat_state(nnx.state(model, nnx.Param)):
    v = var.get_value()
    set_path(tree, path, jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharding))
  return tree


def uncommitted(x):
  """A restored parameter as a freshly built model holds it: on the default device but not committed
  to it, so that a jitted call places it with its other inputs (a batch sharded over several devices)."""
  return jax.numpy.asarray(np.asarray(x))


def params_into_model(model, params: dict) -> None:
  """Set ``model``'s parameters from a nested dict shaped like ``abstract_params(model)``."""
  state = nnx.state(model, nnx.Param)
  nnx.update(model, nnx.from_flat_state([(p, v.replace(uncommitted(get_path(params, p))))
                                         for p, v in nnx.to_flat_state(state)]))
