"""The commands share one template and one set of exit statuses.

Every ``alexnet_jax/<command>.py`` has a usage docstring, defines its flags in ``define_flags()`` (so that
importing it defines none, and any two import together), does its work in ``main(argv)`` and is started by
``run()``: ``define_flags()`` then ``cli.run(main)``. ``--help`` answers at once, without JAX, with exit
status 0; an unknown flag or a user error (a missing file or folder) ends with exit status 2 and one
``error:`` line naming it, no traceback, and before JAX starts a backend.

The commands run as subprocesses, all at the same time.
"""

from __future__ import annotations

import ast
import configparser
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMANDS = ('train', 'evaluate', 'classify', 'export', 'visualize', 'sweep', 'census', 'prepare', 'runs',
            'launch', 'import_weights')

# Runs one command as ``python -m alexnet_jax.<command>`` does, then says on its last line of stdout
# whether JAX was imported and whether it started a backend.
PROBE = """
import atexit, runpy, sys
def report():
  bridge = sys.modules.get('jax._src.xla_bridge')
  state = 'BACKEND' if bridge is not None and bridge._backends else 'JAX' if 'jax' in sys.modules else 'NO_JAX'
  sys.stdout.write('\\nPROBE ' + state + '\\n')
  sys.stdout.flush()
atexit.register(report)
name = sys.argv[1]
sys.argv = ['alexnet_jax/' + name + '.py', *sys.argv[2:]]
runpy.run_module('alexnet_jax.' + name, run_name='__main__', alter_sys=True)
"""


def _user_errors(tmp: str) -> dict[str, tuple[list[str], str]]:
  """Per command: arguments with a user error, and what its message must name."""
  missing = os.path.join(tmp, 'missing')
  return {
      'train': ([f'--config={missing}.py', f'--workdir={tmp}/run'], f'{missing}.py'),
      'evaluate': ([f'--workdir={missing}'], missing),
      'classify': ([f'--workdir={missing}', f'{missing}.jpg'], f'{missing}.jpg'),
      'export': ([f'--workdir={missing}', f'--output={tmp}/bundle.zip'], missing),
      'visualize': ([f'--workdir={missing}', f'--output={tmp}/vis'], missing),
      'sweep': ([f'--config={missing}.py', f'--workdir={tmp}/sweep',
                 '--grid=config.learning_rate=0.1,0.01'], f'{missing}.py'),
      'census': (['--image_size=abc'], '--image_size=abc'),    # it reads no file: a bad value instead
      'prepare': ([f'--source={missing}', f'--output={tmp}/ds'], missing),
      'runs': ([missing], missing),
      'launch': (['--num_processes=1', '--', f'{missing}_program'], f'{missing}_program'),
      'import_weights': ([f'--source={missing}.pth', f'--output={tmp}/imported'], f'{missing}.pth'),
  }


def _run_all(cases: dict) -> dict:
  """Starts every case at once; returns its (exit status, stdout, stderr)."""
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''),
             JAX_PLATFORMS='cpu')
  procs = {key: subprocess.Popen([sys.executable, '-c', PROBE, key[0], *args], cwd=REPO, env=env,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for key, args in cases.items()}
  results = {}
  for key, proc in procs.items():
    try:
      out, err = proc.communicate(timeout=300)
    finally:
      if proc.poll() is None:
        proc.kill()
    results[key] = (proc.returncode, out, err)
  return results


@pytest.fixture(scope='module')
def outcomes(tmp_path_factory):
  tmp = str(tmp_path_factory.mktemp('commands'))
  errors = _user_errors(tmp)
  cases = {}
  for name in COMMANDS:
    cases[(name, 'help')] = ['--help']
    cases[(name, 'unknown flag')] = ['--no_such_flag=1']
    cases[(name, 'user error')] = errors[name][0]
  return errors, _run_all(cases)


@pytest.mark.parametrize('name', COMMANDS)
def test_help_answers_at_once_without_jax(name, outcomes):
  status, out, err = outcomes[1][(name, 'help')]
  assert status == 0, err[-2000:]
  assert f'alexnet_jax.{name}' in out, out[-2000:]   # the usage docstring
  assert out.rstrip().endswith('PROBE NO_JAX'), (out[-500:], err[-2000:])


def test_help_of_a_console_script_shows_the_commands_usage():
  """A console script's ``__main__`` is setuptools' wrapper, without a docstring: ``alexnet-train --help``
  must still print the command's usage (absl prints ``__main__.__doc__``), as ``python -m`` does."""
  env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
  script = 'import sys\nfrom alexnet_jax import {0}\nsys.argv = ["alexnet-{0}", "--help"]\n{0}.run()\n'
  procs = {name: subprocess.Popen([sys.executable, '-c', script.format(name)], cwd=REPO, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for name in COMMANDS}
  for name, proc in procs.items():
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, (name, err[-2000:])
    assert f'python -m alexnet_jax.{name}' in out, (name, out[:1000])


@pytest.mark.parametrize('name', COMMANDS)
def test_an_unknown_flag_is_a_user_error(name, outcomes):
  status, out, err = outcomes[1][(name, 'unknown flag')]
  assert status == 2, err[-2000:]
  assert err.splitlines() == ["error: Unknown command line flag 'no_such_flag' (--help lists the flags)"], err
  assert out.rstrip().endswith('PROBE NO_JAX'), out[-500:]


@pytest.mark.parametrize('name', COMMANDS)
def test_a_user_error_is_one_line_before_any_backend(name, outcomes):
  errors, results = outcomes
  status, out, err = results[(name, 'user error')]
  lines = [line for line in err.splitlines() if line.strip()]
  assert status == 2, err[-3000:]
  assert len(lines) == 1 and lines[0].startswith('error: ') and errors[name][1] in lines[0], err[-3000:]
  assert 'Traceback' not in err
  assert not out.rstrip().endswith('PROBE BACKEND'), out[-500:]   # found before JAX started a backend


def _functions(tree: ast.Module) -> dict[str, ast.FunctionDef]:
  return {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}


def _calls(function: ast.FunctionDef) -> list[str]:
  return [ast.unparse(n) for n in ast.walk(function) if isinstance(n, ast.Call)]


@pytest.mark.parametrize('name', COMMANDS)
def test_every_command_follows_the_template(name):
  with open(os.path.join(REPO, 'alexnet_jax', f'{name}.py'), encoding='utf-8') as f:
    tree = ast.parse(f.read())
  assert f'python -m alexnet_jax.{name}' in (ast.get_docstring(tree) or ''), 'a usage docstring'
  functions = _functions(tree)
  assert {'define_flags', 'main', 'run'} <= set(functions), sorted(functions)
  assert [a.arg for a in functions['main'].args.args] == ['argv']
  run_calls = _calls(functions['run'])
  assert 'define_flags()' in run_calls and 'cli.run(main)' in run_calls, run_calls
  # Flags are defined when define_flags() runs, never at import.
  at_import = [ast.unparse(n) for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.ClassDef))
               for c in ast.walk(n) if isinstance(c, ast.Call) and 'DEFINE' in ast.unparse(c.func)]
  assert not at_import, at_import


def test_the_commands_import_together_and_define_no_flags():
  probe = ('from absl import flags\nfrom alexnet_jax.runtime import cli\nbefore = set(flags.FLAGS)\n'
           f'import {", ".join("alexnet_jax." + n for n in COMMANDS)}\n'
           'print(sorted(set(flags.FLAGS) - before))')
  out = subprocess.run([sys.executable, '-c', probe], cwd=REPO, capture_output=True, text=True,
                       timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.strip() == '[]', out.stdout


def test_every_console_script_is_a_command_run():
  config = configparser.ConfigParser()
  config.read(os.path.join(REPO, 'setup.cfg'))
  scripts = dict(line.split(' = ') for line in
                 config['options.entry_points']['console_scripts'].strip().splitlines())
  commands = {v for k, v in scripts.items() if k != 'alexnet-dashboard'}
  assert commands == {f'alexnet_jax.{name}:run' for name in COMMANDS}, sorted(commands)
