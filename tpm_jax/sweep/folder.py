"""A sweep's folder: its plan (``sweep.json``), its finished runs, the outputs it writes, and what may be used as one."""
from __future__ import annotations

import os

from tpm_jax.config import ConfigError, RunConfig
from tpm_jax.files import read_json_object, write_json
from tpm_jax.preflight import check_outside_workdirs_and_exports, check_workdir_path, export_holding
from tpm_jax.sweep.planning import PLAN, Run, run_name

OUTPUTS = ('results.csv', 'results.md', 'pareto.png')  # the tables a sweep writes into its folder (runs/ may come first, from --print_commands)


def read_plan(workdir: str, kind: str) -> dict | None:
  """``workdir``'s sweep.json (None if it has none); ConfigError (one line) if it is unreadable or
  records the other kind of sweep: ``'training'`` (runs of train.py) or ``'reductions'`` (one
  checkpoint under several token reductions)."""
  path = os.path.join(workdir, PLAN)
  if not os.path.lexists(path):
    return None
  try:
    meta = read_json_object(path)
  except (OSError, ValueError) as e:
    raise ConfigError(f'{path} is unreadable ({e}): use another --workdir') from None
  if meta.get('kind', 'training') not in ('training', 'reductions'):
    raise ConfigError(f'{path} is not a sweep plan this version reads (kind={meta.get("kind")!r}): restore it, or use '
                      f'another --workdir')
  if meta.get('kind', 'training') != kind:
    held = ('a sweep of training runs' if kind == 'reductions' else
            'the evaluations of one checkpoint under --reductions (read them with --checkpoint and --reductions)')
    raise ConfigError(f'--workdir={workdir} holds {held}; this sweep needs a folder of its own')
  wrong = _plan_damage(meta, kind)
  if wrong:  # a hand-edited plan: one line naming it (hostile pass 12's CO_f ... CO_i)
    raise ConfigError(f'{path} is not a sweep plan this version reads ({wrong}): restore it, or use another --workdir')
  return meta


def _plan_damage(meta: dict, kind: str) -> str | None:
  """What is wrong with a sweep.json's layout, None when nothing."""
  strings = lambda x: isinstance(x, list) and all(isinstance(v, str) for v in x)
  if kind == 'reductions':
    return None if strings(meta.get('settings')) else "'settings' is not a list of setting strings"
  if not isinstance(meta.get('config'), str):
    return "'config' is not a string"
  if not strings(meta.get('keys')):
    return "'keys' is not a list of strings"
  if not isinstance(meta.get('runs'), list):
    return "'runs' is not a list"
  names = set()
  for i, r in enumerate(meta['runs']):
    if not (isinstance(r, dict) and isinstance(r.get('name'), str) and isinstance(r.get('values'), dict)
            and all(isinstance(v, str) for v in r['values'].values()) and isinstance(r.get('config'), str)
            and isinstance(r.get('base', ''), str) and isinstance(r.get('run_config'), (dict, type(None)))):
      return f'runs[{i}] is not a run with a name, its values, config, base and run_config'
    if r['name'] != run_name(r['values']) or r['name'] in names:  # a label edited by hand, a run listed twice
      return f'runs[{i}] is named {r["name"]!r}, which its values do not give or another run has'
    names.add(r['name'])
    if r.get('run_config') is not None:
      try:
        RunConfig.from_any(r['run_config'])
      except ConfigError as e:
        return f'runs[{i}].run_config is not a run config ({e})'
  return None


def save_plan(workdir: str, config: str, runs: list[Run], overrides=()) -> None:
  """Record the runs in ``workdir``'s sweep.json, added to those of earlier sweeps into the same
  workdir (a baseline swept on its own, ablations one key at a time): one table collects them all,
  with '-' where a run's sweep did not set a key."""
  path = os.path.join(workdir, PLAN)
  meta = read_plan(workdir, 'training') or dict(config=config, keys=[], runs=[])
  meta['keys'] += [k for k in runs[0].values if k not in meta['keys']]
  planned = {r['name']: r for r in meta['runs']}  # a run planned again: as planned now (its folder was checked)
  planned.update({r.name: dict(name=r.name, values=r.values, config=r.config, base=r.base,
                               run_config=r.run_config.to_dict() if r.run_config else None) for r in runs})
  meta['runs'] = list(planned.values())
  meta['overrides'] = list(overrides)
  os.makedirs(workdir, exist_ok=True)
  write_json(path, meta)


def final_of(workdir: str) -> dict:
  """A finished run's final.json, with top1/top5 (NaN if the run never evaluated). ConfigError
  naming the file when it is unreadable or lacks the run's config."""
  path = os.path.join(workdir, 'final.json')
  try:
    final = read_json_object(path)
    RunConfig.from_any(final['config'])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise ConfigError(f'{path} is unreadable or has no readable run config ({type(e).__name__}: '
                      f'{str(e).splitlines()[0][:100] if str(e) else ""}): move the run\'s folder aside to retrain it') from None
  return dict(final, top1=final.get('eval_top1', float('nan')), top5=final.get('eval_top5', float('nan')))


def finished_folders(workdir: str) -> list[str]:
  """The run folders under ``workdir/runs`` that hold a final.json."""
  runs = os.path.join(workdir, 'runs')
  return [n for n in (os.listdir(runs) if os.path.isdir(runs) else [])
          if os.path.lexists(os.path.join(runs, n, 'final.json'))]


def check_sweep_folder(workdir: str, collect_only: bool) -> None:
  """Either kind of sweep: its folder is its own (not inside a training workdir or an export), and
  ``--collect_only`` reads one that exists."""
  check_outside_workdirs_and_exports('--workdir', workdir, what='folder of its own for the sweep', folder=True)
  if collect_only and not os.path.isdir(workdir):
    raise ConfigError(f'--workdir={workdir} is not accepted: no such sweep folder (--collect_only reads one)')
  check_workdir_path(workdir, what='--workdir')
  for sub in ('runs', 'evals'):  # the folders it writes into: an export made there would fail its checksums (pass 19's
    path = os.path.join(os.path.abspath(os.path.expanduser(workdir)), sub)  # XP01, XP06)
    if os.path.lexists(path) and not os.path.isdir(path):  # a file or a dangling link (pass 21's DS14)
      raise ConfigError(f'--workdir={workdir} is not accepted: its {sub} is not a folder; the sweep keeps its '
                        f'{"runs" if sub == "runs" else "evaluations"} in {sub}/: move it away')
    export = export_holding(path)
    if export is not None:
      raise ConfigError(f'--workdir={workdir} is not accepted: its {sub}/, where the sweep writes, is the export '
                        f'{export}, whose files are checksummed; choose a new folder, or move the export away')
  if not os.path.lexists(os.path.join(workdir, PLAN)):  # not a sweep's yet: what it would write must not be there
    theirs = [n for n in OUTPUTS if os.path.lexists(os.path.join(workdir, n))]
    if theirs:
      raise ConfigError(f'--workdir={workdir} is not accepted: it holds {", ".join(theirs)}, which a sweep writes, and '
                        f'no {PLAN} (not a sweep\'s folder): choose a new folder, or move them away')


def write_failed(workdir: str, e: OSError) -> str:
  return (f'{e.filename or workdir}: cannot be written ({e.strerror or e}); what the sweep wrote before is kept, '
          f'run the same command to go on')
