"""XLA compile options for the model's jitted steps (inference forward, train step, eval step).

On the CPU, XLA hands element-wise ops and reductions to YNNPACK fusions by default. On the 2-core
machines we test on, that made the DeiT-S inference forward 1.5x slower (1.60 s against 1.09 s at
batch 32) and the train step 1.2x slower, and those fusions take every broadcast operand (a
LayerNorm scale, a softmax denominator) as a materialised token-sized array that the train step
kept from the forward to the backward: 3.6 GB of temporaries instead of 2.8 GB. Without them XLA
uses its own loop fusion and calls its matrix-product kernels directly.

A compile option of the jitted functions (``jax.jit(..., compiler_options=compiler_options())``),
never the process environment (``XLA_FLAGS`` stays the user's). Empty off the CPU, and where this
XLA does not know the option (checked once by compiling a one-op function).
"""
from __future__ import annotations

import functools

import jax
import numpy as np

_CPU_OPTIONS = (('xla_cpu_experimental_ynn_fusion_type', ''),)  # no YNNPACK fusion of any kind


@functools.cache
def _cpu_options_known() -> bool:
  try:
    jax.jit(lambda x: x + 1, compiler_options=dict(_CPU_OPTIONS)).lower(np.float32(0)).compile()
  except Exception:  # an XLA without the option: its defaults
    return False
  return True


def compiler_options() -> dict | None:
  """``compiler_options`` for ``jax.jit`` of a model step on the default backend (None: XLA's own)."""
  if jax.default_backend() != 'cpu' or not _cpu_options_known():
    return None
  return dict(_CPU_OPTIONS)
