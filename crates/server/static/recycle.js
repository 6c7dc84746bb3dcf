// Recycle: starts the recycle session through the agent that reports the
// device, follows it, asks its prompts, and shows the end.
'use strict';

document.addEventListener('DOMContentLoaded', () => {
  const root = document.getElementById('recycle');
  const start = document.getElementById('recycle-start');
  if (!root || !start) return;
  const $ = (id) => document.getElementById(id);
  const serial = root.dataset.serial;
  let id = null;

  async function poll() {
    let s;
    try {
      s = await Keyward.api('GET', `/api/v1/issuance/${encodeURIComponent(id)}`);
    } catch (e) {
      Keyward.pageError(e, root);
      setTimeout(poll, 1000);
      return;
    }
    $('recycle-step').textContent = s.step || s.status;
    $('recycle-status').textContent = s.status;
    if (s.status === 'recycled') {
      KeywardPrompts.clear($('prompt-area'));
      $('recycle-progress').hidden = true;
      $('recycle-device-state').textContent = 'Available (recycled)';
      $('recycle-done').textContent = `Device ${serial} is recycled: it is Available again.`;
      $('recycle-done').hidden = false;
      return;
    }
    if (s.status === 'failed' || s.status === 'cancelled') {
      KeywardPrompts.clear($('prompt-area'));
      const e = s.error || {};
      $('recycle-error').textContent = [`Error code: ${e.code || s.status}`, `Message: ${e.message || ''}`,
        `Step: ${e.step || s.step}`, `Correlation id: ${e.session || s.session_id}`].join('\n');
      $('recycle-failed').hidden = false;
      start.disabled = false;
      start.textContent = 'Recycle again';
      return;
    }
    KeywardPrompts.render($('prompt-area'), s, id);
    setTimeout(poll, 700);
  }

  start.addEventListener('click', async () => {
    Keyward.pageError(null, root);
    start.disabled = true;
    $('recycle-failed').hidden = true;
    try {
      // `agent`: the online workstation agent that reports the device.
      const r = await Keyward.api('POST', `/api/v1/devices/${encodeURIComponent(serial)}/recycle`, { via: 'agent' });
      id = r.session_id;
      $('recycle-progress').hidden = false;
      poll();
    } catch (e) {
      start.disabled = false;
      Keyward.pageError(e, root);
    }
  });
});
