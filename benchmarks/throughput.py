"""Throughput of pruned and unpruned ViTs, JAX (this library) against PyTorch (timm), on this
machine, in one process. Not a test: a measurement.

  .venv/bin/python benchmarks/throughput.py [--models deit_small_patch16_224] \\
      [--settings none,tpm:0.7,drop:0.7,evit:0.7] [--dtypes float32,bfloat16] [--batches 1,32,128] \\
      [--train_batch 32 (0: none)] [--repeats 5] [--img_size N] [--no_torch] [--no_jit_forward] [--nnx_jit] \\
      [--out benchmarks/results/throughput]

Runs on whatever backend JAX has (CPU, GPU, TPU); on a GPU, PyTorch runs on the GPU too.

A setting is ``method[+multiscale][:value][@key=value...]`` (``tpm+pool:0.7``, ``tpm:0.7@prop_attn=off``,
``tome:8``, ``tome:0.7``: tpm_jax.reduction_setting, the syntax of eval.py --reduction); reduction at the
DeiT/EViT locations (3, 6, 9), multi-scale fusion off unless named.
Per model and setting:
- JAX inference: the jitted forward of tpm_jax.throughput.forward_fn (nnx.split outside, nnx.merge
  inside jax.jit, train=False, compiled ahead of time) at each --dtypes compute dtype (parameters
  float32), images/s at every --batches size.
- tpm_jax.jit_forward (the ``none`` setting, unless --no_jit_forward): the public compiled forward,
  called as a user calls it (``forward = tpm_jax.jit_forward(model); forward(images)``, compiled at
  its first call, outside the timings), framework column ``tpm_jax.jit_forward``, compared with
  PyTorch's ``none`` like the JAX rows. With --nnx_jit also a row ``nnx.jit``: the model jitted the
  plain way, ``nnx.jit(lambda m, x: m(x))(model, images)`` (XLA's default options, the module
  traversed on every call), for comparison.
- JAX train step: the project's own step (trainer.setup_training + its train_step, from
  configs/deit.py: normalisation, mixup/cutmix, label smoothing, stochastic depth 0.1, AdamW, state
  donated) on a uint8 batch, images/s at --train_batch.
- Compile time (lower + compile) of the forward at each batch and of the train step; peak memory
  from XLA's memory_analysis() (arguments + outputs - donated aliases + temporaries) of the forward
  at the largest batch and of the train step; XLA GFLOPs and analytic GMACs per image
  (tpm_jax.count_flops).
- PyTorch (unless --no_torch): the same timm model (SDPA attention), random init, all cores or the
  GPU; bfloat16 rows under torch.autocast; inference under torch.inference_mode(); train step =
  forward + cross-entropy + backward + AdamW step. Rows for ``none`` and for every ``evit:k``
  setting, with EViTBlock (below, SDPA plus the CLS row on its own) patched into blocks 3, 6, 9.
  Peak memory: the torch profiler's memory timeline of one call (parameters, optimizer state,
  activations, temporaries), or null where the profiler cannot tell.
Method (tpm_jax.throughput.time_interleaved, as for eval.py, the sweep and the quickstart):
everything is compiled and run once first; then ``--repeats`` rounds; a round takes one
quantity at a time and times it for every setting of both frameworks in turn (interleaved, so load
drifts hit all alike); a timed block is one blocked call, or for calls shorter than ``--min_time``
as many calls in a row as fill it, timed per call. Reported: median images/s with min and max; speedup = median over rounds
of (time of the unpruned model of the same framework / time), from this run only; efficiency =
speedup / (analytic GMACs of none / of the setting); JAX/torch = median ratio of throughputs.
Quantities are named infer@B and train@B (B the batch). Targets (DeiT-S, from this run; see
``target_list``): on the CPU, float32 batch 32, JAX unpruned (and tpm_jax.jit_forward) >= 0.95x
PyTorch's inference and
>= 0.8x its train step with <= 1.25x its peak train memory, tpm 0.7 >= 1.0x PyTorch + EViT 0.7,
>= 1.45x JAX unpruned and within 5% of drop 0.7, train step >= 1.35x unpruned; on a GPU, bf16
batch 256, JAX unpruned >= 1.0x PyTorch, tpm 0.7 >= 1.4x JAX unpruned and >= 1.2x PyTorch + EViT 0.7.
Writes <out>.json (with machine facts and the command line) and <out>.md, and prints the table.
The torch numbers need an idle machine: with another process on the cores, torch's threads wait
on each other (DeiT-S at batch 1 took 1.3 s with 2 threads, 0.19 s with 1, under load).
"""
import argparse
import datetime
import json
import math
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import tpm_jax
from configs import deit
from tpm_jax import count_flops, reduction_setting, sharding, throughput, trainer
from tpm_jax.config import ConfigError, RunConfig
from tpm_jax.models.registry import model_from_config

TARGET_BATCH = 32      # CPU targets
GPU_TARGET_BATCH = 256  # GPU targets


def parse_settings(text):
  """--settings: comma-separated reduction settings (``tpm_jax.reduction_setting``, as eval.py's
  --reduction reads them); a malformed one is one line and exit 2."""
  try:
    return reduction_setting.parse_settings(text)
  except ConfigError as e:
    print(f'error: --settings: {e}', file=sys.stderr)
    sys.exit(2)


def make_config(model, setting, img_size, train_batch, dtype='float32'):
  """configs/deit.py's recipe for ``model`` with ``setting``'s reduction (a RunConfig)."""
  c = deit.get_config(f'model={model},method=none')
  c.model.img_size = img_size or c.model.img_size
  c.model.dtype = dtype
  c.batch_size = max(train_batch, 1)
  return setting.apply(RunConfig.from_any(c))


def checked_config(model, setting, img_size, train_batch, dtype='float32'):
  """``make_config``, with the model it describes built abstractly (``nnx.eval_shape``, nothing
  compiled): a bad model name, setting or key is one line on stderr and exit 2, before any work."""
  try:
    c = make_config(model, setting, img_size, train_batch, dtype)
    nnx.eval_shape(lambda: model_from_config(c))
  except ValueError as e:  # ConfigError is one
    print(f'error: setting {setting.name!r} of {model} ({dtype}): {e}', file=sys.stderr, flush=True)
    sys.exit(2)
  return c


def memory_mb(compiled):
  b = throughput.peak_memory_bytes(compiled)
  return None if b is None else round(b / 2 ** 20, 1)


def aot(jitted, *args):
  """(compiled, seconds to lower + compile)."""
  t = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, round(time.perf_counter() - t, 2)


def jax_runner(c, setting, batches, train=True):
  """Compiles the forward at every batch and the train step; returns the row and its timed calls."""
  rs = np.random.RandomState(0)
  size = c.model.img_size
  model = model_from_config(c)
  flops = count_flops(model, compile=False)  # XLA's pre-optimisation count: within 0.01% of compiled
  calls, compile_s, mem = {}, {}, {}
  for b in batches:  # tpm_jax.throughput's forward, compiled ahead of time; calling it blocks
    fwd = calls[f'infer@{b}'] = throughput.forward_fn(model, jnp.asarray(rs.randn(b, size, size, 3), jnp.float32))
    compile_s[f'forward@{b}'] = round(fwd.compile_s, 2)
  mem['forward'] = memory_mb(fwd.compiled)  # the largest batch (batches are sorted)
  mem['train'] = None
  row = dict(framework='jax', model=c.model.name, setting=setting.name, dtype=c.model.dtype,
             analytic_gmacs=round(flops['analytic_gmacs'], 4), xla_gflops=round(flops['xla_gflops'], 4),
             compile_s=compile_s, peak_memory_mb=mem)
  if not train:
    return row, calls

  setup = trainer.setup_training(c, total_steps=1000, steps_per_epoch=100, params=None)  # as the trainer builds it
  box = dict(state=setup.state)
  step = setup.train_step()
  n = c.batch_size
  batch = sharding.global_batch(dict(image=rs.randint(0, 256, (n, size, size, 3), dtype=np.uint8),
                                     label=rs.randint(0, c.model.num_classes, n).astype(np.int32)),
                                sharding.batch_sharding(setup.mesh))
  rng = jax.random.key(0)
  compiled, compile_s[f'train@{n}'] = aot(step, box['state'], batch, rng)
  mem['train'] = memory_mb(compiled)

  def train_call():
    box['state'], metrics = compiled(box['state'], batch, rng)
    jax.block_until_ready((box['state'], metrics))
  calls[f'train@{n}'] = train_call
  return row, calls


def jit_forward_runner(c, jax_row, batches, how='tpm_jax.jit_forward'):
  """The model's forward called as a user would, on the same images as jax_runner's: ``how`` =
  ``tpm_jax.jit_forward`` or ``nnx.jit`` (``nnx.jit(lambda m, x: m(x))``). The row (framework
  ``how``, FLOPs from ``jax_row``) and its calls (blocking). The first call of each compiles; main()
  makes it before timing anything."""
  rs = np.random.RandomState(0)
  size = c.model.img_size
  model = model_from_config(c)
  if how == 'nnx.jit':
    jitted = nnx.jit(lambda m, x: m(x))
    forward = lambda x: jitted(model, x)
  else:
    forward = tpm_jax.jit_forward(model)
  calls = {}
  for b in batches:
    x = jnp.asarray(rs.randn(b, size, size, 3), jnp.float32)
    calls[f'infer@{b}'] = lambda x=x: jax.block_until_ready(forward(x))
  row = dict(jax_row, framework=how, compile_s=None, peak_memory_mb=dict(forward=None, train=None))
  return row, calls


# ------------------------------------------------------------------------------------------------
# PyTorch
# ------------------------------------------------------------------------------------------------
def evit_block_class(torch):
  class EViTBlock(torch.nn.Module):
    """A timm Block with EViT's token reorganisation between attention and MLP, as this library does
    it: attention through torch's fused SDPA, the CLS row of the probabilities computed on its own
    from the CLS query and the keys; the top k = ceil(keep * M) patch tokens by CLS attention (head
    mean) kept, the other patch tokens fused into one token weighted by that attention."""

    def __init__(self, block, keep):
      super().__init__()
      self.block, self.keep = block, keep

    def forward(self, x):
      blk, att = self.block, self.block.attn
      B, N, C = x.shape
      q, k, v = att.qkv(blk.norm1(x)).reshape(B, N, 3, att.num_heads, att.head_dim).permute(2, 0, 3, 1, 4)
      out = torch.nn.functional.scaled_dot_product_attention(q, k, v)  # (B, heads, N, hd)
      x = x + blk.drop_path1(blk.ls1(att.proj(out.transpose(1, 2).reshape(B, N, C))))
      cls_row = ((q[:, :, :1].float() * att.scale) @ k.float().transpose(-2, -1)).softmax(dim=-1)  # (B, heads, 1, N)
      cls_attn = cls_row[:, :, 0, 1:].mean(dim=1)  # (B, M): importance of each patch token
      order, k = cls_attn.argsort(dim=1, descending=True), math.ceil(self.keep * (N - 1))
      top, rest = order[:, :k], order[:, k:]
      patches = x[:, 1:]
      take = lambda idx: patches.gather(1, idx[..., None].expand(-1, -1, C))
      fused = (take(rest) * cls_attn.gather(1, rest)[..., None].to(x.dtype)).sum(dim=1, keepdim=True)
      x = torch.cat([x[:, :1], take(top), fused], dim=1)
      return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))
  return EViTBlock


def torch_peak_mb(torch, fn, device):
  """Peak memory of one call: on a GPU torch's allocator peak (minus what was allocated before);
  on the CPU the profiler's memory timeline (None if the profiler cannot tell)."""
  if device == 'cuda':
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    return round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)
  from torch.profiler import ProfilerActivity, profile
  try:
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
      fn()
    with tempfile.TemporaryDirectory() as d:
      prof.export_memory_timeline(os.path.join(d, 'timeline.json'), device='cpu')
      with open(os.path.join(d, 'timeline.json')) as f:
        _, sizes = json.load(f)
    return round(max(sum(s) for s in sizes) / 2 ** 20, 1)
  except Exception as e:  # a private-ish, deprecated API: report nothing rather than a guess
    print(f'torch peak memory not measured: {type(e).__name__}: {e}', file=sys.stderr)
    return None


def torch_runner(timm, torch, c, setting, batches, gmacs, device, train=True):
  """timm's model on ``device`` (SDPA attention, timm's default); bfloat16 rows run under
  ``torch.autocast``. Every call ends with the device synchronised."""
  rs = np.random.RandomState(0)
  size, n = c.model.img_size, c.batch_size
  m = timm.create_model(c.model.name, img_size=size, num_classes=c.model.num_classes, drop_path_rate=c.model.drop_path_rate)
  if setting.method == 'evit':
    for i in (3, 6, 9):
      m.blocks[i] = evit_block_class(torch)(m.blocks[i], setting.keep)
  m = m.to(device)
  opt = torch.optim.AdamW(m.parameters(), lr=c.optim.lr * n / 512, weight_decay=c.optim.weight_decay)
  autocast = lambda: torch.autocast(device, dtype=torch.bfloat16, enabled=c.model.dtype == 'bfloat16')
  sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
  calls = {}

  def infer(x):
    m.eval()
    with torch.inference_mode(), autocast():
      m(x)
    sync()
  for b in batches:
    x = torch.from_numpy(rs.randn(b, 3, size, size).astype(np.float32)).to(device)
    calls[f'infer@{b}'] = lambda x=x: infer(x)
  if train:
    images = torch.from_numpy(rs.randn(n, 3, size, size).astype(np.float32)).to(device)
    labels = torch.from_numpy(rs.randint(0, c.model.num_classes, n)).to(device)

    def train_call():
      m.train()
      opt.zero_grad(set_to_none=True)
      with autocast():
        loss = torch.nn.functional.cross_entropy(m(images), labels)
      loss.backward()
      opt.step()
      sync()
    calls[f'train@{n}'] = train_call
  for fn in calls.values():  # warm-up (also creates AdamW's state before the memory timeline)
    fn()
  mem = dict(forward=torch_peak_mb(torch, calls[f'infer@{batches[-1]}'], device),
             train=torch_peak_mb(torch, calls[f'train@{n}'], device) if train else None)
  row = dict(framework='torch', model=c.model.name, setting=setting.name, dtype=c.model.dtype, analytic_gmacs=gmacs,
             xla_gflops=None, compile_s=None, peak_memory_mb=mem)
  return row, calls


# ------------------------------------------------------------------------------------------------
# Reporting
# ------------------------------------------------------------------------------------------------
def ratio(num_times, den_times):
  """Median over rounds of num/den (times of the same round)."""
  return round(statistics.median(a / b for a, b in zip(num_times, den_times)), 3)


def summarise(rows, times):
  by = {(r['framework'], r['model'], r['dtype'], r['setting']): r for r in rows}
  for r in rows:
    fw, model, dtype, setting = key = (r['framework'], r['model'], r['dtype'], r['setting'])
    base = times.get((fw, model, dtype, 'none'))
    torch_times = times.get(('torch', model, dtype, setting)) if fw != 'torch' else None
    base_gmacs = by[(fw, model, dtype, 'none')]['analytic_gmacs'] if base else None
    r['measured'] = {}
    for q, ts in times[key].items():
      n = int(q.split('@')[1])
      d = dict(images_per_s=round(n / statistics.median(ts), 2), min=round(n / max(ts), 2), max=round(n / min(ts), 2),
               times_s=[round(t, 5) for t in ts])
      if base is not None:
        d['speedup'] = ratio(base[q], ts)
        d['flops_bound'] = round(base_gmacs / r['analytic_gmacs'], 3)
        d['efficiency'] = round(d['speedup'] / d['flops_bound'], 3)
      if torch_times is not None:
        d['jax_over_torch'] = ratio(torch_times[q], ts)
      r['measured'][q] = d


def target_list(backend, train_batch):
  """(dtype, name, numerator, denominator, goal, kind): a throughput ratio numerator-time /
  denominator-time (so > 1 means the denominator is faster), or a memory ratio. Keys are
  (framework, setting, quantity)."""
  if backend == 'gpu':
    b, dt = GPU_TARGET_BATCH, 'bfloat16'
    inf = f'infer@{b}'
    return [
        (dt, f'JAX none / PyTorch timm none, inference, bf16 batch {b}', ('torch', 'none', inf), ('jax', 'none', inf), 1.0, 'speed'),
        (dt, f'tpm:0.7 / JAX none, inference, bf16 batch {b}', ('jax', 'none', inf), ('jax', 'tpm:0.7', inf), 1.4, 'speed'),
        (dt, f'JAX tpm:0.7 / PyTorch timm + EViT 0.7, inference, bf16 batch {b}', ('torch', 'evit:0.7', inf),
         ('jax', 'tpm:0.7', inf), 1.2, 'speed')]
  inf, tr = f'infer@{TARGET_BATCH}', f'train@{train_batch}'
  dt = 'float32'
  return [
      (dt, f'JAX none / PyTorch timm none, inference, batch {TARGET_BATCH}', ('torch', 'none', inf), ('jax', 'none', inf), 0.95, 'speed'),
      (dt, f'tpm_jax.jit_forward / PyTorch timm none, inference, batch {TARGET_BATCH}', ('torch', 'none', inf),
       ('tpm_jax.jit_forward', 'none', inf), 0.95, 'speed'),
      (dt, f'JAX none / PyTorch timm none, train step, batch {train_batch}', ('torch', 'none', tr), ('jax', 'none', tr), 0.8, 'speed'),
      (dt, f'JAX none / PyTorch timm none, peak train memory, batch {train_batch}', ('jax', 'none', 'train'),
       ('torch', 'none', 'train'), 1.25, 'memory'),
      (dt, f'JAX tpm:0.7 / PyTorch timm + EViT 0.7, inference, batch {TARGET_BATCH}', ('torch', 'evit:0.7', inf),
       ('jax', 'tpm:0.7', inf), 1.0, 'speed'),
      (dt, f'tpm:0.7 inference speedup over none, batch {TARGET_BATCH}', ('jax', 'none', inf), ('jax', 'tpm:0.7', inf), 1.45, 'speed'),
      (dt, f'tpm:0.7 inference throughput / drop:0.7, batch {TARGET_BATCH}', ('jax', 'drop:0.7', inf), ('jax', 'tpm:0.7', inf), 0.95, 'speed'),
      (dt, f'tpm:0.7 train-step speedup over none, batch {train_batch}', ('jax', 'none', tr), ('jax', 'tpm:0.7', tr), 1.35, 'speed')]


def check_targets(rows, times, train_batch, backend):
  """Every target whose quantities were measured (DeiT-S only, as the issue states them)."""
  out = []
  by = {(r['framework'], r['model'], r['dtype'], r['setting']): r for r in rows}
  model = 'deit_small_patch16_224'
  for dtype, name, num, den, goal, kind in target_list(backend, train_batch):
    if kind == 'memory':
      get = lambda k: (by.get((k[0], model, dtype, k[1])) or {}).get('peak_memory_mb', {}).get(k[2])
      a, b = get(num), get(den)
      value = round(a / b, 3) if a and b else None
      ok = value is not None and value <= goal
      goal_s = f'<= {goal}'
    else:
      t = lambda k: times.get((k[0], model, dtype, k[1]), {}).get(k[2])
      a, b = t(num), t(den)
      value = ratio(a, b) if a and b else None
      ok = value is not None and value >= goal
      goal_s = f'>= {goal}'
    if value is None:
      continue
    out.append(dict(model=model, dtype=dtype, target=name, goal=goal_s, measured=value, status='met' if ok else 'missed'))
  return out


def fmt(v, nd=2):
  return '' if v is None else f'{v:.{nd}f}' if isinstance(v, float) else str(v)


def markdown(result):
  m = result['machine']
  device = m.get('device') or f'{m["cpu"]}, {m["cores"]} cores'
  lines = [f'# Throughput ({m["date"]})', '', f'`{result["command"]}`', '',
           f'{device} ({m["backend"]}), load average at start {m["load_average_at_start"]}; '
           f'jax {m["jax"]}, flax {m["flax"]}, torch {m["torch"]}, timm {m["timm"]}; {result["repeats"]} rounds.', '',
           'speedup: over the same framework\'s unpruned model (same dtype); bound: the FLOPs ratio (GMACs of none / of '
           'the setting); efficiency: speedup / bound; JAX/torch: JAX images/s over PyTorch timm\'s for the same setting.', '',
           '| framework | model | dtype | setting | quantity | images/s (median) | min - max | speedup | bound | efficiency | JAX/torch |',
           '|---|---|---|---|---|---|---|---|---|---|---|']
  for r in result['rows']:
    for q, d in r['measured'].items():
      lines.append(f'| {r["framework"]} | {r["model"]} | {r["dtype"]} | {r["setting"]} | {q} | {d["images_per_s"]:.1f} | '
                   f'{d["min"]:.1f} - {d["max"]:.1f} | {fmt(d.get("speedup"))} | {fmt(d.get("flops_bound"))} | '
                   f'{fmt(d.get("efficiency"))} | {fmt(d.get("jax_over_torch"))} |')
  lines += ['', '| framework | model | dtype | setting | GMACs | XLA GFLOPs | compile s | peak MB forward (largest batch) | peak MB train |',
            '|---|---|---|---|---|---|---|---|---|']
  for r in result['rows']:
    comp = ', '.join(f'{k} {v:.1f}' for k, v in (r['compile_s'] or {}).items())
    lines.append(f'| {r["framework"]} | {r["model"]} | {r["dtype"]} | {r["setting"]} | {fmt(r["analytic_gmacs"], 3)} | '
                 f'{fmt(r["xla_gflops"], 3)} | {comp} | {fmt(r["peak_memory_mb"]["forward"], 1)} | '
                 f'{fmt(r["peak_memory_mb"]["train"], 1)} |')
  lines += ['', '| model | dtype | target | goal | measured | status |', '|---|---|---|---|---|---|']
  lines += [f'| {t["model"]} | {t["dtype"]} | {t["target"]} | {t["goal"]} | {fmt(t["measured"], 3)} | {t["status"]} |'
            for t in result['targets']]
  return '\n'.join(lines) + '\n'


def machine(torch=None, timm=None, device=None):
  """Facts of this machine and run, for every benchmark's output: CPU model, cores this process may
  use, load average, JAX's backend and device, versions, date (``torch``/``timm``: the modules, if
  the benchmark uses them; ``device``: torch's device)."""
  cpu = platform.processor() or 'unknown'
  try:
    with open('/proc/cpuinfo') as f:
      cpu = next((l.split(':', 1)[1].strip() for l in f if l.startswith('model name')), cpu)
  except OSError:
    pass
  cores = len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()
  d = jax.devices()[0]
  return dict(cpu=cpu, cores=cores, load_average_at_start=[round(x, 2) for x in os.getloadavg()],
              backend=jax.default_backend(), device=None if d.platform == 'cpu' else d.device_kind,
              torch_device=device, jax=jax.__version__, flax=flax.__version__, numpy=np.__version__,
              torch=getattr(torch, '__version__', None), timm=getattr(timm, '__version__', None),
              torch_threads=torch.get_num_threads() if torch else None,
              date=datetime.datetime.now().astimezone().isoformat(timespec='seconds'), python=platform.python_version())


def write_results(out, result, table):
  """``out``.json (``result``) and ``out``.md (``table``), and the table printed."""
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out + '.json', 'w') as f:
    json.dump(result, f, indent=2)
  with open(out + '.md', 'w') as f:
    f.write(table)
  print(table)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--models', default='deit_small_patch16_224')
  p.add_argument('--settings', default='none,tpm:0.7,drop:0.7,evit:0.7')
  p.add_argument('--dtypes', default='float32', help='float32,bfloat16: JAX compute dtype; torch autocast for bfloat16')
  p.add_argument('--batches', default='1,32,128')
  p.add_argument('--train_batch', type=int, default=32, help='0: no train step')
  p.add_argument('--repeats', type=int, default=5)
  p.add_argument('--min_time', type=float, default=1.0, help='seconds of calls per timed block (short calls repeat)')
  p.add_argument('--img_size', type=int, default=None, help='default: the model\'s')
  p.add_argument('--no_torch', action='store_true')
  p.add_argument('--no_jit_forward', action='store_true', help='no tpm_jax.jit_forward row')
  p.add_argument('--nnx_jit', action='store_true', help='a row for nnx.jit(lambda m, x: m(x)) of the unpruned model')
  p.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results', 'throughput'))
  args = p.parse_args()
  settings = parse_settings(args.settings)
  dtypes = args.dtypes.split(',')
  batches = sorted(int(b) for b in args.batches.split(','))
  train = args.train_batch > 0
  configs = {(model, dtype, s.name): checked_config(model, s, args.img_size, args.train_batch, dtype)
             for model in args.models.split(',') for dtype in dtypes for s in settings}
  torch = timm = None
  device = 'cpu'
  if not args.no_torch:
    from benchmarks.torch_compat import import_timm
    timm = import_timm()
    import torch
    if jax.default_backend() == 'gpu' and torch.cuda.is_available():
      device = 'cuda'
  facts = machine(torch, timm, device)
  if facts['backend'] == 'cpu' and facts['load_average_at_start'][0] > 0.5 * facts['cores']:
    print(f'warning: load average {facts["load_average_at_start"][0]} on {facts["cores"]} cores: other work will '
          'distort the timings (torch\'s threads suffer most)', file=sys.stderr)

  rows, runners = [], []  # runners: (key, calls)
  for model in args.models.split(','):
    for dtype in dtypes:
      for s in settings:
        c = configs[model, dtype, s.name]
        print(f'compiling jax {model} {dtype} {s.name}', flush=True)
        row, calls = jax_runner(c, s, batches, train)
        rows.append(row)
        runners.append((('jax', model, dtype, s.name), calls))
        jax_row = row
        for how in [h for h, on in (('tpm_jax.jit_forward', not args.no_jit_forward), ('nnx.jit', args.nnx_jit))
                    if on and s.name == 'none']:
          row, calls = jit_forward_runner(c, jax_row, batches, how)
          rows.append(row)
          runners.append(((how, model, dtype, s.name), calls))
      if timm is None or not timm.is_model(model):
        continue
      for s in [s for s in settings if s.method in ('none', 'evit') and s.multiscale == 'none' and '@' not in s.name]:
        print(f'preparing torch {model} {dtype} {s.name}', flush=True)
        gmacs = next(r['analytic_gmacs'] for r in rows if r['model'] == model and r['setting'] == s.name)
        row, calls = torch_runner(timm, torch, make_config(model, s, args.img_size, args.train_batch, dtype), s, batches,
                                  gmacs, device, train)
        rows.append(row)
        runners.append((('torch', model, dtype, s.name), calls))

  # First runs (JAX: after compilation) outside the timings; they also size each timed block: a
  # quantity whose call is short is called reps times in a row (at least --min_time seconds) and
  # timed per call, so batch-1 timings are not one noisy call.
  # Timing: tpm_jax.throughput.time_interleaved over every (setting, quantity), quantity-major.
  reps = {}
  for key, calls in runners:
    for q, fn in calls.items():
      fn()
      reps[key, q] = throughput.reps_for(fn, args.min_time)
  quantities = list(dict.fromkeys(q for _, calls in runners for q in calls))
  # interleaved: every setting of both frameworks, one quantity at a time
  order = {(key, q): calls[q] for q in quantities for key, calls in runners if q in calls}
  timed = throughput.time_interleaved(order, rounds=args.repeats, reps=reps,
                                      on_round=lambda r: print(f'round {r + 1}/{args.repeats}', flush=True))
  times = {key: {q: timed[key, q] for q in calls} for key, calls in runners}

  summarise(rows, times)
  result = dict(command=shlex.join([sys.executable] + sys.argv), machine=facts, repeats=args.repeats,
                settings=args.settings, dtypes=dtypes, batches=batches, train_batch=args.train_batch,
                notes=dict(peak_memory='JAX: XLA memory_analysis arguments + outputs - donated aliases + temporaries; '
                                       'torch: profiler memory timeline peak of one call; MiB',
                           torch_train_step='forward + cross-entropy + backward + AdamW; JAX: the project step '
                                            '(also normalisation, mixup/cutmix, label smoothing on device)'),
                rows=rows, targets=check_targets(rows, times, args.train_batch, facts['backend']))
  write_results(args.out, result, markdown(result))


if __name__ == '__main__':
  main()
