"""Where a forward's device time goes: XLA's own profile of the jitted inference forward, summed by
part of the model (its named scopes) and by op. Not a test: a measurement.

  python benchmarks/profile_ops.py [--model deit_small_patch16_224] [--settings none,evit:0.7,tpm:0.7] \\
      [--dtype float32|bfloat16] [--batch 32] [--steps 5] [--trace_dir DIR] [--out benchmarks/results/profile_ops]

Runs on whatever backend JAX has. Settings as in benchmarks/throughput.py
(``method[+multiscale][:value][@key=value...]``, e.g. ``tpm:0.7@prop_attn=off``). For each setting:
the forward of tpm_jax.throughput.forward_fn (as throughput.py times it), compiled and run once,
then ``--steps`` calls under ``jax.profiler.trace``. The trace is read back with
``jax.profiler.ProfileData``: every event XLA tags with an ``hlo_op`` of this forward's module (GPU:
the kernels on the device; CPU: the thunks, summed over threads, which do not cover all of the ops'
work: see the caveat the output prints) is looked up in the compiled HLO for its ``op_name``, whose named scopes
(tpm_jax.models.vit: ``blocks.i/attn`` with ``cls_attn`` inside it, ``blocks.i/reduce``,
``blocks.i/mlp``, ``embed``, ``multiscale``, ``norm``, ``head``) give its part. A fusion counts
whole for the op_name XLA gives it (its root's), so ops fused across a boundary blur it.

Writes OUT.md (ms per forward by part for every setting, then each setting's costliest ops in
``reduce`` and ``cls_attn``) and OUT.json (every op). ``--trace_dir`` keeps the raw traces
(TensorBoard's profile plugin, XProf or Perfetto read them); by default they go to a temporary
directory that is removed.
"""
import argparse
import collections
import glob
import os
import re
import shlex
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from benchmarks.throughput import checked_config, machine, parse_settings, write_results  # noqa: E402
from tpm_jax import throughput  # noqa: E402
from tpm_jax.models.registry import model_from_config  # noqa: E402

PARTS = ('embed', 'multiscale', 'attn', 'cls_attn', 'reduce', 'mlp', 'norm', 'head', 'other')
_INSTR = re.compile(r'^\s*(?:ROOT\s+)?%?([\w.\-]+)\s*=\s*(.*)$')
_COMP = re.compile(r'^\s*(?:ENTRY\s+)?%?([\w.\-]+)\s*(?:\(.*\))?.*\{\s*$')
_OP_NAME = re.compile(r'op_name="([^"]*)"')
_CALLS = re.compile(r'(?:calls|to_apply)=%?([\w.\-]+)')
_OPERAND = re.compile(r'%([\w.\-]+)')


def hlo_op_names(hlo_text):
  """{instruction: op_name} for every instruction of a compiled module's text. An instruction
  without an op_name (XLA's own wrappers, e.g. a reduce-window it adds to a reduction) takes the
  commonest op_name of the computation it calls, else its first operand's."""
  own, calls, operands, in_comp = {}, {}, {}, collections.defaultdict(list)
  comp = None
  for line in hlo_text.splitlines():
    if line.rstrip() == '}':
      comp = None
      continue
    m = _INSTR.match(line)
    if m and comp is not None:
      name, rest = m.groups()
      op = _OP_NAME.search(rest)
      if op:
        own[name] = op.group(1).split(';')[0]
        in_comp[comp].append(own[name])
      c = _CALLS.search(rest)
      if c:
        calls[name] = c.group(1)
      operands[name] = _OPERAND.findall(rest.split('metadata=')[0])
      continue
    m = _COMP.match(line)
    if m and not line.lstrip().startswith('HloModule'):
      comp = m.group(1)
  names = dict(own)
  for name, comp in calls.items():
    if name not in names and in_comp.get(comp):
      names[name] = collections.Counter(in_comp[comp]).most_common(1)[0][0]
  for name, ops in operands.items():  # in text order: operands come first
    if name not in names:
      named = [names[o] for o in ops if o in names]
      if named:
        names[name] = named[0]
  return names


def part_of(op_name):
  """The model part a named-scope path belongs to (see the module docstring)."""
  segments = op_name.split('/')
  if 'cls_attn' in segments:
    return 'cls_attn'
  for part in ('reduce', 'attn', 'mlp', 'embed', 'multiscale', 'norm', 'head'):
    if part in segments:
      return part
  return 'other'


def module_name(hlo_text):
  m = re.match(r'HloModule\s+([\w.\-]+)', hlo_text)
  return m.group(1) if m else None


def op_times(xspace_path, module, backend):
  """{hlo_op: [total ns, events]} of the events tagged with ``module`` in a trace: on the CPU backend
  the host's (its thunks), elsewhere the device planes' (the kernels). Nothing found is an error
  naming what the trace holds, not a table of zeros."""
  planes = list(jax.profiler.ProfileData.from_file(xspace_path).planes)
  mine = [p for p in planes if p.name.startswith('/host:CPU' if backend == 'cpu' else '/device:')]
  out, seen = collections.defaultdict(lambda: [0.0, 0]), collections.Counter()
  for plane in mine:
    for line in plane.lines:
      for event in line.events:
        stats = dict(event.stats)
        if 'hlo_op' not in stats:
          continue
        seen[stats.get('hlo_module')] += 1
        if stats.get('hlo_module') == module:
          rec = out[stats['hlo_op']]
          rec[0] += event.duration_ns
          rec[1] += 1
  if not out:
    raise SystemExit(f'profile_ops: no event of module {module} in {xspace_path}: planes '
                     f'{[p.name for p in planes]}, tagged events by module {dict(seen)} (backend {backend})')
  return out


def profile_forward(model, batch, steps, trace_dir):
  """The model's forward (tpm_jax.throughput.forward_fn) at ``batch``, profiled over ``steps`` calls
  into ``trace_dir``: dict(wall_ms, op_ms, by_part {part: ms}, ops [dict(hlo_op, op_name, part, ms,
  events)], costliest first), times per forward."""
  fwd = throughput.forward_fn(model, batch_size=batch)
  fwd()
  text = fwd.compiled.as_text()
  os.makedirs(trace_dir, exist_ok=True)
  with jax.profiler.trace(trace_dir):
    t = time.perf_counter()  # the calls only: not the profiler's start, nor its collecting and writing the trace
    for _ in range(steps):
      fwd()
    wall = (time.perf_counter() - t) / steps
  paths = sorted(glob.glob(os.path.join(trace_dir, '**', '*.xplane.pb'), recursive=True), key=os.path.getmtime)
  if not paths:
    raise SystemExit(f'profile_ops: jax.profiler.trace wrote no .xplane.pb under {trace_dir}')
  names = hlo_op_names(text)
  ops = []
  for hlo_op, (ns, n) in op_times(paths[-1], module_name(text), jax.default_backend()).items():
    op_name = names.get(hlo_op, '')
    ops.append(dict(hlo_op=hlo_op, op_name=op_name, part=part_of(op_name), ms=ns / 1e6 / steps, events=n / steps))
  ops.sort(key=lambda o: -o['ms'])
  by_part = {p: round(sum(o['ms'] for o in ops if o['part'] == p), 4) for p in PARTS}
  return dict(wall_ms=round(wall * 1e3, 3), op_ms=round(sum(o['ms'] for o in ops), 3), by_part=by_part, ops=ops)


def short(op_name):
  """The op_name from the first named scope of the model on (drops ``jit(<lambda>)/``)."""
  return re.sub(r'^jit\([^)]*\)/', '', op_name)


def markdown(result):
  m = result['machine']  # benchmarks/throughput.py's machine facts
  lines = [f'# Device time by part of the model ({m["date"]})', '', f'`{result["command"]}`', '',
           f'{m["device"] or m["cpu"]} ({m["backend"]}); jax {m["jax"]}, flax {m["flax"]}; {result["model"]}, {result["dtype"]}, '
           f'batch {result["batch"]}, {result["steps"]} profiled calls per setting.', '',
           'ms per forward: XLA ops tagged with the forward\'s module in jax.profiler\'s trace (GPU: kernels; CPU: '
           'thunks summed over threads), by the named scope of their op_name. wall: the profiled calls\' own '
           'wall time (the profiler slows them a little).', '']
  if m['backend'] == 'cpu':
    cover = ', '.join(f'{n} {r["op_ms"] / r["wall_ms"]:.0%}' for n, r in result['settings'].items())
    lines += [f'On the CPU the tagged events do not cover all of the ops\' work (ops total / wall: {cover}; the MLP\'s '
              'matmuls, two thirds of the FLOPs, show less time than the attention): indicative only. The tool is '
              'for the GPU, where the events are the kernels.', '']
  names = list(result['settings'])
  lines += ['| part | ' + ' | '.join(names) + ' |', '|---|' + '---|' * len(names)]
  for part in PARTS:
    vals = [result['settings'][n]['by_part'][part] for n in names]
    if any(vals):
      lines.append(f'| {part} | ' + ' | '.join(f'{v:.3f}' for v in vals) + ' |')
  lines.append('| **ops, total** | ' + ' | '.join(f'**{result["settings"][n]["op_ms"]:.3f}**' for n in names) + ' |')
  lines.append('| wall | ' + ' | '.join(f'{result["settings"][n]["wall_ms"]:.3f}' for n in names) + ' |')
  for n in names:
    ops = [o for o in result['settings'][n]['ops'] if o['part'] in ('reduce', 'cls_attn')]
    if not ops:
      continue
    lines += ['', f'## {n}: the costliest ops of reduce and cls_attn (all blocks)', '',
              '| ms | calls | HLO op | op_name |', '|---|---|---|---|']
    for o in ops[:result['top']]:
      lines.append(f'| {o["ms"]:.4f} | {o["events"]:g} | {o["hlo_op"]} | {short(o["op_name"])} |')
  return '\n'.join(lines) + '\n'


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--model', default='deit_small_patch16_224')
  p.add_argument('--settings', default='none,evit:0.7,tpm:0.7')
  p.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  p.add_argument('--batch', type=int, default=32)
  p.add_argument('--img_size', type=int, default=None, help='default: the model\'s')
  p.add_argument('--steps', type=int, default=5, help='profiled calls per setting')
  p.add_argument('--top', type=int, default=15, help='ops listed per setting')
  p.add_argument('--trace_dir', default=None, help='keep the raw traces here (default: a temporary directory)')
  p.add_argument('--out', default=os.path.join(os.path.dirname(os.path.abspath(__file__)), 'results', 'profile_ops'))
  args = p.parse_args()
  if args.batch < 1 or args.steps < 1:
    raise SystemExit(f'profile_ops: --batch and --steps must be >= 1, got {args.batch} and {args.steps}')
  settings = parse_settings(args.settings)
  configs = [checked_config(args.model, s, args.img_size, 0, args.dtype) for s in settings]  # bad ones stop here
  result = dict(command=shlex.join([sys.executable] + sys.argv), machine=machine(None, None, None), model=args.model,
                dtype=args.dtype, batch=args.batch, steps=args.steps, top=args.top, settings={})
  with tempfile.TemporaryDirectory() as tmp:
    for s, c in zip(settings, configs):
      print(f'profiling {args.model} {args.dtype} {s.name} at batch {args.batch}', flush=True)
      result['settings'][s.name] = profile_forward(model_from_config(c), args.batch, args.steps,
                                                      os.path.join(args.trace_dir or tmp, s.name.replace(':', '_')))
  write_results(args.out, result, markdown(result))


if __name__ == '__main__':
  main()
