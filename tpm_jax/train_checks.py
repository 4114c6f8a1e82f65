"""Checks of a training config against everything it names (the model it builds, the mesh, the
data, the initial weights, the workdir), run by ``train_and_evaluate`` before anything is written
or compiled. Each failure is one ``ConfigError`` line naming the field and what is accepted.

The model-side checks themselves live with the dataclasses in ``tpm_jax.config``; this module sits
beside the trainer because it builds the model abstractly and reads data and checkpoints.
"""
from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp
from flax import nnx

from tpm_jax.config import ADDED_FIELD_DEFAULTS, RUN_IDENTITY_FIELDS, ConfigError, _choice, _fail, flat_dict
from tpm_jax.data.checks import check_dataset
from tpm_jax.data.randaugment import parse_randaugment
from tpm_jax.models.registry import model_from_config
from tpm_jax.sharding import mesh_shape
from tpm_jax.timm_weights import load_timm_weights

IMAGENET_MANUAL_FILES = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')


def _positive_int(field, value):
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    _fail(field, value, 'a positive int')


def validate_train_config(config, *, num_devices: int, process_count: int = 1, workdir: str | None = None) -> None:
  """Every check train.py needs, in one place, before it writes or compiles anything."""
  m = config.model
  _choice('model.dtype', m.dtype, ('float32', 'bfloat16'))
  # Building the model abstractly runs every model, reduction and multi-scale check (no allocation).
  abstract = nnx.eval_shape(lambda: model_from_config(config))
  if config.reduction.method == 'none' and config.multiscale.method != 'none':
    _fail('multiscale.method', config.multiscale.method,
          "'none' when reduction.method='none' (the plain backbone; multi-scale fusion comes only with a reduction)")

  _positive_int('batch_size', config.batch_size)
  _positive_int('grad_accum_steps', config.grad_accum_steps)
  if config.batch_size % (num_devices * config.grad_accum_steps):
    _fail('batch_size', config.batch_size,
          f'a multiple of the {num_devices} devices x grad_accum_steps={config.grad_accum_steps}')
  if config.batch_size % process_count:
    _fail('batch_size', config.batch_size, f'a multiple of the {process_count} processes')
  if config.eval_batch_size and config.eval_batch_size % num_devices:
    _fail('eval_batch_size', config.eval_batch_size, f'a multiple of the {num_devices} devices (or 0: batch_size)')
  mesh_shape(config.mesh, num_devices)

  def number(field, ok, accepted):  # a numeric field (absent: nothing to check) that ok() accepts
    section, _, name = field.rpartition('.')
    holder = config.get(section) if section else config
    if holder is None or name not in holder:
      return
    v = holder[name]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not ok(v):
      _fail(field, v, accepted)

  number('total_steps', lambda v: v >= 0 and v == int(v), 'an int >= 0 (0: from num_epochs)')
  number('num_epochs', lambda v: v >= 0, 'a number >= 0 (used when total_steps=0)')
  if not (config.total_steps > 0 or config.num_epochs > 0):
    _fail('total_steps', config.total_steps, 'a positive number of steps, or num_epochs > 0')
  number('eval_batch_size', lambda v: v >= 0 and v == int(v), 'an int >= 0 (0: batch_size)')
  number('eval_every_steps', lambda v: v >= 0 and v == int(v), 'an int >= 0 (0: no evaluation)')
  number('num_train_examples', lambda v: v >= 0 and v == int(v), 'an int >= 0 (0: read from the dataset)')
  number('keep_warmup_epochs', lambda v: v >= 0, 'a number >= 0 (0: no keep-rate warmup)')
  number('optim.lr', lambda v: v > 0, 'a float > 0 (per 512 images)')
  number('optim.min_lr', lambda v: v >= 0, 'a float >= 0')
  number('optim.warmup_epochs', lambda v: v >= 0, 'a number >= 0 (0: no warmup)')
  number('optim.weight_decay', lambda v: v >= 0, 'a float >= 0')
  number('optim.grad_clip', lambda v: v >= 0, 'a float >= 0 (0: no clipping)')
  number('optim.ema_decay', lambda v: 0 <= v < 1, 'a float in [0, 1) (0: no EMA)')
  for field in ('optim.b1', 'optim.b2'):
    number(field, lambda v: 0 <= v < 1, 'a float in [0, 1)')
  number('distill.alpha', lambda v: 0 <= v <= 1, 'a float in [0, 1] (0: no self-distillation)')
  number('aug.label_smoothing', lambda v: 0 <= v < 1, 'a float in [0, 1)')
  for field in ('aug.mixup', 'aug.cutmix'):
    number(field, lambda v: v >= 0, 'a float >= 0 (the Beta distribution\'s alpha; 0: off)')
  number('aug.random_erasing', lambda v: 0 <= v <= 1, 'a probability in [0, 1]')
  number('aug.eval_crop_pct', lambda v: 0 < v <= 1, 'a float in (0, 1]')
  a = config.get('aug')
  if a is not None:
    scale = a.get('crop_scale', (0.08, 1.0))
    try:
      lo, hi = (float(v) for v in scale)
    except (TypeError, ValueError):
      lo = hi = float('nan')
    if not 0 < lo <= hi <= 1:
      _fail('aug.crop_scale', scale, 'two area fractions (min, max) with 0 < min <= max <= 1')
    try:
      parse_randaugment(a.get('randaugment', ''))
    except ValueError as e:
      raise ConfigError(str(e)) from None
    chans = abstract.cfg.in_chans
    for field in ('mean', 'std'):
      v = a.get(field)
      if v is None:
        continue
      vals = tuple(v) if isinstance(v, (list, tuple)) else ()
      if (len(vals) != 1 and len(vals) < chans
          or any(isinstance(x, bool) or not isinstance(x, (int, float)) for x in vals)
          or field == 'std' and any(not x > 0 for x in vals)):
        _fail(f'aug.{field}', v, f'one number per image channel ({chans}), or one for all'
              + (', each > 0' if field == 'std' else ''))
  _positive_int('dataset.threads', config.dataset.get('threads', 1))
  workers = config.dataset.get('workers', 0)
  if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
    _fail('dataset.workers', workers, 'a non-negative int (worker processes; 0 reads in the training process)')
  for field in ('log_every_steps', 'checkpoint_every_steps', 'keep_checkpoints'):
    _positive_int(field, config.get(field))
  _positive_int('preemption_check_every_steps', config.get('preemption_check_every_steps', 10))
  if config.get('keep_warmup_stages', 1) < 1:
    _fail('keep_warmup_stages', config.keep_warmup_stages, 'an int >= 1')

  d = config.dataset
  if not d.get('image_folder'):
    import tensorflow_datasets as tfds
    try:  # (tfds.list_builders() would also list community datasets, reading their registry with TensorFlow)
      tfds.builder_cls(d.name)
    except tfds.core.registered.DatasetNotFoundError:
      _fail('dataset.name', d.name, 'a TFDS dataset name (tfds.list_builders()), or set dataset.image_folder')
    if d.name == 'imagenet2012' and not _tfds_prepared(d):
      manual = os.path.expanduser(d.get('manual_dir') or '')
      missing = [f for f in IMAGENET_MANUAL_FILES if not os.path.exists(os.path.join(manual, f))]
      if missing:
        _fail('dataset.manual_dir', d.get('manual_dir'),
              f'a folder holding {" and ".join(IMAGENET_MANUAL_FILES)} (missing: {", ".join(missing)})')
  # Splits and slices against the real split sizes; an image folder's classes, one image of each decoded.
  check_dataset(d, num_classes=m.num_classes)
  for field in ('timm_checkpoint', 'checkpoint'):
    path = config.init.get(field)
    if path and not os.path.exists(os.path.expanduser(path)):
      _fail(f'init.{field}', path, 'an existing file or directory')
  if config.init.get('checkpoint'):  # an export: parameter names and shapes from its metadata
    _check_export_fits(config.init.checkpoint, abstract)
  if config.init.get('timm_checkpoint'):  # names and shapes checked against the abstract model
    try:
      load_timm_weights(abstract, os.path.expanduser(config.init.timm_checkpoint))
    except (ValueError, OSError) as e:
      raise ConfigError(f'init.timm_checkpoint={config.init.timm_checkpoint!r} does not fit model '
                        f'{m.name}: {str(e).splitlines()[0]}') from e
  if workdir:
    _check_workdir(config, workdir)


def _check_export_fits(path, abstract_model) -> None:
  try:
    saved = ocp.StandardCheckpointer().metadata(os.path.join(os.path.abspath(os.path.expanduser(path)), 'params'))
    saved = getattr(saved, 'item_metadata', saved)
    saved_shapes = {tuple(str(k.key if hasattr(k, 'key') else k) for k in p): tuple(v.shape)
                    for p, v in jax.tree_util.tree_leaves_with_path(saved, is_leaf=_is_array_metadata)}
  except Exception as e:  # noqa: BLE001
    raise ConfigError(f'init.checkpoint={path!r} is not accepted: expected an export directory '
                      f'(python -m tpm_jax.export), could not read it ({type(e).__name__})') from e
  has_multiscale = any(k[0] == 'multiscale' for k in saved_shapes)
  for p, v in nnx.to_flat_state(nnx.state(abstract_model, nnx.Param)):
    key = tuple(str(k) for k in p)
    if key[0] == 'multiscale' and not has_multiscale:
      continue  # a backbone's export: the fusion starts from its own (zero-output) initialisation
    got = next((shape for k, shape in saved_shapes.items() if k[:len(key)] == key), None)
    if got is None or got != tuple(v.shape):
      raise ConfigError(f'init.checkpoint={path!r} does not fit the model: {".".join(key)} is '
                        f'{got if got is not None else "missing"} there, the model needs {tuple(v.shape)}')


def _is_array_metadata(x) -> bool:
  return hasattr(x, 'shape') and not isinstance(x, dict)


def _tfds_prepared(d) -> bool:
  import tensorflow_datasets as tfds
  try:
    return tfds.builder(d.name, data_dir=d.get('data_dir')).is_prepared()
  except Exception:  # noqa: BLE001
    return False


def _check_workdir(config, workdir: str) -> None:
  """Refuse a workdir that holds a run with another model, method or data (unless config.overwrite)."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise ConfigError(f'workdir {workdir} is a file: expected a directory (existing or to be created)')
  existing = os.path.abspath(workdir)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.access(existing, os.W_OK):
    raise ConfigError(f'workdir {workdir}: {existing} is not writable (read-only file system or permissions)')
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path) or config.get('overwrite', False):
    return
  with open(path) as f:
    old = dict(ADDED_FIELD_DEFAULTS, **flat_dict(json.load(f)))
  new = flat_dict(json.loads(config.to_json_best_effort()))
  for key in sorted(set(old) | set(new)):
    if any(key == f or key.startswith(f + '.') for f in RUN_IDENTITY_FIELDS) and old.get(key) != new.get(key):
      raise ConfigError(f'workdir {workdir} holds a run with {key}={old.get(key)!r}, not {new.get(key)!r}: '
                        f'use another workdir, or --config.overwrite=true to start over there')
