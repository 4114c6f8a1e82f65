"""Sweeps: one train.py run per point of a product of arg-string values, then a table and a Pareto
plot of top-1 against compute and measured speed.

  python -m tpm_jax.sweep --config configs/deit.py:model=deit_small_patch16_224 \\
      --sweep keep=0.5,0.6,0.7,0.8 --sweep method=tpm,evit,drop,tome --workdir DIR \\
      [--print_commands] [--collect_only] [--python PY] [--throughput_batch 64] [--config.<field>=<value> ...]

``--sweep key=v1,v2,...`` names an arg-string key of the config file's ``get_config(arg)`` (method,
keep, multiscale, similarity, weight, prop_attn, distinct, seed, ...); the runs are the product, first
``--sweep`` outermost. Run ``keep-0.7_method-tpm`` trains in ``DIR/runs/keep-0.7_method-tpm``
(output in its ``train.log``) with ``train.py --config <file>:<args>,keep=0.7,method=tpm`` and the
trailing ``--config.*`` flags. Every run's config is built and its model checked before anything
runs. A run whose workdir has ``final.json`` is finished and skipped; an interrupted one resumes
from its checkpoint. ``--print_commands`` prints the unfinished runs' command lines (for a cluster
launcher) instead of running them; ``--collect_only`` only collects.

Collecting writes ``DIR/results.csv``, ``DIR/results.md`` (mean and spread over seeds when ``seed``
is swept) and ``DIR/pareto.png``. images/s is inference throughput measured in the collecting
process: each distinct model once (random parameters), the configs timed in interleaved rounds,
medians, so the numbers of one table compare with each other.

Python: ``runs = plan(config, sweeps, workdir)``, ``run(runs)``, ``rows = collect(workdir)``, ``main(argv)``,
``evaluate_reductions(checkpoint, settings, workdir)``.

The code, by concern, imported on first use of a name here (so that ``python -m tpm_jax.sweep`` takes over
SIGINT and SIGTERM before JAX is imported):
  config_file.py    a config file read as train.py reads it (the sweep's one ConfigDict reader)
  planning.py       the runs of a sweep, their labels checked against what each trains, one run per label
  folder.py         a sweep's folder: its plan (sweep.json), finished runs, outputs
  running.py        train.py for each unfinished run, stop signals passed on
  tables.py         finished runs collected, pooled over seeds, measured; results.csv, results.md, pareto.png
  off_the_shelf.py  the sweep over one checkpoint (--checkpoint --reductions)
  command.py        the command line
"""
import importlib

MODULES = ('config_file', 'planning', 'folder', 'running', 'tables', 'off_the_shelf', 'command')  # lower layers first
__all__ = ['plan', 'run', 'collect', 'main', 'evaluate_reductions', 'load_config', 'load_run_config', 'Run', 'PLAN', 'OUTPUTS']


def __getattr__(name):  # every name of the modules above (sweep.final_of too), from the first that has it
  for module in MODULES:
    value = getattr(importlib.import_module(f'{__name__}.{module}'), name, importlib)
    if value is not importlib:
      globals()[name] = value
      return value
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted([*globals(), *__all__])
