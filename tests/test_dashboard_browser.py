"""The DIGITS exercise in a real browser: Debian's chromium (headless, Playwright) drives the real server.

home -> New Dataset from a generated 3-class folder -> progress reaches 100% -> the histogram is drawn ->
Explore filtered by one class -> New Model (a tiny AlexNet: width 1/16, 64 px crops, 36 epochs; it learns
the classes: validation top-1 above 1/2 where chance is 1/3) -> the
curves grow live -> the dashboard restarts while the job trains and re-attaches it -> Abort -> Resume ->
the job finishes. Every request the pages make is intercepted: one to any host but 127.0.0.1 fails the
test. The server is the command users run (``python -m alexnet_jax.dashboard``) in a subprocess.

Under CI (``CI`` set, as ``.ci/run`` does) a missing chromium or Playwright fails the test instead of
skipping it. Set ``DASHBOARD_SCREENSHOTS=docs/dashboard`` to keep the screenshots of the main pages.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from urllib.parse import quote, urlsplit

import pytest

from alexnet_jax.data import synthetic

CHROMIUM = os.environ.get('DASHBOARD_CHROMIUM', '/usr/bin/chromium')
# The job trains for many epochs, and the test freezes it (SIGSTOP) while it restarts the dashboard and
# while it presses Abort, so the job is still training then however fast or slow the host is (an epoch
# or two passes between the test seeing a new point and the freeze).
EPOCHS = 36
# Every wait is for an event; these are only the ceilings, sized for a busy 2-core host (load ~10):
# starting a tool, compiling a network, a first epoch with its validation take minutes there.
PAGE_MS = 180_000                 # a page action, a page or a job state change
TRAIN_MS = 900_000                # a job reaching a point of its training (compiles included)


def _need(condition: bool, why: str) -> None:
  if not condition:
    if os.environ.get('CI'):
      pytest.fail(f'{why} (CI must run the browser test: .ci/run installs chromium)')
    pytest.skip(why)


class Server:
  """``python -m alexnet_jax.dashboard`` in a subprocess, on a fixed port so that it can restart."""

  def __init__(self, jobs_dir, data_root, log_dir):
    with socket.socket() as s:
      s.bind(('127.0.0.1', 0))
      self.port = s.getsockname()[1]
    self.args = [sys.executable, '-m', 'alexnet_jax.dashboard', f'--jobs_dir={jobs_dir}',
                 f'--port={self.port}', f'--data_root={data_root}']
    self.log_dir = log_dir
    self.base = f'http://127.0.0.1:{self.port}'
    self.proc = None
    self.starts = 0

  def start(self):
    self.starts += 1
    log = open(os.path.join(self.log_dir, f'server{self.starts}.log'), 'w')
    self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    end = time.monotonic() + PAGE_MS / 1000
    while time.monotonic() < end:
      assert self.proc.poll() is None, open(log.name).read()
      try:
        with urllib.request.urlopen(self.base + '/index.json', timeout=10) as r:
          if r.status == 200:
            return
      except OSError:
        time.sleep(0.1)
    raise AssertionError('the dashboard did not start')

  def stop(self):
    if self.proc is not None and self.proc.poll() is None:
      self.proc.terminate()
      try:
        self.proc.wait(timeout=60)
      except subprocess.TimeoutExpired:
        self.proc.kill()
        self.proc.wait()
    self.proc = None

  def index(self):
    with urllib.request.urlopen(self.base + '/index.json', timeout=60) as r:
      return json.load(r)


def _until(page, expression: str, timeout: float = PAGE_MS) -> None:
  """Polls a JavaScript expression with ``page.evaluate`` (``wait_for_function`` evals a string, which the
  pages' Content-Security-Policy forbids -- and the test keeps that policy on). A poll that meets the page
  reloading itself (the dataset page does when its job ends) waits for the new page and polls again."""
  from playwright.sync_api import Error as PlaywrightError  # pylint: disable=g-import-not-at-top
  end = time.monotonic() + timeout / 1000
  while True:
    try:
      if page.evaluate(f'() => Boolean({expression})'):
        return
    except PlaywrightError as e:   # the page reloaded itself (a finished job does) between two polls
      if 'context was destroyed' not in str(e):
        raise
      page.wait_for_load_state()
    if time.monotonic() > end:
      raise AssertionError(f'still false after {timeout / 1000:.0f} s: {expression}')
    page.wait_for_timeout(200)


def _expected(problems: list, words: str) -> None:
  """Drops the console errors a step provoked on purpose; any other stays and fails the test."""
  problems[:] = [p for p in problems if words not in p]


def _points(page, chart='loss-chart') -> int:
  return int(page.eval_on_selector(f'#{chart}', 'el => Number(el.dataset.points || 0)'))


def _trainer_pid(jobdir) -> int:
  """The training process's own pid (its status.json; job.json has the runner's)."""
  return int(json.loads((jobdir / 'status.json').read_text())['pid'])


def _freeze(pid: int, frozen: bool) -> None:
  os.kill(pid, signal.SIGSTOP if frozen else signal.SIGCONT)


def _wait_for_pending(pid: int, sig: int, timeout: float = PAGE_MS / 1000) -> None:
  """Waits until ``sig`` is pending for the (frozen) process ``pid`` (/proc/PID/status: Linux)."""
  end = time.monotonic() + timeout
  while True:
    with open(f'/proc/{pid}/status') as f:
      masks = [int(line.split()[1], 16) for line in f if line.startswith(('SigPnd:', 'ShdPnd:'))]
    if any(mask & (1 << (sig - 1)) for mask in masks):
      return
    assert time.monotonic() < end, f'signal {sig} never reached process {pid}'
    time.sleep(0.05)


def _classify_in_the_browser(page, server, data, shots, tmp_path) -> None:
  """Part 2 on the trained model's page: Classify One (upload), Download, Classify Many, visualizations."""
  page.reload()
  page.wait_for_selector('#snapshot')
  image = str(data / 'flowers' / 'class_2' / sorted(os.listdir(data / 'flowers' / 'class_2'))[0])
  page.set_input_files('#classify-one input[name=image_file]', image)
  page.click('#classify-one button[type=submit]')
  _until(page, "document.querySelectorAll('#predictions tbody tr').length === 3", timeout=TRAIN_MS)
  shown = {row.get_attribute('data-label'): float(row.get_attribute('data-probability'))
           for row in page.locator('#predictions tbody tr').all()}
  texts = page.locator('#predictions td.confidence').all_inner_texts()
  assert all(t.endswith('%') and len(t.split('.')[1]) == 3 for t in texts), texts   # "91.51%"
  _until(page, "document.getElementById('result-input').naturalWidth === 64")    # the 64 px crop
  page.screenshot(path=os.path.join(shots, 'classify_one.png'), full_page=True)

  # Download Model, then the same probabilities from the command line on the bundle. The bundle is made
  # in the background worker, after the census the model page asked for (compiling every layout: minutes
  # on a busy host).
  with page.expect_download(timeout=TRAIN_MS) as download:
    page.click('#download-tgz')
  bundle = str(tmp_path / download.value.suggested_filename)
  download.value.save_as(bundle)
  assert bundle.endswith('.tar.gz') and 'epoch' in bundle
  page.wait_for_selector('#download-size:has-text("MiB")')
  proc = subprocess.run([sys.executable, '-m', 'alexnet_jax.classify', f'--bundle={bundle}', '--format=json',
                         '--top_k=3', image], capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-2000:]
  offline = dict((label, p) for label, p in json.loads(proc.stdout)['predictions'][image])
  assert set(offline) == set(shown)
  for label, p in offline.items():
    assert abs(p - shown[label]) < 1e-5, (label, p, shown[label])

  # Visualizations and statistics of every layer, conv1's towers side by side.
  page.check('#classify-one input[name=show_visualizations]')
  page.click('#classify-one button[type=submit]')
  page.wait_for_selector('#layer-stats tbody tr[data-layer=fc8]', timeout=TRAIN_MS)
  _until(page, "document.getElementById('vis-conv1').naturalWidth > 0")
  page.screenshot(path=os.path.join(shots, 'visualizations.png'), full_page=True)

  # Classify Many on the dataset's val.txt: accuracy, the confusion matrix, a cell's images.
  page.select_option('#classify-many select[name=dataset_list]', 'val')
  page.click('#classify-many button[type=submit]')
  page.wait_for_url('**/classifications/2*')
  page.wait_for_selector('#accuracy-summary:has-text("top-1")', timeout=TRAIN_MS)
  assert '12 images' in page.inner_text('#accuracy-summary')        # 25% of 3 x 16
  page.wait_for_selector('#confusion-chart .main-svg')
  assert page.locator('#per-class tbody tr').count() == 3
  assert page.locator('#per-image tbody tr').count() == 12
  box = page.locator('#confusion-chart .nsewdrag').bounding_box()
  page.mouse.click(box['x'] + box['width'] / 6, box['y'] + box['height'] / 6)   # true class_0, predicted class_0
  page.wait_for_selector('#cell-images:not([hidden])')
  assert 'True class_0, predicted class_0' in page.inner_text('#cell-title')
  page.screenshot(path=os.path.join(shots, 'classify_many.png'), full_page=True)


def test_browser_workflow(tmp_path):
  try:
    from playwright.sync_api import sync_playwright
  except ImportError:
    _need(False, 'playwright is not installed (pip install -e .[test])')
  _need(os.path.exists(CHROMIUM), f'{CHROMIUM} is missing (apt-get install chromium)')
  shots = os.environ.get('DASHBOARD_SCREENSHOTS') or str(tmp_path / 'shots')
  os.makedirs(shots, exist_ok=True)
  data = tmp_path / 'data'
  synthetic.make_image_folder(str(data / 'flowers'), num_classes=3, per_class=16, size=(48, 40))
  server = Server(tmp_path / 'jobs', data, str(tmp_path))
  server.start()
  outside, problems = [], []
  model_id = trainer = None
  try:
    with sync_playwright() as p:
      browser = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                                  args=['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'])
      context = browser.new_context(viewport={'width': 1200, 'height': 860})

      def only_loopback(route):
        if urlsplit(route.request.url).hostname != '127.0.0.1':
          outside.append(route.request.url)
          route.abort()
        else:
          route.continue_()

      context.route('**/*', only_loopback)
      page = context.new_page()
      page.set_default_timeout(PAGE_MS)
      page.on('pageerror', lambda e: problems.append(f'page error: {e}'))
      page.on('console', lambda m: problems.append(f'console: {m.text}') if m.type == 'error' else None)

      # Another site's page that embeds the image routes: refused before any work (Sec-Fetch-Site).
      page.goto('data:text/html,' + quote(
          ''.join(f'<img src="{server.base}/datasets/resize_example.png?width=4096&height=4096&n={i}">'
                  for i in range(5))))
      page.wait_for_function('[...document.images].every(i => i.complete)')
      assert page.evaluate('[...document.images].map(i => i.naturalWidth)') == [0] * 5
      problems.clear()                                    # the refused loads' console errors are expected

      # Home (once with the token the server printed: the cookie that lets this browser act) -> New Dataset.
      token = (tmp_path / 'jobs' / '.dashboard' / 'token').read_text().strip()
      page.goto(f'{server.base}/?token={token}')
      assert page.url == server.base + '/'
      assert page.locator('#datasets-table').is_visible()
      page.click('.toolbar >> text=New Dataset')
      page.wait_for_url('**/datasets/images/classification/new')
      page.fill('input[name=folder_train]', str(data / 'flowers'))
      page.fill('input[name=resize_width]', '72')
      page.fill('input[name=resize_height]', '72')
      page.fill('input[name=dataset_name]', 'flowers')
      page.click('#see-example')
      _until(page, "document.getElementById('resize-example-img').naturalWidth > 0")
      page.screenshot(path=os.path.join(shots, 'new_dataset.png'))
      # A bad value first: the error appears beside the field and nothing starts.
      page.fill('input[name=folder_pct_val]', '80')
      page.fill('input[name=folder_pct_test]', '30')
      page.click('button[type=submit]')
      page.wait_for_selector('[data-error-for="folder_pct_val"]:has-text("less than 100")')
      assert server.index()['datasets'] == []
      _expected(problems, 'status of 400')                         # that refused submission
      page.fill('input[name=folder_pct_val]', '25')
      page.fill('input[name=folder_pct_test]', '0')
      page.click('button[type=submit]')
      page.wait_for_url('**/datasets/2*')
      dataset_id = page.url.rstrip('/').split('/')[-1]

      # Progress reaches 100%, then the histogram is drawn.
      _until(page, "document.querySelector('#progress .label').textContent === '100.0%'",
             timeout=TRAIN_MS)
      page.wait_for_selector('#histogram .main-svg')
      assert page.locator('#histogram .bars path').count() >= 6        # 3 classes x 2 splits
      page.screenshot(path=os.path.join(shots, 'dataset.png'), full_page=True)

      # Explore, filtered by one class.
      page.click('#explore-link')
      page.select_option('#class-filter', label='class_1')
      page.click('#explore-form button[type=submit]')
      page.wait_for_url('**label=1**')
      captions = page.locator('#gallery figcaption').all_inner_texts()
      assert captions == ['class_1'] * 12, captions                     # 75% of 16 for training
      _until(page, "Array.from(document.querySelectorAll('#gallery img'))"
                             ".every(i => i.complete && i.naturalWidth === 72)")
      page.screenshot(path=os.path.join(shots, 'explore.png'))

      # New Model: a tiny AlexNet in the paper's two-tower layout.
      page.goto(f'{server.base}/models/images/classification/new?dataset={dataset_id}')
      page.fill('input[name=train_epochs]', str(EPOCHS))
      page.fill('input[name=batch_size]', '8')
      page.fill('input[name=learning_rate]', '0.01')
      page.select_option('select[name=standard_networks]', 'alexnet')
      page.fill('input[name=width]', '0.0625')
      page.fill('input[name=crop_size]', '64')
      page.select_option('select[name=layout]', 'model')
      page.fill('input[name=model_name]', 'tiny alexnet')
      page.wait_for_selector('#layout-summary:has-text("needs 2 devices")')
      page.screenshot(path=os.path.join(shots, 'new_model.png'), full_page=True)
      page.click('button[type=submit]')
      page.wait_for_url('**/models/2*')
      model_id = page.url.rstrip('/').split('/')[-1]

      # The curves grow live.
      _until(page, "document.body.dataset.jobState === 'running'")
      _until(page, "Number(document.getElementById('loss-chart').dataset.points) >= 1",
             timeout=TRAIN_MS)
      first = _points(page)
      _until(page, f"Number(document.getElementById('loss-chart').dataset.points) > {first}",
             timeout=TRAIN_MS)

      # The dashboard restarts while the job trains: the job is re-attached, not interrupted. The
      # trainer is frozen meanwhile, so that it cannot finish first.
      jobdir = tmp_path / 'jobs' / model_id
      trainer = _trainer_pid(jobdir)
      _freeze(trainer, True)
      shown = _points(page)
      pid = json.loads((jobdir / 'job.json').read_text())['pid']
      server.stop()
      server.start()
      row = next(m for m in server.index()['models'] if m['id'] == model_id)
      assert row['state'] == 'running' and row['status'] == 'Running', row
      assert json.loads((jobdir / 'job.json').read_text())['pid'] == pid
      page.reload()
      _expected(problems, 'ERR_INCOMPLETE_CHUNKED_ENCODING')       # the live stream cut by the restart
      _until(page, "document.body.dataset.jobState === 'running'")
      _until(page, f"Number(document.getElementById('loss-chart').dataset.points) >= {shown}")
      before = _points(page)                                        # the curves so far, streamed again
      _freeze(trainer, False)
      _until(page, f"Number(document.getElementById('loss-chart').dataset.points) > {before}",
             timeout=TRAIN_MS)

      # Abort: the trainer snapshots and stops. Frozen again until the Abort's SIGTERM waits for it, so
      # that the job is still training when the Abort comes.
      _freeze(trainer, True)
      page.click('[data-action=abort]')
      _wait_for_pending(trainer, signal.SIGTERM)
      _freeze(trainer, False)
      _until(page, "document.body.dataset.jobState === 'stopped'", timeout=TRAIN_MS)
      assert page.locator('[data-action=resume]').is_visible()
      at_abort = _points(page)
      assert at_abort < EPOCHS

      # Resume: the same command continues from the snapshot and finishes.
      page.click('[data-action=resume]')
      _until(page, "document.body.dataset.jobState === 'running'")
      _until(page, "document.body.dataset.jobState === 'done'", timeout=TRAIN_MS)
      # The "Select model" list followed the snapshots live (the page was last loaded while the job ran):
      # every finished snapshot is listed, the newest first, as DIGITS labels it.
      with urllib.request.urlopen(f'{server.base}/models/{model_id}/snapshots.json', timeout=60) as r:
        count = len(json.load(r)['snapshots'])
      _until(page, f"document.querySelectorAll('#snapshot option').length === {count}")
      assert page.locator('#snapshot option').first.inner_text().startswith(f'Epoch #{EPOCHS}')
      _until(page, f"Number(document.getElementById('loss-chart').dataset.points) >= {EPOCHS}")
      _until(page, f"Number(document.getElementById('accuracy-chart').dataset.points) >= {EPOCHS}")
      assert _points(page) == EPOCHS                     # one record per epoch, none twice after the resume
      page.screenshot(path=os.path.join(shots, 'model.png'), full_page=True)
      history = [h['state'] for h in json.loads((tmp_path / 'jobs' / model_id / 'job.json').read_text())['history']]
      assert history == ['queued', 'running', 'stopped', 'queued', 'running', 'done'], history
      # The model learnt its classes (chance is 1/3): DIGITS' start, at width 1/16, on the form's defaults.
      val = [json.loads(line) for line in (tmp_path / 'jobs' / model_id / 'metrics.jsonl').read_text().splitlines()
             if '"val"' in line]
      assert val[-1]['top1'] > 0.5, val[-1]

      _classify_in_the_browser(page, server, data, shots, tmp_path)

      page.goto(server.base + '/')
      page.wait_for_selector(f'tr[data-id="{model_id}"] .s-done')
      assert page.locator(f'tr[data-id="{model_id}"] svg.spark polyline').count() == 1
      page.screenshot(path=os.path.join(shots, 'home.png'))
      browser.close()
  finally:
    if trainer is not None:
      try:
        _freeze(trainer, False)        # a failure while it was frozen: let it take the Abort below
      except ProcessLookupError:
        pass
    if model_id:
      try:
        req = urllib.request.Request(f'{server.base}/jobs/{model_id}/abort', method='POST', headers={
            'Authorization': 'Bearer ' + (tmp_path / 'jobs' / '.dashboard' / 'token').read_text().strip()})
        urllib.request.urlopen(req, timeout=5)
      except OSError:
        pass
    server.stop()
  assert outside == [], f'requests left 127.0.0.1: {outside}'
  assert problems == [], problems
