"""``python -m tpm_jax.sweep``'s command line (``tpm_jax.sweep.main``)."""
from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import sys

from tpm_jax.checkpoint import WorkdirLock
from tpm_jax.cli import (
  ArgumentParser,
  error_line,
  finished,
  stop_on_signals,
)
from tpm_jax.cli import Interrupted as Stopped
from tpm_jax.config import ConfigError
from tpm_jax.sweep.folder import check_sweep_folder, read_plan, save_plan, write_failed
from tpm_jax.sweep.off_the_shelf import main_reductions
from tpm_jax.sweep.planning import PLAN, check_existing, check_inputs, check_one_run_per_label, plan
from tpm_jax.sweep.running import Interrupted, run
from tpm_jax.sweep.tables import check_throughput_batch, collect


def main(argv=None) -> int:
  p = ArgumentParser(prog='python -m tpm_jax.sweep', description=sys.modules[__package__].__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--config', help='a configs/*.py file, optionally with :<arg string> (the base of every run)')
  p.add_argument('--sweep', action='append', default=[], metavar='KEY=V1,V2,...', help='repeatable')
  p.add_argument('--workdir', required=True, help='runs go to WORKDIR/runs/<name>, results to WORKDIR')
  p.add_argument('--print_commands', action='store_true', help='print the unfinished runs\' commands and exit')
  p.add_argument('--collect_only', action='store_true', help='collect the finished runs, run nothing')
  p.add_argument('--python', default=sys.executable, help='the Python that runs train.py')
  p.add_argument('--throughput_batch', type=int, default=64)
  p.add_argument('--checkpoint', help='with --reductions: an export or a training workdir, evaluated under each '
                 'reduction without training (off-the-shelf)')
  p.add_argument('--reductions', metavar='S1,S2,...', help='reduction settings as eval.py --reduction reads them: '
                 'none,tpm:0.7,tpm+pool:0.7@prop_attn=off,evit:0.5,drop:0.7,tome:8,tome:0.7')
  p.add_argument('--split', help='with --reductions: the split evaluated (default: the checkpoint\'s eval split)')
  args, overrides = p.parse_known_args(argv)
  if args.checkpoint or args.reductions:
    return main_reductions(args, overrides)
  try:
    if args.split:  # hostile pass 19's SW05: dropped without a word (a training sweep's runs evaluate their config's split)
      raise ConfigError('--split goes with --reductions (an off-the-shelf sweep); a training sweep evaluates each run\'s '
                        'dataset.eval_split: give --config.dataset.eval_split=... instead')
    check_throughput_batch(args.throughput_batch)  # before any run trains (hostile pass 19's SW13: after, a traceback)
    check_sweep_folder(args.workdir, args.collect_only)
    read_plan(args.workdir, 'training')
    bad = [o for o in overrides if not re.match(r'--config\.[\w.]+=', o)]
    if bad:
      raise ConfigError(f'{bad[0]}: not a sweep flag; only --config.<field>=<value> flags are passed to train.py')
    if args.config:
      runs = plan(args.config, args.sweep, args.workdir, overrides)
      check_one_run_per_label(runs, read_plan(args.workdir, 'training'))
      check_existing(runs)
      if not (args.print_commands or args.collect_only):
        if not shutil.which(args.python):  # hostile pass 19's SW08: each run failed, said as a write that failed
          raise ConfigError(f'--python={args.python} is not accepted: not an executable file (the Python that runs '
                            f'train.py)')
        check_inputs(runs)
    elif not (args.collect_only and os.path.exists(os.path.join(args.workdir, PLAN))):
      raise ConfigError(f'--config is required (or --collect_only on a workdir with a {PLAN})')
    elif args.print_commands:
      raise ConfigError('--print_commands needs --config (the runs\' commands come from the config and --sweep)')
  except ConfigError as e:
    error_line(e)
    return 2
  if args.print_commands:
    for r in runs:
      if not r.finished:
        print(shlex.join(r.command(args.python)))
    return 0
  stop_on_signals()  # outside a run (the plan, the tables): one line, what is written is kept
  try:
    with WorkdirLock(args.workdir, what='sweep workdir') as lock:
      lock.record_holder()  # for the line a second sweep gets
      if args.config:
        save_plan(args.workdir, args.config, runs, overrides)
      failed = [] if args.collect_only else run(runs, args.python)
      rows = collect(args.workdir, throughput_batch=args.throughput_batch)
  except ConfigError as e:
    error_line(e)
    return 2
  except Interrupted as e:
    print(f'stopped: {e}', file=sys.stderr, flush=True)
    return 0
  except Stopped as e:
    then = ('run the same command for the tables' if args.collect_only else  # pass 19's SG10: told to add it
            'run the same command to go on, or add --collect_only for the tables')
    print(f'stopped by {e.signal_name}: the finished runs are kept ({then})', file=sys.stderr, flush=True)
    return 0
  except OSError as e:  # the file system failing under the tables (a full disk)
    error_line(write_failed(args.workdir, e))
    return 1
  finished()  # a signal from now on: exit 0, the tables are written
  print(f'collected {len(rows)} finished runs into {os.path.join(args.workdir, "results.md")}', flush=True)
  if failed:
    error_line(f'{len(failed)} run{"s" if len(failed) > 1 else ""} failed or not run: '
               f'{", ".join(r.name for r in failed)}')
  return 1 if failed else 0
