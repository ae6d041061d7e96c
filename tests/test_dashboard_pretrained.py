"""The dashboard's Pretrained Models (issue 22): upload, verify, list, classify at once, fine-tune, ONNX.

One module-scoped server (TestClient; its inference worker and job queue running) with a ``--models_dir``
store. The models are small random bundles written in a second (``tests/onnx_bundles.py``: LeNet at 32 px,
3 classes), uploaded as .tar.gz archives, so Classify One can be compared with ``alexnet_jax.load`` on the
same file; the torchvision import runs once, at full size (alexnet_owt's shapes), from a file on the server.
Bad uploads must each be a clear 4xx naming the file and the reason, and leave nothing behind.
"""

import collections
import io
import json
import os
import pickle
import tarfile
import time
import warnings

import numpy as np
import PIL.Image
import pytest

pytest.importorskip('fastapi')
with warnings.catch_warnings():
  warnings.simplefilter('ignore')
  from fastapi.testclient import TestClient  # noqa: E402

import alexnet_jax  # noqa: E402
from alexnet_jax.dashboard import app as app_lib  # noqa: E402
from alexnet_jax.dashboard import model_form  # noqa: E402
from alexnet_jax.data import synthetic  # noqa: E402
from alexnet_jax.inference import bundle as bundle_lib  # noqa: E402
from tests import onnx_bundles  # noqa: E402
from tests import caffe_files  # noqa: E402
from tests.torch_writers import random_state_dict, write_pth, write_safetensors  # noqa: E402

BASE = 'http://127.0.0.1:5000'
LENET = dict(width=0.5, image_size=32, crop_size=28, channels=3, num_classes=3)


def _tar_gz(folder, path, *, prefix=''):
  with tarfile.open(path, 'w:gz') as t:
    for name in sorted(os.listdir(folder)):
      t.add(os.path.join(folder, name), arcname=prefix + name)
  return str(path)


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  tmp = tmp_path_factory.mktemp('pretrained')
  root = tmp / 'data'
  root.mkdir()
  bundle = onnx_bundles.make_bundle(str(tmp / 'upload'), 'lenet', seed=1, **LENET)
  archive = _tar_gz(bundle, tmp / 'lenet.tar.gz')
  store = tmp / 'store'
  onnx_bundles.make_bundle(str(tmp / 'store_src'), 'lenet', seed=2, **LENET)
  os.makedirs(store / 'vision')
  os.rename(tmp / 'store_src' / 'bundle', store / 'vision' / 'lenet_store')
  image = root / 'cat.png'
  PIL.Image.fromarray(np.random.default_rng(3).integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(image)
  return {'tmp': tmp, 'root': root, 'bundle': bundle, 'archive': archive, 'store': store, 'image': str(image)}


@pytest.fixture(scope='module')
def client(env):
  app = app_lib.create_app(app_lib.Settings(jobs_dir=str(env['tmp'] / 'jobs'), data_roots=[str(env['root'])],
                                            models_dir=str(env['store']), poll_s=0.2))
  with TestClient(app, base_url=BASE) as c:
    c.bearer = {'Authorization': f'Bearer {app.state.dash.token}'}
    yield c


def _upload(client, files, **fields):
  return client.post('/pretrained.json', files=files, data=fields, headers=client.bearer)


@pytest.fixture(scope='module')
def uploaded(client, env):
  with open(env['archive'], 'rb') as f:
    r = _upload(client, {'weights_file': ('lenet.tar.gz', f, 'application/gzip')}, name='tiny lenet')
  assert r.status_code == 200, r.text
  return r.json()


def test_an_uploaded_bundle_is_verified_listed_with_its_contract_and_classifies_as_the_library(
    client, env, uploaded):
  assert uploaded['name'] == 'tiny lenet' and uploaded['kind'] == 'uploaded'
  summary = uploaded['summary']
  assert summary['network'] == 'lenet' and summary['num_classes'] == 3
  assert summary['contract'] == {'image_size': [32, 32], 'crop_size': 28, 'input_size': [28, 28],
                                 'resize_mode': 'squash', 'channels': 3, 'mean': 'image',
                                 'scale': '0..255, mean subtracted', 'layout': 'HWC, RGB'}
  assert uploaded['verified']['ok'] and uploaded['verified']['manifest_files'] == 6
  listed = client.get('/pretrained.json').json()['pretrained']
  assert [e['id'] for e in listed if e['kind'] == 'uploaded'] == [uploaded['id']]
  assert uploaded['id'] in [e['id'] for e in client.get('/index.json').json()['pretrained']]
  rows = client.get('/completed_jobs.json').json()['pretrained_models']    # DIGITS' home tables
  assert [(r['id'], r['name'], r['status']) for r in rows if r['id'] == uploaded['id']] == [
      (uploaded['id'], 'tiny lenet', 'Done')]
  for url in ('/', '/pretrained', uploaded['url']):
    page = client.get(url)
    assert page.status_code == 200 and 'tiny lenet' in page.text, url
  assert 'squash' in client.get(uploaded['url']).text

  reference = alexnet_jax.load(env['bundle']).probabilities(env['image'])
  with open(env['image'], 'rb') as f:
    r = client.post(uploaded['classify_one_url'], files={'image_file': ('cat.png', f, 'image/png')},
                    data={'top_k': '2'}, headers=client.bearer)
  assert r.status_code == 200, r.text
  answer = r.json()
  np.testing.assert_allclose(answer['probabilities'], reference, atol=1e-6)
  assert answer['pretrained_id'] == uploaded['id'] and answer['image'] == 'cat.png'
  assert len(answer['predictions']) == 2
  # The model page's route, parametrised by pretrained_id instead of job_id: one implementation.
  r = client.post('/models/images/classification/classify_one.json', headers=client.bearer,
                  data={'pretrained_id': uploaded['id'], 'image_path': env['image']})
  assert r.status_code == 200, r.text
  np.testing.assert_allclose(r.json()['probabilities'], reference, atol=1e-6)
  assert r.json()['cached']     # the worker kept the bundle loaded


def test_classify_many_from_a_pretrained_model(client, env, uploaded):
  listing = f'{env["image"]} 1\n{env["image"]}\n'
  r = client.post(uploaded['classify_many_url'], headers=client.bearer,
                  files={'image_list': ('list.txt', listing.encode(), 'text/plain')})
  assert r.status_code == 200, r.text
  doc = r.json()
  assert doc['status'] == 'done' and list(doc['classifications']) == [env['image']]
  reference = alexnet_jax.load(env['bundle']).probabilities(env['image'])
  best = int(np.argmax(reference))
  assert doc['classifications'][env['image']][0][0] == f'class {best}'
  page = client.get(doc['url']).text
  assert f'/pretrained/{uploaded["id"]}' in page
  assert doc['job_id'] in client.get(uploaded['url'] + '.json').json()['classifications'][0]['id']


def test_the_models_dir_store_is_listed_read_only_and_verifies(client, env):
  store = [e for e in client.get('/pretrained.json').json()['pretrained'] if e['kind'] == 'store']
  assert [e['name'] for e in store] == ['vision/lenet_store'] and store[0]['read_only']
  assert store[0]['summary']['network'] == 'lenet' and store[0]['verified'] is None
  r = client.post(f'/pretrained/{store[0]["id"]}/verify.json', headers=client.bearer)
  assert r.status_code == 200 and r.json()['ok'], r.text
  again = client.get(f'/pretrained/{store[0]["id"]}.json').json()
  assert again['verified']['ok'] and again['verified']['manifest_files'] == 6
  assert client.delete(f'/pretrained/{store[0]["id"]}', headers=client.bearer).status_code == 409
  # A store bundle altered after the listing: Verify names the file.
  params = env['store'] / 'vision' / 'lenet_store' / 'params.npz'
  data = params.read_bytes()
  params.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
  r = client.post(f'/pretrained/{store[0]["id"]}/verify.json', headers=client.bearer)
  assert r.status_code == 400 and 'params.npz' in r.json()['errors']['verify'], r.text
  params.write_bytes(data)
  assert client.get('/pretrained/store-0123456789abcdef.json').status_code == 404
  assert client.get('/pretrained/..%2F..%2Fetc.json').status_code == 404


def test_onnx_download_of_a_pretrained_model_is_a_valid_onnx_file(client, env, uploaded):
  onnx = pytest.importorskip('onnx')
  info = client.get(f'{uploaded["url"]}/download.onnx?info=1')
  assert info.status_code == 200, info.text
  assert info.json()['filename'] == 'tiny_lenet-pretrained.onnx'
  r = client.get(f'{uploaded["url"]}/download.onnx')
  assert r.status_code == 200, r.text
  model = onnx.load_from_string(r.content)
  onnx.checker.check_model(model)
  assert [o.name for o in model.graph.output] == ['logits', 'probabilities']
  assert json.loads({p.key: p.value for p in model.metadata_props}['labels']) == ['class 0', 'class 1',
                                                                                  'class 2']
  r = client.get(f'{uploaded["url"]}/download.triton.zip')
  assert r.status_code == 200, r.text
  import zipfile
  with zipfile.ZipFile(io.BytesIO(r.content)) as z:
    assert sorted(z.namelist()) == ['lenet/1/model.onnx', 'lenet/config.pbtxt', 'lenet/labels.txt']
  assert client.get(f'{uploaded["url"]}/download.pkl').status_code == 404


def test_without_the_onnx_extra_the_download_says_so(monkeypatch, env, tmp_path):
  from alexnet_jax.dashboard.workers import pretrained_ops
  from alexnet_jax.inference import onnx_export
  monkeypatch.setattr(onnx_export, 'onnx', None)
  with pytest.raises(pretrained_ops.Refused, match=r'ONNX export needs the onnx package.*pip install'):
    pretrained_ops.export_onnx({'source': env['bundle'], 'cache_dir': str(tmp_path)})
  assert os.listdir(tmp_path) == []


def _evil_pth(path):
  class Evil:
    def __reduce__(self):
      return os.system, ('echo never',)
  payload = pickle.dumps(collections.OrderedDict({'features.0.weight': Evil()}), protocol=2)
  write_pth(path, {}, payload=payload)


def test_bad_uploads_are_clear_4xx_naming_the_file_and_leave_nothing(client, env, tmp_path, uploaded):
  before = client.get('/pretrained.json').json()['pretrained']
  data = open(env['archive'], 'rb').read()
  _evil_pth(tmp_path / 'evil.pth')
  escape = tmp_path / 'escape.tar.gz'
  with tarfile.open(escape, 'w:gz') as t:
    info = tarfile.TarInfo('../outside.txt')
    info.size = 3
    t.addfile(info, io.BytesIO(b'bad'))
  cases = {   # file name, content -> (field, words the message must have)
      ('truncated.tar.gz', data[:len(data) // 2]): ('weights_file', 'truncated'),
      ('evil.pth', (tmp_path / 'evil.pth').read_bytes()): ('weights_file', 'posix.system'),
      ('escape.tar.gz', escape.read_bytes()): ('weights_file', "unsafe member path '../outside.txt'"),
      ('model.txt', b'not a model'): ('weights_file', 'not a bundle'),
      ('half.pth', (tmp_path / 'evil.pth').read_bytes()[:40]): ('weights_file', 'half.pth'),
  }
  for (name, content), (field, words) in cases.items():
    r = _upload(client, {'weights_file': (name, content, 'application/octet-stream')})
    assert r.status_code == 400, (name, r.text)
    message = r.json()['errors'][field]
    assert name in message and words in message, (name, message)
    assert '.dashboard' not in message, message     # the user's name, never our copy's path
  r = _upload(client, {'weights_file': ('lenet.tar.gz', data, 'application/gzip'),
                       'labels_file': ('labels.csv', b'a\nb\n', 'text/plain')})
  assert r.status_code == 400 and 'labels.csv' in r.json()['errors']['labels_file']
  r = client.post('/pretrained.json', data={'weights_path': '/etc/passwd.tar.gz'}, headers=client.bearer)
  assert r.status_code == 400 and 'weights_path' in r.json()['errors']
  assert client.get('/pretrained.json').json()['pretrained'] == before
  folder = env['tmp'] / 'jobs' / '.dashboard' / 'pretrained'
  assert sorted(n for n in os.listdir(folder) if n.startswith('up-')) == [uploaded['id']]


def test_caffe_uploads_import_or_are_refused_naming_the_file(client, tmp_path):
  """A caffemodel + deploy.prototxt upload (a width-1/8 bvlc_alexnet, tests/caffe_files.py) imports into the
  two-tower alexnet with Caffe's LRN across the towers; a truncated caffemodel and a prototxt that does not
  match the weights are each a 400 naming the file and the reason, and leave nothing listed."""
  before = client.get('/pretrained.json').json()['pretrained']
  blobs = caffe_files.alexnet_blobs(0.125, 4, seed=3)
  caffe_files.write_caffemodel(tmp_path / 'small.caffemodel', blobs)
  model = (tmp_path / 'small.caffemodel').read_bytes()
  deploy = caffe_files.deploy_text(caffe_files.alexnet_layers(0.125, 4), input_chw=(3, 227, 227)).encode()
  wrong = caffe_files.deploy_text(caffe_files.alexnet_layers(0.125, 5), input_chw=(3, 227, 227)).encode()
  cases = {   # (caffemodel name, bytes, prototxt bytes) -> words the message must have
      ('cut.caffemodel', model[:len(model) // 3], deploy): ('cut.caffemodel', 'truncated'),
      ('small.caffemodel', model, wrong): ('fc8', '(4, 512)'),
  }
  for (name, content, prototxt), words in cases.items():
    r = _upload(client, {'weights_file': (name, content, 'application/octet-stream'),
                         'prototxt_file': ('deploy.prototxt', prototxt, 'text/plain')})
    assert r.status_code == 400, (name, r.text)
    message = ' '.join(str(v) for v in r.json()['errors'].values())
    assert all(w in message for w in words), (name, message)
  assert client.get('/pretrained.json').json()['pretrained'] == before
  r = _upload(client, {'weights_file': ('small.caffemodel', model, 'application/octet-stream'),
                       'prototxt_file': ('deploy.prototxt', deploy, 'text/plain')}, name='small caffe')
  assert r.status_code == 200, r.text
  summary = r.json()['summary']
  assert (summary['network'], summary['num_classes'], summary['lrn']) == ('alexnet', 4, 'caffe_across')
  assert client.delete(r.json()['url'], headers=client.bearer).status_code == 200


def test_new_model_from_a_pretrained_model_sets_init_from_and_the_controls(client, uploaded):
  page = client.get(f'/models/images/classification/new?pretrained={uploaded["id"]}').text
  assert 'Pretrained networks' in page and f'value="{uploaded["id"]}" selected' in page
  chosen = {uploaded['id']: {'name': 'tiny lenet', 'bundle': '/b/lenet', 'network': 'lenet', 'width': 0.5,
                             'lrn': 'paper', 'crop_size': 28, 'channels': 3, 'num_classes': 3}}
  dataset = {'d1': {'state': 'done', 'image_size': [32, 32], 'channels': 3, 'resize_mode': 'squash',
                    'output': '/data/d1', 'num_classes': 5}}
  form = {'dataset': 'd1', 'model_name': 'ft', 'method': 'pretrained', 'pretrained_networks': uploaded['id'],
          'standard_networks': 'alexnet', 'width': '1', 'finetune_freeze': 'conv[12]',
          'finetune_lr_mult': 'ip2:10,ip1:2', 'finetune_preset': 'head', 'layout': 'single'}
  parsed = model_form.parse_model_form(form, datasets=dataset, previous={}, experiments=['digits_exercise'],
                                       pretrained=chosen)
  flags = parsed['points'][0]
  for flag in ('--config.init_from=/b/lenet', '--config.model.name=lenet', '--config.model.width=0.5',
               '--config.data.crop_size=28', '--config.finetune.freeze=conv[12]',
               '--config.finetune.lr_mult=ip2:10,ip1:2', '--config.finetune.preset=head'):
    assert flag in flags, (flag, flags)
  assert parsed['form']['pretrained_networks'] == uploaded['id']

  bad = dict(form, finetune_freeze='conv[', finetune_lr_mult='fc8:fast', finetune_preset='tail')
  r = client.post('/models/images/classification.json', data=bad, headers=client.bearer)
  assert r.status_code == 400
  errors = r.json()['errors']
  assert 'not a regular expression' in errors['finetune_freeze']
  assert "'fc8:fast'" in errors['finetune_lr_mult'] and 'REGEX:MULT' in errors['finetune_lr_mult']
  assert 'tail' in errors['finetune_preset']
  r = client.post('/models/images/classification.json', headers=client.bearer,
                  data=dict(form, pretrained_networks='up-000000000000'))
  assert 'pretrained_networks' in r.json()['errors']


def _wait(client, url, timeout=900):   # a ceiling: tools start and compile slowly on a busy host
  end = time.monotonic() + timeout
  while time.monotonic() < end:
    view = client.get(url).json()
    if view['state'] not in ('queued', 'running'):   # ours; DIGITS' 'status' reads Waiting/Running/Done
      return view
    time.sleep(0.3)
  raise AssertionError(f'{url} still {view["state"]} after {timeout} s: {view}')


@pytest.fixture(scope='module')
def finetuned(client, env, uploaded):
  """New Model with the Pretrained networks choice and a freeze: a real dataset job and a real run (one
  epoch of LeNet on 3 x 8 images)."""
  synthetic.make_image_folder(str(env['root'] / 'three'), num_classes=3, per_class=8, size=(40, 30))
  r = client.post('/datasets/images/classification.json', headers=client.bearer, data={
      'method': 'folder', 'folder_train': str(env['root'] / 'three'), 'resize_width': '32',
      'resize_height': '32', 'resize_mode': 'squash', 'encoding': 'png', 'folder_pct_val': '25',
      'folder_pct_test': '0', 'dataset_name': 'three'})
  assert r.status_code == 200, r.text
  dataset = r.json()['id']
  assert _wait(client, f'/datasets/{dataset}.json')['status'] == 'Done'
  r = client.post('/models/images/classification.json', headers=client.bearer, data={
      'dataset': dataset, 'model_name': 'ft', 'method': 'pretrained', 'pretrained_networks': uploaded['id'],
      'train_epochs': '1', 'batch_size': '4', 'learning_rate': '0.01', 'layout': 'single', 'crop_size': '',
      'finetune_freeze': 'conv', 'snapshot_interval': '1', 'val_interval': '1'})
  assert r.status_code == 200, r.text
  model = r.json()['id']
  view = _wait(client, f'/models/{model}.json')
  assert view['status'] == 'Done', view
  return view


def test_fine_tuning_a_pretrained_model_from_new_model(client, env, uploaded, finetuned):
  """The frozen layers end bit-identical to the bundle's, the others moved, and the model page says what
  it started from."""
  view = finetuned
  assert view['init_from']['pretrained'] == uploaded['id'] and view['finetune_text'] == 'freeze conv'
  page = client.get(f'/models/{view["id"]}').text
  assert 'Started from' in page and f'href="/pretrained/{uploaded["id"]}"' in page
  before = bundle_lib.flatten_params(bundle_lib.load_params_npz(os.path.join(env['bundle'], 'params.npz')))
  after = bundle_lib.flatten_params(alexnet_jax.load(view['directory']).host_params())
  assert set(before) == set(after)
  for name in before:
    if 'conv' in name:
      np.testing.assert_array_equal(after[name], before[name], err_msg=name)
  assert any(not np.array_equal(after[n], before[n]) for n in before if 'ip' in n)


def test_controls_that_do_not_fit_the_pretrained_network_are_field_errors(client, uploaded, finetuned):
  """Checked by the config worker against the bundle's network before any job starts."""
  models_before = len(client.get('/index.json').json()['models'])
  base = {'dataset': finetuned['dataset_id'], 'model_name': 'bad', 'method': 'pretrained',
          'pretrained_networks': uploaded['id'], 'train_epochs': '1', 'batch_size': '4', 'layout': 'single'}
  r = client.post('/models/images/classification.json', headers=client.bearer,
                  data=dict(base, finetune_freeze='nosuchlayer'))
  assert r.status_code == 400, r.text
  message = r.json()['errors']['finetune_freeze']
  assert 'matches no parameter of lenet' in message and 'towers/ip1/kernel' in message, message
  r = client.post('/models/images/classification.json', headers=client.bearer,
                  data=dict(base, finetune_freeze='.'))
  assert 'freezes every parameter' in r.json()['errors']['finetune_freeze'], r.text
  r = client.post('/models/images/classification.json', headers=client.bearer, data=dict(base, layout='model'))
  assert r.status_code == 400 and 'layout' in r.json()['errors'], r.text
  assert len(client.get('/index.json').json()['models']) == models_before


def test_onnx_download_of_a_trained_model(client, finetuned):
  """The model page's Download offers ONNX beside the bundle."""
  onnx = pytest.importorskip('onnx')
  url = f'/models/{finetuned["id"]}/download'
  info = client.get(f'{url}.onnx?info=1')
  assert info.status_code == 200, info.text
  assert info.json()['filename'] == 'ft-epoch1.onnx' and info.json()['format'] == 'onnx'
  model = onnx.load_from_string(client.get(f'{url}.onnx').content)
  onnx.checker.check_model(model)
  assert {p.key: p.value for p in model.metadata_props}['network'] == 'lenet'
  assert client.get(f'{url}.tar.gz?info=1').status_code == 200        # the bundle, as before


def test_the_torchvision_import_path(client, env):
  """Once, at full size (alexnet_owt): from a file on the server, with labels; listed with torchvision's
  contract (224 crop of 256, the mean folded in)."""
  state = random_state_dict()
  state['classifier.6.weight'] = state['classifier.6.weight'][:3]
  state['classifier.6.bias'] = state['classifier.6.bias'][:3]
  source = env['root'] / 'alexnet.safetensors'
  write_safetensors(source, state)
  del state
  started = time.monotonic()
  r = _upload(client, {'labels_file': ('labels.txt', b'cat\ndog\nbird\n', 'text/plain')},
              weights_path=str(source))
  assert r.status_code == 200, r.text
  entry = r.json()
  summary = entry['summary']
  assert summary['network'] == 'alexnet_owt' and summary['classes'] == ['cat', 'dog', 'bird']
  assert summary['contract']['crop_size'] == 224 and summary['imported_from']['format'] == 'torchvision'
  assert entry['verified']['ok']
  print(f'torchvision import through the dashboard: {time.monotonic() - started:.1f} s')
  assert client.delete(entry['url'], headers=client.bearer).json() == {'deleted': entry['id']}
  assert client.get(entry['url'] + '.json').status_code == 404
