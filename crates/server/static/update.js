// Updates on the User page and in the User Portal. Request Update opens a
// dialog that lists the Applied changes of the chosen policy (the server's
// preview) before the operator confirms; Cancel Update Request withdraws a
// pending one; Update carries the pending request out at the signed-in
// person's agent, its prompts (a PIN change, a FIDO PIN) answered here.
'use strict';

document.addEventListener('DOMContentLoaded', () => {
  const dialog = document.getElementById('update-dialog');
  if (!dialog) return;
  const $ = (id) => document.getElementById(id);
  const here = window.location.pathname;
  const select = $('update-policy');
  const list = $('update-changes');
  const error = $('update-error');
  let serial = null;

  function fail(e) {
    error.textContent = Keyward.describe(e);
    error.hidden = false;
  }

  async function preview() {
    $('update-confirm').disabled = true;
    error.hidden = true;
    list.replaceChildren();
    try {
      const v = await Keyward.api('GET',
        `/api/v1/devices/${encodeURIComponent(serial)}/update-preview?policy=${encodeURIComponent(select.value)}`);
      for (const c of v.changes) {
        const li = document.createElement('li');
        li.dataset.change = c.change;
        li.textContent = c.description;
        list.append(li);
      }
      $('update-none').hidden = v.changes.length > 0;
      $('update-confirm').disabled = false;
    } catch (e) {
      fail(e);
    }
  }

  async function openRequest(button) {
    serial = button.dataset.serial;
    $('update-title').firstChild.textContent = 'Request Update: device ';
    $('update-serial').textContent = serial;
    $('update-request-form').hidden = false;
    $('update-run').hidden = true;
    error.hidden = true;
    select.replaceChildren();
    dialog.showModal();
    try {
      const policies = await Keyward.api('GET', `/api/v1/devices/${encodeURIComponent(serial)}/policies`);
      for (const p of policies) select.append(new Option(p.name, p.name, false, p.name === button.dataset.policy));
      await preview();
    } catch (e) {
      fail(e);
    }
    select.focus();
  }

  select.addEventListener('change', preview);
  $('update-cancel').addEventListener('click', () => dialog.close());
  $('update-request-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    $('update-confirm').disabled = true;
    try {
      await Keyward.api('POST', `/api/v1/devices/${encodeURIComponent(serial)}/update-requests`, { policy: select.value });
      window.location.assign(`${here}?acted=${encodeURIComponent(serial)}&done=update_requested`);
    } catch (e) {
      fail(e);
      $('update-confirm').disabled = false;
    }
  });

  // The failed update session Retry carries on from (a new session of the
  // pending request, at the same agent).
  let failed = null;

  // Follows the update session; its prompts are answered in the dialog.
  async function follow(id) {
    $('update-retry').hidden = true;
    let s;
    try {
      s = await Keyward.api('GET', `/api/v1/issuance/${encodeURIComponent(id)}`);
    } catch (e) {
      fail(e);
      setTimeout(() => follow(id), 1000);
      return;
    }
    $('update-step').textContent = `Step: ${s.step || s.status}`;
    const area = $('update-prompts');
    if (s.status === 'updated') {
      KeywardPrompts.clear(area);
      const done = $('update-done');
      done.textContent = `Device ${serial} is updated.`;
      done.hidden = false;
      return;
    }
    if (s.status !== 'running') {
      KeywardPrompts.clear(area);
      fail({ message: `The update did not finish (it stays pending: Retry, or later): ${(s.error || {}).message || s.status}` });
      if (s.status === 'update_failed') {
        failed = id;
        $('update-retry').hidden = false;
        $('update-retry').focus();
      }
      return;
    }
    KeywardPrompts.render(area, s, id);
    setTimeout(() => follow(id), 500);
  }

  async function openRun(button) {
    serial = button.dataset.serial;
    $('update-title').firstChild.textContent = 'Update: device ';
    $('update-serial').textContent = serial;
    $('update-request-form').hidden = true;
    $('update-run').hidden = false;
    $('update-done').hidden = true;
    error.hidden = true;
    $('update-step').textContent = 'Starting…';
    dialog.showModal();
    $('update-close').focus();
    try {
      const body = button.dataset.via ? { via: button.dataset.via } : undefined;
      const batch = await Keyward.api('POST', button.dataset.start, body);
      follow(batch.session_id);
    } catch (e) {
      fail(e);
    }
  }

  $('update-retry').addEventListener('click', async () => {
    error.hidden = true;
    $('update-step').textContent = 'Starting again…';
    try {
      const batch = await Keyward.api('POST', `/api/v1/issuance/${encodeURIComponent(failed)}/retry`);
      follow(batch.session_id);
    } catch (e) {
      fail(e);
    }
  });

  $('update-close').addEventListener('click', () => {
    dialog.close();
    window.location.assign(`${here}?acted=${encodeURIComponent(serial)}&done=update`);
  });

  for (const b of document.querySelectorAll('button.request-update')) b.addEventListener('click', () => openRequest(b));
  for (const b of document.querySelectorAll('button.start-update')) b.addEventListener('click', () => openRun(b));
  for (const b of document.querySelectorAll('button.cancel-update')) {
    b.addEventListener('click', async () => {
      try {
        await Keyward.api('DELETE', `/api/v1/devices/${encodeURIComponent(b.dataset.serial)}/update-requests`);
        window.location.assign(`${here}?acted=${encodeURIComponent(b.dataset.serial)}&done=update_cancelled`);
      } catch (e) {
        Keyward.pageError(e, b);
      }
    });
  }
});
