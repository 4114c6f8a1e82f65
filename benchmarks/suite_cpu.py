"""A pytest plugin: each test's wall time and CPU time (this process's and its waited-for children's,
``resource.getrusage``), one JSON line per test, for finding what the suite spends its CPU on (its
wall time depends on the machine's load; its CPU time much less).

  PYTHONPATH=benchmarks SUITE_CPU_OUT=/tmp/suite.jsonl .venv/bin/python -m pytest -n 2 --dist loadgroup tests -p suite_cpu
  python benchmarks/suite_cpu.py /tmp/suite.jsonl [/tmp/other.jsonl]   # totals, by file, and the costliest tests
"""
import json
import os
import resource
import sys
import time
from collections import Counter

import pytest


def _cpu():
  s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
  return s.ru_utime + s.ru_stime, c.ru_utime + c.ru_stime


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
  t0, (s0, c0) = time.time(), _cpu()
  yield
  t1, (s1, c1) = time.time(), _cpu()
  with open(os.environ.get('SUITE_CPU_OUT', 'suite_cpu.jsonl'), 'a') as f:
    f.write(json.dumps(dict(id=item.nodeid, w=os.environ.get('PYTEST_XDIST_WORKER', 'main'), t0=t0, t1=t1,
                            self=s1 - s0, child=c1 - c0)) + '\n')


def summary(path, top=15):
  rows = [json.loads(line) for line in open(path)]
  cpu = lambda r: r['self'] + r['child']
  by_file = Counter()
  for r in rows:
    by_file[r['id'].split('::')[0]] += cpu(r)
  lines = [f'{path}: {len(rows)} tests, {sum(map(cpu, rows)):.0f} s of CPU', '', 'CPU s by file:']
  lines += [f'  {c:6.0f}  {f}' for f, c in by_file.most_common()]
  lines += ['', f'the {top} costliest tests (CPU s, of it in child processes):']
  lines += [f'  {cpu(r):6.1f} {r["child"]:6.1f}  {r["id"]}' for r in sorted(rows, key=cpu, reverse=True)[:top]]
  return '\n'.join(lines)


if __name__ == '__main__':
  print('\n\n'.join(summary(p) for p in sys.argv[1:]))
