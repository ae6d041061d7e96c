// Home: filter, sort, select several to abort/delete/compare, and a live refresh while jobs run.
'use strict';

(() => {
  const filter = document.getElementById('filter');
  let sortState = {};

  function applyFilter() {
    const q = filter.value.trim().toLowerCase();
    document.querySelectorAll('table.jobs tbody tr[data-id]').forEach((tr) => {
      tr.hidden = q && !tr.textContent.toLowerCase().includes(q);
    });
  }

  function bindSort() {
    document.querySelectorAll('table.sortable th[data-sort]').forEach((th) => {
      th.addEventListener('click', () => {
        const table = th.closest('table');
        const index = Array.from(th.parentNode.children).indexOf(th);
        const key = `${table.id}:${index}`;
        const dir = sortState[key] === 1 ? -1 : 1;
        sortState = {[key]: dir};
        sortTable(table, index, th.dataset.sort, dir);
      });
    });
    for (const [key, dir] of Object.entries(sortState)) {
      const [id, index] = key.split(':');
      const table = document.getElementById(id);
      if (table) sortTable(table, Number(index), table.querySelectorAll('th')[index].dataset.sort, dir);
    }
  }

  function sortTable(table, index, kind, dir) {
    const body = table.tBodies[0];
    const rows = Array.from(body.querySelectorAll('tr[data-id]'));
    const value = (tr) => {
      const cell = tr.children[index];
      const v = cell.dataset.value !== undefined ? cell.dataset.value : cell.textContent.trim();
      return kind === 'num' ? Number(v) || 0 : v.toLowerCase();
    };
    rows.sort((a, b) => (value(a) < value(b) ? -dir : value(a) > value(b) ? dir : 0));
    rows.forEach((tr) => body.appendChild(tr));
  }

  function selected() {
    return Array.from(document.querySelectorAll('input.select:checked')).map((c) => c.value);
  }

  async function each(method, suffix) {
    const ids = selected();
    if (!ids.length) return;
    if (method === 'DELETE' && !window.confirm(`Delete ${ids.length} job(s) with their files?`)) return;
    const errors = [];
    for (const id of ids) {
      const r = await Dash.send(method, `/jobs/${encodeURIComponent(id)}${suffix}`);
      if (!r.ok) errors.push(`${id}: ${Object.values(r.data.errors || {}).join('; ')}`);
    }
    if (errors.length) window.alert(errors.join('\n'));
    refresh();
  }

  async function refresh() {
    const keep = new Set(selected());
    const r = await fetch('/?partial=1', {credentials: 'same-origin'});
    if (!r.ok) return;
    document.getElementById('tables').innerHTML = await r.text();
    document.querySelectorAll('input.select').forEach((c) => { c.checked = keep.has(c.value); });
    bindSort();
    applyFilter();
    const live = document.querySelector('tr[data-state="running"], tr[data-state="queued"]');
    timer = setTimeout(refresh, live ? 2000 : 10000);
  }

  let timer = null;
  filter.addEventListener('input', applyFilter);
  document.getElementById('abort-selected').addEventListener('click', () => each('POST', '/abort'));
  document.getElementById('delete-selected').addEventListener('click', () => each('DELETE', ''));
  document.getElementById('compare-selected').addEventListener('click', () => {
    const ids = selected();
    if (ids.length) window.location.href = `/compare?ids=${ids.map(encodeURIComponent).join(',')}`;
  });
  bindSort();
  timer = setTimeout(refresh, Dash.page.live ? 2000 : 10000);
})();
