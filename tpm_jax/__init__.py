"""tpm_jax: Vision Transformers that prune tokens by merging them (arXiv 2306.04897), in JAX/Flax NNX.

The names below are imported on first use (``tpm_jax.create_model``, ``from tpm_jax import
load_model``), so that ``import tpm_jax`` alone is light and the command-line tools
(``python -m tpm_jax.sweep``, ``python -m tpm_jax.export``) take over SIGINT and SIGTERM before JAX is
imported."""
import importlib
import importlib.util

from tpm_jax.version import __version__

_FROM = {
    'tpm_jax.config': ('ConfigError', 'MultiscaleConfig', 'ReductionConfig', 'RunConfig', 'ViTConfig'),
    'tpm_jax.export': ('load_model',),
    'tpm_jax.flops': ('TokenSchedule', 'count_flops', 'token_schedule'),
    'tpm_jax.forward': ('jit_forward',),
    'tpm_jax.models.registry': ('create_model', 'list_models', 'model_config'),
    'tpm_jax.timm_weights': ('export_timm_weights', 'load_big_vision_weights', 'load_timm_weights'),
}
_MODULE_OF = {name: module for module, names in _FROM.items() for name in names}

__all__ = [
    'ConfigError', 'MultiscaleConfig', 'ReductionConfig', 'RunConfig', 'ViTConfig',
    'create_model', 'list_models', 'model_config', 'jit_forward',
    'export_timm_weights', 'load_timm_weights', 'load_big_vision_weights',
    'TokenSchedule', 'count_flops', 'token_schedule', 'load_model', '__version__',
]


def __getattr__(name):
  if name in _MODULE_OF:
    value = getattr(importlib.import_module(_MODULE_OF[name]), name)
  elif importlib.util.find_spec(f'{__name__}.{name}') is not None:  # a submodule: tpm_jax.models, ...
    value = importlib.import_module(f'{__name__}.{name}')
  else:
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
  globals()[name] = value
  return value


def __dir__():
  return sorted([*globals(), *__all__])
