"""Running a sweep's unfinished runs: train.py subprocesses one after another, stop signals passed on."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

from tpm_jax.sweep.folder import final_of
from tpm_jax.sweep.planning import Run, same_run_as


class Interrupted(Exception):
  """SIGTERM or SIGINT reached the sweep: the running train.py was stopped the same way (it saves)."""


def run(runs: list[Run], python: str | None = None) -> list[Run]:
  """Train the unfinished runs one after another (train.py subprocesses, output appended to each
  run's train.log), one progress line per run; returns the runs that failed. A SIGTERM or SIGINT to
  the sweep goes on to the running train.py, which saves and stops; then ``Interrupted``."""
  failed, received, child = [], [], [None]

  def forward(signum, frame):
    del frame
    received.append(signum)
    if child[0] is not None and child[0].poll() is None:
      child[0].send_signal(signum)
  previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)} \
      if threading.current_thread() is threading.main_thread() else {}
  try:
    return _run_all(runs, python, failed, received, child)
  finally:
    for s, h in previous.items():
      signal.signal(s, h)


def _run_all(runs, python, failed, received, child):
  for i, r in enumerate(runs, 1):
    head = f'[{i}/{len(runs)}] {r.name}:'
    if received:
      raise Interrupted(f'{signal.Signals(received[0]).name} received before {r.name}')
    if r.finished:
      print(f'{head} skipped (finished), top-1 {final_of(r.workdir)["top1"]:.4f}', flush=True)
      continue
    same = same_run_as(r, runs[:i - 1]) if r.run_config is not None else None
    if same is not None:  # known only now: the data an earlier run prepared gives the epochs as steps
      print(f'{head} not run: it would train the same run as {same} (their epochs give the same steps on the data '
            f'prepared since the sweep was planned); drop one of the values', flush=True)
      failed.append(r)
      continue
    os.makedirs(r.workdir, exist_ok=True)
    log = os.path.join(r.workdir, 'train.log')
    print(f'{head} running ...', end=' ', flush=True)
    t = time.time()
    with open(log, 'a') as f:
      child[0] = subprocess.Popen(r.command(python), stdout=f, stderr=subprocess.STDOUT)
      code = child[0].wait()
      child[0] = None
    if received:
      print(f'stopped by {signal.Signals(received[0]).name} ({time.time() - t:.0f}s)', flush=True)
      raise Interrupted(f'{signal.Signals(received[0]).name}: {r.name} was stopped (exit code {code}; it saved '
                        f'its state if it had started training); run the same sweep to go on')
    if code == 0 and r.finished:
      print(f'finished, top-1 {final_of(r.workdir)["top1"]:.4f}, {time.time() - t:.0f}s', flush=True)
      continue
    failed.append(r)
    with open(log) as f:
      tail = f.read().splitlines()[-15:]
    why = f'exit code {code}' if code else 'exit code 0 but no final.json (preempted?)'
    print(f'FAILED ({why}, {time.time() - t:.0f}s); end of {log}:', *('    ' + l for l in tail), sep='\n', flush=True)
  return failed
