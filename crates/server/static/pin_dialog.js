// The PIN dialog (pin_dialog.html), in two modes:
//  - change: Change PIN of my issued device, through my own agent (the
//    current and the new PIN answer the session's enter_pin and set_new_pin);
//  - unlock: the PIN reset with the PUK Keyward keeps, by the person with
//    an open unlock request (the User Portal) or by the help desk at its
//    agent (the User page); the new PIN answers set_new_pin.
// The new PIN's rules (the device policy's) are checked as it is typed, and
// announced (aria-live); once the device session asks for the PINs, the
// form's values answer it and leave the page.
'use strict';

document.addEventListener('DOMContentLoaded', () => {
  const dialog = document.getElementById('change-pin');
  if (!dialog) return;
  const $ = (id) => document.getElementById(id);
  const form = $('change-pin-form');
  const current = $('change-pin-current');
  const fresh = $('change-pin-new');
  const confirm = $('change-pin-confirm');
  const rulesList = $('change-pin-rules');
  const submit = $('change-pin-start');
  let opened = null;
  let valid = false;
  let checkSeq = 0;
  const unlocking = () => opened && opened.mode === 'unlock';

  function checkUrl() {
    return opened.policy
      ? `/api/v1/policies/${encodeURIComponent(opened.policy)}/pin-check`
      : `/api/v1/me/devices/${encodeURIComponent(opened.serial)}/pin-check`;
  }

  function update() {
    const same = fresh.value === confirm.value;
    $('change-pin-mismatch').hidden = same || confirm.value === '';
    submit.disabled = !(valid && same && (unlocking() || current.value !== ''));
  }

  async function checkPin() {
    const mine = ++checkSeq;
    try {
      const r = await Keyward.api('POST', checkUrl(), { pin: fresh.value });
      if (mine !== checkSeq) return;
      valid = r.valid;
      rulesList.replaceChildren();
      for (const rule of r.rules) {
        const li = document.createElement('li');
        li.dataset.rule = rule.rule;
        li.textContent = rule.description;
        if (fresh.value !== '') Keyward.markRule(li, rule.passed);
        rulesList.append(li);
      }
    } catch (e) {
      Keyward.pageError(e, dialog);
    }
    update();
  }

  function clearPins() {
    current.value = '';
    fresh.value = '';
    confirm.value = '';
  }

  function finish(text, ok) {
    $('change-pin-step').hidden = true;
    const el = $(ok ? 'change-pin-done' : 'change-pin-failed');
    el.textContent = text;
    el.hidden = false;
  }

  // Follows the session; answers its prompts once with the PINs entered.
  async function follow(id, pins) {
    let s;
    try {
      s = await Keyward.api('GET', `/api/v1/issuance/${encodeURIComponent(id)}`);
    } catch (e) {
      Keyward.pageError(e, dialog);
      setTimeout(() => follow(id, pins), 1000);
      return;
    }
    const serial = opened.serial;
    $('change-pin-step').textContent = `Step: ${s.step || s.status}`;
    const more = $('change-pin-prompts');
    if (s.status === 'pin_changed' || s.status === 'unlocked') {
      KeywardPrompts.clear(more);
      finish(s.status === 'unlocked'
        ? `Device ${serial} is unlocked: its new PIN is set.`
        : `The PIN of device ${serial} is changed.`, true);
      // What the unlock did about a FIDO PIN of its own.
      const notice = $('change-pin-notice');
      notice.textContent = s.notice ? s.notice.message : '';
      notice.hidden = !s.notice;
      return;
    }
    if (s.status !== 'running') KeywardPrompts.clear(more);
    if (s.status !== 'running') {
      const e = s.error || {};
      // The message says the tries left already ("…: 2 tries left").
      const what = unlocking() ? 'The device was not unlocked' : 'The PIN was not changed';
      finish(`${what}: ${e.message || s.status}.`, false);
      form.hidden = false;
      update();
      return;
    }
    const kinds = (s.prompts || []).map((p) => p.kind);
    const wanted = unlocking() ? ['set_new_pin'] : ['enter_pin', 'set_new_pin'];
    if (pins && wanted.every((k) => kinds.includes(k))) {
      const answers = unlocking()
        ? { set_new_pin: pins.fresh }
        : { enter_pin: pins.current, set_new_pin: pins.fresh };
      try {
        await Keyward.api('POST', `/api/v1/issuance/${encodeURIComponent(id)}/relay`, {
          protocol: 1, session_id: id, seq: s.seq, responses: [], answers,
        });
      } catch (e) {
        finish(`${unlocking() ? 'The device was not unlocked' : 'The PIN was not changed'}: ${e.message || e}`, false);
        form.hidden = false;
        return;
      }
      pins = null;
    } else if (!pins && unlocking()) {
      // Later prompts (a blocked FIDO PIN: reinsert, the reset's warning
      // to confirm, the new FIDO PIN) are the person's to answer here.
      KeywardPrompts.render(more, s, id);
    }
    setTimeout(() => follow(id, pins), 500);
  }

  for (const button of document.querySelectorAll('.change-pin, .unlock-pin')) {
    button.addEventListener('click', () => {
      opened = { ...button.dataset };
      const unlock = unlocking();
      $('change-pin-serial').textContent = opened.serial;
      $('change-pin-what').textContent = unlock ? 'Unlock' : 'Change the PIN';
      $('change-pin-current-label').hidden = unlock;
      current.required = !unlock;
      $('change-pin-unlock-note').hidden = !unlock;
      submit.textContent = unlock ? 'Unlock' : 'Change PIN';
      clearPins();
      valid = false;
      form.hidden = false;
      for (const id of ['change-pin-step', 'change-pin-done', 'change-pin-failed', 'change-pin-notice']) $(id).hidden = true;
      Keyward.pageError(null, dialog);
      checkPin();
      dialog.showModal();
      (unlock ? fresh : current).focus();
    });
  }
  fresh.addEventListener('input', checkPin);
  confirm.addEventListener('input', update);
  current.addEventListener('input', update);
  $('change-pin-close').addEventListener('click', () => {
    clearPins();
    dialog.close();
    // An unlock changes what the page shows (the request is used).
    if (unlocking() && !$('change-pin-done').hidden) window.location.reload();
  });
  dialog.addEventListener('close', clearPins);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    Keyward.pageError(null, dialog);
    const pins = { current: current.value, fresh: fresh.value };
    clearPins();
    submit.disabled = true;
    $('change-pin-done').hidden = true;
    $('change-pin-failed').hidden = true;
    try {
      const body = opened.via ? { via: opened.via } : undefined;
      const r = await Keyward.api('POST', opened.start, body);
      form.hidden = true;
      $('change-pin-step').hidden = false;
      follow(r.session_id, pins);
    } catch (e) {
      Keyward.pageError(e, dialog);
      update();
    }
  });
});
