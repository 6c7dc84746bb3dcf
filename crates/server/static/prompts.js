// The prompts of a session (issuance or recycle), as the person's client
// shows them: read from the session's status (`prompts`), answered on the
// relay endpoint as {kind: value}. Informational prompts (touch_device) are
// shown only. A form leaves the page with its answers once they are taken.
'use strict';

const KeywardPrompts = (() => {
  // Prompts answered by the person; others (touch_device) only inform.
  const ANSWERED = ['enter_pin', 'confirm_pin', 'set_new_pin', 'set_fido_pin',
    'enter_fido_pin', 'confirm_touch', 'show_initial_pin', 'reinsert_device'];
  const PIN_KINDS = ['enter_pin', 'confirm_pin', 'set_new_pin', 'set_fido_pin', 'enter_fido_pin'];
  const ANSWER_KEY = {
    enter_pin: 'enter_pin', confirm_pin: 'confirm_pin', set_new_pin: 'set_new_pin',
    set_fido_pin: 'set_fido_pin', enter_fido_pin: 'enter_fido_pin', confirm_touch: 'confirm_touch',
    show_initial_pin: 'show_initial_pin', reinsert_device: 'reinsert_device',
  };

  function render(area, s, sessionId) {
    const prompts = Array.isArray(s.prompts) ? s.prompts : [];
    if (!prompts.length) {
      if (area.promptSeq !== undefined) {
        area.replaceChildren();
        delete area.promptSeq;
      }
      return;
    }
    if (area.promptSeq === s.seq) return; // already on screen
    area.promptSeq = s.seq;
    area.replaceChildren();
    const answered = prompts.filter((p) => ANSWERED.includes(p.kind));
    for (const p of prompts.filter((q) => !ANSWERED.includes(q.kind))) {
      const info = document.createElement('p');
      info.className = 'notice prompt-info';
      info.dataset.kind = p.kind;
      info.textContent = p.message;
      area.append(info);
    }
    if (!answered.length) return;
    const form = document.createElement('form');
    form.className = 'prompt card';
    form.autocomplete = 'off';
    const fields = [];
    let touchAnswer = null;
    for (const p of answered) {
      const block = document.createElement('div');
      block.className = 'prompt-item';
      block.dataset.kind = p.kind;
      const msg = document.createElement('p');
      msg.textContent = p.message;
      block.append(msg);
      if (PIN_KINDS.includes(p.kind)) {
        const label = document.createElement('label');
        label.textContent = p.kind.includes('fido') ? 'FIDO PIN ' : 'PIN ';
        const input = document.createElement('input');
        input.type = 'password';
        input.autocomplete = 'new-password';
        input.id = `prompt-${p.kind}`;
        input.required = true;
        label.append(input);
        block.append(label);
        fields.push({ kind: p.kind, input });
        if (p.kind === 'set_new_pin' || p.kind === 'set_fido_pin') {
          const again = document.createElement('label');
          again.textContent = 'Again ';
          const input2 = document.createElement('input');
          input2.type = 'password';
          input2.autocomplete = 'new-password';
          input2.id = `prompt-${p.kind}-again`;
          input2.required = true;
          again.append(input2);
          block.append(again);
          fields.push({ kind: p.kind, input: input2, again: input });
        }
      } else if (p.kind === 'show_initial_pin') {
        const shown = document.createElement('p');
        shown.className = 'pin-display mono';
        shown.id = 'prompt-initial-pin';
        shown.textContent = p.value || '';
        block.append(shown);
        fields.push({ kind: p.kind, value: () => p.value || '' });
      } else if (p.kind === 'reinsert_device') {
        fields.push({ kind: p.kind, value: () => 'done' });
      } else if (p.kind === 'confirm_touch') {
        touchAnswer = { kind: p.kind };
        fields.push(touchAnswer);
      }
      form.append(block);
    }
    const actions = document.createElement('div');
    actions.className = 'actions';
    const ok = document.createElement('button');
    ok.type = 'submit';
    ok.className = 'primary';
    ok.id = 'prompt-continue';
    ok.textContent = touchAnswer ? 'Confirm' : 'Continue';
    actions.append(ok);
    let declined = false;
    if (touchAnswer) {
      const decline = document.createElement('button');
      decline.type = 'submit';
      decline.id = 'prompt-decline';
      decline.formNoValidate = true; // declining needs no PIN
      decline.textContent = 'Decline';
      decline.addEventListener('click', () => { declined = true; });
      actions.append(decline);
    }
    const err = document.createElement('p');
    err.className = 'error';
    err.hidden = true;
    form.append(actions, err);
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const answers = {};
      for (const f of fields) {
        if (f.again) {
          if (f.input.value !== f.again.value) {
            err.textContent = 'The two PINs differ.';
            err.hidden = false;
            declined = false;
            return;
          }
          continue;
        }
        if (f.input) answers[ANSWER_KEY[f.kind]] = f.input.value;
        else if (f === touchAnswer) answers[f.kind] = declined ? 'false' : 'true';
        else answers[ANSWER_KEY[f.kind]] = f.value();
      }
      declined = false;
      try {
        await Keyward.api('POST', `/api/v1/issuance/${encodeURIComponent(sessionId)}/relay`, {
          protocol: 1, session_id: sessionId, seq: s.seq, responses: [], answers,
        });
        area.replaceChildren(); // the PINs leave the page with the form
        area.promptSeq = s.seq;
      } catch (e) {
        err.textContent = Keyward.describe(e);
        err.hidden = false;
      }
    });
    area.append(form);
    const first = form.querySelector('input');
    if (first) first.focus();
  }


  function clear(area) {
    area.replaceChildren();
    delete area.promptSeq;
  }

  return { render, clear };
})();
