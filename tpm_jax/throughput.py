"""Inference throughput (images/s), measured one way for eval.py, the sweep's collection, the
quickstart report and benchmarks/throughput.py.

Method: each model's forward is jitted as ``tpm_jax.jit_forward`` does it (``nnx.split`` outside,
``nnx.merge(graphdef, state)(x, train=False)`` inside ``jax.jit``, the library's compile options;
the same jitted function, ``tpm_jax.forward.jitted_forward``), compiled ahead of time on one
fixed batch, and run once to warm up; compilation and warm-up are not timed. Then ``rounds`` rounds,
each timing every model in turn (interleaved, so load drifts hit all alike); a timed block is
``reps`` calls in a row, each blocked until its result is ready, and gives the time per call.
images/s = batch size / the median time over rounds.

  speed = images_per_sec({'none': model_a, 'tpm': model_b}, 64)          # name -> images/s

Pieces, for callers that time other things in the same rounds (benchmarks/throughput.py times
PyTorch and train steps beside the JAX forward): ``random_images``, ``split_forward``,
``forward_fn`` (a ready-to-call ``Forward``, with its compiled executable and compile time),
``reps_for`` (calls per timed block for a minimum block time), ``time_interleaved`` (per-round
seconds per call of any blocking callables), ``per_sec``, ``peak_memory_bytes`` (of a compiled step).
"""
from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Hashable, Mapping
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tpm_jax.forward import jitted_forward

K = TypeVar('K', bound=Hashable)


def random_images(model: nnx.Module, batch_size: int, seed: int = 0) -> jax.Array:
  """(batch_size, img_size, img_size, in_chans) float32 standard-normal images of the model's input
  size (the model casts to its compute dtype itself)."""
  c = model.cfg
  return jnp.asarray(np.random.RandomState(seed).randn(batch_size, c.img_size, c.img_size, c.in_chans), jnp.float32)


def split_forward(model: nnx.Module) -> tuple[Callable, nnx.State]:
  """(forward, state): ``forward(state, images)`` is the jitted inference forward (``train=False``)
  of the model whose ``nnx.split`` state is ``state``; the graph definition is closed over. The
  function ``tpm_jax.jit_forward`` calls, with the state as an argument (to lower it ahead of time)."""
  graphdef, state = nnx.split(model)
  return jitted_forward(graphdef), state


def peak_memory_bytes(compiled) -> int | None:
  """What a compiled executable (``jax.stages.Compiled``) needs at its peak, from XLA's
  ``memory_analysis()``: arguments + outputs - donated aliases + temporaries; None where the
  backend does not tell."""
  m = compiled.memory_analysis()
  if m is None:
    return None
  return m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes


@dataclasses.dataclass
class Forward:
  """A model's inference forward on one fixed batch, compiled ahead of time. Calling it (no
  arguments) runs the compiled executable and returns the logits, blocked until ready."""
  compiled: Any            # jax.stages.Compiled (memory_analysis(), cost_analysis())
  state: nnx.State
  image: jax.Array
  compile_s: float         # seconds to lower + compile

  @property
  def batch_size(self) -> int:
    return self.image.shape[0]

  def __call__(self) -> jax.Array:
    return jax.block_until_ready(self.compiled(self.state, self.image))


def forward_fn(model: nnx.Module, image: jax.Array | None = None, *, batch_size: int | None = None) -> Forward:
  """The model's jitted forward (``split_forward``) lowered and compiled for ``image`` (default:
  ``random_images(model, batch_size)``); not run yet."""
  if image is None:
    if batch_size is None:
      raise ValueError('forward_fn needs image or batch_size')
    image = random_images(model, batch_size)
  elif batch_size is not None and image.shape[0] != batch_size:
    raise ValueError(f'image has batch {image.shape[0]}, batch_size={batch_size}')
  forward, state = split_forward(model)
  t = time.perf_counter()
  compiled = forward.lower(state, image).compile()
  return Forward(compiled=compiled, state=state, image=image, compile_s=time.perf_counter() - t)


def reps_for(call: Callable[[], Any], min_time: float) -> int:
  """Calls per timed block so that a block lasts at least ``min_time`` seconds, from one timed call
  (``call`` must be warmed up and block until its result is ready); at least 1."""
  t = time.perf_counter()
  call()
  return max(1, math.ceil(min_time / max(time.perf_counter() - t, 1e-6)))


def time_interleaved(calls: Mapping[K, Callable[[], Any]], *, rounds: int = 5, reps: int | Mapping[K, int] = 1,
                     on_round: Callable[[int], None] | None = None) -> dict[K, list[float]]:
  """Seconds per call of each of ``calls`` (warmed-up callables that block until their result is
  ready), one value per round: every round times every call in turn, in the mapping's order, as
  ``reps`` (one number, or one per key) calls in a row divided by ``reps``. ``on_round(i)`` is
  called before round i (0-based)."""
  times = {k: [] for k in calls}
  for r in range(rounds):
    if on_round is not None:
      on_round(r)
    for k, call in calls.items():
      n = reps if isinstance(reps, int) else reps[k]
      t = time.perf_counter()
      for _ in range(n):
        call()
      times[k].append((time.perf_counter() - t) / n)
  return times


def per_sec(batch_size: int, times: list[float]) -> float:
  """Images/s from per-call seconds: batch size / median."""
  return batch_size / statistics.median(times)


def images_per_sec(models: Mapping[K, nnx.Module], batch_size: int, *, rounds: int = 5, reps: int = 1,
                   image: jax.Array | None = None) -> dict[K, float]:
  """Inference images/s of each model at ``batch_size``, measured in this process: all compiled
  and warmed up first, then timed in ``rounds`` interleaved rounds (``time_interleaved``); the
  median per model. ``image``: the batch every model runs (default: ``random_images`` of each
  model's input size, seed 0)."""
  if rounds < 1 or reps < 1:
    raise ValueError(f'rounds={rounds} and reps={reps} must be at least 1')
  forwards = {k: forward_fn(m, image, batch_size=batch_size) for k, m in models.items()}
  for f in forwards.values():
    f()  # warm-up, not timed
  times = time_interleaved(forwards, rounds=rounds, reps=reps)
  return {k: per_sec(batch_size, t) for k, t in times.items()}
