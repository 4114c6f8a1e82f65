"""The package's imports run one way: config <- reduction <- models <- {checkpoint, data, sharding}
<- trainer <- {export, sweep, quickstart}; no cycles; no function-local import of the package (local
imports stay only for heavy optional dependencies). Read from the source (ast), so a violation fails
here whatever order Python happens to import the modules in (the package's front door imports
names from every layer on first use, which would let a cycle resolve by accident at run time)."""
import ast
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, 'tpm_jax')

# Lower numbers are lower layers; a module may import its own layer or lower ones (the graph stays acyclic).
LAYERS = {
    'tpm_jax.config': 0, 'tpm_jax.cli': 0, 'tpm_jax.version': 0, 'tpm_jax.files': 0, 'tpm_jax.network': 0,
    'tpm_jax.reduction': 1, 'tpm_jax.reduction_setting': 1,
    'tpm_jax.models': 2, 'tpm_jax.flops': 2, 'tpm_jax.timm_weights': 2, 'tpm_jax.big_vision_weights': 2, 'tpm_jax.pretrained': 2, 'tpm_jax.throughput': 2,
    'tpm_jax.augment': 2, 'tpm_jax.viz': 2, 'tpm_jax.compile_options': 2, 'tpm_jax.forward': 2,
    'tpm_jax.checkpoint': 3, 'tpm_jax.data': 3, 'tpm_jax.sharding': 3, 'tpm_jax.distributed': 3,
    'tpm_jax.preflight': 4, 'tpm_jax.trainer': 4,
    'tpm_jax.export': 5, 'tpm_jax.evaluation': 5, 'tpm_jax.sweep': 5, 'tpm_jax.quickstart': 5,
    'tpm_jax': 6,  # the package's front door (tpm_jax/__init__.py) re-exports from every layer
}
# What a function may import locally: dependencies heavy to import and needed on few paths only
# (TensorFlow for tf.data, torch for .pth files, plotting), and the package module that imports
# TensorFlow at its top. Nothing else: a local import of the package would hide a cycle.
HEAVY = ('tensorflow', 'tensorflow_datasets', 'torch', 'timm', 'safetensors', 'matplotlib',
         'tpm_jax.data.randaugment')
# No exceptions: every import of the package is at the top of its module.
ALLOWED_LOCAL = set()


def _modules():
  out = {}
  for dirpath, _, files in os.walk(PKG):
    for f in files:
      if f.endswith('.py'):
        path = os.path.join(dirpath, f)
        parts = os.path.relpath(path, ROOT)[:-3].split(os.sep)
        out['.'.join(parts[:-1] if parts[-1] == '__init__' else parts)] = path
  return out


def _layer(module):
  best = max((k for k in LAYERS if module == k or module.startswith(k + '.')), key=len, default=None)
  assert best is not None, f'{module}: no layer assigned (add it to LAYERS in {__file__})'
  return LAYERS[best]


def _imports(module, path, modules):
  """[(imported package module, line, is_top_level)]."""
  tree = ast.parse(open(path).read())
  top = {id(n) for n in tree.body}
  package = module if path.endswith('__init__.py') else module.rpartition('.')[0]
  out = []
  for node in ast.walk(tree):
    names = []
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ''
      if node.level:
        base = '.'.join(package.split('.')[:len(package.split('.')) - node.level + 1] + ([base] if base else []))
      # `from tpm_jax import trainer` imports the module tpm_jax.trainer
      names = [f'{base}.{a.name}' if f'{base}.{a.name}' in modules else base for a in node.names]
    for name in names:
      if name.split('.')[0] in ('tpm_jax',) or name.startswith(HEAVY):
        out.append((name, node.lineno, id(node) in top))
  return out


def test_imports_run_downwards_only_without_cycles_or_local_package_imports():
  modules = _modules()
  graph, problems = {}, []
  for module, path in sorted(modules.items()):
    graph[module] = set()
    for name, line, top_level in _imports(module, path, modules):
      where = f'{os.path.relpath(path, ROOT)}:{line}'
      if not top_level:
        if not (name.startswith(HEAVY) or (module, name) in ALLOWED_LOCAL):
          problems.append(f'{where}: function-local import of {name}')
        continue
      if name.startswith(HEAVY) and not name.startswith('tpm_jax'):
        continue
      if name != module:
        graph[module].add(name)
      if _layer(name) > _layer(module):
        problems.append(f'{where}: {module} (layer {_layer(module)}) imports {name} (layer {_layer(name)})')
  # cycles among top-level imports (a parent package counts as imported: importing a.b runs a/__init__)
  def deps(m):
    out = set(graph.get(m, ()))
    for d in list(out):
      parent = d.rpartition('.')[0]
      while parent and parent != 'tpm_jax':
        if parent != m and not m.startswith(parent + '.'):
          out.add(parent)
        parent = parent.rpartition('.')[0]
    return {d for d in out if d in graph}
  state = {}

  def visit(m, stack):
    state[m] = 'open'
    for d in sorted(deps(m)):
      if state.get(d) == 'open':
        problems.append('import cycle: ' + ' -> '.join(stack[stack.index(d):] + [d]))
      elif d not in state:
        visit(d, stack + [d])
    state[m] = 'done'
  for m in sorted(graph):
    if m not in state:
      visit(m, [m])
  assert not problems, '\n'.join(problems)


def test_no_private_name_is_imported_across_modules():
  """A name another module of the package imports is part of its module's interface: not ``_private``."""
  problems = []
  for module, path in sorted(_modules().items()):
    for node in ast.walk(ast.parse(open(path).read())):
      if isinstance(node, ast.ImportFrom) and (node.module or '').startswith('tpm_jax'):
        problems += [f'{os.path.relpath(path, ROOT)}:{node.lineno}: {a.name} from {node.module}' for a in node.names
                     if a.name.startswith('_') and not a.name.startswith('__')]
  assert not problems, '\n'.join(problems)


def test_the_layer_check_sees_a_violation(tmp_path):
  """The checker itself: an upward import and a local package import are reported."""
  path = tmp_path / 'mod.py'
  path.write_text('from tpm_jax import trainer\n\ndef f():\n  from tpm_jax import sharding\n')
  found = _imports('tpm_jax.config', str(path), _modules())
  assert ('tpm_jax.trainer', 1, True) in found and ('tpm_jax.sharding', 4, False) in found
  assert _layer('tpm_jax.trainer') > _layer('tpm_jax.config')


def test_every_module_imports():
  """Every module of the package, imported in a fresh interpreter from its lowest layer up."""
  order = sorted(_modules(), key=lambda m: (_layer(m), m))
  res = subprocess.run([sys.executable, '-c', '; '.join(f'import {m}' for m in order)], capture_output=True,
                       text=True, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS='cpu'), timeout=300)
  assert res.returncode == 0, res.stderr[-2000:]
