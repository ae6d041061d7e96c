// Dataset job page: live progress while the prepare runs, then the per-split histogram.
'use strict';

(() => {
  const page = Dash.page;
  Dash.bindJobActions(() => window.location.reload());

  function histogram() {
    const el = document.getElementById('histogram');
    if (!el || !window.Plotly || !page.classes) return;
    const splits = Object.keys(page.counts || {});
    const traces = splits.map((split) => ({
      type: 'bar', name: split, x: page.classes.map(Dash.plotText),
      y: page.classes.map((c) => (page.counts[split] || {})[c] || 0),
    }));
    Plotly.newPlot(el, traces, {
      barmode: 'group', margin: {t: 20, r: 10, b: 60, l: 50}, height: 300,
      yaxis: {title: {text: 'images'}}, legend: {orientation: 'h'},
    }, {displaylogo: false, responsive: true});
  }

  async function poll() {
    const r = await fetch(`/datasets/${encodeURIComponent(page.id)}.json`, {credentials: 'same-origin'});
    if (r.ok) {
      const v = await r.json();            // DIGITS' status name in v.status, ours in v.state
      Dash.setStatus(document.getElementById('status'), v.status_text, v.state);
      Dash.setProgress(document.getElementById('progress'), v.progress, v.state);
      const parts = [];
      if (v.phase) parts.push(`phase ${v.phase}`);
      if (v.split) parts.push(v.split);
      if (v.done !== null && v.done !== undefined) parts.push(`${v.done} / ${v.total} images`);
      if (v.images_per_sec) parts.push(`${v.images_per_sec.toFixed(0)} images/s`);
      if (v.eta_seconds !== null && v.eta_seconds !== undefined) parts.push(`ETA ${Dash.fmtSeconds(v.eta_seconds)}`);
      document.getElementById('progress-detail').textContent = parts.join(' · ');
      Dash.showActions(v.state, v.external);
      if (v.state !== page.status && !['running', 'queued'].includes(v.state)) {
        window.location.reload();
        return;
      }
    }
    setTimeout(poll, 1000);
  }

  if (page.status === 'running' || page.status === 'queued') setTimeout(poll, 500);
  histogram();
})();
