// New Dataset / New Model forms: submit to the JSON route, show field errors beside the fields.
'use strict';

(() => {
  const form = document.querySelector('form.job-form');
  if (!form) return;
  const page = Dash.page;
  const f = form.elements;   // named fields ('dataset', 'method') would shadow form properties
  const action = form.getAttribute('data-action'), next = form.getAttribute('data-next');

  function clearErrors() {
    form.querySelectorAll('[data-error-for]').forEach((e) => { e.textContent = ''; });
    form.querySelectorAll('.invalid').forEach((e) => e.classList.remove('invalid'));
  }

  function showErrors(errors) {
    const general = form.querySelector('[data-error-for="*"]');
    const leftover = [];
    for (const [field, message] of Object.entries(errors)) {
      const box = form.querySelector(`[data-error-for="${CSS.escape(field)}"]`);
      const input = form.querySelector(`[name="${CSS.escape(field)}"]`);
      if (input) input.classList.add('invalid');
      if (box) box.textContent = message; else leftover.push(`${field}: ${message}`);
    }
    if (leftover.length && general) general.textContent = leftover.join('\n');
    const first = form.querySelector('.invalid');
    if (first) first.scrollIntoView({block: 'center'});
  }

  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    clearErrors();
    const button = form.querySelector('button[type="submit"]');
    button.disabled = true;
    const data = new FormData(form);
    if (form.id === 'dataset-form') {         // only the chosen source method's fields
      const method = data.get('method');
      if (!data.get('has_val_folder')) data.delete('folder_val');
      if (!data.get('has_test_folder')) data.delete('folder_test');
      if (method === 'folder') ['textfile_use_local_files'].forEach((k) => data.delete(k));
    }
    const r = await Dash.send('POST', action, data);
    button.disabled = false;
    if (r.ok) {
      const jobs = r.data.jobs || [r.data];     // DIGITS' answer: a sweep's jobs under "jobs"
      window.location.href = jobs.length > 1 ? '/' : next + jobs[0].id;
      return;
    }
    showErrors(r.data.errors || {'*': `HTTP ${r.status}`});
  });

  // ---- New Dataset ---------------------------------------------------------------------------------
  function methodTabs() {
    const update = () => {
      const method = form.querySelector('input[name="method"]:checked').value;
      form.querySelectorAll('.method').forEach((d) => { d.hidden = d.dataset.method !== method; });
      form.querySelectorAll('.method-previous').forEach((d) => { d.hidden = method !== 'previous'; });
      form.querySelectorAll('.method-pretrained').forEach((d) => { d.hidden = method !== 'pretrained'; });
      form.querySelectorAll('.method-finetune').forEach((d) => { d.hidden = method === 'standard'; });
      if (f.pretrained_networks) {   // New Model: a pretrained model's network and width are its own
        const chosen = (Dash.page.pretrained || {})[f.pretrained_networks.value];
        if (method === 'pretrained' && chosen) {
          f.standard_networks.value = chosen.network;
          f.width.value = chosen.width;
          if (chosen.network !== 'alexnet' && f.layout.value === 'model') f.layout.value = 'single';
        }
        f.standard_networks.disabled = f.width.disabled = method === 'pretrained';
      }
    };
    form.querySelectorAll('input[name="method"]').forEach((r) => r.addEventListener('change', update));
    if (f.pretrained_networks) f.pretrained_networks.addEventListener('change', update);
    update();
  }

  if (form.id === 'dataset-form') {
    methodTabs();
    const exampleButton = document.getElementById('see-example');
    const example = document.getElementById('resize-example');
    const img = document.getElementById('resize-example-img');
    const drawExample = () => {
      const q = new URLSearchParams({
        width: f.resize_width.value, height: f.resize_height.value,
        channels: f.resize_channels.value, folder: f.folder_train.value,
      });
      img.src = `/datasets/resize_example.png?${q}`;
    };
    exampleButton.addEventListener('click', () => { example.hidden = !example.hidden; if (!example.hidden) drawExample(); });
    ['resize_width', 'resize_height', 'resize_channels'].forEach((n) => f[n].addEventListener('change', () => {
      if (!example.hidden) drawExample();
    }));
    const demo = document.getElementById('use-demo');
    demo.addEventListener('click', async () => {
      const state = document.getElementById('demo-state');
      state.textContent = 'drawing the demo images...';
      demo.disabled = true;
      const r = await Dash.send('POST', '/demo');
      demo.disabled = false;
      if (!r.ok) { state.textContent = Object.values(r.data.errors || {}).join('; '); return; }
      f.folder_train.value = r.data.folder;
      if (!f.dataset_name.value) f.dataset_name.value = 'demo shapes';
      state.textContent = 'ready';
    });
    const options = document.getElementById('path-options');
    let pending = null;
    form.querySelectorAll('input.path').forEach((input) => input.addEventListener('input', () => {
      clearTimeout(pending);
      pending = setTimeout(async () => {
        const r = await fetch(`/paths/complete?path=${encodeURIComponent(input.value)}`, {credentials: 'same-origin'});
        if (!r.ok) return;
        const {paths} = await r.json();
        options.textContent = '';
        for (const p of paths) { const o = document.createElement('option'); o.value = p; options.appendChild(o); }
      }, 200);
    }));
  }

  // ---- New Model -----------------------------------------------------------------------------------
  if (form.id === 'model-form') {
    methodTabs();
    const tables = page.tables || {};
    const policy = document.getElementById('lr-policy');
    const showPolicy = () => form.querySelectorAll('.policy').forEach((d) => {
      d.hidden = !d.dataset.policy.split(' ').includes(policy.value);
    });
    policy.addEventListener('change', showPolicy);
    showPolicy();

    const summary = document.getElementById('dataset-summary');
    const select = document.getElementById('dataset-select');
    // DIGITS' dataset summary on New Model (the same rows as new_model.html renders for a preselection).
    const showDataset = () => {
      const d = (page.datasets || {})[select.value];
      summary.textContent = '';
      if (!d) return;
      const counts = d.counts || {};
      const rows = [['Image size', d.image_size.join(' x ')], ['Image type', d.channels === 1 ? 'Grayscale' : 'Color'],
        ['Resize mode', d.resize_mode], ['Encoding', d.encoding || ''], ['Classes', d.num_classes || '?'],
        ['Train images', counts.train || 0], ['Val images', counts.val || 0], ['Test images', counts.test || 0],
        ['Created', d.created || ''], ['Status', d.state]];
      for (const [name, value] of rows) {
        const dt = document.createElement('dt');
        dt.textContent = name;
        const dd = document.createElement('dd');
        dd.textContent = String(value);
        summary.append(dt, dd);
      }
      if (!f.crop_size.value && d.image_size) f.crop_size.placeholder = `${d.image_size[0]} (no crop)`;
    };
    select.addEventListener('change', showDataset);
    showDataset();

    const layoutSummary = document.getElementById('layout-summary');
    const showLayout = () => {
      const row = (tables.layouts || []).find((l) => l.name === f.layout.value);
      if (!row) { layoutSummary.textContent = 'layout table loading (refresh in a few seconds)'; return; }
      const n = row.devices[f.standard_networks.value];
      layoutSummary.textContent = n === null || n === undefined
        ? `${row.name}: not for this network (${f.standard_networks.value} has one tower); choose single or data`
        : `${row.name}: needs ${n} device${n === 1 ? '' : 's'} · sends ${row.moves}`;
    };
    f.layout.addEventListener('change', showLayout);
    f.standard_networks.addEventListener('change', showLayout);
    showLayout();

    const sweep = document.getElementById('sweep-count');
    const showSweep = () => {
      const n = (s) => s.split(',').filter((x) => x.trim()).length || 1;
      const jobs = n(f.batch_size.value) * n(f.learning_rate.value);
      sweep.textContent = jobs > 1 ? `a sweep: ${jobs} jobs, one per combination` : '';
    };
    f.batch_size.addEventListener('input', showSweep);
    f.learning_rate.addEventListener('input', showSweep);
    showSweep();

    document.getElementById('visualize-lr').addEventListener('click', async () => {
      const data = new FormData(form);
      const q = new URLSearchParams();
      for (const [k, v] of data.entries()) if (typeof v === 'string') q.append(k, v);
      q.set('batch_size', String(data.get('batch_size')).split(',')[0]);
      q.set('learning_rate', String(data.get('learning_rate')).split(',')[0]);
      if (!q.get('model_name')) q.set('model_name', 'lr');
      const r = await fetch(`/models/lr_curve.json?${q}`, {credentials: 'same-origin'});
      const body = await r.json();
      clearErrors();
      if (!r.ok) { showErrors(body.errors || {}); return; }
      const el = document.getElementById('lr-chart');
      el.hidden = false;
      Plotly.newPlot(el, [{type: 'scatter', mode: 'lines', x: body.epochs, y: body.lr, name: 'learning rate'}],
        {margin: {t: 10, r: 10, b: 40, l: 60}, height: 200, xaxis: {title: {text: 'epoch'}},
         yaxis: {title: {text: 'lr'}, exponentformat: 'e'}}, {displaylogo: false, responsive: true});
    });
  }
})();
