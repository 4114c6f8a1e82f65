from tpm_jax.models.registry import MODELS, create_model, list_models, model_config, model_from_config
from tpm_jax.models.vit import VisionTransformer

__all__ = ['MODELS', 'VisionTransformer', 'create_model', 'list_models', 'model_config', 'model_from_config']
