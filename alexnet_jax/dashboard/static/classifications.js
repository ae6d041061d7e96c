// Classify Many page: progress while the job runs, then accuracy, the confusion matrix (click a cell for
// its images), per-class accuracy, the top N images per category and the per-image predictions, paged.
'use strict';

(() => {
  const page = Dash.page;
  const $ = (id) => document.getElementById(id);
  const PAGE = 50;
  let result = null;
  let pageIndex = 0;

  function el(tag, attrs = {}, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // Thumbnails are served by list line: the job's own list, whose paths were checked when it was made.
  const lineOf = new Map();
  const thumb = (path, size = 96) => {
    const line = lineOf.get(path);
    return line === undefined ? null : `/classifications/${encodeURIComponent(page.job_id)}/thumb/${line}.png?size=${size}`;
  };

  function figure(path, caption) {
    const fig = el('figure', {class: 'thumb', title: path});
    const url = thumb(path);
    if (url) fig.appendChild(el('img', {src: url, alt: path, loading: 'lazy'}));
    fig.appendChild(el('figcaption', {}, caption));
    return fig;
  }

  function drawAccuracy(acc, classes) {
    $('accuracy-card').hidden = false;
    $('accuracy-summary').textContent = `top-1 ${Dash.pct(acc.top1, 2)} · top-5 ${Dash.pct(acc.top5, 2)} · ` +
      `${acc.count} images` + (acc.failed ? ` (${acc.failed} could not be read)` : '');
    const body = $('per-class').querySelector('tbody');
    body.textContent = '';
    const per = acc.per_class || {};
    const confusion = acc.confusion || [];
    classes.forEach((name, i) => {
      const row = el('tr');
      const n = (confusion[i] || []).reduce((a, b) => a + b, 0);
      const value = per[name] !== undefined ? per[name] : (per[i] !== undefined ? per[i] : null);
      row.appendChild(el('td', {}, name));
      row.appendChild(el('td', {}, String(n)));
      row.appendChild(el('td', {}, value === null ? '-' : Dash.pct(typeof value === 'object' ? value.top1 : value, 2)));
      body.appendChild(row);
    });
    if (!window.Plotly || !confusion.length) return;
    const chart = $('confusion-chart');
    const shown = classes.map(Dash.plotText);   // as written, never as markup
    Plotly.newPlot(chart, [{type: 'heatmap', z: confusion, x: shown, y: shown, colorscale: 'Blues', reversescale: true,
                            hovertemplate: 'true %{y}<br>predicted %{x}<br>%{z} images<extra></extra>'}],
                   {title: {text: 'Confusion matrix (click a cell)'}, height: 420, margin: {t: 40, l: 90, b: 90},
                    xaxis: {title: {text: 'predicted'}}, yaxis: {title: {text: 'true'}, autorange: 'reversed'}},
                   {displaylogo: false, responsive: true});
    chart.on('plotly_click', (event) => {
      const p = event.points[0];
      showCell(shown.indexOf(p.y), shown.indexOf(p.x), classes);
    });
  }

  function showCell(trueIndex, predIndex, classes) {
    const box = $('cell-thumbs');
    box.textContent = '';
    let n = 0;
    for (const [path, ranked] of Object.entries(result.classifications)) {
      const truth = result.labels.get(path);
      if (truth !== trueIndex || ranked[0][0] !== classes[predIndex]) continue;
      box.appendChild(figure(path, `${ranked[0][1].toFixed(2)}%`));
      if (++n >= 200) break;
    }
    $('cell-title').textContent = `True ${classes[trueIndex]}, predicted ${classes[predIndex]}: ${n} image(s)`;
    $('cell-images').hidden = false;
  }

  function drawTopN(topN) {
    const box = $('top-n');
    box.textContent = '';
    for (const [cls, rows] of Object.entries(topN)) {
      const section = el('div', {class: 'top-n-class', 'data-class': cls});
      section.appendChild(el('h3', {}, cls));
      const grid = el('div', {class: 'thumbs'});
      for (const [path, p] of rows) grid.appendChild(figure(path, `${(100 * p).toFixed(2)}%`));
      section.appendChild(grid);
      box.appendChild(section);
    }
    $('top-n-card').hidden = !Object.keys(topN).length;
  }

  function drawPage() {
    const entries = Object.entries(result.classifications);
    const pages = Math.max(1, Math.ceil(entries.length / PAGE));
    pageIndex = Math.min(Math.max(0, pageIndex), pages - 1);
    const body = $('per-image').querySelector('tbody');
    body.textContent = '';
    for (const [path, ranked] of entries.slice(pageIndex * PAGE, (pageIndex + 1) * PAGE)) {
      const row = el('tr');
      const t = el('td');
      const url = thumb(path, 48);
      if (url) t.appendChild(el('img', {src: url, alt: '', loading: 'lazy', class: 'mini'}));
      row.appendChild(t);
      row.appendChild(el('td', {}, path));
      const truth = result.labels.get(path);
      row.appendChild(el('td', {}, truth === undefined || truth === null ? '' : result.classes[truth]));
      row.appendChild(el('td', {}, ranked.map(([label, p]) => `${label} ${p.toFixed(2)}%`).join(' · ')));
      body.appendChild(row);
    }
    $('page-label').textContent = `page ${pageIndex + 1} of ${pages}`;
    $('prediction-count').textContent = `(${entries.length} images)`;
  }

  function drawResult(view, labels) {
    result = view;
    result.labels = labels;
    $('results').hidden = false;
    const downloads = $('downloads');
    downloads.textContent = '';
    for (const [name, url] of Object.entries(view.files || {})) {
      downloads.appendChild(el('a', {href: url}, name));
      downloads.appendChild(document.createTextNode(' '));
    }
    drawPage();
    if (view.accuracy) drawAccuracy(view.accuracy, view.classes);
    if (view.top_n_per_category) drawTopN(view.top_n_per_category);
    const errors = $('image-errors');
    errors.textContent = '';
    if ((view.errors || []).length) {
      errors.appendChild(el('h3', {}, `${view.errors.length} image(s) could not be classified`));
      const list = el('ul');
      for (const e of view.errors.slice(0, 200)) list.appendChild(el('li', {}, `line ${e.line}: ${e.path}: ${e.reason}`));
      errors.appendChild(list);
    }
  }

  async function loadList() {
    // The job's own list gives each image's line (thumbnails) and true label.
    const labels = new Map();
    const r = await fetch(`/classifications/${encodeURIComponent(page.job_id)}/files/images.txt`);
    if (!r.ok) return labels;
    (await r.text()).split('\n').forEach((line, i) => {
      const s = line.trim();
      if (!s || s.startsWith('#')) return;
      const m = s.match(/^(.+?)\s+(\d+)$/);
      lineOf.set(m ? m[1] : s, i + 1);
      if (m) labels.set(m[1], Number(m[2]));
    });
    return labels;
  }

  async function poll() {
    const r = await Dash.send('GET', `/jobs/${encodeURIComponent(page.job_id)}.json`);
    if (!r.ok) { setTimeout(poll, 2000); return; }
    const v = r.data;
    Dash.setStatus($('status'), v.status_text, v.status);
    Dash.setProgress($('progress'), v.progress, v.status);
    Dash.showActions(v.status, false);
    $('progress-detail').textContent = v.status === 'running'
      ? `${v.phase || ''}${v.done !== undefined && v.done !== null ? `: ${v.done} of ${v.total} images` : ''}` +
        (v.eta_seconds !== null && v.eta_seconds !== undefined ? `, ETA ${Dash.fmtSeconds(v.eta_seconds)}` : '') +
        (v.images_per_sec ? `, ${v.images_per_sec.toFixed(1)} images/s` : '')
      : (v.elapsed_seconds ? `took ${Dash.fmtSeconds(v.elapsed_seconds)}` : '');
    const box = $('error-box');
    box.hidden = !v.error;
    box.textContent = v.error || '';
    if (v.classifications && !result) drawResult(v, await loadList());
    // The results are written just before the process exits: keep polling until the job says so.
    if (['running', 'queued'].includes(v.status)) setTimeout(poll, 1000);
  }

  document.addEventListener('DOMContentLoaded', () => {
    Dash.page.id = page.job_id;
    Dash.bindJobActions(() => { result = null; poll(); });
    $('prev-page').addEventListener('click', () => { pageIndex -= 1; drawPage(); });
    $('next-page').addEventListener('click', () => { pageIndex += 1; drawPage(); });
    poll();
  });
})();
