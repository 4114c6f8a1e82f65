"""CPU train step of DeiT-S (batch 32, float32, AdamW), JAX (this library) and PyTorch timm, each in a
fresh process, rounds alternating, with glibc's default malloc and with the tunables that keep
freed memory mapped in huge pages.

Why: XLA's CPU runtime allocates each step's temporaries (about 2 GB for this step; 5 GB before
the memory changes of README "Performance") and returns them to the kernel when the step ends, so
every step faults them in again page by page: about 0.55 million minor page faults and 0.8 s of
kernel time per 3.9 s step on the 2-core machine (1.6 million and 3.1 s of a 6.1 s step before). The glibc
tunables below (set for the child processes only, never by the library) keep that memory mapped:

  GLIBC_TUNABLES=glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=100000000000

  python benchmarks/cpu_train_step.py [--rounds 3] [--steps 3]

Writes benchmarks/results/cpu_train_step.md. Separate processes because the two frameworks'
allocators and thread pools disturb each other inside one (throughput.py measures them
interleaved in one process; its train-step ratio is the lower one).
"""
import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUNABLES = 'glibc.malloc.hugetlb=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=100000000000'

CHILD = r'''
import json, resource, sys, time
sys.path.insert(0, ROOT)
framework, steps = sys.argv[1], int(sys.argv[2])
if framework == 'jax':
  import jax, numpy as np
  from flax import nnx
  from tpm_jax import sweep, trainer
  from tpm_jax.compile_options import compiler_options
  from tpm_jax.config import RunConfig
  c = sweep.load_run_config(ROOT + '/configs/deit.py:model=deit_small_patch16_224,method=none')
  c = c.replace(model=dict(dtype='float32'), batch_size=32)
  gd, st = nnx.split(trainer.create_train_state(c, trainer.learning_rate_schedule(c.optim, c.batch_size, 1000, 100)))
  fn = jax.jit(trainer.make_train_step(c, gd), donate_argnums=0, compiler_options=compiler_options())
  rs = np.random.RandomState(0)
  batch = dict(image=jax.numpy.asarray(rs.randint(0, 256, (32, 224, 224, 3), dtype=np.uint8)),
               label=jax.numpy.asarray(rs.randint(0, 1000, 32).astype(np.int32)))
  box = [st]
  def step():
    box[0], m = fn(box[0], batch, jax.random.key(0))
    jax.block_until_ready(box[0])
else:
  import torch
  from benchmarks import torch_compat
  timm = torch_compat.import_timm()
  torch.set_num_threads(2)
  model = timm.create_model('deit_small_patch16_224', drop_path_rate=0.1)
  model.train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
  x, y = torch.randn(32, 3, 224, 224), torch.randint(0, 1000, (32,))
  def step():
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
step()
times, faults, kernel = [], [], []
for _ in range(steps):
  r0, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
  step()
  r1 = resource.getrusage(resource.RUSAGE_SELF)
  times.append(time.perf_counter() - t)
  faults.append(r1.ru_minflt - r0.ru_minflt)
  kernel.append(r1.ru_stime - r0.ru_stime)
print(json.dumps(dict(seconds=times, minor_faults=faults, kernel_seconds=kernel)))
'''


def run_child(framework, steps, tunables):
  env = dict(os.environ)
  env.pop('GLIBC_TUNABLES', None)
  if tunables:
    env['GLIBC_TUNABLES'] = TUNABLES
  out = subprocess.run([sys.executable, '-c', CHILD.replace('ROOT', repr(ROOT)), framework, str(steps)], env=env,
                       capture_output=True, text=True, check=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--steps', type=int, default=3)
  p.add_argument('--out', default=os.path.join(ROOT, 'benchmarks', 'results', 'cpu_train_step.md'))
  args = p.parse_args()
  load = os.getloadavg()
  res = {(f, t): [] for t in (False, True) for f in ('jax', 'torch')}
  for r in range(args.rounds):
    for key in res:
      res[key].append(run_child(key[0], args.steps, key[1]))
      print(f'round {r + 1}: {key[0]} tunables={key[1]}: {res[key][-1]["seconds"]}', flush=True)
  med = lambda key, q: statistics.median(x for run in res[key] for x in run[q])
  lines = [f'# CPU train step, fresh processes ({datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})',
           '', f'`python benchmarks/cpu_train_step.py --rounds {args.rounds} --steps {args.steps}`', '',
           f'{os.cpu_count()} cores, load average at start {[round(x, 2) for x in load]}; DeiT-S, batch 32, float32, '
           f'AdamW; median over {args.rounds} processes x {args.steps} steps each (after one warm-up step).', '',
           f'tunables: `GLIBC_TUNABLES={TUNABLES}` in the child processes.', '',
           '| malloc | framework | s/step | images/s | minor page faults/step | kernel s/step | JAX/torch |',
           '|---|---|---|---|---|---|---|']
  for t in (False, True):
    for f in ('jax', 'torch'):
      s = med((f, t), 'seconds')
      ratio = f'{med(("torch", t), "seconds") / s:.2f}' if f == 'jax' else ''
      lines.append(f'| {"tunables" if t else "default"} | {f} | {s:.2f} | {32 / s:.2f} | '
                   f'{med((f, t), "minor_faults"):,.0f} | {med((f, t), "kernel_seconds"):.2f} | {ratio} |')
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as fh:
    fh.write('\n'.join(lines) + '\n')
  print('\n'.join(lines))


if __name__ == '__main__':
  main()
