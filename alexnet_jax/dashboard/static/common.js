// Shared by every page: the token header on state-changing requests, formatting, job action buttons.
'use strict';

const Dash = (() => {
  const token = document.querySelector('meta[name="dashboard-token"]').content;
  const dataEl = document.getElementById('page-data');
  const page = dataEl ? JSON.parse(dataEl.textContent || '{}') : {};

  async function send(method, url, body) {
    const opts = {method, headers: {'X-Dashboard-Token': token}, credentials: 'same-origin'};
    if (body instanceof FormData) {
      opts.body = body;
    } else if (body !== undefined) {
      opts.headers['Content-Type'] = 'application/json';
      opts.body = JSON.stringify(body);
    }
    const response = await fetch(url, opts);
    let data = {};
    try { data = await response.json(); } catch (e) { /* not JSON */ }
    return {ok: response.ok, status: response.status, data};
  }

  function fmtSeconds(s) {
    if (s === null || s === undefined) return '-';
    s = Math.max(0, Math.round(s));
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
    const two = (n) => String(n).padStart(2, '0');
    return h ? `${h}:${two(m)}:${two(sec)}` : `${two(m)}:${two(sec)}`;
  }

  function pct(v, digits = 1) {
    return v === null || v === undefined ? '-' : `${(100 * v).toFixed(digits)}%`;
  }

  function setProgress(container, value, state) {
    const bar = container.querySelector('.bar');
    if (!bar) return;
    const p = value === null || value === undefined ? 0 : value;
    bar.className = `bar ${state}`;
    bar.setAttribute('aria-valuenow', (100 * p).toFixed(1));
    bar.querySelector('.fill').style.width = `${(100 * p).toFixed(1)}%`;
    bar.querySelector('.label').textContent = value === null || value === undefined ? '-' : pct(p);
  }

  function setStatus(el, text, state) {
    el.textContent = '';
    const span = document.createElement('span');
    span.className = `status s-${state}`;
    span.textContent = text;
    el.appendChild(span);
  }

  function showActions(state, external) {
    const show = {
      abort: state === 'running' || state === 'queued',
      resume: !external && ['stopped', 'interrupted', 'failed'].includes(state),
    };
    for (const [name, visible] of Object.entries(show)) {
      document.querySelectorAll(`[data-action="${name}"]`).forEach((b) => { b.hidden = !visible; });
    }
  }

  function bindJobActions(onDone) {
    if (!page.id) return;
    document.querySelectorAll('[data-action]').forEach((button) => {
      button.addEventListener('click', async () => {
        const action = button.dataset.action;
        if (action === 'delete' && !window.confirm(`Delete ${page.name} and all its files?`)) return;
        button.disabled = true;
        const url = action === 'delete' ? `/jobs/${encodeURIComponent(page.id)}`
                                        : `/jobs/${encodeURIComponent(page.id)}/${action}`;
        let r = await send(action === 'delete' ? 'DELETE' : 'POST', url);
        // A second Abort while the run writes its stop snapshot is refused (409): Force stop is a choice.
        if (action === 'abort' && r.status === 409 &&
            window.confirm('It is already stopping (writing its stop snapshot). Force stop now? ' +
                           'The steps since its last snapshot are lost.')) {
          r = await send('POST', `${url}?force=1`);
        }
        button.disabled = false;
        if (!r.ok) {
          window.alert(Object.values(r.data.errors || {request: `HTTP ${r.status}`}).join('\n'));
          return;
        }
        if (action === 'delete') { window.location.href = '/'; return; }
        if (onDone) onDone(action, r.data);
      });
    });
  }

  document.addEventListener('DOMContentLoaded', () => {
    document.querySelectorAll('select[data-autosubmit]').forEach((s) => {
      s.addEventListener('change', () => s.form.submit());
    });
  });

  // Plotly draws <b>, <i>, <br> and <a href> found in any text it is given: names that come from users
  // (classes, runs) pass through this, so they are shown as written, never as markup.
  const plotText = (s) => String(s).replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');

  return {token, page, send, fmtSeconds, pct, setProgress, setStatus, showActions, bindJobActions, plotText};
})();
