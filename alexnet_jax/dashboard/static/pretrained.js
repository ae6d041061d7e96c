// Pretrained Models: the upload form (multipart, then the new model's page), Verify again, Delete.
'use strict';

(() => {
  const page = Dash.page;
  const $ = (id) => document.getElementById(id);

  function showErrors(errors) {
    document.querySelectorAll('#pretrained-form [data-error-for]').forEach((e) => { e.textContent = ''; });
    for (const [field, message] of Object.entries(errors || {})) {
      const box = document.querySelector(`#pretrained-form [data-error-for="${field}"]`) ||
                  document.querySelector('#pretrained-form [data-error-for="*"]');
      box.textContent = message;
    }
  }

  async function upload(event) {
    event.preventDefault();
    const form = event.target;
    const data = new FormData(form);
    for (const input of form.querySelectorAll('input[type=file]')) {
      if (!input.files.length) data.delete(input.name);     // no empty parts for the files not given
    }
    showErrors(null);
    const button = form.querySelector('button[type=submit]');
    button.disabled = true;
    $('upload-state').textContent = 'Uploading, importing and verifying...';
    try {
      const r = await Dash.send('POST', '/pretrained.json', data);
      if (!r.ok) { showErrors(r.data.errors || {'*': `HTTP ${r.status}`}); $('upload-state').textContent = ''; return; }
      window.location.href = r.data.url;
    } finally {
      button.disabled = false;
    }
  }

  async function verify() {
    $('verify-state').textContent = 'Checking the sha256 sums and the shapes...';
    const r = await Dash.send('POST', `/pretrained/${encodeURIComponent(page.id)}/verify.json`);
    $('verify-state').textContent = r.ok ? `Verified: ${r.data.manifest_files} files.`
      : Object.values(r.data.errors || {e: `HTTP ${r.status}`}).join('; ');
  }

  async function remove() {
    if (!window.confirm(`Delete ${page.name} and its files?`)) return;
    const r = await Dash.send('DELETE', `/pretrained/${encodeURIComponent(page.id)}`);
    if (r.ok) window.location.href = '/pretrained';
    else window.alert(Object.values(r.data.errors || {e: `HTTP ${r.status}`}).join('\n'));
  }

  document.addEventListener('DOMContentLoaded', () => {
    const form = $('pretrained-form');
    if (form) form.addEventListener('submit', upload);
    if ($('verify-button')) $('verify-button').addEventListener('click', verify);
    if ($('delete-pretrained')) $('delete-pretrained').addEventListener('click', remove);
  });
})();
