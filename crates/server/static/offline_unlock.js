// Offline Unlock on the User page (offline_unlock_dialog.html): the help
// desk enters the challenge the person's tool shows (a C4000) and reads the
// response back, or reads a YubiKey's PUK out; with the policy's PIN rules.
'use strict';

document.addEventListener('DOMContentLoaded', () => {
  const dialog = document.getElementById('offline-unlock');
  if (!dialog) return;
  const $ = (id) => document.getElementById(id);
  let serial = null;

  for (const button of document.querySelectorAll('button.offline-unlock')) {
    button.addEventListener('click', () => {
      serial = button.dataset.serial;
      const puk = button.dataset.kind === 'puk';
      $('offline-unlock-serial').textContent = serial;
      for (const el of dialog.querySelectorAll('.serial-copy')) el.textContent = serial;
      $('offline-unlock-challenge-help').hidden = puk;
      $('offline-unlock-challenge-label').hidden = puk;
      $('offline-unlock-challenge').required = !puk;
      $('offline-unlock-challenge').value = '';
      $('offline-unlock-puk-help').hidden = !puk;
      $('offline-unlock-go').textContent = puk ? 'Show the PUK' : 'Get the response';
      $('offline-unlock-answer').hidden = true;
      $('offline-unlock-form').hidden = false;
      Keyward.pageError(null, dialog);
      dialog.showModal();
      (puk ? $('offline-unlock-go') : $('offline-unlock-challenge')).focus();
    });
  }
  $('offline-unlock-close').addEventListener('click', () => {
    $('offline-unlock-value').textContent = '';
    dialog.close();
  });
  $('offline-unlock-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    Keyward.pageError(null, dialog);
    const challenge = $('offline-unlock-challenge').value.trim();
    try {
      const r = await Keyward.api('POST', `/api/v1/devices/${encodeURIComponent(serial)}/offline-unlock`,
        challenge ? { challenge } : {});
      $('offline-unlock-kind').textContent = r.kind === 'puk' ? 'PUK' : 'Response';
      $('offline-unlock-value').textContent = r.value;
      const rules = $('offline-unlock-rules');
      rules.replaceChildren(...r.pin_rules.map((t) => {
        const li = document.createElement('li');
        li.textContent = t;
        return li;
      }));
      $('offline-unlock-form').hidden = true;
      $('offline-unlock-answer').hidden = false;
    } catch (e) {
      Keyward.pageError(e, dialog);
    }
  });
});
