"""``pretrained=True``: timm's weights for a model name from the Hugging Face Hub, through
``huggingface_hub`` (its cache, ``HF_HUB_CACHE``; its offline mode, ``HF_HUB_OFFLINE=1``; its errors),
as ``timm.create_model(name, pretrained=True)`` fetches them. A name is ``architecture`` (timm's
default tag) or ``architecture.tag`` (``vit_base_patch16_siglip_224.webli``)."""
from __future__ import annotations

import textwrap
import urllib.parse

from tpm_jax.cli import muted
from tpm_jax.config import MODELS, ConfigError, pretrained_repo, split_model_name
from tpm_jax.network import unreachable

FILENAME = 'model.safetensors'
def hub_repo(name: str) -> str:
  """The Hub repository of ``name``'s pretrained weights: ``timm/<architecture>.<tag>``."""
  if split_model_name(name)[0] not in MODELS:
    raise ConfigError(f'model.name={name!r} is not accepted: expected one of {", ".join(sorted(MODELS))}')
  repo = pretrained_repo(name)
  if repo is None:
    raise ConfigError(f'{name} has no pretrained weights in timm: name a tag (<architecture>.<tag>) or start from '
                      f'init.timm_checkpoint / init.checkpoint')
  return repo


def weights_file(name: str) -> str:
  """The local path of ``name``'s pretrained ``model.safetensors``: from huggingface_hub's cache, else
  downloaded into it. ConfigError (one line naming the repository and what to do) when it is neither
  cached nor downloadable (no network, offline mode, no such tag)."""
  repo = hub_repo(name)
  try:
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError
  except ImportError as e:
    raise ConfigError(f'pretrained weights ({repo}) need huggingface_hub: pip install huggingface_hub') from e
  try:
    return huggingface_hub.hf_hub_download(repo, FILENAME, local_files_only=True)  # the cache first: no network
  except LocalEntryNotFoundError:
    pass
  except (OSError, ValueError) as e:
    raise _unavailable(repo, e) from e
  host = urllib.parse.urlsplit(constants.ENDPOINT).hostname
  why = None if constants.HF_HUB_OFFLINE else unreachable(host)
  if why is not None:  # at once, not after huggingface_hub's retries (hostile pass 23's TR13)
    raise _unavailable(repo, OSError(f'{host}: {why}'))
  try:
    with muted('huggingface_hub'):  # its retries' warnings: the one line below says what failed
      return huggingface_hub.hf_hub_download(repo, FILENAME)
  except Exception as e:  # noqa: BLE001  (huggingface_hub's and requests' errors: no network, no such repository)
    raise _unavailable(repo, e) from e


def _unavailable(repo: str, e: Exception) -> ConfigError:
  reason = textwrap.shorten((str(e).strip().splitlines() or [type(e).__name__])[0], 160, placeholder=' ...')
  return ConfigError(f'pretrained weights {repo}/{FILENAME} are not in the Hugging Face cache and cannot be downloaded '
                     f'({type(e).__name__}: {reason}): fetch them where there is a network (hf download {repo} '
                     f'{FILENAME}) into this cache (HF_HUB_CACHE), or pass the file as init.timm_checkpoint')
