"""tpm_jax: Vision Transformers that prune tokens by merging them (arXiv 2306.04897), in JAX/Flax NNX."""
from tpm_jax.config import ConfigError, MultiscaleConfig, ReductionConfig, RunConfig, ViTConfig
from tpm_jax.export import load_model
from tpm_jax.flops import TokenSchedule, count_flops, token_schedule
from tpm_jax.forward import jit_forward
from tpm_jax.models.registry import create_model, list_models, model_config
from tpm_jax.timm_weights import export_timm_weights, load_timm_weights
from tpm_jax.version import __version__

__all__ = [
    'ConfigError', 'MultiscaleConfig', 'ReductionConfig', 'RunConfig', 'ViTConfig',
    'create_model', 'list_models', 'model_config', 'jit_forward',
    'export_timm_weights', 'load_timm_weights',
    'TokenSchedule', 'count_flops', 'token_schedule', 'load_model', '__version__',
]
