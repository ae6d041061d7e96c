"""The dashboard under hostile requests (issue 24): one test per finding, each fast (TestClient, no jobs run).

A server without scheduler or worker is enough for the form, guard and answer checks: a job that a form
would start is only written (queued), so its argv can be read. The tools' own ``--confine_to`` check is
run through the library (``preparation.prepare_dataset``) on small generated folders.
"""

import errno
import json
import os
import stat
import subprocess
import sys
import time
import warnings

import pytest

pytest.importorskip('fastapi')
with warnings.catch_warnings():                 # starlette: "install httpx2 instead" (still works)
  warnings.simplefilter('ignore')
  from fastapi.testclient import TestClient  # noqa: E402

from alexnet_jax.runtime import confinement  # noqa: E402
from alexnet_jax.runtime import fileio  # noqa: E402
from alexnet_jax.dashboard import app as app_lib  # noqa: E402
from alexnet_jax.dashboard import files  # noqa: E402
from alexnet_jax.dashboard import images  # noqa: E402
from alexnet_jax.dashboard import snapshots  # noqa: E402
from alexnet_jax.dashboard.workers import inference_client  # noqa: E402
from alexnet_jax.dashboard import jobs as jobs_lib  # noqa: E402
from alexnet_jax.dashboard import job_records  # noqa: E402
from alexnet_jax.data import errors as data_errors  # noqa: E402
from alexnet_jax.data import preparation  # noqa: E402
from alexnet_jax.data import synthetic  # noqa: E402

BASE = 'http://127.0.0.1:5000'


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  """A data root with a good 2-class folder and one whose class folder is a link that leads out."""
  tmp = tmp_path_factory.mktemp('sec')
  root, outside = tmp / 'data', tmp / 'outside'
  synthetic.make_image_folder(str(root / 'good'), num_classes=2, per_class=3, size=(32, 32))
  synthetic.make_image_folder(str(outside), num_classes=2, per_class=3, size=(32, 32))
  synthetic.make_image_folder(str(root / 'linkds'), num_classes=1, per_class=3, size=(32, 32))
  os.symlink(outside / 'class_1', root / 'linkds' / 'classA')          # a class folder that leads out
  synthetic.make_image_folder(str(root / 'filelinks'), num_classes=2, per_class=3, size=(32, 32))
  first = sorted(os.listdir(outside / 'class_0'))[0]
  os.symlink(outside / 'class_0' / first, root / 'filelinks' / 'class_0' / 'x.jpg')   # one file link out
  (root / 'labels.txt').write_text('class_0\nclass_1\n')
  return {'tmp': tmp, 'root': root, 'outside': outside, 'jobs': tmp / 'jobs'}


@pytest.fixture()
def client(env, tmp_path):
  app = app_lib.create_app(app_lib.Settings(jobs_dir=str(tmp_path / 'jobs'), data_roots=[str(env['root'])],
                                            start_worker=False, start_scheduler=False))
  with TestClient(app, base_url=BASE) as c:
    c.token = app.state.dash.token
    c.bearer = {'Authorization': f'Bearer {c.token}'}
    yield c


def _jobs(client):
  return dict(client.app.state.dash.manager.jobs)


def _folder_form(folder, **kw):
  form = {'method': 'folder', 'folder_train': str(folder), 'resize_width': '32', 'resize_height': '32',
          'folder_pct_val': '25', 'dataset_name': 'x'}
  form.update(kw)
  return form


# ---- 1. Uploaded list files are checked like local ones ------------------------------------------------

def test_uploaded_list_naming_outside_images_is_refused(client, env):
  outside_image = sorted((env['outside'] / 'class_0').iterdir())[0]
  good = env['root'] / 'good' / 'class_0' / sorted(os.listdir(env['root'] / 'good' / 'class_0'))[0]
  form = {'method': 'textfile', 'textfile_train_folder': str(env['root']), 'resize_width': '32',
          'resize_height': '32', 'dataset_name': 'up'}
  files = {'textfile_train_images': ('train.txt', f'{good} 0\n{outside_image} 1\n'.encode()),
           'textfile_labels_file': ('labels.txt', b'class_0\nclass_1\n')}
  r = client.post('/datasets/images/classification.json', data=form, files=files, headers=client.bearer)
  assert r.status_code == 400, r.text
  assert 'line 2' in r.json()['errors']['textfile_train_images']
  assert confinement.OUTSIDE in r.json()['errors']['textfile_train_images']
  assert _jobs(client) == {}
  # A relative path that climbs out of the folder is refused too.
  files['textfile_train_images'] = ('train.txt', b'../outside/class_0/000.jpg 0\n')
  r = client.post('/datasets/images/classification.json', data=form, files=files, headers=client.bearer)
  assert r.status_code == 400 and 'textfile_train_images' in r.json()['errors'], r.text


def test_jobs_the_dashboard_starts_carry_confine_to(client, env):
  r = client.post('/datasets/images/classification.json', data=_folder_form(env['root'] / 'good'),
                  headers=client.bearer)
  assert r.status_code == 200, r.text
  argv = _jobs(client)[r.json()['id']].doc['argv']
  flag = [a for a in argv if a.startswith('--confine_to=')]
  assert flag and str(env['root']) in flag[0].split('=', 1)[1].split(','), argv


# ---- 2. Links inside an allowed folder that lead out of it ---------------------------------------------

@pytest.mark.parametrize('folder', ['linkds', 'filelinks'])
def test_folder_with_links_leading_out_is_refused(client, env, folder):
  r = client.post('/datasets/images/classification.json', data=_folder_form(env['root'] / folder),
                  headers=client.bearer)
  assert r.status_code == 400, r.text
  message = r.json()['errors']['folder_train']
  assert 'lead outside the allowed folders' in message
  assert str(env['outside']) not in message                # where the link leads is not told
  assert _jobs(client) == {}


@pytest.mark.parametrize('folder', ['linkds', 'filelinks'])
def test_prepare_confine_to_refuses_links_leading_out(env, tmp_path, folder):
  roots = confinement.parse_roots(str(env['root']))
  opts = preparation.PrepareOptions(source=str(env['root'] / folder), output=str(tmp_path / 'out'),
                                    image_size=(16, 16), val_percent=0, min_per_class=1, confine_to=tuple(roots))
  with pytest.raises(data_errors.DataError, match='inside the allowed folders'):
    preparation.prepare_dataset(opts)
  assert not (tmp_path / 'out').exists()
  opts.confine_to = ()                                     # without the flag (the CLI's default): as before
  assert preparation.prepare_dataset(opts)   # the stats of a written dataset


def test_prepare_confine_to_checks_list_sources(env, tmp_path):
  outside_image = sorted((env['outside'] / 'class_0').iterdir())[0]
  good = sorted((env['root'] / 'good' / 'class_0').iterdir())
  listing = tmp_path / 'list.txt'                          # the list itself may live anywhere (an upload)
  listing.write_text(f'{good[0]} 0\n{good[1]} 0\n{outside_image} 1\n')
  opts = preparation.PrepareOptions(source=str(listing), output=str(tmp_path / 'out'), image_size=(16, 16),
                                    val_percent=0, min_per_class=1, labels_file=str(env['root'] / 'labels.txt'),
                                    confine_to=tuple(confinement.parse_roots(str(env['root']))))
  with pytest.raises(data_errors.DataError, match='--source: 1 path'):
    preparation.prepare_dataset(opts)


def test_classify_confine_to_flag_refuses_before_loading(env, tmp_path):
  listing = tmp_path / 'list.txt'
  listing.write_text(f'{sorted((env["outside"] / "class_0").iterdir())[0]}\n')
  r = subprocess.run([sys.executable, '-m', 'alexnet_jax.classify', f'--workdir={tmp_path}',
                      f'--image_list={listing}', f'--confine_to={env["root"]}'],
                     capture_output=True, text=True, timeout=120)
  assert r.returncode != 0 and confinement.OUTSIDE in r.stderr, r.stderr   # before any model is read
  bad = subprocess.run([sys.executable, '-m', 'alexnet_jax.classify', f'--workdir={tmp_path}',
                        f'--image_list={listing}', '--confine_to=/no/such/root'],
                       capture_output=True, text=True, timeout=120)
  assert bad.returncode != 0 and '--confine_to' in bad.stderr, bad.stderr


def test_outside_resolves_links_like_resolve_inside(tmp_path):
  root, elsewhere = tmp_path / 'root', tmp_path / 'elsewhere'
  (root / 'a').mkdir(parents=True)
  elsewhere.mkdir()
  (root / 'a' / '1.jpg').write_bytes(b'x')
  (elsewhere / 'x.jpg').write_bytes(b'x')
  os.symlink(elsewhere / 'x.jpg', root / 'a' / 'out.jpg')
  os.symlink(root / 'a' / '1.jpg', root / 'a' / 'in.jpg')
  os.symlink(elsewhere, root / 'dirlink')
  roots = confinement.parse_roots(str(root))
  paths = [f'{root}/a/1.jpg', f'{root}/a/out.jpg', f'{root}/a/in.jpg', f'{root}/dirlink/x.jpg',
           f'{root}/a/../a/1.jpg', f'{root}/dirlink/../root/a/1.jpg', f'{root}/dirlink/..', f'{root}/nope.jpg',
           f'{root}x/a', str(root)]
  expected = [p for p in paths if confinement.resolve_inside(p, roots) is None]
  assert confinement.outside(paths, roots) == expected == [
      f'{root}/a/out.jpg', f'{root}/dirlink/x.jpg', f'{root}/dirlink/..', f'{root}/nope.jpg', f'{root}x/a']


def test_confinement_library():
  roots = confinement.parse_roots('/usr,/usr')
  assert len(roots) == 1
  assert confinement.outside(['/usr/bin', '/etc/passwd', '/usr/no-such'], roots) == ['/etc/passwd',
                                                                                     '/usr/no-such']
  with pytest.raises(confinement.OutsideRootsError, match='x: 1 path') as e:
    confinement.check_all(['/etc/passwd'], roots, what='x')
  assert confinement.OUTSIDE in str(e.value)
  confinement.check_all(['/etc/passwd'], [], what='x')      # no roots: nothing asked
  assert confinement.printable('caf\udce9.jpg') == 'caf\\xe9.jpg'
  assert confinement.printable(b'caf\xe9.jpg') == 'caf\\xe9.jpg'


# ---- 4. Non-UTF-8 bytes in paths: every answer encodable ----------------------------------------------

def test_non_utf8_paths_in_a_classify_result_answer_200(client, env):
  manager = client.app.state.dash.manager
  job = manager.create('classify', name='latin', argv=['true'], form={}, extra={'images': 1})
  name = '/data/caf\udce9.jpg'                               # os.fsdecode(b'/data/caf\xe9.jpg')
  with open(os.path.join(job.dir, job_records.RESULT_FILE), 'w', encoding='ascii') as f:
    json.dump({'predictions': {name: [['class_0', 0.9]]}, 'errors': [{'path': name, 'error': 'x'}]}, f)
  fileio.write_json(os.path.join(job.dir, job_records.PROBLEMS_FILE),
                    [{'line': 3, 'text': 'raw\udcff bytes', 'reason': 'no label'}])
  r = client.get(f'/jobs/{job.id}.json')
  assert r.status_code == 200, r.text
  assert '/data/caf\\xe9.jpg' in r.json()['classifications']
  assert 'raw\\xff bytes' == r.json()['list_problems'][0]['text']
  page = client.get(f'/classifications/{job.id}')
  assert page.status_code == 200


# ---- 8. Errors tell nothing of what lies outside the roots --------------------------------------------

def test_path_errors_are_the_same_for_missing_and_outside(client, env, tmp_path):
  answers = {}
  for text in ('/etc', '/no/such/folder', str(env['outside']), 'linkds/classA'):
    r = client.post('/datasets/images/classification.json', data=_folder_form(text), headers=client.bearer)
    answers[text] = r.json()['errors']['folder_train'].replace(text, 'PATH')
  assert len(set(answers.values())) == 1, answers
  said = json.dumps(list(answers.values()))
  assert os.getcwd() not in said and str(env['outside']) not in said


# ---- 6. Abort pressed twice: one SIGTERM, the second press refused; Force stop is explicit -------------

_COUNTS_SIGTERM = r'''
import os, signal, sys, time
out = sys.argv[1]
def on_term(signum, frame):
  with open(out, 'a') as f:
    f.write('TERM\n')
signal.signal(signal.SIGTERM, on_term)
with open(out, 'a') as f:
  f.write('ready\n')
while True:
  time.sleep(0.05)
'''


def _wait_for(predicate, timeout=60.0, what='condition'):
  end = time.monotonic() + timeout
  while time.monotonic() < end:
    if predicate():
      return
    time.sleep(0.05)
  raise AssertionError(f'timed out waiting for {what}')


def test_second_abort_is_refused_and_sends_no_second_sigterm(client, tmp_path):
  manager = client.app.state.dash.manager
  log = tmp_path / 'signals.txt'
  job = manager.create('dataset', name='stubborn', argv=[sys.executable, '-c', _COUNTS_SIGTERM, str(log)],
                       form={})
  manager.tick()
  assert job.state == 'running'
  _wait_for(lambda: log.exists() and 'ready' in log.read_text(), what='the job to start')
  r = client.post(f'/jobs/{job.id}/abort', headers=client.bearer)
  assert r.status_code == 200 and r.json()['result'] == 'aborting'
  _wait_for(lambda: 'TERM' in log.read_text(), what='the SIGTERM')
  r = client.post(f'/jobs/{job.id}/abort', headers=client.bearer)
  assert r.status_code == 409 and 'already stopping' in r.json()['errors']['job'], r.text
  assert 'Force stop' in r.json()['errors']['job']
  assert client.delete(f'/jobs/{job.id}', headers=client.bearer).json()['result'] == 'deleting'
  assert log.read_text().count('TERM') == 1                 # Delete did not signal it again either
  r = client.post(f'/jobs/{job.id}/abort?force=1', headers=client.bearer)
  assert r.status_code == 200 and r.json()['result'] == 'killed'
  _wait_for(lambda: (manager.tick(), job.id not in manager.jobs)[1], what='the job to be killed and removed')
  assert log.read_text().count('TERM') == 1


# ---- 10. One dashboard per jobs folder ------------------------------------------------------------------

def test_second_dashboard_on_the_same_jobs_folder_stops_naming_the_first(env, tmp_path):
  jobs = tmp_path / 'jobs'
  first = app_lib.create_app(app_lib.Settings(jobs_dir=str(jobs), data_roots=[str(env['root'])], port=5123,
                                              start_worker=False))
  with TestClient(first, base_url=BASE):
    r = subprocess.run([sys.executable, '-m', 'alexnet_jax.dashboard', f'--jobs_dir={jobs}', '--port=0',
                        f'--data_root={env["root"]}'], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert f'process {os.getpid()}' in r.stderr and 'http://127.0.0.1:5123/' in r.stderr, r.stderr
    assert '--jobs_dir' in r.stderr
  # Once the first has stopped, the folder is free again.
  again = app_lib.create_app(app_lib.Settings(jobs_dir=str(jobs), data_roots=[str(env['root'])],
                                              start_worker=False))
  with TestClient(again, base_url=BASE) as c:
    assert c.get('/index.json').status_code == 200


# ---- 11. A full disk ------------------------------------------------------------------------------------

def _enospc(*args, **kwargs):
  raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_new_dataset_on_a_full_disk_answers_507_and_leaves_nothing(client, env, monkeypatch):
  jobs_dir = client.app.state.dash.jobs_dir
  before = sorted(os.listdir(jobs_dir))
  monkeypatch.setattr(fileio, 'write_json', _enospc)
  r = client.post('/datasets/images/classification.json', data=_folder_form(env['root'] / 'good'),
                  headers=client.bearer)
  assert r.status_code == 507, r.text
  assert 'no space left' in r.json()['errors']['job'] and os.path.realpath(jobs_dir) in r.json()['errors']['job']
  assert sorted(os.listdir(jobs_dir)) == before and _jobs(client) == {}


def test_a_state_change_that_could_not_be_written_is_written_later(client, monkeypatch):
  manager = client.app.state.dash.manager
  job = manager.create('dataset', name='quick', argv=[sys.executable, '-c', 'pass'], form={})
  manager.tick()
  assert job_records.read_job(job.dir)['state'] == 'running'
  _wait_for(lambda: job_records.read_exit(job.dir) is not None, what='the job to end')
  with monkeypatch.context() as m:
    m.setattr(fileio, 'write_json', _enospc)
    _wait_for(lambda: (manager.tick(), job.state == 'done')[1], what='the end to be noticed')
    assert job_records.read_job(job.dir)['state'] == 'running'     # done in memory; the disk is full
  manager.tick()                                     # space again: written at the next tick
  assert job_records.read_job(job.dir)['state'] == 'done'


# ---- 3. Image work bounded ---------------------------------------------------------------------------------

def _rss_kib(pid: int, field: str = 'VmHWM') -> int:
  with open(f'/proc/{pid}/status') as f:
    for line in f:
      if line.startswith(field + ':'):
        return int(line.split()[1])
  raise AssertionError(f'no {field} for {pid}')


@pytest.mark.skipif(not os.path.exists('/proc/self/status'), reason='reads the RSS from /proc')
def test_burst_of_large_resize_examples_keeps_the_server_small(env, tmp_path):
  """30 parallel GETs of the 4096x4096 example: the real server's peak RSS stays below 1 GB (it reached
  6.1 GB before), and the same request from another site's <img> is refused before any work."""
  import concurrent.futures
  import urllib.error
  import urllib.request
  server = subprocess.Popen([sys.executable, '-m', 'alexnet_jax.dashboard', f'--jobs_dir={tmp_path / "jobs"}',
                             '--port=0', f'--data_root={env["root"]}'], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
  try:
    first = server.stdout.readline()
    assert 'http://127.0.0.1:' in first, first
    base = first.split()[-1].split('?')[0].rstrip('/')
    url = f'{base}/datasets/resize_example.png?width=4096&height=4096&folder={env["root"] / "good"}'

    def get(headers=None):
      try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=300) as r:
          return r.status, len(r.read())
      except urllib.error.HTTPError as e:
        return e.code, 0

    assert get()[0] == 200
    before = _rss_kib(server.pid, 'VmRSS')
    with concurrent.futures.ThreadPoolExecutor(30) as pool:
      answers = list(pool.map(lambda _: get(), range(30)))
    assert all(status == 200 for status, _ in answers), answers
    peak = _rss_kib(server.pid)
    print(f'server RSS before the burst {before / 1024:.0f} MiB, peak {peak / 1024:.0f} MiB')
    assert peak < 1024 * 1024, f'peak RSS {peak / 1024:.0f} MiB'
    cross = get({'Sec-Fetch-Site': 'cross-site', 'Sec-Fetch-Mode': 'no-cors', 'Sec-Fetch-Dest': 'image'})
    assert cross[0] == 403
  finally:
    server.terminate()
    server.wait(timeout=60)


def test_cross_site_gets_that_do_work_are_refused(client, env):
  cross = {'Sec-Fetch-Site': 'cross-site', 'Sec-Fetch-Mode': 'no-cors', 'Sec-Fetch-Dest': 'image'}
  assert client.get('/datasets/resize_example.png', headers=cross).status_code == 403
  assert client.get('/models/x/download.zip', headers={**cross, 'Sec-Fetch-Mode': 'navigate'}).status_code == 403
  assert client.get('/index.json', headers={**cross, 'Sec-Fetch-Mode': 'cors'}).status_code == 403
  assert client.get('/', headers={**cross, 'Sec-Fetch-Mode': 'navigate'}).status_code == 200   # a link
  same = {'Sec-Fetch-Site': 'same-origin', 'Sec-Fetch-Mode': 'no-cors', 'Sec-Fetch-Dest': 'image'}
  assert client.get('/datasets/resize_example.png', headers=same).status_code == 200


def test_thumbnails_refuse_images_past_the_pixel_cap(tmp_path):
  import PIL.Image
  big = tmp_path / 'big.png'
  PIL.Image.new('L', (9000, 9000)).save(big)
  with pytest.raises(Exception) as e:
    images.thumbnail(str(big), 96)           # pylint: disable=protected-access
  assert getattr(e.value, 'status_code', None) == 404
  small = tmp_path / 'small.jpg'
  PIL.Image.new('RGB', (300, 200), (200, 10, 10)).save(small)
  assert images.thumbnail(str(small), 96)[:4] == b'\x89PNG'   # pylint: disable=protected-access


# ---- 5. The token only for a browser that proved it has it; .dashboard private --------------------------

def test_pages_carry_the_token_only_after_the_url_with_it_was_opened(client):
  token = client.token
  for url in ('/', '/datasets/images/classification/new', '/no/such/page'):
    r = client.get(url, headers={'Accept': 'text/html'})
    assert token not in r.text, url
    assert 'id="token-notice"' in r.text or r.status_code == 404, url
  r = client.get('/?token=wrong', follow_redirects=False)
  assert r.status_code == 401 and token not in r.text
  r = client.get(f'/?token={token}', follow_redirects=False)
  assert r.status_code == 303 and r.headers['location'] == '/' and 'httponly' in r.headers['set-cookie'].lower()
  r = client.get('/', headers={'Accept': 'text/html'})
  assert f'content="{token}"' in r.text and 'token-notice' not in r.text   # the cookie proves it now
  client.cookies.clear()
  assert token not in client.get('/').text


def test_dashboard_state_is_private(client, tmp_path):
  dash = client.app.state.dash
  for folder in (dash.state_dir, dash.inference.vis_root, os.path.join(dash.state_dir, 'uploads'),
                 dash.inference.predictor.cache_dir):
    if folder.endswith('uploads'):
      files.save_upload(dash.state_dir, b'x', 'a.png')
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o700, folder
  upload = files.save_upload(dash.state_dir, b'image bytes', 'b.jpg')
  assert stat.S_IMODE(os.stat(upload).st_mode) == 0o600
  assert upload != files.save_upload(dash.state_dir, b'image bytes', 'b.jpg')   # one per request


# ---- 7. Caches bounded and removed with their job --------------------------------------------------------

def test_download_bundles_are_pruned_and_deleted_with_their_job(tmp_path):
  cache = tmp_path / 'inference'
  cache.mkdir()
  made = []
  for i, job in enumerate(['a1', 'a1', 'b2', 'b2']):
    path = cache / f'{job}-step{i}-abc.tar.gz'
    path.write_bytes(b'x')
    (cache / f'{path.name}.info.json').write_text('{}')
    os.utime(path, (1000 + i, 1000 + i))
    made.append(path)
  (cache / 'census-x.json').write_text('{}')               # not a bundle: kept
  files.prune_bundles(str(cache), str(made[1]), limit=2)    # the answered one stays, + newest
  assert sorted(p.name for p in cache.iterdir() if not p.name.endswith('.json')) == sorted(
      [made[1].name, made[3].name])
  assert not (cache / f'{made[0].name}.info.json').exists()
  files.remove_bundles(str(cache), 'b2')
  assert sorted(p.name for p in cache.iterdir()) == sorted(
      [made[1].name, made[1].name + '.info.json', 'census-x.json'])


def test_a_refused_classify_one_upload_is_not_kept(client, monkeypatch):
  dash = client.app.state.dash
  uploads = os.path.join(dash.state_dir, 'uploads')
  before = set(os.listdir(uploads)) if os.path.isdir(uploads) else set()
  seen = []

  def refuse(workdir, image, **kwargs):  # pylint: disable=unused-argument
    seen.append(os.path.exists(image))
    raise inference_client.PredictorError('not an image', user_error=True)

  monkeypatch.setattr(dash.inference.predictor, 'classify_one', refuse)
  monkeypatch.setattr(dash.inference, 'model', lambda job_id: ({'id': 'm', 'name': 'm'}, '/nowhere'))
  monkeypatch.setattr(snapshots, 'snapshot_table', lambda workdir: {})
  monkeypatch.setattr(snapshots, 'choose_step', lambda table, **kw: 1)
  r = client.post('/models/images/classification/classify_one.json', data={'job_id': 'm'},
                  files={'image_file': ('x.png', b'not an image')}, headers=client.bearer)
  assert r.status_code == 400 and 'not an image' in r.text, r.text
  assert seen == [True]                                    # it was there while the request needed it
  assert set(os.listdir(uploads)) == before


# ---- 9. Form edges ----------------------------------------------------------------------------------------

def test_a_name_past_the_limit_is_reported_as_too_long(client, env):
  long = 'n' * 4001
  r = client.post('/datasets/images/classification.json',
                  data=_folder_form(env['root'] / 'good', dataset_name=long), headers=client.bearer)
  assert r.status_code == 400
  assert r.json()['errors']['dataset_name'] == 'too long: 4001 characters; at most 4000'
  from alexnet_jax.dashboard import errors as errors_lib, model_form
  with pytest.raises(errors_lib.DashboardError) as e:
    model_form.parse_model_form({'model_name': long, 'width': '1000'}, datasets={}, previous={},
                           experiments=['digits_exercise'])
  assert 'too long' in e.value.errors['model_name']
  assert 'from 0 to 4' in e.value.errors['width']                    # an upper bound on the width


def test_a_layout_the_snapshot_cannot_run_is_reported_on_the_layout_field(client, monkeypatch):
  from alexnet_jax.parallel import layouts
  dash = client.app.state.dash

  def refuse(workdir, image, **kwargs):  # pylint: disable=unused-argument
    # The library's own refusal (the worker passes it on as a user error).
    raise inference_client.PredictorError(layouts._single_tower_message('model', 1, 'lenet'),  # pylint: disable=protected-access
                                                       user_error=True)

  monkeypatch.setattr(dash.inference.predictor, 'classify_one', refuse)
  monkeypatch.setattr(dash.inference, 'model', lambda job_id: ({'id': 'm', 'name': 'm'}, '/nowhere'))
  monkeypatch.setattr(snapshots, 'snapshot_table', lambda workdir: {})
  monkeypatch.setattr(snapshots, 'choose_step', lambda table, **kw: 1)
  r = client.post('/models/images/classification/classify_one.json',
                  data={'job_id': 'm', 'layout': 'model'}, files={'image_file': ('x.png', b'x')},
                  headers=client.bearer)
  assert r.status_code == 400, r.text
  errors = r.json()['errors']
  assert list(errors) == ['layout'] and 'layout "model"' in errors['layout'] and 'lenet' in errors['layout']
  assert '--config' not in errors['layout'], errors


CHROMIUM = '/usr/bin/chromium'


def test_long_names_wrap_and_plotly_shows_markup_as_text(tmp_path):
  """In a browser: a 4000-character name keeps the home page at the window's width, and class names
  with HTML in them are drawn as text by the confusion matrix (no <b> or <a> element in the chart)."""
  playwright = pytest.importorskip('playwright.sync_api')
  if not os.path.exists(CHROMIUM):
    pytest.skip(f'{CHROMIUM} is missing')
  jobs, data = tmp_path / 'jobs', tmp_path / 'data'
  data.mkdir()
  manager = jobs_lib.JobManager(str(jobs), devices=['cpu0'])
  manager.create('dataset', name='x' * 4000, argv=['true'], form={})
  workdir = tmp_path / 'model'
  workdir.mkdir()
  classes = ['<b>bold</b>', '<a href="http://example.com/">link</a>']
  (workdir / 'labels.txt').write_text('\n'.join(classes) + '\n')
  job = manager.create('classify', name='markup', argv=['true'], form={},
                       extra={'model_workdir': str(workdir), 'images': 2})
  with open(os.path.join(job.dir, job_records.RESULT_FILE), 'w') as f:
    json.dump({'predictions': {}, 'accuracy': {'top1': 1.0, 'top5': 1.0, 'count': 2, 'confusion': [[1, 0], [0, 1]],
                                               'per_class': {}}}, f)
  del manager
  server = subprocess.Popen([sys.executable, '-m', 'alexnet_jax.dashboard', f'--jobs_dir={jobs}', '--port=0',
                             f'--data_root={data}'], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    url = server.stdout.readline().split()[-1]
    base = url.split('/?')[0]
    with playwright.sync_playwright() as p:
      browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                  args=['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'])
      page = browser.new_page(viewport={'width': 1200, 'height': 800})
      page.goto(url)
      page.wait_for_selector('table.jobs')
      assert page.evaluate('document.documentElement.scrollWidth') <= 1200
      page.goto(f'{base}/classifications/{job.id}')
      page.wait_for_selector('#confusion-chart .main-svg', timeout=60_000)
      assert page.locator('#confusion-chart b, #confusion-chart a').count() == 0
      ticks = page.evaluate("[...document.querySelectorAll('#confusion-chart .xtick text')].map(t => t.textContent)")
      assert ticks == classes, ticks
      browser.close()
  finally:
    server.terminate()
    server.wait(timeout=60)
