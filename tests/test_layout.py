"""The package's layout, read from its source: the folder says the role and every import points down.

Layers, bottom up (README, "Layout of the code"):

    base       configs.py, metrics.py (the experiment schema and the metric maths; import nothing of ours)
    runtime/   the process: flags, devices, hosts, files, progress, status, lock, stop signals
    models/    the networks
    data/      sources, lists, decoding, resizing, transforms, pipelines, preparation
    parallel/  layouts, meshes, the sharded step
    run/       what a workdir holds: config, checkpoints, metrics, listing, plots
    inference/ a loaded model and what is built on it: bundles, classification, export, visualization
    training/  the loop, optimizer, checks, evaluation, fine-tuning, sweeps
    dashboard/ the web process (and the helper processes it starts, in dashboard/workers/)
    commands   the thin modules at the top of alexnet_jax/: train, evaluate, classify, ...

Nothing here runs the code: the checks read every module's imports with ``ast``.
"""

from __future__ import annotations

import ast
import dataclasses
import glob
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, 'alexnet_jax')
LAYERS = ['base', 'runtime', 'models', 'data', 'parallel', 'run', 'inference', 'training', 'dashboard',
          'commands']
BASE = {'alexnet_jax.configs', 'alexnet_jax.metrics'}
COMMANDS = {'train', 'evaluate', 'classify', 'export', 'visualize', 'sweep', 'census', 'prepare', 'runs',
            'launch', 'import_weights'}
# Libraries of JAX's family: the dashboard's web process must never import them (DASHBOARD.md).
JAX_FAMILY = ('jax', 'jaxlib', 'flax', 'optax', 'orbax', 'grain', 'tensorflow', 'tensorflow_datasets')
# Where an import inside a function is the point: a command chooses its devices before JAX starts,
# ``alexnet_jax.load`` keeps ``import alexnet_jax`` free of JAX, ``runtime.distributed`` defines its flags
# before it may import JAX, and the dashboard's web process loads Pillow and numpy only for the page
# that draws with them. Every other module imports at its top.
LAZY_ALLOWED = ('alexnet_jax.runtime.distributed', 'alexnet_jax.dashboard')
MAX_LINES = 500


@dataclasses.dataclass(frozen=True)
class Import:
  target: str          # an alexnet_jax module, or the top name of another library
  top_level: bool      # at the module's top (not inside a function)


def _module_name(path: str) -> str:
  rel = os.path.relpath(path, REPO)[:-3].replace(os.sep, '.')
  return rel[:-len('.__init__')] if rel.endswith('.__init__') else rel


def _is_module(name: str) -> bool:
  base = os.path.join(REPO, *name.split('.'))
  return os.path.exists(base + '.py') or os.path.exists(os.path.join(base, '__init__.py'))


def _imports(path: str, name: str) -> list[Import]:
  tree = ast.parse(open(path, encoding='utf-8').read())
  top = {id(n) for n in tree.body}
  # Imports under `if TYPE_CHECKING:` or `try:` at the module's top are still top-level ones.
  for node in tree.body:
    if isinstance(node, (ast.If, ast.Try)):
      top |= {id(n) for n in ast.walk(node)}
  package = name if path.endswith('__init__.py') else name.rpartition('.')[0]
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom):
      module = node.module or ''
      if node.level:
        module = '.'.join(package.split('.')[:len(package.split('.')) - node.level + 1] +
                          ([module] if module else []))
      for alias in node.names:
        candidate = f'{module}.{alias.name}'
        found.append(Import(candidate if _is_module(candidate) else module, id(node) in top))
    elif isinstance(node, ast.Import):
      found += [Import(a.name, id(node) in top) for a in node.names]
  return found


def _graph() -> dict[str, list[Import]]:
  return {_module_name(p): _imports(p, _module_name(p))
          for p in glob.glob(os.path.join(PACKAGE, '**', '*.py'), recursive=True)}


def _layer(module: str) -> str:
  if module in BASE:
    return 'base'
  parts = module.split('.')
  if len(parts) > 1 and parts[1] in LAYERS:
    return parts[1]
  assert module == 'alexnet_jax' or parts[1] in COMMANDS, (
      f'{module}: a module at the top of alexnet_jax/ that is neither a command nor configs/metrics')
  return 'commands'


def _ours(graph):
  return {m: [i for i in imports if i.target.startswith('alexnet_jax')] for m, imports in graph.items()}


def test_every_import_points_down_a_layer():
  up = []
  for module, imports in _ours(_graph()).items():
    for imp in imports:
      if imp.target == 'alexnet_jax':
        continue
      if LAYERS.index(_layer(imp.target)) > LAYERS.index(_layer(module)):
        up.append(f'{module} ({_layer(module)}) -> {imp.target} ({_layer(imp.target)})')
      elif _layer(module) == _layer(imp.target) == 'commands' and module != 'alexnet_jax':
        up.append(f'{module} imports the command {imp.target}')
  assert not up, 'imports that run up a layer:\n' + '\n'.join(sorted(up))


def test_no_cycles_and_no_import_inside_a_function_to_dodge_one():
  graph = _ours(_graph())
  edges = {m: {i.target for i in imps if i.top_level and i.target in graph and i.target != m}
           for m, imps in graph.items()}

  def reaches(start, goal):
    seen, todo = set(), [start]
    while todo:
      node = todo.pop()
      if node == goal:
        return True
      if node not in seen:
        seen.add(node)
        todo.extend(edges.get(node, ()))
    return False

  cycles = [f'{m} -> {t}' for m, targets in edges.items() for t in targets if reaches(t, m)]
  assert not cycles, 'import cycles through:\n' + '\n'.join(sorted(cycles))
  dodges, lazy = [], []
  for module, imports in graph.items():
    for imp in imports:
      if imp.top_level or imp.target not in graph:
        continue
      if reaches(imp.target, module):
        dodges.append(f'{module} -> {imp.target}')
      if not (_layer(module) == 'commands' or module.startswith(LAZY_ALLOWED)):
        lazy.append(f'{module} -> {imp.target}')
  assert not dodges, 'imports inside a function that would close a cycle at the top:\n' + '\n'.join(dodges)
  assert not lazy, 'libraries import at their top, not inside a function:\n' + '\n'.join(sorted(lazy))


def test_the_web_process_never_imports_jax():
  """Everything the dashboard's server can import (at the top or inside a function, followed through our
  modules) is free of JAX's family; the helper processes it starts are separate programs."""
  graph = _graph()
  web, todo = set(), ['alexnet_jax.dashboard.__main__']
  while todo:
    module = todo.pop()
    if module in web:
      continue
    web.add(module)
    todo += [i.target for i in graph[module] if i.target in graph]
  heavy = sorted(f'{m} imports {i.target}' for m in web for i in graph[m]
                 if i.target.split('.')[0] in JAX_FAMILY)
  assert not heavy, 'the web process would import JAX:\n' + '\n'.join(heavy)
  assert 'alexnet_jax.dashboard.app' in web


def test_the_top_of_the_package_holds_only_commands_and_the_base():
  tops = {os.path.basename(p)[:-3] for p in glob.glob(os.path.join(PACKAGE, '*.py'))} - {'__init__'}
  assert tops == COMMANDS | {'configs', 'metrics'}, sorted(tops ^ (COMMANDS | {'configs', 'metrics'}))


def test_no_module_is_over_500_lines():
  long = []
  for path in glob.glob(os.path.join(PACKAGE, '**', '*.py'), recursive=True):
    with open(path, encoding='utf-8') as f:
      count = sum(1 for _ in f)
    if count > MAX_LINES:
      long.append(f'{os.path.relpath(path, REPO)}: {count} lines')
  assert not long, f'modules over {MAX_LINES} lines:\n' + '\n'.join(sorted(long))
