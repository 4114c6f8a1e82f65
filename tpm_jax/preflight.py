"""Checks of a run against the world, before anything is written or compiled: the devices, the
data on disk, the initial weights, the workdir, and the tools' output paths. Value checks live with
the settings in ``tpm_jax.config``; these need files, devices or the data.

Each failure is one ``ConfigError`` line naming the field, flag or file and what is accepted (exit 2
in the tools). Files are ``stat``-ed before they are opened, so a FIFO or a device never blocks.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import stat

import jax
from flax import nnx

from tpm_jax.checkpoint import CheckpointError, check_config_json, check_export, load_params_into
from tpm_jax.checkpoint.exports import EXPORT_FILES, export_digest, export_param_shapes, is_export, param_mismatch
from tpm_jax.checkpoint.integrity import verify_checksums
from tpm_jax.checkpoint.lock import HOLDER, held_by_another
from tpm_jax.checkpoint.steps import checkpoint_dir
from tpm_jax.cli import muted
from tpm_jax.config import ConfigError, DataConfig, RunConfig, refuse
from tpm_jax.data.checks import SPLIT_FIELDS, check_dataset, check_splits
from tpm_jax.data.local_sources import is_prepared
from tpm_jax.data.sources import tfds_builder
from tpm_jax.files import blocked_at, nearest_existing, process_running, sha256, unwritable_at, writing_pid
from tpm_jax.models.registry import model_from_config
from tpm_jax.pretrained import weights_file
from tpm_jax.timm_weights import load_timm_weights, safetensors_written_here

IMAGENET_MANUAL_FILES = ('ILSVRC2012_img_train.tar', 'ILSVRC2012_img_val.tar')


def check_run(run: RunConfig, *, num_devices: int, process_count: int = 1, workdir: str | None = None) -> None:
  """Everything train.py checks before it writes or compiles anything (the checkpoints themselves:
  the resume policy, ``tpm_jax.checkpoint.resume``)."""
  check_devices(run, num_devices=num_devices, process_count=process_count)
  check_workers(run)
  if workdir is not None:
    check_workdir_path(workdir)
    check_not_another_tool_s(workdir)
    if not run.overwrite:  # a workdir of another run
      check_config_json(workdir, run)
  check_data(run.dataset, num_classes=run.model.num_classes)
  check_model_fits(run)
  if run.init.timm_checkpoint or run.init.pretrained or run.init.checkpoint:  # weights to fit to the model's shapes
    check_init(run, nnx.eval_shape(lambda: model_from_config(run)))  # (tracing the model costs ~0.5 s of start-up)


def memory_of(devices) -> int | None:
  """Bytes of memory ``devices`` hold together: the host's RAM for CPU devices (which share it), else the
  sum of each device's ``bytes_limit``; None where a device does not say."""
  if devices[0].platform == 'cpu':
    return os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  stats = [d.memory_stats() for d in devices]
  if not all(st and 'bytes_limit' in st for st in stats):
    return None
  return sum(st['bytes_limit'] for st in stats)


def min_parameters(cfg) -> int:
  """A lower bound on the parameters of the model ``cfg`` (a ``ViTConfig``) describes, from the config alone:
  the blocks' matmul weights, the patch embedding, the position table, the prefix tokens and the head. (Not
  the model's shapes: tracing its initialisation costs time quadratic in depth, minutes at depth 200.)"""
  D, hidden = cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio)
  return (cfg.depth * (4 * D * D + 2 * D * hidden) + cfg.patch_size ** 2 * cfg.in_chans * D
          + (cfg.num_patches + cfg.num_prefix_tokens) * D + D * cfg.num_classes)


TRAIN_COPIES = 4  # what training holds of each float32 parameter at least: the weight, its gradient, AdamW's two moments


def check_model_fits(run: RunConfig) -> None:
  """A model that cannot train in the memory of the run's devices: ``TRAIN_COPIES`` float32 copies of
  ``min_parameters`` (activations, the EMA and a teacher come on top) more than they hold. One line naming
  the sizes (``model.embed_dim=300000000`` aborted in XLA's compiler: hostile pass 23's TR19; a model just
  under its parameters' size was killed by the kernel 72 s in: pass 24's MM03)."""
  local, cfg = jax.local_devices(), run.vit
  per_process = memory_of(local)
  params = min_parameters(cfg)
  need = TRAIN_COPIES * 4 * params
  if per_process is None or need <= per_process * jax.process_count():
    return
  sizes = ', '.join(f'{f}={getattr(cfg, f)}' for f in ('embed_dim', 'depth', 'num_heads', 'mlp_ratio', 'img_size',
                                                       'patch_size', 'reg_tokens', 'num_classes'))
  raise ConfigError(f'model.name={run.model.name!r} ({sizes}) is not accepted: training it takes at least '
                    f'{need / 2**30:,.4g} GiB ({params:,} parameters or more, {TRAIN_COPIES} float32 '
                    f'copies: weights, gradients, AdamW\'s two moments), more than the '
                    f'{per_process * jax.process_count() / 2**30:,.4g} GiB of memory of the run\'s '
                    f'{len(local) * jax.process_count()} {local[0].platform} device(s)')


def validate_train_config(config, *, num_devices: int, process_count: int = 1, workdir: str | None = None) -> None:
  """``check_run`` of a ConfigDict or mapping (read into a RunConfig first)."""
  check_run(RunConfig.from_any(config), num_devices=num_devices, process_count=process_count, workdir=workdir)


def check_workers(run: RunConfig) -> None:
  """Grain worker processes: at most one per CPU of this machine (64 on 2 cores never got to a step)."""
  cpus = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1)
  if run.dataset.workers > cpus:
    refuse('dataset.workers', run.dataset.workers, f'at most the {cpus} CPUs of this machine (0: threads of the '
           f'training process)')


def check_devices(run: RunConfig, *, num_devices: int, process_count: int = 1) -> None:
  if run.batch_size % (num_devices * run.grad_accum_steps):
    refuse('batch_size', run.batch_size, f'a multiple of the {num_devices} devices x grad_accum_steps='
           f'{run.grad_accum_steps}')
  if run.batch_size % process_count:
    refuse('batch_size', run.batch_size, f'a multiple of the {process_count} processes')
  if run.eval_batch_size % num_devices:
    refuse('eval_batch_size', run.eval_batch_size, f'a multiple of the {num_devices} devices (or 0: batch_size)')
  run.mesh.shape(num_devices)


def check_data(data: DataConfig, *, num_classes: int | None = None) -> None:
  """The dataset a run names: a known TFDS name (imagenet2012's manual files when it is not prepared
  yet), or an image folder; its splits against their real sizes (``data.checks``)."""
  if not data.image_folder:
    import tensorflow_datasets as tfds
    try:  # (tfds.list_builders() would also list community datasets, reading their registry with TensorFlow)
      tfds.builder_cls(data.name)
    except tfds.core.registered.DatasetNotFoundError:
      refuse('dataset.name', data.name, 'a TFDS dataset name (tfds.list_builders()), or set dataset.image_folder')
    if data.name == 'imagenet2012' and not _tfds_prepared(data):
      manual = os.path.expanduser(data.manual_dir or '')
      missing = [f for f in IMAGENET_MANUAL_FILES if not os.path.isfile(os.path.join(manual, f))]
      if missing:
        refuse('dataset.manual_dir', data.manual_dir,
               f'a folder holding {" and ".join(IMAGENET_MANUAL_FILES)} (missing: {", ".join(missing)})')
  check_dataset(data, num_classes=num_classes)


def check_batch_fits(run: RunConfig, train_examples: int, process_count: int = 1) -> None:
  """A global batch no larger than the train split (a larger one would read the split many times
  over for a single step)."""
  n = run.num_train_examples or train_examples
  if run.batch_size > n:
    refuse('batch_size', run.batch_size, f'at most the {n} examples of dataset.train_split='
           f'{run.dataset.train_split!r}')


def check_prepared_splits(dataset, data: DataConfig, fields=SPLIT_FIELDS) -> None:
  """The splits of a dataset prepared just now (no split sizes before), still before anything is written."""
  check_splits(dataset, data, dataset.where, fields=fields)


def _tfds_prepared(data: DataConfig) -> bool:
  try:
    return is_prepared(tfds_builder(data.name, data_dir=data.data_dir))
  except ConfigError:  # a damaged dataset_info.json: its own one line
    raise
  except Exception:  # noqa: BLE001
    return False


def check_regular_file(field: str, path: str, accepted: str) -> str:
  """``path`` expanded, if it is an existing regular file (stat first: a FIFO or device never opened)."""
  p = os.path.expanduser(path)
  try:
    st = os.stat(p)
  except OSError as e:
    refuse(field, path, f'{accepted} ({e.strerror.lower() if e.strerror else "cannot be read"})')
  if not stat.S_ISREG(st.st_mode):
    kind = 'a directory' if stat.S_ISDIR(st.st_mode) else 'not a regular file'
    refuse(field, path, f'{accepted} (it is {kind})')
  if not os.access(p, os.R_OK):
    refuse(field, path, f'{accepted} (not readable)')
  return p


def check_init(run: RunConfig, abstract_model) -> None:
  """``init.timm_checkpoint``, ``init.pretrained`` (cached or downloaded now) and ``init.checkpoint``
  exist, are what they should be, fit the model (names and shapes) and hold finite values."""
  def check_fits(path, refused_as):
    try:  # what the load leaves out (a head) is said once, by the real load (hostile pass 21's WT43: twice)
      with muted(load_timm_weights.__module__):
        load_timm_weights(abstract_model, path)
    except (ValueError, OSError, ImportError, RuntimeError, KeyError) as e:
      raise ConfigError(f'{refused_as}: {str(e).splitlines()[0] if str(e) else type(e).__name__}') from e

  if run.init.timm_checkpoint:
    check_fits(check_regular_file('init.timm_checkpoint', run.init.timm_checkpoint,
                                  'timm weights as a .safetensors, .pth or .pt file, or big_vision weights as .npz'),
               f'init.timm_checkpoint={run.init.timm_checkpoint!r} does not fit model {run.model.name}')
  if run.init.pretrained:
    path = weights_file(run.model.name)  # ConfigError naming the repository when neither cached nor downloadable
    check_fits(path, f'init.pretrained: the weights of {run.model.name} ({path}) do not fit the model')
  if run.init.checkpoint:
    check_export_fits('init.checkpoint', run.init.checkpoint, abstract_model)


@contextlib.contextmanager
def _export_refused_as(field: str, path: str):
  """A CheckpointError of the export ``field`` names, as the bad input it is (ConfigError, exit 2)."""
  try:
    yield
  except CheckpointError as e:
    raise ConfigError(f'{field}={path!r} is not accepted: {e}') from None


def load_export_into(field: str, model, path: str):
  """``load_params_into(model, path)`` for the export ``field`` names; weights that fail to load
  (non-finite, or damaged behind valid checksums) are bad input, as a failed check is."""
  with _export_refused_as(field, path):
    return load_params_into(model, path)


def check_export_fits(field: str, path: str, abstract_model) -> None:
  """An export (checked and verified) whose parameters fit ``abstract_model``; a backbone's export
  without the multi-scale fusion fits a model with one (the fusion starts as a new model's)."""
  with _export_refused_as(field, path):
    path = check_export(path)
  why = param_mismatch(export_param_shapes(path), nnx.state(abstract_model, nnx.Param))
  if why:
    raise ConfigError(f'{field}={path!r} does not fit the model: {why}')


def check_path_given(field: str, path: str) -> None:
  """A path that is not empty (ConfigError naming ``field``)."""
  if not str(path).strip():  # os.path.abspath('') is the current directory: a run would write into it
    raise ConfigError(f'{field}={path!r} is not accepted: expected a path (an empty one would mean the current '
                      f'directory)')


def check_workdir_path(workdir: str, what: str = 'workdir') -> None:
  """A path a run can create and write: not empty, not under a file, a name the file system accepts, writable."""
  check_path_given(what, workdir)
  p = os.path.abspath(os.path.expanduser(workdir))
  blocked = blocked_at(p)
  if blocked is not None:
    kind = 'a link that leads nowhere (dangling or a loop)' if blocked[1] == 'dangling link' else 'a file'
    if blocked[0] == p:
      raise ConfigError(f'{what} {workdir} is {kind}: expected a directory (existing or to be created)')
    raise ConfigError(f'{what} {workdir}: {blocked[0]} is {kind}, so nothing can be created under it')
  existing = nearest_existing(p)
  try:
    name_max = os.pathconf(existing, 'PC_NAME_MAX')
  except OSError:
    name_max = 255
  long = next((part for part in p.split(os.sep) if len(part.encode()) > name_max), None)
  if long is not None:
    raise ConfigError(f'{what} {workdir}: the name {long[:40]}... is longer than the file system allows ({name_max} '
                      f'bytes)')
  if unwritable_at(existing) is not None:
    raise ConfigError(f'{what} {workdir}: {existing} is not writable (read-only file system or permissions)')
  for name, kind in RUN_FILE_KINDS.items():  # what a run writes there must be what it writes (a FIFO would block)
    f = os.path.join(p, name)
    if os.path.lexists(f) and not (os.path.isdir(f) if kind == 'folder' else os.path.isfile(f)):
      raise ConfigError(f'{what} {workdir}: {f} is not a {kind} (this run would write its {name} there); move it '
                        f'away')


# The files and folders a run writes in its workdir, by kind.
RUN_FILE_KINDS = {'config.json': 'regular file', 'metrics.jsonl': 'regular file', 'final.json': 'regular file',
                  '.lock': 'regular file', 'checkpoints': 'folder', 'tensorboard': 'folder'}


def _enclosing(path: str, is_it) -> str | None:
  """``path`` or its nearest ancestor (symlinks resolved) for which ``is_it(folder)`` holds, if any."""
  probe = os.path.realpath(os.path.abspath(os.path.expanduser(path)))
  while not is_it(probe):
    if probe == os.path.dirname(probe):
      return None
    probe = os.path.dirname(probe)
  return probe


def training_workdir_holding(path: str) -> str | None:
  """The training workdir that ``path`` is, or lies inside, if any."""
  return _enclosing(path, lambda d: os.path.isdir(checkpoint_dir(d))
                    or os.path.isfile(os.path.join(d, 'metrics.jsonl')))


def export_holding(path: str) -> str | None:
  """The export (a folder with params/ and config.json) that ``path`` is, or lies inside, if any."""
  return _enclosing(path, is_export)


def check_outside_workdirs_and_exports(flag: str, path: str, *, what: str = 'path', folder: bool = False) -> None:
  """A tool's output (a file, or with ``folder`` a folder it writes into) is neither inside a training
  workdir (which read-only tools never change) nor inside an export (whose files are checksummed:
  another one there makes it unusable)."""
  p = os.path.abspath(os.path.expanduser(path))
  workdir = training_workdir_holding(p)
  if workdir is not None:
    raise ConfigError(f'{flag}={path} is not accepted: it is inside the training workdir {workdir}, which this tool '
                      f'does not change; choose a {what} outside it')
  export = export_holding(p if folder else os.path.dirname(p))
  if export is not None:
    raise ConfigError(f'{flag}={path} is not accepted: it is inside the export {export}, whose files are checksummed '
                      f'(another file there makes it unusable); choose a {what} outside it')


SWEEP_PLAN = 'sweep.json'  # what makes a folder a sweep's: its plan (tpm_jax.sweep.PLAN)


def is_sweep_folder(path: str) -> bool:
  """Whether ``path`` is a sweep's folder (it has the sweep's sweep.json)."""
  return os.path.isfile(os.path.join(path, SWEEP_PLAN))


def sweep_folder_holding(path: str) -> str | None:
  """The sweep folder that ``path`` is, or lies inside, if any."""
  return _enclosing(path, is_sweep_folder)


def in_use_below(path: str) -> tuple[str, str] | None:
  """(folder, what it is) for the first folder inside ``path`` (or ``path`` itself) that replacing ``path`` would
  delete and must not: a training workdir; a run that ``overwrite`` moved aside (``checkpoints.replaced-<time>``,
  hostile pass 14b's EO3o); a sweep's folder; a folder a tool holds or held its lock on (``.lock``: a run starting
  up, before its first files; a sweep: hostile pass 16b's X4b, X5; a flock held before its record: pass 17's X5w);
  one where an export is being written (pass 17's CC2_par; named as such: pass 17b's N4)."""
  for root, dirs, files in os.walk(path):
    names = dirs + files
    if 'checkpoints' in dirs or 'metrics.jsonl' in files:
      return root, 'a training workdir'
    if any(n.startswith(('checkpoints.replaced-', 'metrics.jsonl.replaced-')) for n in names):
      return root, 'a training workdir (a run moved aside by --overwrite)'
    if SWEEP_PLAN in files:
      return root, "a sweep's folder"
    if HOLDER in files or held_by_another(root):
      return root, 'a folder a run or tool holds or held its lock on'
    writing = next((n for n in names if _running_export(n)), None)
    if writing is not None:
      return root, f'a folder where a running process writes {writing}'
  return None


def _running_export(name: str) -> bool:
  """``name`` is what a running export writes beside its output (``<output>.writing-<pid>``)."""
  pid = writing_pid(name)
  return pid is not None and process_running(pid)


def check_not_another_tool_s(workdir: str) -> None:
  """A training workdir is not a sweep's folder nor an export (a run would mix its files with theirs)."""
  p = os.path.abspath(os.path.expanduser(workdir))
  if is_sweep_folder(p):
    raise ConfigError(f'workdir {workdir} is a sweep\'s folder (it has sweep.json), not a training workdir: choose '
                      f'another folder')
  export = export_holding(p)
  if export == os.path.realpath(p):
    raise ConfigError(f'workdir {workdir} is an export, not a training workdir: choose another folder (to start from '
                      f'the export: --config.init.checkpoint={workdir})')
  if export is not None:
    raise ConfigError(f'workdir {workdir} is inside the export {export}, whose files are checksummed (a run there '
                      f'makes it unusable): choose a folder outside it')
  held = training_workdir_holding(os.path.dirname(p))
  if held is not None:
    raise ConfigError(f'workdir {workdir} is inside the training workdir {held}: choose a folder of its own')


def check_output_file(flag: str, path: str, *, suffix: str | None = None, overwrite: bool = False,
                      ours=None, overwrite_flag: str | None = None) -> str:
  """A file a tool will write: its folder exists and is writable, it is not a directory (nor a FIFO or
  device), it is not inside a training workdir (read-only tools never change one), and an existing
  file is replaced only if ``ours(path)`` says the tool wrote it, or with ``overwrite``. Returns the
  absolute path."""
  check_path_given(flag, path)
  p = os.path.abspath(os.path.expanduser(path))
  if suffix and not p.endswith(suffix):
    raise ConfigError(f'{flag}={path} is not accepted: expected a {suffix} file name')
  check_outside_workdirs_and_exports(flag, path)
  sweep = sweep_folder_holding(os.path.dirname(p))
  if sweep is not None:
    raise ConfigError(f'{flag}={path} is not accepted: it is inside the sweep folder {sweep}, whose files the sweep '
                      f'writes and reads back; choose a path outside it')
  if os.path.islink(p):  # written beside, then renamed: the link would become a file, its target left as it was
    raise ConfigError(f'{flag}={path} is not accepted: it is a symbolic link (to {os.readlink(p)}); give the file '
                      f'itself')  # (hostile pass 13b's Oe1, Os1; the export's folder: pass 12b's O2)
  if os.path.lexists(p):
    if not os.path.isfile(p):
      raise ConfigError(f'{flag}={path} is not accepted: it exists and is not a regular file')
    if not overwrite and not (ours is not None and ours(p)):
      raise ConfigError(f'{flag}={path} is not accepted: the file exists and was not written by this tool; choose '
                        f'another name, or remove it first' + (f', or {overwrite_flag} to replace it' if overwrite_flag
                                                               else ''))  # (hostile pass 16b's N37)
  parent = os.path.dirname(p)
  if not os.path.isdir(parent):
    raise ConfigError(f'{flag}={path} is not accepted: the folder {parent} does not exist')
  if not os.access(parent, os.W_OK | os.X_OK):
    raise ConfigError(f'{flag}={path} is not accepted: the folder {parent} is not writable')
  return p


def written_by_export(path: str) -> bool:
  """A folder python -m tpm_jax.export wrote and nobody changed since: only an export's files, and
  they match its checksums (a user's folder that merely has params/ and config.json is not one)."""
  try:
    return set(os.listdir(path)) <= set(EXPORT_FILES) and verify_checksums(path, None)
  except (OSError, CheckpointError):
    return False


def check_export_paths(output: str, safetensors: str | None, *, source_workdir: str, overwrite: bool = False):
  """(output, safetensors) of an export, checked: ``check_export_output``, ``check_output_file``, and
  the timm file not inside the export folder (which is written whole and replaced)."""
  check_path_given('--output', output)
  output = check_export_output(output, source_workdir=source_workdir, overwrite=overwrite)
  if safetensors:
    safetensors = check_output_file('--safetensors', safetensors, suffix='.safetensors', overwrite=overwrite,
                                    ours=safetensors_written_here, overwrite_flag='--overwrite')
    real_out, real_st = os.path.realpath(output), os.path.realpath(safetensors)  # through links too (pass 14b's EO4)
    if safetensors == output or safetensors.startswith(output + os.sep) or real_st == real_out or real_st.startswith(
        real_out + os.sep):
      raise ConfigError(f'--safetensors={safetensors} is not accepted: it is the export folder or inside it; '
                        f'choose a path outside --output')
  return output, safetensors


def check_export_output(output: str, *, source_workdir: str, overwrite: bool = False) -> str:
  """Where an export may go: a new directory, or an earlier export (replaced as a whole); never the
  source workdir or anything inside a training workdir, nor a folder holding anything else unless
  ``overwrite``. Returns the absolute path."""
  p = os.path.abspath(os.path.expanduser(output))
  src = os.path.realpath(os.path.abspath(os.path.expanduser(source_workdir)))
  real = os.path.realpath(p)
  if real == src or real.startswith(src + os.sep):
    raise ConfigError(f'--output={output} is not accepted: it is inside the workdir being exported ({source_workdir}); '
                      f'choose a folder outside it')
  if os.path.islink(p):  # replaced by a folder, the link would be gone and its target left as it was (pass 12b's O2)
    raise ConfigError(f'--output={output} is not accepted: it is a symbolic link (to {os.readlink(p)}); give the '
                      f'folder itself')
  check_outside_workdirs_and_exports('--output', output, what='folder')  # (an earlier export there is replaced)
  sweep = sweep_folder_holding(os.path.dirname(p))
  if sweep is not None:  # hostile pass 18's L4: an export replaced a sweep's evals/ (as eval.py's --output is refused)
    raise ConfigError(f'--output={output} is not accepted: it is inside the sweep folder {sweep}, whose files the sweep '
                      f'writes and reads back; choose a folder outside it')
  check_workdir_path(p, what='--output')
  if not os.path.isdir(os.path.dirname(p)):  # written beside, then renamed: its folder must exist (pass 15's N_EO_out_newparent)
    raise ConfigError(f'--output={output} is not accepted: its folder {os.path.dirname(p)} does not exist; create it '
                      f'first')
  if os.path.isdir(p) and os.listdir(p) and not written_by_export(p):
    below = in_use_below(p)
    if below is not None:
      raise ConfigError(f'--output={output} is not accepted: replacing it would delete {below[0]}, {below[1]}; choose '
                        f'a new folder')  # (pass 17b's N4)
    if not overwrite:
      names = sorted(os.listdir(p))
      others = [n for n in names if n not in EXPORT_FILES] or names  # what makes it not (only) an export
      raise ConfigError(f'--output={output} is not accepted: it holds {", ".join(others[:3])}'
                        f'{" and more" if len(others) > 3 else ""}, not written by the export (or changed since); '
                        f'choose a new folder, or --overwrite to replace the folder and everything in it')
  return p


def init_fingerprint(run: RunConfig) -> str | None:
  """SHA-256 of the weights ``run.init`` names (a weights file's bytes; an export's parameter values,
  ``export_digest``: an export written again from the same step is the same weights, hostile pass
  13b's R7), None when it names none. A self-distillation run rebuilds its teacher from them on every
  resume, so the resume policy refuses weights replaced at the same path (hostile pass 12b's RT)."""
  parts = []
  if run.init.timm_checkpoint:
    parts.append(sha256(os.path.expanduser(run.init.timm_checkpoint)))
  if run.init.pretrained:
    parts.append(sha256(weights_file(run.model.name)))
  if run.init.checkpoint:
    with _export_refused_as('init.checkpoint', run.init.checkpoint):
      parts.append(export_digest(check_export(os.path.expanduser(run.init.checkpoint))))
  return FINGERPRINT + hashlib.sha256(' '.join(parts).encode()).hexdigest() if parts else None


# What init_fingerprint's values start with: a step saved by an earlier version (which hashed an export's files) holds
# another kind, which cannot be compared (hostile pass 14b's UPG); such a step is resumed as one saved before any was.
FINGERPRINT = 'weights-sha256:'

