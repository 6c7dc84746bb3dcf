// Device actions on the User page and in the User Portal: every button of
// a device's menu opens one confirmation dialog (what will happen, the
// reason where one is chosen, a note), then calls the action's route with
// the version the page read (a device changed since is refused, nothing
// happens) and reloads the page with a notice. Replace Device goes on to
// the Add Device page with the device replaced and the reason.
'use strict';

document.addEventListener('DOMContentLoaded', () => {
  const dialog = document.getElementById('device-action-dialog');
  if (!dialog) return;
  const $ = (id) => document.getElementById(id);
  const form = $('device-action-form');
  const reason = $('device-action-reason');
  const note = $('device-action-note');
  const error = $('device-action-error');
  const devices = document.getElementById('devices');
  // The User page names its user; the User Portal is the person's own page.
  const user = devices ? devices.dataset.user : null;
  const here = window.location.pathname;
  let current = null;

  function open(button) {
    current = button.dataset;
    $('device-action-title').textContent = `${current.label}: device ${current.serial}`;
    $('device-action-warning').textContent = current.warning;
    reason.replaceChildren();
    const reasons = (current.reasons || '').split(';').filter(Boolean);
    for (const r of reasons) {
      const [value, label] = r.split('=');
      reason.append(new Option(label, value));
    }
    $('device-action-reason-label').hidden = reasons.length === 0;
    // Replace Device asks only why; the note goes to the history otherwise.
    $('device-action-note-label').hidden = current.action === 'replace';
    note.value = '';
    error.hidden = true;
    $('device-action-confirm').textContent = current.action === 'replace' ? 'Choose the new device' : current.label;
    dialog.showModal();
    (reasons.length ? reason : $('device-action-confirm')).focus();
  }

  for (const button of document.querySelectorAll('button.device-action')) {
    button.addEventListener('click', () => open(button));
  }
  $('device-action-cancel').addEventListener('click', () => dialog.close());

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if (!current) return;
    const serial = current.serial;
    const action = current.action;
    if (action === 'replace') {
      window.location.assign(`/users/${encodeURIComponent(user)}/add-device?replaces=${encodeURIComponent(serial)}&reason=${encodeURIComponent(reason.value)}`);
      return;
    }
    const body = { expected_version: Number(current.version) };
    if (action === 'incident') body.reason = reason.value;
    if (note.value.trim()) body.note = note.value.trim();
    $('device-action-confirm').disabled = true;
    try {
      await Keyward.api('POST', `/api/v1/devices/${encodeURIComponent(serial)}/${action}`, body);
      const done = action === 'incident' ? reason.value : action;
      window.location.assign(`${here}?acted=${encodeURIComponent(serial)}&done=${encodeURIComponent(done)}`);
    } catch (e) {
      error.textContent = Keyward.describe(e);
      error.hidden = false;
      $('device-action-confirm').disabled = false;
    }
  });
});
