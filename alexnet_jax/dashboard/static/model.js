// Model job page: live curves from the server-sent event stream, status, Abort / Resume.
'use strict';

(() => {
  const page = Dash.page;
  const config = {displaylogo: false, responsive: true};
  const series = {};          // "split:key" -> {x: [], y: []}
  let records = 0;
  let logScale = false;

  const get = (split, key) => (series[`${split}:${key}`] ||= {x: [], y: []});

  function add(batch) {
    for (const r of batch) {
      for (const key of ['loss', 'top1', 'top5', 'lr']) {
        if (r[key] === null || r[key] === undefined) continue;
        const s = get(r.split, key);
        s.x.push(r.epoch); s.y.push(r[key]);
      }
      records += 1;
    }
  }

  function best() {
    const v = get('val', 'top1');
    if (!v.y.length) return null;
    let i = 0;
    v.y.forEach((y, j) => { if (y > v.y[i]) i = j; });
    return {epoch: v.x[i], top1: v.y[i]};
  }

  function draw() {
    if (!window.Plotly) return;
    const b = best();
    const marker = b ? [{type: 'line', x0: b.epoch, x1: b.epoch, yref: 'paper', y0: 0, y1: 1,
                         line: {dash: 'dot', color: '#888'}}] : [];
    // datarevision: the traces' arrays grow in place, and Plotly.react redraws only when this changes.
    const base = (title) => ({datarevision: records, title: {text: title}, margin: {t: 40, r: 10, b: 80, l: 55}, height: 340,
                              xaxis: {title: {text: 'epoch'}}, legend: {orientation: 'h', y: -0.3}, shapes: marker});
    const line = (s, name, mode = 'lines') => ({type: 'scatter', mode, name, x: s.x, y: s.y});
    Plotly.react('loss-chart', [line(get('train', 'loss'), 'train loss'),
                                line(get('val', 'loss'), 'val loss', 'lines+markers')],
                 {...base('loss'), yaxis: {type: logScale ? 'log' : 'linear'}}, config);
    const acc = [line(get('val', 'top1'), 'val top-1', 'lines+markers'),
                 line(get('val', 'top5'), 'val top-5', 'lines+markers'),
                 line(get('train', 'top1'), 'train top-1')];
    if (b) acc.push({type: 'scatter', mode: 'markers', name: `best ${Dash.pct(b.top1, 2)} (epoch ${b.epoch})`,
                     x: [b.epoch], y: [b.top1], marker: {size: 12, symbol: 'star', color: '#d62728'}});
    Plotly.react('accuracy-chart', acc, {...base('accuracy'), yaxis: {tickformat: '.0%', range: [0, 1.02]}}, config);
    Plotly.react('lr-chart', [line(get('train', 'lr'), 'learning rate')],
                 {...base('learning rate'), height: 200, shapes: [], yaxis: {exponentformat: 'e'}}, config);
    document.getElementById('loss-chart').dataset.points = String(get('train', 'loss').x.length);
    document.getElementById('accuracy-chart').dataset.points = String(get('val', 'top1').x.length);
    document.getElementById('best-line').textContent = b
      ? `best validation top-1 ${Dash.pct(b.top1, 2)} at epoch ${b.epoch}` : '';
  }

  let pending = false;
  function schedule() {
    if (pending) return;
    pending = true;
    requestAnimationFrame(() => { pending = false; draw(); });
  }

  // DIGITS' GPU Usage panel (gpu_usage.py): one row per GPU the job holds, while it runs.
  function gpuUsage(gpus) {
    const box = document.getElementById('gpu-usage');
    box.hidden = !gpus.length;
    const body = box.querySelector('tbody');
    body.textContent = '';
    const gib = (b) => (b / 2 ** 30).toFixed(2);
    for (const g of gpus) {
      const tr = document.createElement('tr');
      const share = g.memory_total ? Math.round(100 * g.memory_used / g.memory_total) : 0;
      for (const text of [`#${g.index} ${g.name}`, `${gib(g.memory_used)} / ${gib(g.memory_total)} GiB (${share}%)`,
                          `${g.utilization}%`, `${g.temperature} °C`]) {
        const td = document.createElement('td');
        td.textContent = text;
        tr.appendChild(td);
      }
      body.appendChild(tr);
    }
  }

  function status(v) {
    Dash.setStatus(document.getElementById('status'), v.status_text, v.status);
    Dash.setProgress(document.getElementById('progress'), v.progress, v.status);
    const parts = [];
    if (v.epoch !== null && v.epoch !== undefined) parts.push(`epoch ${Number(v.epoch).toFixed(2)}`);
    if (v.step !== null && v.step !== undefined) parts.push(`step ${v.step} / ${v.total_steps}`);
    if (v.images_per_sec) parts.push(`${v.images_per_sec.toFixed(1)} images/s`);
    if (v.status === 'running' && v.eta_seconds !== null && v.eta_seconds !== undefined) parts.push(`ETA ${Dash.fmtSeconds(v.eta_seconds)}`);
    if (v.elapsed_seconds !== null && v.elapsed_seconds !== undefined) parts.push(`elapsed ${Dash.fmtSeconds(v.elapsed_seconds)}`);
    document.getElementById('progress-detail').textContent = parts.join(' · ');
    const hw = v.hardware || {};
    document.getElementById('hardware').textContent = hw.pid
      ? `process ${hw.pid}: CPU ${hw.cpu_percent === null ? '-' : `${hw.cpu_percent}%`}, memory ${(hw.rss_bytes / 2 ** 20).toFixed(0)} MiB` : '';
    gpuUsage(v.gpus || []);
    const snaps = document.getElementById('snapshots');
    snaps.textContent = '';
    for (const s of v.snapshots || []) {
      const li = document.createElement('li');
      li.textContent = `step ${s.step}${s.epoch === null ? '' : ` (epoch ${Number(s.epoch.toFixed(2))})`}`;
      snaps.appendChild(li);
    }
    const err = document.getElementById('error-box');
    err.hidden = !v.error || v.status !== 'failed';
    err.textContent = v.error || '';
    const log = document.getElementById('log-tail');
    log.hidden = !(v.log_tail && v.log_tail.length);
    log.textContent = (v.log_tail || []).join('\n');
    const history = document.querySelector('table.history tbody');
    if (history && v.history) {
      history.textContent = '';
      for (const h of v.history) {
        const tr = document.createElement('tr');
        for (const text of [h.time, h.state, h.note || '']) {
          const td = document.createElement('td');
          td.textContent = text;
          tr.appendChild(td);
        }
        history.appendChild(tr);
      }
    }
    const devices = document.getElementById('devices');
    if (devices && v.devices) {
      const held = v.devices.devices.filter((d) => d.job).map((d) => `${d.name}: ${d.job}`);
      devices.textContent = `${v.devices.free} of ${v.devices.total} device${v.devices.total === 1 ? '' : 's'} free` +
        (held.length ? ` · ${held.join(' · ')}` : '');
    }
    Dash.showActions(v.status, page.external);
    document.body.dataset.jobState = v.status;
    // The "Select model" list of part 2 (trained_model.js) follows the snapshots as they appear.
    document.dispatchEvent(new CustomEvent('dash:snapshots', {detail: v.snapshot_options || []}));
  }

  function connect() {
    const source = new EventSource(`/models/${encodeURIComponent(page.id)}/stream`);
    source.addEventListener('reset', () => {
      for (const k of Object.keys(series)) delete series[k];
      records = 0;
      schedule();
    });
    source.addEventListener('metrics', (e) => { add(JSON.parse(e.data)); schedule(); });
    source.addEventListener('status', (e) => status(JSON.parse(e.data)));
    source.onerror = () => { document.body.dataset.stream = 'reconnecting'; };
    source.onopen = () => { document.body.dataset.stream = 'open'; };
  }

  document.getElementById('log-scale').addEventListener('change', (e) => { logScale = e.target.checked; draw(); });
  const edit = document.getElementById('edit-form');
  if (edit) {
    edit.addEventListener('submit', async (e) => {
      e.preventDefault();
      const r = await Dash.send('PUT', `/jobs/${encodeURIComponent(page.id)}`,
                                {name: edit.elements.name.value, notes: edit.elements.notes.value});
      document.getElementById('edit-state').textContent = r.ok ? 'saved' : Object.values(r.data.errors || {}).join('; ');
      if (r.ok) document.getElementById('job-name').textContent = r.data.name;
    });
  }
  Dash.bindJobActions(() => { /* the stream brings the new state */ });
  document.body.dataset.jobState = page.status;
  draw();
  connect();
})();
