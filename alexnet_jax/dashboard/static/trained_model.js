// Model page, part 2: Classify One (bars, the network's view, visualizations), Classify Many (starts a
// job and opens its page), Download (bundle size, then the file), and the layouts' census.
'use strict';

(() => {
  const page = Dash.page;
  const $ = (id) => document.getElementById(id);

  // A Classify form's fields, with the model, snapshot and layout chosen above and no empty upload.
  function requestOf(form, uploadField) {
    const data = new FormData(form);
    const snapshot = $('snapshot'), layout = $('layout');
    data.set(page.pretrained ? 'pretrained_id' : 'job_id', page.id);   // a model job or a pretrained model
    data.set('step', snapshot ? snapshot.value : '');
    data.set('layout', layout ? layout.value : 'single');
    if (!form[uploadField].files.length) data.delete(uploadField);
    return data;
  }

  function showError(name, errors) {
    const el = document.querySelector(`[data-error-for="${name}"]`);
    if (el) el.textContent = errors ? Object.values(errors).join('; ') : '';
  }

  function el(tag, attrs = {}, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // ---- Classify One -------------------------------------------------------------------------------

  function drawPredictions(answer) {
    const body = $('predictions').querySelector('tbody');
    body.textContent = '';
    answer.predictions.forEach(([label, percent], i) => {
      const row = el('tr', {'data-label': label, 'data-probability': String(answer.probabilities_by_label
        ? answer.probabilities_by_label[label] : percent / 100)});
      row.appendChild(el('td', {class: 'rank'}, String(i + 1)));
      row.appendChild(el('td', {class: 'label'}, label));
      const barCell = el('td', {class: 'bar-cell'});
      const bar = el('div', {class: 'pbar'});
      bar.style.width = `${Math.max(0.5, percent).toFixed(2)}%`;
      barCell.appendChild(bar);
      row.appendChild(barCell);
      row.appendChild(el('td', {class: 'confidence'}, `${percent.toFixed(2)}%`));
      body.appendChild(row);
    });
    $('result-image').textContent = answer.image;
    const t = answer.timings || {};
    $('result-timing').textContent = `step ${answer.step}, layout ${answer.layout}, ` +
      `${(t.total_s || 0).toFixed(2)} s${answer.cached ? ' (model already loaded)' : ' (loaded the snapshot)'}`;
    if (answer.input_url) $('result-input').src = answer.input_url;
    $('classify-one-result').hidden = false;
  }

  function stat(v) { return v === null || v === undefined ? '' : Number(v).toPrecision(3); }

  function picture(url, alt) {
    if (!url) return el('span', {class: 'hint'}, '-');
    const a = el('a', {href: url, target: '_blank'});
    a.appendChild(el('img', {src: url, alt, loading: 'lazy'}));
    return a;
  }

  function drawVisualizations(answer) {
    const box = $('visualizations');
    const vis = answer.visualizations;
    box.hidden = !vis;
    if (!vis) return;
    $('vis-conv1').src = vis.conv1_filters || '';
    const color = (vis.conv1_color || {}).per_tower || [];
    $('vis-conv1-caption').textContent = 'conv1 kernels, one grid per tower (the paper\'s Figure 3)' +
      (color.length ? `; colour share per tower: ${color.map((c) => c.toFixed(2)).join(', ')}` : '');
    const body = $('layer-stats').querySelector('tbody');
    body.textContent = '';
    for (const layer of vis.layers) {
      const row = el('tr', {'data-layer': layer.name});
      const w = layer.weights || {}, a = layer.activations || {};
      row.appendChild(el('th', {}, layer.name));
      row.appendChild(el('td', {}, (layer.kernel_shape || []).join('x')));
      row.appendChild(el('td', {}, layer.parameters !== undefined && layer.parameters !== null
        ? Number(layer.parameters).toLocaleString() : ''));
      row.appendChild(el('td', {}, `${stat(w.mean)} ± ${stat(w.std)}`));
      const hist = el('td'); hist.appendChild(picture(layer.weights_histogram, `${layer.name} weights`)); row.appendChild(hist);
      row.appendChild(el('td', {}, layer.activations ? `${stat(a.mean)} ± ${stat(a.std)}, ` +
        `${(100 * (a.fraction_positive || 0)).toFixed(1)}% > 0` : ''));
      const grid = el('td', {class: 'act'}); grid.appendChild(picture(layer.activations_grid, `${layer.name} activations`)); row.appendChild(grid);
      const ahist = el('td'); ahist.appendChild(picture(layer.activations_histogram, `${layer.name} activation histogram`)); row.appendChild(ahist);
      body.appendChild(row);
    }
  }

  async function classifyOne(event) {
    event.preventDefault();
    const form = event.target;
    const data = requestOf(form, 'image_file');
    data.set('show_visualizations', form.show_visualizations.checked ? 'true' : 'false');
    showError('classify-one', null);
    const button = form.querySelector('button');
    button.disabled = true;
    button.textContent = 'Classifying...';
    try {
      const r = await Dash.send('POST', '/models/images/classification/classify_one.json', data);
      if (!r.ok) { showError('classify-one', r.data.errors || {request: `HTTP ${r.status}`}); return; }
      drawPredictions(r.data);
      drawVisualizations(r.data);
    } finally {
      button.disabled = false;
      button.textContent = 'Classify One';
    }
  }

  // ---- Classify Many ------------------------------------------------------------------------------

  async function classifyMany(event) {
    event.preventDefault();
    const form = event.target;
    const data = requestOf(form, 'image_list');
    if (form.image_list.files.length || form.image_list_path.value.trim()) data.delete('dataset_list');
    data.set('async', '1');   // the page follows the job's progress bar (a script gets DIGITS' answer)
    showError('classify-many', null);
    const r = await Dash.send('POST', '/models/images/classification/classify_many.json', data);
    if (!r.ok) { showError('classify-many', r.data.errors || {request: `HTTP ${r.status}`}); return; }
    window.location.href = r.data.url;
  }

  // ---- Download -----------------------------------------------------------------------------------

  function downloadUrl(format, info) {
    const step = $('snapshot') ? $('snapshot').value : '';
    const base = page.pretrained ? '/pretrained' : '/models';
    return `${base}/${encodeURIComponent(page.id)}/download.${format}?step=${encodeURIComponent(step)}` +
           (info ? '&info=1' : '');
  }

  async function download(event) {
    event.preventDefault();
    const format = event.currentTarget.dataset.format;
    const size = $('download-size');
    size.textContent = format.includes('onnx') || format.includes('triton') ? 'exporting to ONNX...' : 'preparing the bundle...';
    const r = await Dash.send('GET', downloadUrl(format, true));
    if (!r.ok) { size.textContent = Object.values(r.data.errors || {e: `HTTP ${r.status}`}).join('; '); return; }
    size.textContent = `${r.data.filename}: ${(r.data.size / 2 ** 20).toFixed(2)} MiB`;
    window.location.href = downloadUrl(format, false);
  }

  // ---- Select model: the snapshot list, live ---------------------------------------------------------

  // The stream's snapshot_options (views.snapshot_options: newest first, DIGITS' "Epoch #14" labels) redraw
  // the list when they change. The user's choice stays chosen; until the user chooses, the best is.
  let shownOptions = null;
  function updateSnapshots(options) {
    const select = $('snapshot');
    const signature = JSON.stringify(options);
    if (!select || signature === shownOptions) return;
    shownOptions = signature;
    const chosen = select.dataset.userChosen ? select.value : null;
    select.textContent = '';
    for (const o of options) {
      const option = el('option', {value: String(o.step), 'data-epoch': o.epoch === null ? '' : String(o.epoch)}, o.text);
      option.selected = chosen !== null ? String(o.step) === chosen : o.best;
      select.appendChild(option);
    }
    if (chosen !== null && select.value !== chosen) delete select.dataset.userChosen;   // it was removed
    $('trained-model-body').hidden = !options.length;
    $('no-snapshot').hidden = options.length > 0;
  }

  // ---- Census -------------------------------------------------------------------------------------

  function censusTable(report) {
    const box = el('div', {class: 'census-layout', 'data-layout': report.name});
    if (!report.available) {
      box.appendChild(el('h3', {}, report.name));
      box.appendChild(el('p', {class: 'hint'}, report.reason || 'not available for this network'));
      return box;
    }
    const mesh = report.mesh || {};
    box.appendChild(el('h3', {}, `${report.name} (data ${mesh.data} x model ${mesh.model})`));
    if (report.moves) box.appendChild(el('p', {class: 'hint'}, report.moves));
    const table = el('table', {class: 'census'});
    const head = el('tr');
    ['pass', 'layer', 'op', 'axis', 'n', 'bytes per image'].forEach((h) => head.appendChild(el('th', {}, h)));
    table.appendChild(head);
    if (!(report.rows || []).length) {
      const row = el('tr');
      row.appendChild(el('td', {colspan: 6}, 'no communication'));
      table.appendChild(row);
    }
    for (const r of report.rows || []) {
      const row = el('tr');
      const perImage = r.bytes_per_image === null || r.bytes_per_image === undefined
        ? `${Math.round(r.bytes_per_step).toLocaleString()} per step` : Math.round(r.bytes_per_image).toLocaleString();
      [r.pass, r.layer, r.op, r.axis, r.count, perImage]
        .forEach((v) => row.appendChild(el('td', {}, String(v))));
      table.appendChild(row);
    }
    box.appendChild(table);
    const mib = (b) => `${((b || 0) / 2 ** 20).toFixed(2)} MiB`;
    box.appendChild(el('p', {class: 'hint'},
      `per step and device: ${mib(report.total_bytes_per_step_per_device)} moved; ` +
      `parameters held per device: ${mib(report.param_bytes_per_device)}`));
    return box;
  }

  async function loadCensus(attempt = 0) {
    const box = $('census');
    if (!box) return;
    const r = await Dash.send('GET', `/models/${encodeURIComponent(page.id)}/census.json`);
    if (r.status === 202) {
      box.querySelector('p').textContent = r.data.state === 'waiting' ? `Waiting: ${r.data.reason}.`
        : `Computing (compiling every layout in a worker, ${r.data.since_seconds || 0} s)...`;
      setTimeout(() => loadCensus(attempt + 1), Math.min(5000, 1000 + 500 * attempt));
      return;
    }
    if (!r.ok) { box.textContent = Object.values(r.data.errors || {e: `HTTP ${r.status}`}).join('; '); return; }
    box.textContent = '';
    box.appendChild(el('p', {class: 'hint'}, `${r.data.network || ''}, batch ${r.data.batch} on ` +
      `${r.data.devices} devices${r.data.cached ? ' (cached)' : ''}`));
    for (const report of r.data.layouts || []) box.appendChild(censusTable(report));
  }

  document.addEventListener('DOMContentLoaded', () => {
    const one = $('classify-one'), many = $('classify-many');
    if (one) one.addEventListener('submit', classifyOne);
    if (many) many.addEventListener('submit', classifyMany);
    document.querySelectorAll('#trained-model a[data-format]').forEach((a) => a.addEventListener('click', download));
    const select = $('snapshot');
    if (select) {
      select.addEventListener('change', () => { select.dataset.userChosen = '1'; });
      shownOptions = JSON.stringify(page.snapshot_options || []);
    }
    loadCensus();
  });
  document.addEventListener('dash:snapshots', (e) => updateSnapshots(e.detail));
})();
