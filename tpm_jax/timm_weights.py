"""timm <-> tpm_jax weights. The one place where foreign checkpoints are adapted.

Our parameter paths are timm's state-dict keys with Flax leaf names, so the table is a rule:
``blocks.3.attn.qkv.weight`` <-> ``('blocks', 3, 'attn', 'qkv', 'kernel')`` (transposed),
``norm1.weight`` <-> ``scale``, conv ``(D, C, p, p)`` <-> ``(p, p, C, D)``.
Position embeddings of another grid are resampled bicubically, as timm does on load.
Parameters that timm's ViT does not have (our multi-scale fusion) are left as initialised on
import and skipped on export.
"""
from __future__ import annotations

import errno
import logging
import os
import warnings
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tpm_jax.big_vision_weights import read_big_vision
from tpm_jax.files import give_new_file_mode

log = logging.getLogger(__name__)

# Parameters under these top-level names are tpm_jax extensions with no timm counterpart.
EXTENSION_PREFIXES = ('multiscale',)
HEAD_KEYS = ('head.weight', 'head.bias', 'head_dist.weight', 'head_dist.bias')


def timm_key(path: tuple) -> str:
  """Our parameter path -> timm state-dict key."""
  *parents, leaf = (str(p) for p in path)
  leaf = {'kernel': 'weight', 'scale': 'weight'}.get(leaf, leaf)
  return '.'.join(parents + [leaf])


def to_timm_layout(path: tuple, value: np.ndarray) -> np.ndarray:
  if path[-1] == 'kernel' and value.ndim == 2:   # Linear (in, out) -> (out, in)
    return value.T
  if path[-1] == 'kernel' and value.ndim == 4:   # Conv (kh, kw, in, out) -> (out, in, kh, kw)
    return value.transpose(3, 2, 0, 1)
  return value


def from_timm_layout(path: tuple, value: np.ndarray) -> np.ndarray:
  if path[-1] == 'kernel' and value.ndim == 2:
    return value.T
  if path[-1] == 'kernel' and value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  return value


def _params(model) -> list[tuple[tuple, nnx.Variable]]:
  return list(nnx.to_flat_state(nnx.state(model, nnx.Param)))


def _is_extension(path: tuple) -> bool:
  return str(path[0]) in EXTENSION_PREFIXES


def resample_pos_embed(posemb: np.ndarray, new_grid: tuple[int, int], num_prefix_tokens: int, *,
                       method: str = 'bicubic', antialias: bool = True) -> np.ndarray:
  """(1, P + h*w, D) -> (1, P + H*W, D): bicubic, antialiased (timm's ``resample_abs_pos_embed`` on
  load); timm resamples a big_vision .npz bilinearly without antialiasing."""
  prefix, grid = posemb[:, :num_prefix_tokens], posemb[:, num_prefix_tokens:]
  n = grid.shape[1]
  old = int(round(n ** 0.5))
  if old * old != n:
    raise ValueError(f'pos_embed: cannot resample a non-square grid of {n} tokens')
  if (old, old) == tuple(new_grid):
    return posemb
  g = grid.reshape(1, old, old, -1).astype(np.float32)
  g = jax.image.resize(jnp.asarray(g), (1, *new_grid, g.shape[-1]), method=method, antialias=antialias)
  g = np.asarray(g).reshape(1, new_grid[0] * new_grid[1], -1)
  return np.concatenate([prefix.astype(np.float32), g], axis=1)


def _is_safetensors(path: str) -> bool:
  """Whether the file starts as a safetensors file does: an 8-byte little-endian header length, then a JSON object
  (hostile pass 18's W07: one named .pth was said to pickle objects)."""
  with open(path, 'rb') as f:
    head = f.read(9)
  return len(head) == 9 and 2 <= int.from_bytes(head[:8], 'little') <= os.path.getsize(path) - 8 and head[8:] == b'{'


def _to_numpy(v) -> np.ndarray:
  if hasattr(v, 'detach'):  # torch.Tensor
    v = v.detach().cpu()
    if str(v.dtype) in ('torch.bfloat16', 'torch.float16'):
      v = v.float()
    return v.numpy()
  return np.asarray(v)


def read_state_dict(source) -> dict[str, np.ndarray]:
  """A .safetensors / .pth / .pt path, or a mapping name -> array, as a dict of NumPy arrays."""
  if isinstance(source, Mapping):
    sd = dict(source)
  else:
    path = os.fspath(source)
    if not os.path.exists(path):
      raise FileNotFoundError(f'timm checkpoint not found: {path}')
    if not os.path.isfile(path):  # checked before opening: a FIFO would block, a directory fail obscurely
      raise ValueError(f'{path} is not a regular file (expected a .safetensors, .pth, .pt or .npz file)')
    if path.endswith('.safetensors'):
      from safetensors.numpy import load_file
      try:
        sd = load_file(path)
      except Exception as e:  # noqa: BLE001 - a safetensors file in bf16 needs torch to read; anything else is the file's
        try:
          from safetensors.torch import load_file as load_torch
          sd = load_torch(path)
        except Exception:  # noqa: BLE001 (torch missing, or not a safetensors file at all: truncated, damaged)
          raise ValueError(f'cannot read {path} as safetensors ({str(e).splitlines()[0] if str(e) else type(e).__name__})') from e
    elif path.endswith('.npz'):  # big_vision's layout, renamed to timm's
      sd = read_big_vision(path)
    elif path.endswith(('.pth', '.pt', '.bin')):
      try:
        import torch
      except ImportError as e:
        raise ImportError(f'reading {path} needs PyTorch (pip install torch); .safetensors files do not') from e
      try:
        with warnings.catch_warnings():  # torch's note on a refused file's pickle protocol: the refusal says it all
          warnings.simplefilter('ignore', UserWarning)
          sd = torch.load(path, map_location='cpu', weights_only=True)  # never unpickle arbitrary objects
      except Exception as e:  # noqa: BLE001 (a pickled model object, or not a torch file at all)
        reason = ('it is a safetensors file: name it .safetensors' if _is_safetensors(path) else
                  'torch.load(weights_only=True) refuses it: it pickles objects, not only tensors'
                  if 'weights only' in str(e).lower() else (str(e).strip().splitlines() or [type(e).__name__])[0][:160])
        raise ValueError(f'{path} is not a state dict of tensors ({reason}); save model.state_dict(), '
                         f'or a .safetensors file') from e
      if not isinstance(sd, Mapping):
        raise ValueError(f'{path} holds a {type(sd).__name__}, not a state dict of tensors')
    else:
      raise ValueError(f'{path}: expected a .safetensors, .pth or .pt file (timm) or a .npz file (big_vision)')
  for wrapper in ('model', 'state_dict', 'model_ema'):  # DeiT/timm training checkpoints
    if wrapper in sd and isinstance(sd[wrapper], Mapping):
      sd = dict(sd[wrapper])
      break
  out = {}
  for k, v in sd.items():
    k = k[len('module.'):] if k.startswith('module.') else k
    try:
      out[k] = _to_numpy(v)
    except (TypeError, RuntimeError, ValueError) as e:  # float8, quantized or sparse tensors (hostile pass 19's WT01-11)
      raise ValueError(f'{k} holds {getattr(v, "dtype", type(v).__name__)} values, which are not read as weights '
                       f'(expected float32, float16 or bfloat16 dense tensors; {(str(e).strip().splitlines() or [type(e).__name__])[0][:120]})') from e
  return out


def load_timm_weights(model, source, *, strict: bool = True):
  """Load timm ViT/DeiT weights into ``model`` in place, and return it.

  ``source``: a ``.safetensors`` or ``.pth``/``.pt`` path (read with
  ``torch.load(weights_only=True)``), a big_vision ``.npz`` (``load_big_vision_weights``), or a
  mapping name -> array. Position embeddings of another
  grid are resampled. A shape mismatch raises naming the parameter; missing or unexpected keys
  raise listing them, except the heads when ``num_classes`` differs (then they keep their fresh
  initialisation, with a warning).
  """
  big_vision = not isinstance(source, Mapping) and os.fspath(source).endswith('.npz')
  return _load_state_dict(model, read_state_dict(source), strict=strict, big_vision=big_vision)


def load_big_vision_weights(model, path, *, strict: bool = True):
  """Load a big_vision ``.npz`` checkpoint (AugReg ViTs, SigLIP image towers) into ``model`` in place,
  and return it: renamed to timm's names by ``tpm_jax.big_vision_weights`` (its table), then loaded as
  timm weights (the head kept or left freshly initialised); position embeddings of another grid are
  resampled as timm's .npz loader does (bilinear). ``load_timm_weights`` does the same for a path
  ending in ``.npz``."""
  return _load_state_dict(model, read_big_vision(path), strict=strict, big_vision=True)


def _load_state_dict(model, sd: dict, *, strict: bool, big_vision: bool):
  cfg = model.cfg
  params = _params(model)
  ours = {timm_key(p): (p, v) for p, v in params if not _is_extension(p)}

  skip = set()
  head = sd.get('head.weight')
  if head is not None and head.shape[0] != cfg.num_classes:
    skip = {k for k in HEAD_KEYS if k in sd or k in ours}
    log.warning('head: checkpoint has %d classes, model has %d; %s', head.shape[0], cfg.num_classes,
                'head left freshly initialised' if cfg.num_classes else "the checkpoint's head is not used")
  elif head is None and 'head.weight' in ours:  # a backbone (CLIP, SigLIP, DINOv2 towers): a new head
    skip = {k for k in HEAD_KEYS if k in ours}
    log.warning('head: the checkpoint has none (a backbone); the model\'s %d-class head is freshly initialised',
                cfg.num_classes)

  missing = sorted(k for k in ours if k not in sd and k not in skip)
  unexpected = sorted(k for k in sd if k not in ours and k not in skip)
  if strict and (missing or unexpected):
    parts = []
    if missing:
      parts.append(f'missing keys: {", ".join(missing)}')
    if unexpected:
      parts.append(f'unexpected keys: {", ".join(unexpected)}')
    raise ValueError('timm checkpoint does not match the model; ' + '; '.join(parts))

  updates = {}
  for key, (path, var) in ours.items():
    if key in skip or key not in sd:
      continue
    value = sd[key]
    if not jnp.issubdtype(value.dtype, jnp.floating):  # an integer copy would be cast silently (JAX knows bfloat16)
      raise ValueError(f'{key}: the checkpoint holds {value.dtype} values, expected floating point weights')
    if not np.isfinite(value).all():
      raise ValueError(f'{key}: the checkpoint holds non-finite values (NaN or Inf)')
    if key == 'pos_embed':  # prefix rows: the model's (a checkpoint of the same family has as many)
      prefix = cfg.pos_embed_prefix
      if value.ndim != 3 or value.shape[1] <= prefix or round((value.shape[1] - prefix) ** 0.5) ** 2 != value.shape[1] - prefix:
        raise ValueError(f'pos_embed: checkpoint shape {tuple(value.shape)} is not {prefix} prefix rows and a square '
                         f'grid of patches (the model: {tuple(var.shape)})')
      value = resample_pos_embed(value, (cfg.grid_size, cfg.grid_size), prefix,
                                 **(dict(method='linear', antialias=False) if big_vision else {}))
    value = from_timm_layout(path, value)
    if value.shape != var.shape:
      raise ValueError(f'{key}: checkpoint shape {tuple(sd[key].shape)} does not fit the model '
                       f'(expects {tuple(to_timm_layout(path, np.zeros(var.shape)).shape)})')
    updates[path] = jnp.asarray(value, dtype=var.dtype)
  for path, var in params:
    if path in updates:
      var.set_value(updates[path])
  return model


def timm_state_dict(model) -> dict[str, np.ndarray]:
  """The model's parameters as a timm state dict of float32 NumPy arrays (extensions left out)."""
  return {timm_key(p): np.ascontiguousarray(to_timm_layout(p, np.asarray(v[...], dtype=np.float32)))
          for p, v in _params(model) if not _is_extension(p)}


def not_in_timm_layout(model) -> list[str]:
  """The model's parameters (dotted names) that timm's layout has no place for: tpm_jax's extensions
  (the multi-scale fusion); a timm file neither holds nor brings them."""
  return ['.'.join(map(str, p)) for p, _ in _params(model) if _is_extension(p)]


WRITER_KEY, WRITER = 'writer', 'tpm_jax.export_timm_weights'  # in the file's metadata: an export may replace it


def safetensors_written_here(path: str) -> bool:
  """Whether the regular file ``path`` is a .safetensors file this library wrote (its header's metadata)."""
  from safetensors import SafetensorError, safe_open
  try:
    with safe_open(path, 'numpy') as f:
      metadata = f.metadata() or {}
  except (OSError, ValueError, SafetensorError):  # not a safetensors file (a user's, truncated, ...)
    return False
  return metadata.get(WRITER_KEY) == WRITER


def export_timm_weights(model, path, *, name: str | None = None) -> str:
  """Write the model as a timm-named ``.safetensors`` file (loadable by ``timm.create_model``); the
  parameters timm has no place for (``not_in_timm_layout``) are left out, with a warning naming the
  file as ``name`` (default ``path``; the export writes beside its final name, then renames)."""
  from safetensors.numpy import save_file
  path = os.fspath(path)
  if not path.endswith('.safetensors'):
    raise ValueError(f'{path}: export_timm_weights writes .safetensors files')
  folder = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(folder):  # safetensors named its temporary file instead (hostile pass 22's WX03)
    raise FileNotFoundError(errno.ENOENT, 'no such folder to write the .safetensors file into', folder)
  save_file(timm_state_dict(model), path, metadata={'format': 'pt', WRITER_KEY: WRITER})
  give_new_file_mode(path)  # readable as the export's other files are (it wrote 0600)
  left_out = not_in_timm_layout(model)
  if left_out:
    log.warning(f'warning: {name or path} holds the timm backbone only: {", ".join(sorted({p.split(".")[0] for p in left_out}))} '
                f'({len(left_out)} arrays) has no place in timm\'s layout and is left out (the export folder or '
                f'the workdir keeps it)')
  return path
