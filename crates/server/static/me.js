// User Portal: Get Initial PIN. The buttons appear only for devices whose
// initial PIN can still be revealed; the PIN is asked for after a
// confirmation, shown once, and removed from the page when the person is done.
'use strict';

document.addEventListener('DOMContentLoaded', async () => {
  const $ = (id) => document.getElementById(id);
  const confirmDialog = $('confirm-reveal');
  const revealed = $('revealed');
  let serial = null;

  try {
    const mine = await Keyward.api('GET', '/api/v1/me/devices');
    for (const d of mine) {
      if (!d.initial_pin_available) continue;
      const box = document.querySelector(`article[data-serial="${CSS.escape(d.serial)}"] .initial-pin`);
      if (box) box.hidden = false;
    }
  } catch (e) {
    Keyward.pageError(e);
  }

  for (const button of document.querySelectorAll('.get-initial-pin')) {
    button.addEventListener('click', () => {
      serial = button.dataset.serial;
      $('confirm-serial').textContent = serial;
      confirmDialog.showModal();
    });
  }
  $('reveal-cancel').addEventListener('click', () => confirmDialog.close());
  $('reveal-confirm').addEventListener('click', async () => {
    confirmDialog.close();
    const box = document.querySelector(`article[data-serial="${CSS.escape(serial)}"] .initial-pin`);
    try {
      const r = await Keyward.api('POST', `/api/v1/me/devices/${encodeURIComponent(serial)}/initial-pin`);
      if (box) box.remove(); // revealed once: there is nothing more to get
      $('revealed-serial').textContent = r.serial;
      $('revealed-pin').textContent = r.pin;
      revealed.showModal();
    } catch (e) {
      if (box && e.status === 410) box.remove();
      Keyward.pageError(e);
    }
  });
  $('revealed-done').addEventListener('click', () => {
    $('revealed-pin').textContent = '';
    revealed.close();
  });
  revealed.addEventListener('close', () => { $('revealed-pin').textContent = ''; });
});

// User Portal: Complete issuance of a device assigned to me (when "Who can
// bind the device to the user?" is User). The session is relayed by my own
// paired agent; its progress and prompts use the shared prompt forms.
document.addEventListener('DOMContentLoaded', () => {
  const dialog = document.getElementById('complete');
  if (!dialog) return;
  const $ = (id) => document.getElementById(id);
  const form = $('complete-form');
  let serial = null;
  let policy = null;
  let id = null;

  async function poll() {
    let s;
    try {
      s = await Keyward.api('GET', `/api/v1/issuance/${encodeURIComponent(id)}`);
    } catch (e) {
      Keyward.pageError(e, dialog);
      setTimeout(poll, 1000);
      return;
    }
    $('complete-step').textContent = s.step || s.status;
    $('complete-status').textContent = s.status;
    if (s.status === 'issued') {
      KeywardPrompts.clear($('complete-prompts'));
      $('complete-done').textContent = `Device ${serial} is issued.`;
      $('complete-done').hidden = false;
      $('complete-close').textContent = 'Done';
      form.hidden = false;
      $('complete-start').hidden = true;
      return;
    }
    if (s.status === 'failed' || s.status === 'cancelled') {
      KeywardPrompts.clear($('complete-prompts'));
      const e = s.error || {};
      $('complete-error').textContent = [`Error code: ${e.code || s.status}`, `Message: ${e.message || ''}`,
        `Step: ${e.step || s.step}`, `Correlation id: ${e.session || s.session_id}`].join('\n');
      $('complete-error').hidden = false;
      form.hidden = false;
      $('complete-start').hidden = true;
      return;
    }
    KeywardPrompts.render($('complete-prompts'), s, id);
    setTimeout(poll, 700);
  }

  for (const button of document.querySelectorAll('.complete-issuance')) {
    button.addEventListener('click', () => {
      serial = button.dataset.serial;
      policy = button.dataset.policy;
      $('complete-serial').textContent = serial;
      form.reset();
      form.hidden = false;
      $('complete-start').hidden = false;
      $('complete-progress').hidden = true;
      $('complete-done').hidden = true;
      $('complete-error').hidden = true;
      Keyward.pageError(null, dialog);
      dialog.showModal();
    });
  }
  $('complete-close').addEventListener('click', () => {
    dialog.close();
    if (id) window.location.reload(); // the device's new state
  });
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    Keyward.pageError(null, dialog);
    const body = { user: dialog.dataset.user, policy, serial, via: 'agent' };
    const pin = $('complete-pin');
    const confirm = $('complete-confirm-pin');
    if (pin) body.pin = pin.value;
    if (confirm) body.confirm_pin = confirm.value;
    try {
      const r = await Keyward.api('POST', '/api/v1/issuance', body);
      if (pin) pin.value = '';
      if (confirm) confirm.value = '';
      id = r.session_id;
      form.hidden = true;
      $('complete-progress').hidden = false;
      poll();
    } catch (e) {
      Keyward.pageError(e, dialog);
    }
  });
});
