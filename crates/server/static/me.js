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
