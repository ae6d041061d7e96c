"""The dashboard's routes through FastAPI's TestClient: every page and JSON twin, bad input, security.

One module-scoped server (jobs folder and data root in a temporary folder) runs a real dataset job (the
prepare tool on a generated 3-class JPEG folder) and a real model job (a tiny AlexNet, 2 epochs), so the
routes are exercised on what the tools actually write. Bad input must give field errors and start
nothing. The web process must never import JAX: the test process has imported it already (conftest), so
that is checked in a fresh subprocess that builds the app and renders every page.
"""

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
import types
import warnings

import pytest

pytest.importorskip('fastapi')
with warnings.catch_warnings():                 # starlette: "install httpx2 instead" (still works)
  warnings.simplefilter('ignore')
  from fastapi.testclient import TestClient  # noqa: E402

from alexnet_jax.dashboard import app as app_lib  # noqa: E402
from alexnet_jax.dashboard import model_form  # noqa: E402
from alexnet_jax.dashboard import jobs as jobs_lib  # noqa: E402
from alexnet_jax.dashboard import job_records  # noqa: E402
from alexnet_jax.data import synthetic  # noqa: E402

BASE = 'http://127.0.0.1:5000'


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  """Folders: data root with a 3-class folder, a 1-class folder and a symlink leading out; jobs folder."""
  tmp = tmp_path_factory.mktemp('dash')
  root = tmp / 'data'
  outside = tmp / 'outside'
  synthetic.make_image_folder(str(root / 'three'), num_classes=3, per_class=8, size=(40, 30))
  synthetic.make_image_folder(str(root / 'one'), num_classes=1, per_class=6, size=(40, 30))
  synthetic.make_image_folder(str(outside), num_classes=3, per_class=3, size=(40, 30))
  os.symlink(outside, root / 'escape')                      # inside the root, leads out of it
  return {'tmp': tmp, 'root': root, 'outside': outside, 'jobs': tmp / 'jobs'}


@pytest.fixture(scope='module')
def client(env):
  app = app_lib.create_app(app_lib.Settings(jobs_dir=str(env['jobs']), data_roots=[str(env['root'])],
                                            poll_s=0.2))
  with TestClient(app, base_url=BASE) as c:
    c.token = app.state.dash.token
    c.bearer = {'Authorization': f'Bearer {c.token}'}
    yield c


def _wait(client, url, timeout=900):   # a ceiling: tools start and compile slowly on a busy host
  end = time.monotonic() + timeout
  while time.monotonic() < end:
    view = client.get(url).json()
    if view['state'] not in ('queued', 'running'):     # ours; DIGITS' name is under 'status'
      return view
    time.sleep(0.3)
  raise AssertionError(f'{url} still {view["state"]} after {timeout} s: {view}')


def _dataset_form(env, **kw):
  form = {'method': 'folder', 'folder_train': str(env['root'] / 'three'), 'resize_width': '72',
          'resize_height': '72', 'resize_mode': 'squash', 'encoding': 'jpg', 'folder_pct_val': '25',
          'folder_pct_test': '0', 'dataset_name': 'three'}
  form.update(kw)
  return form


@pytest.fixture(scope='module')
def dataset(client, env):
  r = client.post('/datasets/images/classification.json', data=_dataset_form(env), headers=client.bearer)
  assert r.status_code == 200, r.text
  job_id = r.json()['id']
  view = _wait(client, f'/datasets/{job_id}.json')
  assert view['state'] == 'done' and view['status'] == 'Done', view
  return job_id


def _model_form(dataset_id, **kw):
  form = {'dataset': dataset_id, 'model_name': 'tiny', 'train_epochs': '2', 'batch_size': '8',
          'learning_rate': '0.01', 'standard_networks': 'alexnet', 'width': '0.0625', 'crop_size': '64',
          'layout': 'model', 'solver_type': 'sgd', 'lr_policy': 'step', 'snapshot_interval': '1',
          'val_interval': '1'}
  form.update(kw)
  return form


@pytest.fixture(scope='module')
def model(client, dataset):
  r = client.post('/models/images/classification.json', data=_model_form(dataset), headers=client.bearer)
  assert r.status_code == 200, r.text
  job_id = r.json()['id']
  # DIGITS answers with the new job's json_dict(): its status and stats, no snapshot yet.
  assert r.json()['job id'] == job_id and r.json()['dataset_id'] == dataset, r.json()
  assert r.json()['status'] in ('Waiting', 'Running') and r.json()['snapshot file'] == 'no snapshots'
  view = _wait(client, f'/models/{job_id}.json')
  assert view['state'] == 'done' and view['status'] == 'Done', view
  return job_id


def _count_jobs(client):
  index = client.get('/index.json').json()
  return len(index['datasets']) + len(index['models'])


# ---- Pages, the index, OpenAPI ------------------------------------------------------------------------

def test_pages_and_openapi(client):
  for url in ('/', '/datasets/images/classification/new', '/models/images/classification/new', '/compare'):
    r = client.get(url)
    assert r.status_code == 200, url
    assert 'text/html' in r.headers['content-type']
    assert "script-src 'self'" in r.headers['content-security-policy']
  spec = client.get('/openapi.json').json()
  for path in ('/index.json', '/datasets/images/classification.json', '/models/images/classification.json',
               '/jobs/{job_id}/abort', '/jobs/{job_id}/resume', '/jobs/{job_id}', '/datasets/{job_id}.json',
               '/models/{job_id}.json'):
    assert path in spec['paths'], path
  assert set(spec['paths']['/jobs/{job_id}']) == {'put', 'delete'}
  for url in ('/docs', '/redoc'):                      # they would load a CDN
    assert client.get(url).status_code == 404
  index = client.get('/index.json').json()
  assert set(index) >= {'datasets', 'models', 'devices'}
  assert client.get('/models/nosuchjob.json').json() == {'errors': {'request': 'no job nosuchjob'}}


def test_plotly_is_served_locally(client):
  home = client.get('/models/images/classification/new').text
  assert 'cdn' not in home.lower()
  import importlib.metadata
  version = importlib.metadata.version('plotly')
  r = client.get(f'/static/plotly-{version}.min.js')
  assert r.status_code == 200 and len(r.content) > 1_000_000
  assert 'immutable' in r.headers['cache-control']
  assert client.get('/static/plotly-0.0.1.min.js').status_code == 404


# ---- Security ------------------------------------------------------------------------------------------

def test_token_file_is_private(client, env):
  path = env['jobs'] / '.dashboard' / 'token'
  assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
  assert path.read_text().strip() == client.token


def test_state_changing_requests_need_the_token(client, env):
  before = _count_jobs(client)
  form = _dataset_form(env)
  r = client.post('/datasets/images/classification.json', data=form)
  assert r.status_code == 403 and 'token' in r.json()['errors']
  r = client.post('/datasets/images/classification.json', data=form, headers={'Authorization': 'Bearer nope'})
  assert r.status_code == 403
  r = client.post('/datasets/images/classification.json', data=form, headers={'X-Dashboard-Token': 'x' * 43})
  assert r.status_code == 403
  for method, url in (('post', '/jobs/x/abort'), ('post', '/jobs/x/resume'), ('put', '/jobs/x'),
                      ('delete', '/jobs/x'), ('post', '/demo')):
    assert getattr(client, method)(url).status_code == 403, url
  assert _count_jobs(client) == before


def test_host_allowlist(client):
  assert client.get('/', headers={'Host': 'evil.example'}).status_code == 400
  assert client.get('/index.json', headers={'Host': 'rebind.attacker.test:5000'}).json() == {
      'errors': {'host': 'this server does not answer to that Host'}}
  assert client.get('/', headers={'Host': 'localhost:5000'}).status_code == 200


def test_cross_origin_requests_are_refused_even_with_the_token(client, env):
  before = _count_jobs(client)
  form = _dataset_form(env)
  for headers in ({'Origin': 'http://evil.example'}, {'Origin': 'null'}, {'Origin': 'http://127.0.0.1:6000'},
                  {'Sec-Fetch-Site': 'cross-site'}, {'Sec-Fetch-Site': 'same-site'}):
    r = client.post('/datasets/images/classification.json', data=form, headers={**client.bearer, **headers})
    assert r.status_code == 403 and 'origin' in r.json()['errors'], headers
  assert _count_jobs(client) == before
  same = {**client.bearer, 'Origin': BASE, 'Sec-Fetch-Site': 'same-origin'}
  r = client.put('/jobs/nosuch', data={'name': 'x'}, headers=same)
  assert r.status_code == 404                            # past the guard: the job does not exist


def test_pages_need_the_token_when_required(env, tmp_path):
  app = app_lib.create_app(app_lib.Settings(jobs_dir=str(tmp_path / 'jobs'), data_roots=[str(env['root'])],
                                            host='0.0.0.0', allowed_hosts=['127.0.0.1'],
                                            start_worker=False, start_scheduler=False))
  token = app.state.dash.token
  with TestClient(app, base_url=BASE) as c:
    assert c.get('/index.json').status_code == 401
    r = c.get(f'/?token={token}', follow_redirects=False)
    assert r.status_code == 303 and 'httponly' in r.headers['set-cookie'].lower()
    assert 'samesite=strict' in r.headers['set-cookie'].lower()
    assert c.get('/index.json').status_code == 200          # the cookie now
    c.cookies.clear()
    assert c.get('/index.json', headers={'Authorization': f'Bearer {token}'}).status_code == 200


def test_body_size_cap(env, tmp_path):
  app = app_lib.create_app(app_lib.Settings(jobs_dir=str(tmp_path / 'jobs'), data_roots=[str(env['root'])],
                                            max_body_bytes=4096, start_worker=False, start_scheduler=False))
  auth = {'Authorization': f'Bearer {app.state.dash.token}'}
  with TestClient(app, base_url=BASE) as c:
    big = {'dataset_name': 'x' * 10_000}
    r = c.post('/datasets/images/classification.json', data=big, headers=auth)       # Content-Length
    assert r.status_code == 413 and 'larger than' in r.json()['errors']['request']

    def chunks():                                                                      # no Content-Length
      for _ in range(10):
        yield b'dataset_name=' + b'x' * 1000
    r = c.post('/datasets/images/classification.json', content=chunks(),
               headers={**auth, 'Content-Type': 'application/x-www-form-urlencoded'})
    assert r.status_code == 413, r.text
    assert app.state.dash.manager.jobs == {}


# ---- New Dataset: bad input ---------------------------------------------------------------------------

@pytest.mark.parametrize('change, field, words', [
    ({'folder_train': '/etc'}, 'folder_train', 'no such folder inside the allowed folders'),
    ({'folder_train': 'OUTSIDE'}, 'folder_train', 'no such folder inside the allowed folders'),
    ({'folder_train': 'escape'}, 'folder_train', 'no such folder inside the allowed folders'),
    ({'folder_train': '/no/such/folder'}, 'folder_train', 'no such folder inside the allowed folders'),
    ({'folder_train': 'one'}, 'folder_train', 'one class'),
    ({'folder_train': ''}, 'folder_train', 'required'),
    ({'folder_pct_val': '60', 'folder_pct_test': '50'}, 'folder_pct_val', 'less than 100'),
    ({'folder_pct_val': '101'}, 'folder_pct_val', 'from 0 to 100'),
    ({'resize_width': '0'}, 'resize_width', 'from 1 to 4096'),
    ({'resize_height': 'big'}, 'resize_height', 'not a whole number'),
    ({'resize_channels': '2'}, 'resize_channels', '3 (color) or 1'),
    ({'resize_mode': 'stretch'}, 'resize_mode', 'choose one of'),
    ({'encoding': 'gif'}, 'encoding', 'choose one of'),
    ({'dataset_name': ''}, 'dataset_name', 'required'),
    ({'folder_train_min_per_class': '5', 'folder_train_max_per_class': '3'}, 'folder_train_max_per_class',
     'less than the minimum'),
    ({'has_val_folder': 'true', 'folder_val': 'escape'}, 'folder_val', 'inside the allowed folders'),
    ({'method': 'lmdb'}, 'method', 'choose one of'),
])
def test_dataset_form_errors(client, env, change, field, words):
  before = _count_jobs(client)
  form = _dataset_form(env, **change)
  if form['folder_train'] == 'OUTSIDE':
    form['folder_train'] = str(env['outside'])
  r = client.post('/datasets/images/classification.json', data=form, headers=client.bearer)
  assert r.status_code == 400, r.text
  errors = r.json()['errors']
  assert field in errors and words in errors[field], errors
  assert _count_jobs(client) == before                   # nothing started


def test_text_file_lists_confined(client, env):
  root = env['root']
  labels = root / 'labels.txt'
  labels.write_text('class_0\nclass_1\nclass_2\n')
  good = root / 'train_list.txt'
  good.write_text(''.join(f'three/class_{c}/{i:03d}.jpg {c}\n' for c in range(3) for i in range(8)))
  bad = root / 'bad_list.txt'
  bad.write_text(f'{env["outside"]}/class_0/000.jpg 0\n')
  form = {'method': 'textfile', 'textfile_use_local_files': 'true', 'textfile_local_labels_file': str(labels),
          'textfile_train_folder': str(root), 'resize_width': '40', 'resize_height': '40', 'dataset_name': 'lists'}
  r = client.post('/datasets/images/classification.json',
                  data={**form, 'textfile_local_train_images': str(bad)}, headers=client.bearer)
  assert r.status_code == 400
  assert 'no such file inside the allowed folders' in r.json()['errors']['textfile_local_train_images']
  r = client.post('/datasets/images/classification.json', data={k: v for k, v in form.items()
                                                                 if k != 'textfile_local_labels_file'},
                  headers=client.bearer)
  assert r.status_code == 400 and 'textfile_local_labels_file' in r.json()['errors']
  r = client.post('/datasets/images/classification.json',
                  data={**form, 'textfile_local_train_images': str(good), 'folder_pct_val': '0'},
                  headers=client.bearer)
  assert r.status_code == 200, r.text
  job = client.app.state.dash.manager.get(r.json()['id'])
  assert f'--source={good}' in job.doc['argv'] and f'--labels_file={labels}' in job.doc['argv']
  assert client.post(f'/jobs/{job.id}/abort', headers=client.bearer).status_code == 200
  assert client.delete(f'/jobs/{job.id}', headers=client.bearer).json()['result'] in ('deleted', 'deleting')


def test_path_completion_stays_inside(client, env):
  paths = client.get('/paths/complete', params={'path': str(env['root']) + '/'}).json()['paths']
  assert str(env['root'] / 'three') + '/' in paths
  assert not any('escape' in p for p in paths)            # a link that leads out is not offered
  assert client.get('/paths/complete', params={'path': '/etc/'}).json()['paths'] == []
  roots = {str(r) for r in client.app.state.dash.roots}
  above = client.get('/paths/complete', params={'path': str(env['tmp']) + '/'}).json()['paths']
  assert set(above) <= roots and str(env['outside']) not in above   # above the roots: the roots only


def test_resize_example(client, env):
  r = client.get('/datasets/resize_example.png', params={'width': 64, 'height': 48, 'channels': 1,
                                                         'folder': str(env['root'] / 'three')})
  assert r.status_code == 200 and r.content[:8] == b'\x89PNG\r\n\x1a\n'
  assert client.get('/datasets/resize_example.png', params={'width': 0}).status_code == 400


# ---- A dataset job, end to end ----------------------------------------------------------------------

def test_dataset_job(client, dataset):
  view = client.get(f'/datasets/{dataset}.json').json()
  assert view['progress'] == 1.0 and view['classes'] == ['class_0', 'class_1', 'class_2']
  assert view['split_sizes'] == {'train': 18, 'val': 6}
  assert view['image_size'] == [72, 72] and view['encoding'] == 'jpg'
  assert {'train.txt', 'val.txt', 'labels.txt', 'mean.png', 'output.log'} <= set(view['files'])
  assert [h['state'] for h in view['history']] == ['queued', 'running', 'done']
  page = client.get(f'/datasets/{dataset}').text
  assert 'id="histogram"' in page and f'/files/{dataset}/mean.png' in page
  assert client.get(f'/files/{dataset}/labels.txt').text.split() == ['class_0', 'class_1', 'class_2']
  for name in ('../job.json', '..%2F..%2Fetc%2Fpasswd', 'mean.npy', 'train.array_record'):
    assert client.get(f'/files/{dataset}/{name}').status_code == 404, name
  index = client.get('/index.json').json()
  row = next(d for d in index['datasets'] if d['id'] == dataset)
  assert row['status'] == 'Done' and row['state'] == 'done'    # DIGITS' status name; ours under 'state'
  assert row['name'] == 'three' and row['size_bytes'] > 0
  # DIGITS' verbose dataset JSON (digits/dataset/job.py), beside ours.
  assert view['ParseFolderTasks'] == [{'name': 'Parse Folder', 'label_count': 3, 'train_count': 18,
                                       'val_count': 6, 'test_count': 0}]
  assert [(t['name'], t['entries'], t['image_width'], t['image_height'], t['image_channels'], t['encoding'])
          for t in view['CreateDbTasks']] == [('Create DB (train)', 18, 72, 72, 3, 'jpg'),
                                              ('Create DB (val)', 6, 72, 72, 3, 'jpg')]


def test_explore_filters_by_class(client, dataset):
  page = client.get(f'/datasets/{dataset}/explore', params={'label': 1, 'size': 10}).text
  assert page.count('<figure') == 6 and page.count('<figcaption>class_1</figcaption>') == 6
  page = client.get(f'/datasets/{dataset}/explore', params={'size': 10, 'page': 2}).text
  assert page.count('<figure') == 8 and 'page 2 of 2' in page
  png = client.get(f'/datasets/{dataset}/images/train/0.png')
  assert png.status_code == 200 and png.content[:4] == b'\x89PNG'
  import io
  import PIL.Image
  assert PIL.Image.open(io.BytesIO(png.content)).size == (72, 72)   # the stored, resized image
  assert client.get(f'/datasets/{dataset}/images/train/999.png').status_code == 404
  assert client.get(f'/datasets/{dataset}/images/secret/0.png').status_code == 404


# ---- New Model: bad input --------------------------------------------------------------------------

@pytest.mark.parametrize('change, field, words', [
    ({'dataset': ''}, 'dataset', 'required'),
    ({'dataset': 'nosuch'}, 'dataset', 'no such dataset'),
    ({'batch_size': 'abc'}, 'batch_size', 'a whole number'),
    ({'learning_rate': '-1'}, 'learning_rate', 'a number > 0'),
    ({'learning_rate': ','.join(['0.1'] * 40)}, 'learning_rate', 'at most 32'),
    ({'train_epochs': '0'}, 'train_epochs', 'from 1 to'),
    ({'solver_type': 'lbfgs'}, 'solver_type', 'choose one of'),
    ({'standard_networks': 'resnet'}, 'standard_networks', 'choose one of'),
    ({'layout': 'pipeline'}, 'layout', 'choose one of'),
    ({'model_name': ''}, 'model_name', 'required'),
    ({'experiment': 'mine'}, 'experiment', 'choose one of'),
    ({'width': '0'}, 'width', 'must be > 0'),
    # The library's own checks (config_checks in the worker), mapped back to DIGITS' fields:
    ({'crop_size': '80'}, 'crop_size', 'the shorter side of --config.data.image_size=72,72'),
    ({'crop_size': '32'}, 'crop_size', 'needs inputs of at least'),
    ({'standard_networks': 'lenet', 'layout': 'model'}, 'layout', 'one tower per device'),
    ({'lr_policy': 'step', 'lr_step_gamma': '0'}, 'lr_step_gamma', 'gamma'),
])
def test_model_form_errors(client, dataset, change, field, words):
  before = _count_jobs(client)
  r = client.post('/models/images/classification.json', data=_model_form(dataset, **change),
                  headers=client.bearer)
  assert r.status_code == 400, r.text
  errors = r.json()['errors']
  assert field in errors and words in errors[field], errors
  assert 'Traceback' not in r.text
  assert _count_jobs(client) == before


def test_sweep_abort_resume_edit_delete(client, dataset):
  r = client.post('/models/images/classification.json', headers=client.bearer,
                  data=_model_form(dataset, model_name='sweep', batch_size='4,8', learning_rate='0.01,0.001',
                                   train_epochs='50'))
  assert r.status_code == 200, r.text
  created = r.json()['jobs']                          # DIGITS' answer to a sweep: {"jobs": [...]}
  assert len(created) == 4 and {j['status'] for j in created} <= {'Waiting', 'Running'}
  assert sorted(j['name'] for j in created)[0] == 'sweep [batch_size=4, learning_rate=0.001]'
  manager = client.app.state.dash.manager
  argvs = [manager.get(j['id']).doc['argv'] for j in created]
  assert all(a[:3] == ['python', '-m', 'alexnet_jax.train'] for a in argvs)
  assert {a[-2] for a in argvs} == {'--config.batch_size=4', '--config.batch_size=8'}
  assert all(manager.get(j['id']).doc['group'] == 'sweep' for j in created)
  for job in created:                                  # abort the queued / running ones
    r = client.post(f'/jobs/{job["id"]}/abort', headers=client.bearer)
    assert r.status_code == 200, r.text
  first = created[-1]['id']
  view = _wait(client, f'/models/{first}.json', timeout=600)
  assert view['state'] == 'stopped' and view['status'] == 'Aborted'
  assert client.post(f'/jobs/{first}/abort', headers=client.bearer).status_code == 400  # not running
  assert client.post(f'/jobs/{first}/resume', headers=client.bearer).json()['result'] == 'queued'
  assert client.post(f'/jobs/{first}/resume', headers=client.bearer).status_code == 400  # queued already
  r = client.put(f'/jobs/{first}', data={'name': 'renamed', 'notes': 'a <b>note</b>'}, headers=client.bearer)
  assert r.status_code == 200 and r.json()['name'] == 'renamed'
  r = client.put(f'/jobs/{first}', data={'job_name': 'digits', 'job_notes': 'n'}, headers=client.bearer)
  assert (r.json()['name'], r.json()['notes']) == ('digits', 'n')         # DIGITS' field names
  client.put(f'/jobs/{first}', data={'name': 'renamed', 'notes': 'a <b>note</b>'}, headers=client.bearer)
  assert client.put(f'/jobs/{first}', json={'name': ''}, headers=client.bearer).status_code == 400
  assert client.put(f'/jobs/{first}', json={'argv': ['rm']}, headers=client.bearer).status_code == 400
  page = client.get(f'/models/{first}').text
  assert 'a &lt;b&gt;note&lt;/b&gt;' in page and '<b>note</b>' not in page   # autoescaped
  # A dataset in use cannot be deleted.
  r = client.delete(f'/datasets/{dataset}', headers=client.bearer)          # DIGITS' route for /jobs/<id>
  assert r.status_code == 409 and 'used by' in r.json()['errors']['job']
  for job, kind in zip(created, ('jobs', 'models', 'jobs', 'models')):
    r = client.delete(f'/{kind}/{job["id"]}', headers=client.bearer)
    assert r.json()['result'] in ('deleted', 'deleting')
  end = time.monotonic() + 600
  while any(manager.get(j['id']) for j in created) and time.monotonic() < end:
    time.sleep(0.3)
  assert not any(manager.get(j['id']) for j in created)
  assert client.get(f'/models/{first}.json').status_code == 404


# ---- A model job, end to end ---------------------------------------------------------------------------

def test_model_job(client, model, dataset):
  view = client.get(f'/models/{model}.json').json()
  assert view['status'] == 'Done' and view['state'] == 'done' and view['progress'] == 1.0
  # DIGITS' shape: snapshots is a list of epoch numbers; our rows are under snapshot_details.
  assert view['snapshots'] == [1, 2] and view['snapshots_epochs'] == [1, 2]
  assert [s['epoch'] for s in view['snapshot_details']] == [1.0, 2.0]
  assert view['dataset_id'] == dataset and os.path.isdir(view['directory'])
  assert set(view['latest_metrics']) >= {'train', 'val'}
  assert view['dataset']['id'] == dataset
  assert view['config']['model']['width'] == 0.0625 and view['config']['layout'] == 'model'
  assert {'config.json', 'metrics.jsonl', 'train.log'} <= set(view['files'])
  index = client.get('/index.json').json()
  row = next(m for m in index['models'] if m['id'] == model)
  assert row['best_val_top1'] is not None and row['dataset'] == dataset
  assert row['dataset_id'] == dataset and index['version']      # DIGITS' index.json keys, beside ours
  assert '<polyline' in client.get('/').text                 # the loss sparkline
  compare = client.get('/compare', params={'ids': model}).text
  assert 'compare-loss' in compare


def test_model_stream(client, model):
  events = []
  with client.stream('GET', f'/models/{model}/stream') as r:
    assert r.headers['content-type'].startswith('text/event-stream')
    event = None
    for line in r.iter_lines():
      if line.startswith('event: '):
        event = line[7:]
      elif line.startswith('data: '):
        events.append((event, json.loads(line[6:])))
        if event == 'status':
          break
  kinds = [e for e, _ in events]
  assert kinds == ['metrics', 'status']
  records = events[0][1]
  assert {r['split'] for r in records} == {'train', 'val'}
  assert events[1][1]['status'] == 'done'


def test_clone_and_lr_curve(client, model):
  r = client.get(f'/clone/{model}', follow_redirects=False)
  assert r.status_code == 303 and r.headers['location'].endswith(f'clone={model}')
  page = client.get(r.headers['location']).text
  assert 'value="tiny (clone)"' in page and 'value="0.0625"' in page
  job = client.app.state.dash.manager.get(model)
  params = {**_model_form(job.doc['dataset']), 'lr_policy': 'step', 'lr_step_size': '50'}
  curve = client.get('/models/lr_curve.json', params=params).json()
  assert curve['lr'][0] == pytest.approx(0.01) and curve['lr'][-1] == pytest.approx(0.001)


def test_cli_runs_in_the_jobs_folder_appear(client, env):
  workdir = env['jobs'] / 'from_cli'
  workdir.mkdir()
  (workdir / 'config.json').write_text(json.dumps({'num_epochs': 4, 'finetune': {
      'freeze': 'conv', 'lr_mult': 'fc8:10', 'preset': ''}}))
  (workdir / 'metrics.jsonl').write_text('{"step": 5, "epoch": 1.0, "split": "train", "loss": 1.0}\n')
  (workdir / 'status.json').write_text(json.dumps({'kind': 'train', 'state': 'running', 'pid': 2**22 + 7,
                                                   'host': os.uname().nodename, 'step': 5, 'total_steps': 20,
                                                   'started_unix': time.time() - 5,
                                                   'command': 'python -m alexnet_jax.train ...'}))
  time.sleep(jobs_lib.ROWS_TTL_S + 0.1)
  models = client.get('/index.json').json()['models']
  row = next(m for m in models if m['id'] == 'from_cli')
  assert row['external'] and row['state'] == 'interrupted'     # recorded running, process gone
  assert row['status'] == 'Aborted'                             # as DIGITS names a job a crash left running
  view = client.get('/models/from_cli.json').json()
  assert view['external'] and view['command'] == 'python -m alexnet_jax.train ...'
  assert view['finetune_text'] == 'freeze conv · lr_mult fc8:10'   # the fine-tuning controls, listed
  page = client.get('/models/from_cli')
  assert page.status_code == 200 and '<dt>Fine-tuning</dt><dd>freeze conv · lr_mult fc8:10</dd>' in page.text
  assert client.post('/jobs/from_cli/resume', headers=client.bearer).status_code == 400
  assert client.delete('/jobs/from_cli', headers=client.bearer).json()['result'] == 'deleted'
  assert not workdir.exists()


# ---- The web process never imports JAX ---------------------------------------------------------------

NO_JAX = r'''
import sys, json, warnings
warnings.simplefilter('ignore')
from fastapi.testclient import TestClient
from alexnet_jax.dashboard import app as app_lib
app = app_lib.create_app(app_lib.Settings(jobs_dir=sys.argv[1], data_roots=[sys.argv[2]], start_worker=False,
                                          start_scheduler=False))
with TestClient(app, base_url='http://127.0.0.1:5000') as c:
  index = c.get('/index.json').json()
  ds, m = index['datasets'][0]['id'], index['models'][0]['id']
  urls = ['/', '/?partial=1', '/index.json', '/datasets/images/classification/new', f'/datasets/{ds}',
          f'/datasets/{ds}.json', f'/datasets/{ds}/explore?label=0', f'/datasets/{ds}/images/train/0.png',
          '/datasets/resize_example.png?width=32&height=24', '/models/images/classification/new',
          f'/models/{m}', f'/models/{m}.json', f'/compare?ids={m}', f'/files/{ds}/labels.txt',
          f'/files/{m}/config.json', '/openapi.json', f'/paths/complete?path={sys.argv[2]}/']
  codes = [c.get(u).status_code for u in urls]
  with c.stream('GET', f'/models/{m}/stream') as r:
    for line in r.iter_lines():
      if line.startswith('event: status'):
        break
print(json.dumps({'codes': codes, 'jax': sorted(k for k in sys.modules if k == 'jax' or k.startswith('jax.')
                                                 or k.startswith(('jaxlib', 'flax', 'optax', 'grain')))}))
'''


def test_web_process_never_imports_jax(client, model, env):
  out = subprocess.run([sys.executable, '-c', NO_JAX, str(env['jobs']), str(env['root'])],
                       capture_output=True, text=True, timeout=120, check=True)
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result['jax'] == [], result
  assert all(c == 200 for c in result['codes']), result


def test_start_time_without_jax(tmp_path):
  """The command answers --help and builds its app fast (the benchmark measures the real start)."""
  code = ('import sys, time; t = time.perf_counter(); from alexnet_jax.dashboard import app as a; '
          f'a.create_app(a.Settings(jobs_dir={str(tmp_path)!r}, start_worker=False)); '
          'print(time.perf_counter() - t, "jax" in sys.modules)')
  out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=60, check=True)
  seconds, jax_loaded = out.stdout.split()
  assert jax_loaded == 'False'
  assert float(seconds) < 10         # < 2 s on a quiet box; generous for a loaded CI machine


def test_forms_map_problems():
  errors = model_form.map_problems(['--config.data.crop_size=32: too small', '--config.layout=model: no',
                               'something else'])
  assert errors == {'crop_size': '--config.data.crop_size=32: too small', 'layout': '--config.layout=model: no',
                    'config': 'something else'}


def test_uploaded_lists_are_saved_in_the_job(client, env):
  root = env['root']
  lines = ''.join(f'three/class_{c}/{i:03d}.jpg {c}\n' for c in range(3) for i in range(8))
  files = {'textfile_train_images': ('train.txt', lines.encode(), 'text/plain'),
           'textfile_labels_file': ('labels.txt', b'class_0\nclass_1\nclass_2\n', 'text/plain')}
  form = {'method': 'textfile', 'textfile_train_folder': str(root), 'resize_width': '40',
          'resize_height': '40', 'dataset_name': 'uploaded'}
  r = client.post('/datasets/images/classification.json', data={k: v for k, v in form.items()
                                                                 if k != 'textfile_train_folder'},
                  files=files, headers=client.bearer)
  assert r.status_code == 400 and 'textfile_train_folder' in r.json()['errors']
  r = client.post('/datasets/images/classification.json', data=form, files=files, headers=client.bearer)
  assert r.status_code == 200, r.text
  job = client.app.state.dash.manager.get(r.json()['id'])
  saved = os.path.join(job.dir, 'train_list.txt')
  assert open(saved).read() == lines
  assert f'--source={saved}' in job.doc['argv'] and f'--image_root={root}' in job.doc['argv']
  assert f'--labels_file={os.path.join(job.dir, "labels_upload.txt")}' in job.doc['argv']
  client.post(f'/jobs/{job.id}/abort', headers=client.bearer)
  client.delete(f'/jobs/{job.id}', headers=client.bearer)


def test_fine_tune_from_a_previous_model(client, model, dataset):
  form = _model_form(dataset, method='previous', previous_networks='nosuch')
  r = client.post('/models/images/classification.json', data=form, headers=client.bearer)
  assert r.status_code == 400 and 'previous_networks' in r.json()['errors']
  form.update(previous_networks=model, previous_snapshot='best', model_name='fine-tuned')
  r = client.post('/models/images/classification.json', data=form, headers=client.bearer)
  assert r.status_code == 200, r.text
  manager = client.app.state.dash.manager
  job = manager.get(r.json()['id'])
  assert f'--config.init_from={manager.get(model).dir}:best' in job.doc['argv']
  assert client.post(f'/jobs/{job.id}/abort', headers=client.bearer).status_code == 200
  end = time.monotonic() + 600
  while manager.get(job.id).state == 'running' and time.monotonic() < end:
    time.sleep(0.2)
  assert client.delete(f'/jobs/{job.id}', headers=client.bearer).json()['result'] == 'deleted'


# ---- Part 2: snapshots, Classify One/Many, download, census (trained_model.py, routes/inference.py) ----------------------

def _an_image(env):
  folder = env['root'] / 'three' / sorted(os.listdir(env['root'] / 'three'))[0]
  return str(folder / sorted(os.listdir(folder))[0])


def _workdir(client, model):
  return client.app.state.dash.manager.get(model).dir


def test_snapshots_json(client, model):
  table = client.get(f'/models/{model}/snapshots.json').json()
  assert [s['epoch'] for s in table['snapshots']] == [1.0, 2.0]
  assert all(s['val_top1'] is not None for s in table['snapshots'])
  best = max(table['snapshots'], key=lambda s: (s['val_top1'], s['step']))
  assert table['best'] == best['step'] and table['latest'] == table['snapshots'][-1]['step']
  page = client.get(f'/models/{model}').text
  assert re.search(r'Epoch #2(?![.\d])', page) and 'Epoch #2.0' not in page   # DIGITS' label
  assert '(best)' in page and 'Classify One' in page and 'Classify Many' in page


def test_classify_one_by_path_and_upload_matches_the_library(client, model, env):
  from alexnet_jax import inference  # the test process may import JAX; the web process does not
  image = _an_image(env)
  table = client.get(f'/models/{model}/snapshots.json').json()
  first = table['snapshots'][0]
  r = client.post('/models/images/classification/classify_one.json', headers=client.bearer,
                  data={'job_id': model, 'image_path': image, 'snapshot_epoch': '1', 'top_k': '2'})
  assert r.status_code == 200, r.text
  answer = r.json()
  assert answer['step'] == first['step'] and len(answer['predictions']) == 2
  confidences = [c for _, c in answer['predictions']]
  assert confidences == sorted(confidences, reverse=True) and 0 < confidences[0] <= 100
  expected = inference.load(_workdir(client, model), step=first['step']).probabilities(image)
  classes = [line.strip() for line in open(os.path.join(_workdir(client, model), 'labels.txt'))]
  for label, p in answer['probabilities_by_label'].items():
    assert abs(p - float(expected[classes.index(label)])) < 1e-5
  assert client.get(answer['input_url']).headers['content-type'] == 'image/png'
  with open(image, 'rb') as f:
    data = f.read()
  again = client.post('/models/images/classification/classify_one.json', headers=client.bearer,
                      data={'job_id': model, 'snapshot_epoch': '1', 'top_k': '2', 'layout': 'model'},
                      files={'image_file': ('photo.jpg', data, 'image/jpeg')}).json()
  assert again['layout'] == 'model'
  for (l1, c1), (l2, c2) in zip(answer['predictions'], again['predictions']):
    assert l1 == l2 and abs(c1 - c2) < 1e-3
  cached = client.post('/models/images/classification/classify_one.json', headers=client.bearer,
                       data={'job_id': model, 'image_path': image, 'snapshot_epoch': '1'}).json()
  assert cached['cached'] is True and len(cached['predictions']) == 3   # top-5 of 3 classes


def test_classify_one_visualizations(client, model, env):
  r = client.post('/models/images/classification/classify_one.json', headers=client.bearer,
                  data={'job_id': model, 'image_path': _an_image(env), 'show_visualizations': 'true'})
  assert r.status_code == 200, r.text
  vis = r.json()['visualizations']
  assert client.get(vis['conv1_filters']).headers['content-type'] == 'image/png'
  names = [layer['name'] for layer in vis['layers']]
  assert names[:2] == ['conv1', 'conv2'] and 'fc8' in names
  conv1 = vis['layers'][0]
  assert conv1['parameters'] > 0 and conv1['activations']['std'] > 0
  for key in ('weights_histogram', 'activations_grid', 'activations_histogram'):
    assert client.get(conv1[key]).status_code == 200, key
  assert client.get('/inference/files/../token').status_code == 404


@pytest.mark.parametrize('change, files, field, status, words', [
    ({}, {'image_file': ('notes.jpg', b'this is text, not a JPEG', 'image/jpeg')}, 'image_file', 400, 'notes'),
    ({}, {'image_file': ('big.jpg', b'\xff\xd8' + b'0' * (20 * 2**20), 'image/jpeg')}, 'image_file', 413,
     'larger than'),
    ({'image_path': '/etc/passwd'}, None, 'image_path', 400, 'inside the allowed folders'),
    ({'image_path': 'three'}, None, 'image_path', 400, 'not a file'),
    ({'image_path': 'IMG', 'snapshot_epoch': '7'}, None, 'snapshot_epoch', 400, 'epochs [1.0, 2.0]'),
    ({'image_path': 'IMG', 'layout': 'weird'}, None, 'layout', 400, 'choose one of'),
    ({'image_path': 'IMG', 'top_k': '0'}, None, 'top_k', 400, 'between 1 and'),
    ({}, None, 'image_file', 400, 'give an image'),
])
def test_classify_one_bad_input(client, model, env, change, files, field, status, words):
  data = {'job_id': model, **change}
  if data.get('image_path') == 'IMG':
    data['image_path'] = _an_image(env)
  r = client.post('/models/images/classification/classify_one.json', headers=client.bearer, data=data,
                  files=files)
  assert r.status_code == status, r.text
  assert words in r.json()['errors'][field], r.json()


def test_classify_one_needs_a_model_with_a_snapshot(client, dataset):
  r = client.post('/models/images/classification/classify_one.json', headers=client.bearer,
                  data={'job_id': dataset, 'image_path': 'x'})
  assert r.status_code == 404


def _wait_job(client, job_id, timeout=900):
  end = time.monotonic() + timeout
  while time.monotonic() < end:
    view = client.get(f'/jobs/{job_id}.json').json()
    if view['status'] not in ('queued', 'running'):
      return view
    time.sleep(0.3)
  raise AssertionError(f'{job_id} still {view["status"]}')


def test_classify_many_reports_bad_lines_and_classifies_the_rest(client, model, env):
  folder = env['root'] / 'three'
  classes = sorted(os.listdir(folder))
  good = [(f'{c}/{n}', i) for i, c in enumerate(classes) for n in sorted(os.listdir(folder / c))[:2]]
  lines = [f'{p} {label}' for p, label in good[:3]]
  outside = env['outside'] / classes[0]
  lines += ['a-line-without-a-label.jpg', f'{good[3][0]} 9', f'{outside / sorted(os.listdir(outside))[0]} 0']
  lines += [f'{p} {label}' for p, label in good[3:]]
  r = client.post('/models/images/classification/classify_many.json', headers=client.bearer,
                  data={'job_id': model, 'image_folder': str(folder), 'top_n': '2'},
                  files={'image_list': ('list.txt', '\n'.join(lines).encode(), 'text/plain')})
  assert r.status_code == 200, r.text
  job_id = r.json()['job_id']
  assert r.json()['images'] == len(good) and r.json()['list_problems'] == 3
  view = _wait_job(client, job_id)
  assert view['status'] == 'done', view
  # DIGITS' answer, in the response: {filename: [[category, percent], ...]}, top-5 of 3 classes.
  answer = r.json()['classifications']
  assert answer == view['classifications'] and len(answer) == len(good)
  for ranked in answer.values():
    assert len(ranked) == 3 and {label for label, _ in ranked} == set(classes)
    assert [c for _, c in ranked] == sorted((c for _, c in ranked), reverse=True)
    assert abs(sum(c for _, c in ranked) - 100) < 0.01
  assert [p['line'] for p in view['list_problems']] == [4, 5, 6]
  assert 'like the first entry' in view['list_problems'][0]['reason']
  assert 'out of range' in view['list_problems'][1]['reason']
  assert 'no such file inside the allowed folders' in view['list_problems'][2]['reason']
  assert len(view['classifications']) == len(good)
  acc = view['accuracy']
  assert acc['count'] == len(good) and len(acc['confusion']) == 3
  assert sum(map(sum, acc['confusion'])) == len(good)
  assert set(view['top_n_per_category']) == set(view['classes']) and all(
      len(rows) == 2 for rows in view['top_n_per_category'].values())
  csv_text = client.get(view['files']['classifications.csv']).text
  assert csv_text.splitlines()[0].startswith('path,line,rank,label')
  assert client.get(f'/classifications/{job_id}/thumb/1.png').headers['content-type'] == 'image/png'
  assert client.get(f'/classifications/{job_id}/thumb/4.png').status_code == 404   # a refused line
  assert client.get(f'/classifications/{job_id}/files/job.json').status_code == 404
  page = client.get(f'/classifications/{job_id}').text
  assert 'Refused list lines' in page and 'confusion-chart' in page
  model_page = client.get(f'/models/{model}').text
  assert f'/classifications/{job_id}' in model_page
  assert all(m['id'] != job_id for m in client.get('/index.json').json()['models'])


def test_classify_many_on_the_dataset_val_list(client, model, dataset):
  r = client.post('/models/images/classification/classify_many.json', headers=client.bearer,
                  data={'job_id': model, 'dataset_list': 'val', 'num_test_images': '4', 'async': '1'})
  assert r.status_code == 200, r.text
  assert 'classifications' not in r.json() and r.json()['url'] == f'/classifications/{r.json()["job_id"]}'
  view = _wait_job(client, r.json()['job_id'])
  assert view['status'] == 'done' and view['accuracy']['count'] == 4


@pytest.mark.parametrize('change, field, words', [
    ({'dataset_list': 'nope'}, 'dataset_list', 'choose one of'),
    ({'image_list_path': '/etc/passwd'}, 'image_list_path', 'inside the allowed folders'),
    ({'image_folder': '/etc', 'dataset_list': 'val'}, 'image_folder', 'inside the allowed folders'),
    ({}, 'image_list', 'give a list'),
    ({'dataset_list': 'val', 'num_test_images': '-1'}, 'num_test_images', 'between'),
])
def test_classify_many_bad_input(client, model, change, field, words):
  r = client.post('/models/images/classification/classify_many.json', headers=client.bearer,
                  data={'job_id': model, **change})
  assert r.status_code == 400, r.text
  assert words in r.json()['errors'][field]


def test_classify_many_list_of_nothing_usable(client, model, env):
  r = client.post('/models/images/classification/classify_many.json', headers=client.bearer,
                  data={'job_id': model}, files={'image_list': ('l.txt', b'/etc/passwd\n', 'text/plain')})
  assert r.status_code == 400 and 'line 1' in r.json()['errors']['image_list']


def test_download_bundle_and_use_it_offline(client, model, env, tmp_path):
  from alexnet_jax import inference
  info = client.get(f'/models/{model}/download.tar.gz', params={'epoch': '2', 'info': 1}).json()
  assert info['filename'] == 'tiny-epoch2.tar.gz' and info['size'] > 1000
  r = client.get(f'/models/{model}/download.tar.gz', params={'epoch': '2'})
  assert r.status_code == 200 and 'tiny-epoch2.tar.gz' in r.headers['content-disposition']
  assert len(r.content) == info['size']
  bundle = tmp_path / 'model.tar.gz'
  bundle.write_bytes(r.content)
  image = _an_image(env)
  step = client.get(f'/models/{model}/snapshots.json').json()['snapshots'][1]['step']
  offline = inference.load(str(bundle)).probabilities(image)
  online = inference.load(_workdir(client, model), step=step).probabilities(image)
  assert abs(offline - online).max() < 1e-6
  z = client.get(f'/models/{model}/download.zip', params={'step': 'latest'})
  assert z.status_code == 200 and z.content[:2] == b'PK'
  assert client.get(f'/models/{model}/download.rar').status_code == 404
  assert client.get(f'/models/{model}/download.zip', params={'epoch': '9'}).status_code == 400


def test_census_waits_for_the_files_the_trainer_writes_after_config_json(tmp_path):
  """A running trainer writes config.json, loads its dataset (seconds on a busy host), then labels.txt,
  mean.npy and preprocess.json: a census asked in between waits (202), it does not fail (a 500 that the
  browser test saw under load, and that stayed for 30 s)."""
  app = app_lib.create_app(app_lib.Settings(jobs_dir=str(tmp_path / 'jobs'), data_roots=[str(tmp_path)],
                                            start_scheduler=False, start_worker=False))
  dash = app.state.dash
  job = dash.manager.create('model', name='m', argv=['python', '-c', 'pass'], form={})
  job.set_state(job_records.RUNNING)
  (tmp_path / 'jobs' / job.id / 'config.json').write_text('{"model": {"name": "alexnet"}}')
  try:
    with warnings.catch_warnings():
      warnings.simplefilter('ignore')
      r = TestClient(app, base_url=BASE).get(f'/models/{job.id}/census.json')
  finally:
    dash.inference.predictor.close()          # in case a worker was asked (it must not be)
  assert r.status_code == 202 and r.json()['state'] == 'waiting', r.text


def test_census_json(client, model):
  end = time.monotonic() + 900
  while True:
    r = client.get(f'/models/{model}/census.json')
    if r.status_code != 202 or time.monotonic() > end:
      break
    time.sleep(0.5)
  assert r.status_code == 200, r.text
  layouts = {row['name']: row for row in r.json()['layouts']}
  assert {'single', 'model', 'data', 'hybrid'} <= set(layouts)
  assert layouts['single']['available'] and layouts['single']['rows'] == []
  model_rows = layouts['model']['rows']
  assert {row['layer'] for row in model_rows} >= {'conv3', 'fc6', 'fc7'}   # the paper's exchanges
  assert all(row['bytes_per_image'] > 0 for row in model_rows if row['layer'] in ('conv3', 'fc6', 'fc7'))
  assert layouts['model']['param_bytes_per_device'] < layouts['single']['param_bytes_per_device']


def test_jobs_json_of_any_job(client, model, dataset):
  assert client.get(f'/jobs/{model}.json').json()['kind'] == 'model'
  assert client.get(f'/jobs/{dataset}.json').json()['state'] == 'done'
  assert client.get('/jobs/20990101-000000-zzzz.json').status_code == 404


# ---- DIGITS' GPU Usage panel (gpu_usage.py), with a fake NVML -------------------------------------------

def _fake_nvml(failing=()):
  fake = types.ModuleType('pynvml')

  class NVMLError(Exception):
    pass

  def handle(i):
    if i in failing:
      raise NVMLError('GPU is lost')
    return i

  fake.NVMLError, fake.NVML_TEMPERATURE_GPU = NVMLError, 0
  fake.nvmlInit = lambda: None
  fake.nvmlDeviceGetCount = lambda: 2
  fake.nvmlDeviceGetHandleByIndex = handle
  fake.nvmlDeviceGetName = lambda h: [b'NVIDIA H100 80GB HBM3', 'NVIDIA A10'][h]   # old bindings: bytes
  fake.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=(h + 1) * 10 * 2**30, total=80 * 2**30)
  fake.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=97 - h, memory=40 + h)
  fake.nvmlDeviceGetTemperature = lambda h, sensor: 60 + h + sensor
  return fake


def test_gpu_usage_panel_while_a_job_runs(client, model, monkeypatch):
  from alexnet_jax.dashboard import gpu_usage
  dash = client.app.state.dash
  real_row = dash.row
  devices = ['gpu1']
  monkeypatch.setattr(dash, 'row', lambda job_id: {**real_row(job_id), 'state': 'running', 'devices': devices}
                      if job_id == model else real_row(job_id))
  monkeypatch.setitem(sys.modules, 'pynvml', _fake_nvml())
  gpu_usage.reset()
  try:
    view = client.get(f'/models/{model}.json').json()
    # The job holds gpu1: only NVML's GPU 1, with DIGITS' four columns.
    assert view['gpus'] == [{'index': 1, 'name': 'NVIDIA A10', 'memory_used': 20 * 2**30,
                             'memory_total': 80 * 2**30, 'utilization': 96, 'memory_utilization': 41,
                             'temperature': 61}]
    page = client.get(f'/models/{model}').text
    assert 'GPU Usage' in page and '<div id="gpu-usage" >' in page
    assert '#1 NVIDIA A10' in page and '20.00 / 80.00 GiB (25%)' in page and '96%' in page and '61 °C' in page
    devices[:] = ['cpu']                       # a job that names no GPU slot: every GPU
    assert [g['name'] for g in client.get(f'/models/{model}.json').json()['gpus']] == [
        'NVIDIA H100 80GB HBM3', 'NVIDIA A10']
    monkeypatch.setitem(sys.modules, 'pynvml', _fake_nvml(failing={0}))
    gpu_usage.reset()                          # a GPU whose query fails is left out, not an error
    assert [g['index'] for g in client.get(f'/models/{model}.json').json()['gpus']] == [1]
    monkeypatch.setitem(sys.modules, 'pynvml', None)     # nvidia-ml-py not installed: no panel
    gpu_usage.reset()
    assert client.get(f'/models/{model}.json').json()['gpus'] == []
    assert '<div id="gpu-usage" hidden>' in client.get(f'/models/{model}').text
  finally:
    gpu_usage.reset()
  monkeypatch.undo()
  assert client.get(f'/models/{model}.json').json()['gpus'] == []       # done: no panel


# ---- New Model shows the chosen dataset; the model page its form values (issue 20, item 4) ---------------

def test_new_model_shows_the_dataset_and_the_model_page_its_form(client, model, dataset):
  page = client.get('/models/images/classification/new', params={'dataset': dataset}).text
  info = client.get(f'/datasets/{dataset}.json').json()
  summary = page[page.index('id="dataset-summary"'):page.index('</dl>', page.index('id="dataset-summary"'))]
  for name, value in (('Image size', '72 x 72'), ('Image type', 'Color'), ('Resize mode', 'squash'),
                      ('Encoding', 'jpg'), ('Classes', '3'), ('Test images', '0'), ('Status', 'done')):
    assert f'<dt>{name}</dt><dd>{value}</dd>' in summary, (name, summary)
  train = client.app.state.dash.dataset_info(dataset)['counts']['train']
  assert f'<dt>Train images</dt><dd>{train}</dd>' in summary and train > 0
  assert f'<dt>Created</dt><dd>{info["submitted"]}</dd>' in summary and info['submitted']
  assert '<dt>Image size</dt>' not in client.get('/models/images/classification/new').text   # none chosen
  # The model page: every field exactly as the form sent it (the strings, not the parsed values).
  form = _model_form(dataset)
  view = client.get(f'/models/{model}.json').json()
  assert dict(view['form_fields']) == form
  model_page = client.get(f'/models/{model}').text
  for k, v in form.items():
    assert f'<tr><th>{k}</th><td>{v}</td></tr>' in model_page


def test_new_model_takes_a_300x200_dataset_and_a_blank_crop_is_none():
  """The seed's lab: a 300 x 200 dataset, crop size blank (DIGITS: none). The form passes W,H and crop 0;
  the worker's own checks (the real flag parsing and check_network) accept them for the full AlexNet,
  and a crop larger than the shorter side is named on the crop field."""
  from alexnet_jax.dashboard.workers import config_worker as worker  # pylint: disable=g-import-not-at-top
  datasets = {'lab': {'state': 'done', 'image_size': [300, 200], 'channels': 3, 'resize_mode': 'squash',
                      'output': '/data/lab', 'num_classes': 3}}
  form = _model_form('lab', crop_size='', width='1', experiment=model_form.DEFAULT_EXPERIMENT)
  parsed = model_form.parse_model_form(form, datasets=datasets, previous={},
                                  experiments=[model_form.DEFAULT_EXPERIMENT])
  point = parsed['points'][0]
  assert '--config.data.image_size=300,200' in point and '--config.data.crop_size=0' in point
  assert 'crop_size' not in parsed['form']   # the form shows the blank it was given
  assert worker.check(parsed['experiment'], point, 3)['problems'] == []
  big = model_form.parse_model_form(dict(form, crop_size='227'), datasets=datasets, previous={},
                               experiments=[model_form.DEFAULT_EXPERIMENT])
  problems = worker.check(big['experiment'], big['points'][0], 3)['problems']
  assert model_form.map_problems(problems).keys() == {'crop_size'}
  assert 'or <= 200, the shorter side of --config.data.image_size=300,200' in problems[0]


# ---- DIGITS' REST shapes (digits/views.py, digits/model/..., digits/dataset/...; docs/API.md) ------------

DIGITS_STATUSES = {'Initialized', 'Waiting', 'Running', 'Done', 'Aborted', 'Error'}   # digits/status.py


def test_digits_rest_shapes(client, model, dataset):
  index = client.get('/index.json').json()
  assert index['version'] and index['jobs_dir'] == client.app.state.dash.jobs_dir
  for item in index['datasets'] + index['models']:
    assert {'id', 'name', 'status', 'state'} <= set(item) and item['status'] in DIGITS_STATUSES | {'?'}
  view = client.get(f'/models/{model}.json').json()
  workdir = view['directory']
  latest = client.get(f'/models/{model}/snapshots.json').json()['latest']
  assert view['status'] == 'Done' and view['state'] == 'done' and view['id'] == view['job id'] == model
  assert view['dataset_id'] == dataset and view['snapshots'] == [1, 2]
  assert re.fullmatch(r'\d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)?', view['creation time']), view['creation time']
  assert view['username'] is None and view['framework'] == 'jax' and view['digits version']
  assert view['image dimensions'] == [72, 72, 3] and view['image resize mode'] == 'squash'   # [H, W, C]
  assert view['snapshot file'] == f'checkpoints/{latest}'
  for key in ('labels file', 'mean file', 'model file', 'snapshot file'):
    assert os.path.exists(os.path.join(workdir, view[key])), key          # relative to "directory"
  ds = client.get(f'/datasets/{dataset}.json').json()
  assert ds['status'] == 'Done' and ds['state'] == 'done' and os.path.isdir(ds['directory'])
  # DIGITS' /<kind>/<id>/status: {status, name, type, error}; an unknown job is an "error", as in DIGITS.
  for url, kind in ((f'/models/{model}/status', 'Model'), (f'/jobs/{model}/status', 'Model'),
                    (f'/datasets/{dataset}/status', 'Dataset')):
    status = client.get(url).json()
    assert status['status'] == 'Done' and status['type'] == f'Image Classification {kind}', status
    assert status['error'] is None and status['name']
  assert client.get('/jobs/nope/status').json() == {'error': 'Job not found.'}
  # DIGITS' completed_jobs.json (the home tables).
  jobs = client.get('/completed_jobs.json').json()
  assert set(jobs) == {'running', 'datasets', 'models', 'pretrained_models', 'model_output_fields'}
  row = next(m for m in jobs['models'] if m['id'] == model)
  assert row['status'] == 'Done' and row['status_css'] == 'success' and row['progress'] == 100
  assert row['type'] == 'model' and row['dataset_id'] == dataset and isinstance(row['submitted'], float)
  assert any(d['id'] == dataset and d['type'] == 'dataset' for d in jobs['datasets'])


def test_digits_status_names():
  from alexnet_jax.dashboard import views
  assert {s: views.digits_status(s) for s in job_records.FINAL + (job_records.QUEUED, job_records.RUNNING)} == {
      'done': 'Done', 'failed': 'Error', 'stopped': 'Aborted', 'interrupted': 'Aborted', 'queued': 'Waiting',
      'running': 'Running'}
  assert views.digits_status('unknown') == '?'                # DIGITS' name of a status it does not know
  assert views.digits_job({'status': 'failed'}) == {'status': 'Error', 'state': 'failed'}


def test_classify_many_keys_each_line_as_posted(client, model, env):
  """DIGITS' classify_many.json keys its answer by the path as posted (joined to image_folder as posted),
  so two spellings of one file are two keys, and a repeated line is one."""
  folder = env['root'] / 'three'
  name = f'class_0/{sorted(os.listdir(folder / "class_0"))[0]}'
  lines = [f'{name} 0', f'./{name} 0', f'{folder}/class_0/../{name} 0', f'{name} 0']
  r = client.post('/models/images/classification/classify_many.json', headers=client.bearer,
                  data={'job_id': model, 'image_folder': f'{folder}/'},
                  files={'image_list': ('list.txt', '\n'.join(lines).encode(), 'text/plain')})
  assert r.status_code == 200, r.text
  answer = r.json()['classifications']
  assert sorted(answer) == sorted([f'{folder}/{name}', f'{folder}/./{name}', f'{folder}/class_0/../{name}'])
  assert len({json.dumps(v) for v in answer.values()}) == 1     # the same image, the same answer
  assert 'posted_names.json' not in client.get(f'/jobs/{r.json()["job_id"]}.json').json()['files']


def test_snapshot_options_label_epochs_as_digits():
  from alexnet_jax.dashboard import views
  table = {'snapshots': [{'step': 7, 'epoch': None, 'val_top1': None},
                         {'step': 14, 'epoch': 1.0, 'val_top1': 0.5},
                         {'step': 21, 'epoch': 1.5, 'val_top1': 0.25}], 'best': 14, 'latest': 21}
  assert [o['text'] for o in views.snapshot_options(table)] == [
      'Epoch #1.5 · val top-1 25.00%', 'Epoch #1 · val top-1 50.00% (best)', 'Step 7']
  assert views.snapshot_options({}) == []


def test_the_select_model_list_follows_new_snapshots_live(client, env):
  """The model page's stream sends the "Select model" list again when a snapshot appears."""
  workdir = env['jobs'] / 'live_snapshots'
  (workdir / 'checkpoints' / '5').mkdir(parents=True)
  (workdir / 'config.json').write_text(json.dumps({'num_epochs': 4}))
  metrics = workdir / 'metrics.jsonl'
  metrics.write_text('{"step": 5, "epoch": 1.0, "split": "train", "loss": 1.0}\n'
                     '{"step": 5, "epoch": 1.0, "split": "val", "loss": 1.0, "top1": 0.5}\n')
  (workdir / 'status.json').write_text(json.dumps({'kind': 'train', 'state': 'done', 'step': 5,
                                                   'total_steps': 20}))
  try:
    time.sleep(jobs_lib.ROWS_TTL_S + 0.1)          # the runs listing is cached this long
    page = client.get('/models/live_snapshots').text
    assert re.search(r'<option value="5"[^>]*selected>Epoch #1 · val top-1 50\.00% \(best\)</option>', page)
    seen = []
    with client.stream('GET', '/models/live_snapshots/stream') as r:
      event = None
      for line in r.iter_lines():
        if line.startswith('event: '):
          event = line[7:]
        elif line.startswith('data: ') and event == 'status':
          seen.append([o['text'] for o in json.loads(line[6:])['snapshot_options']])
          if len(seen) == 1:                       # a snapshot appears while the page watches
            with metrics.open('a') as f:
              f.write('{"step": 10, "epoch": 2.0, "split": "train", "loss": 0.5}\n')
            (workdir / 'checkpoints' / '10').mkdir()
          elif len(seen[-1]) == 2:
            break
    assert seen[0] == ['Epoch #1 · val top-1 50.00% (best)']
    assert seen[-1] == ['Epoch #2', 'Epoch #1 · val top-1 50.00% (best)']
  finally:
    shutil.rmtree(workdir)
