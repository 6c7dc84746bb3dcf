// Add Device: the issuance dialog. Everything comes from the server: the
// devices the operator's agents report (GET /api/v1/agents/devices), the
// policies that fit the chosen device, the policy's PIN rules and a live
// rule-by-rule check, then the session's progress and prompts
// (GET /api/v1/issuance/{id}); prompt answers go to the relay endpoint.
// PINs travel only in POST bodies and are cleared from the page once sent.
'use strict';

document.addEventListener('DOMContentLoaded', () => {
  const root = document.getElementById('add-device-dialog');
  if (!root) return;
  const $ = (id) => document.getElementById(id);
  const user = root.dataset.user;
  const mode = root.dataset.displayMode; // displayed | disguised | not_displayed
  const userPage = `/users/${encodeURIComponent(user)}`;
  // Replace Device: the device replaced and why (the server declares the
  // incident and ends the original); its policy is chosen by default.
  const replaces = root.dataset.replaces || null;
  const replaceReason = root.dataset.replaceReason || null;
  const replacePolicy = root.dataset.replacePolicy || '';
  // Inventory states a device can be issued from (or not in the inventory).
  const SELECTABLE = ['available', 'assigned', 'not in the inventory'];
  const tbody = $('device-list').querySelector('tbody');
  const policySel = $('policy');
  const actionSel = $('action-type');
  const pin = $('pin');
  const confirmPin = $('confirm-pin');
  const rulesList = $('pin-rules');
  const continueBtn = $('continue');
  const formError = $('form-error');

  const DEVICE_POLL_MS = 3000;
  const TYPE_LABELS = { yubikey5: 'YubiKey 5', c4000: 'Crescendo C4000', piv: 'PIV device' };
  const SESSION_POLL_MS = 700;

  let devicesKey = null;
  let selected = null; // the chosen device's serial
  let agentOf = {}; // serial -> id of the agent that reports it
  let pinValid = false;
  let checkSeq = 0;
  let session = null; // { id, serial }
  let pollTimer = null;

  function showError(e) {
    if (!e) {
      formError.hidden = true;
      formError.textContent = '';
      return;
    }
    formError.textContent = typeof e === 'string' ? e : Keyward.describe(e);
    formError.hidden = false;
  }

  // ---------------------------------------------------------------- devices
  // The agents API lists the devices of the operator's agents; accept the
  // list itself, {devices: [...]}, or {agents: [{name, online, devices}]}.
  function normalise(data) {
    const out = { agents: null, devices: [] };
    const flat = (d, agent) => {
      const info = typeof d.info === 'string' ? safeJson(d.info) : (d.info || {});
      return {
        serial: String(d.serial),
        type: TYPE_LABELS[d.device_type || info.device_type] || d.device_type || info.device_type || '',
        firmware: d.firmware || d.firmware_version || info.firmware || info.firmware_version || '',
        reader: d.reader || info.reader || '',
        agent: d.agent_name || d.agent || (agent && agent.name) || '',
        agentId: d.agent_id || (agent && agent.id) || '',
        state: d.state || 'not in the inventory',
      };
    };
    if (Array.isArray(data)) {
      out.devices = data.map((d) => flat(d));
    } else if (data && Array.isArray(data.agents)) {
      out.agents = data.agents;
      for (const a of data.agents) {
        for (const d of a.devices || []) out.devices.push(flat(d, a));
      }
      if (Array.isArray(data.devices)) out.devices.push(...data.devices.map((d) => flat(d)));
    } else if (data && Array.isArray(data.devices)) {
      out.devices = data.devices.map((d) => flat(d));
    }
    return out;
  }

  function safeJson(s) {
    try { return JSON.parse(s); } catch (_) { return {}; }
  }

  // The devices come by long polling: the server answers at once when the
  // list changed since `version`, else when it changes (device inserted or
  // removed, agent paired or revoked), else after `wait` seconds.
  let version = null;
  let deviceAbort = null;
  let stopped = false;

  // Serials named by this user's approved requests (bulk batches).
  let requestedSerials = new Set();
  Keyward.api('GET', '/api/v1/requests?state=approved').then((list) => {
    requestedSerials = new Set(list.filter((r) => r.user === user && r.serial).map((r) => r.serial));
    if (requestedSerials.size) {
      devicesKey = null; // redraw with the requested devices first
      loadDevices(0);
    }
  }).catch(() => {});

  async function loadDevices(wait) {
    let data = null;
    const q = version !== null && wait ? `?since=${version}&wait=${wait}` : '';
    deviceAbort = new AbortController();
    try {
      data = await Keyward.api('GET', `/api/v1/agents/devices${q}`, undefined, undefined, deviceAbort.signal);
    } catch (e) {
      if (e.name === 'AbortError') return 'aborted';
      // No agents service on this server, or none for this operator.
      if (e.status !== 404) {
        showError(e);
        return 'error';
      }
    }
    if (data && typeof data.version === 'number') version = data.version;
    const { agents, devices } = normalise(data);
    const online = agents ? agents.filter((a) => a.online !== false && a.status !== 'revoked') : null;
    $('no-agent').hidden = !(data === null || (online !== null && online.length === 0)
      || (agents === null && devices.length === 0 && !Array.isArray(data)));
    const key = JSON.stringify(devices);
    if (key !== devicesKey) {
      devicesKey = key;
      renderDevices(devices);
    }
    return data === null ? 'unavailable' : 'ok';
  }

  async function watchDevices() {
    while (!stopped) {
      const r = await loadDevices(20);
      if (stopped) return;
      if (r !== 'ok' && r !== 'aborted') await new Promise((res) => setTimeout(res, DEVICE_POLL_MS));
    }
  }

  function renderDevices(devices) {
    tbody.replaceChildren();
    agentOf = {};
    for (const d of devices) agentOf[d.serial] = d.agentId;
    if (!devices.length) {
      const tr = document.createElement('tr');
      const td = document.createElement('td');
      td.colSpan = 7;
      td.className = 'muted';
      td.textContent = 'No device connected. Insert one: the list updates on its own.';
      tr.append(td);
      tbody.append(tr);
    }
    let stillThere = false;
    // A device an approved request of this user names (a bulk batch's) is
    // offered first, marked.
    const requested = (d) => requestedSerials.has(d.serial);
    devices = [...devices].sort((a, b) => Number(requested(b)) - Number(requested(a)));
    for (const d of devices) {
      const tr = document.createElement('tr');
      tr.dataset.serial = d.serial;
      const radioCell = document.createElement('td');
      const radio = document.createElement('input');
      radio.type = 'radio';
      radio.name = 'device';
      radio.value = d.serial;
      radio.id = `device-${d.serial}`;
      radio.setAttribute('aria-label', `${d.type} ${d.serial}`);
      // An issued (or otherwise used) device cannot be picked: it would
      // only be refused after a policy and a PIN were chosen.
      const selectable = SELECTABLE.includes(d.state) && d.serial !== replaces;
      if (!selectable) {
        radio.disabled = true;
        tr.classList.add('unselectable');
        tr.setAttribute('aria-disabled', 'true');
        tr.title = d.serial === replaces
          ? 'This is the device being replaced'
          : `This device is ${d.state}: terminate and recycle it before issuing it again`;
      }
      if (d.serial === selected && selectable) {
        radio.checked = true;
        stillThere = true;
      }
      radio.addEventListener('change', () => chooseDevice(d.serial));
      radioCell.append(radio);
      tr.append(radioCell);
      if (requested(d)) tr.classList.add('requested');
      const inventory = requested(d) ? `${d.state} (requested)` : d.state;
      for (const v of [d.type, d.serial, d.firmware, d.reader, d.agent, inventory]) {
        const td = document.createElement('td');
        td.textContent = v;
        tr.append(td);
      }
      tr.addEventListener('click', (ev) => {
        if (!selectable) return;
        if (ev.target !== radio) {
          radio.checked = true;
          chooseDevice(d.serial);
        }
      });
      tbody.append(tr);
    }
    if (selected && !stillThere) {
      // The chosen device was removed.
      selected = null;
      resetPolicies('Select a device first');
    }
    updateContinue();
  }

  function resetPolicies(text) {
    policySel.replaceChildren(new Option(text, ''));
    policySel.disabled = true;
    rulesList.replaceChildren();
    pinValid = false;
  }

  async function chooseDevice(serial) {
    if (serial === selected) return;
    selected = serial;
    showError(null);
    resetPolicies('Loading policies...');
    try {
      const policies = await Keyward.api('GET', `/api/v1/devices/${encodeURIComponent(serial)}/policies`);
      if (serial !== selected) return;
      if (!policies.length) {
        resetPolicies('No policy fits this device');
        return;
      }
      policySel.replaceChildren(new Option('Choose a device policy', ''));
      fitting = Object.fromEntries(policies.map((p) => [p.name, p]));
      for (const p of policies) policySel.append(new Option(p.name, p.name));
      policySel.disabled = false;
      if (replacePolicy && policies.some((p) => p.name === replacePolicy)) {
        policySel.value = replacePolicy;
        await loadRules();
        await checkApproval();
      } else if (policies.length === 1) {
        policySel.value = policies[0].name;
        await loadRules();
        await checkApproval();
      }
    } catch (e) {
      resetPolicies('Select a device first');
      if (e.status === 404) {
        showError(`Device ${serial} is not in the inventory: import it on the Devices page first.`);
      } else {
        showError(e);
      }
    }
    updateContinue();
  }

  // -------------------------------------------------------------- PIN rules
  async function loadRules() {
    rulesList.replaceChildren();
    pinValid = false;
    const name = policySel.value;
    if (!name) return;
    try {
      const rules = await Keyward.api('GET', `/api/v1/policies/${encodeURIComponent(name)}/pin-rules`);
      for (const r of rules) {
        const li = document.createElement('li');
        li.dataset.rule = r.rule;
        li.textContent = r.description;
        rulesList.append(li);
      }
      if (pin && pin.value) await checkPin();
    } catch (e) {
      showError(e);
    }
    updateContinue();
  }

  // Each rule checked as the person types; the server's check is the
  // authority, and this one stores nothing.
  async function checkPin() {
    if (!pin || !policySel.value) return;
    const mine = ++checkSeq;
    rulesList.hidden = false;
    $('pin-info').setAttribute('aria-expanded', 'true');
    try {
      const r = await Keyward.api('POST', `/api/v1/policies/${encodeURIComponent(policySel.value)}/pin-check`, { pin: pin.value });
      if (mine !== checkSeq) return;
      pinValid = r.valid;
      for (const rule of r.rules) {
        const li = rulesList.querySelector(`li[data-rule="${CSS.escape(rule.rule)}"]`);
        if (!li) continue;
        Keyward.markRule(li, rule.passed);
      }
    } catch (e) {
      showError(e);
    }
    updateContinue();
  }

  function pinsMatch() {
    if (mode !== 'disguised') return true;
    const same = pin.value === confirmPin.value;
    $('pin-mismatch').hidden = same || confirmPin.value === '';
    return same;
  }

  // A policy that requires a second operator's approval: without an
  // approved request for this user, policy and device, Continue becomes
  // Request Issuance (the request waits on the Requests page).
  let fitting = {};
  let needsRequest = false;
  async function checkApproval() {
    const p = fitting[policySel.value];
    const kind = replaces ? 'replacement' : 'issuance';
    needsRequest = false;
    if (p && (p.approval_required_for || []).includes(kind)) {
      try {
        const approved = await Keyward.api('GET', '/api/v1/requests?state=approved');
        needsRequest = !approved.some((r) => r.user === user && r.policy === p.name && r.kind === kind
          && (!r.serial || r.serial === selected));
      } catch (e) {
        showError(e);
      }
    }
    continueBtn.textContent = needsRequest ? 'Request Issuance' : 'Continue';
    $('approval-note').hidden = !needsRequest;
    updateContinue();
  }

  function updateContinue() {
    const action = actionSel.value;
    const needsPin = action === 'issue' && mode !== 'not_displayed' && !needsRequest;
    $('pin-entry').hidden = action === 'assign';
    let ok = Boolean(selected && policySel.value);
    if (ok && needsPin) ok = pinValid && pinsMatch() && (mode !== 'disguised' || confirmPin.value !== '');
    continueBtn.disabled = !ok;
  }

  // No PIN is entered in Not Displayed mode: no rules button then.
  if ($('pin-info')) $('pin-info').addEventListener('click', () => {
    rulesList.hidden = !rulesList.hidden;
    $('pin-info').setAttribute('aria-expanded', String(!rulesList.hidden));
    if (!rulesList.children.length) {
      const li = document.createElement('li');
      li.className = 'muted';
      li.textContent = 'Choose a device and a device policy to see its PIN rules.';
      rulesList.append(li);
    }
  });
  policySel.addEventListener('change', loadRules);
  policySel.addEventListener('change', checkApproval);
  actionSel.addEventListener('change', updateContinue);
  let debounce = null;
  if (pin) {
    pin.addEventListener('input', () => {
      pinValid = false;
      updateContinue();
      clearTimeout(debounce);
      debounce = setTimeout(checkPin, 120);
    });
  }
  if (confirmPin) confirmPin.addEventListener('input', updateContinue);
  // Refresh: ask again at once (the long poll goes on beside it).
  $('refresh-devices').addEventListener('click', () => {
    devicesKey = null;
    version = null;
    if (deviceAbort) deviceAbort.abort();
  });

  // ------------------------------------------------------------ issuance
  $('issue-form').addEventListener('submit', async (ev) => {
    ev.preventDefault();
    showError(null);
    if (needsRequest) {
      continueBtn.disabled = true;
      try {
        const body = { user, policy: policySel.value, serial: selected };
        if (replaces) Object.assign(body, { kind: 'replacement', replaces, reason: replaceReason });
        await Keyward.api('POST', '/api/v1/requests', body);
        const note = $('approval-note');
        note.textContent = `Requested: device ${selected} is issued once a second operator approves the request (Requests page).`;
        note.hidden = false;
        continueBtn.textContent = 'Requested';
      } catch (e) {
        showError(e);
        continueBtn.disabled = false;
      }
      return;
    }
    const action = actionSel.value;
    const body = { user, policy: policySel.value, serial: selected, action };
    if (replaces) {
      body.replaces = replaces;
      body.replace_reason = replaceReason;
    }
    // The agent that reports the device relays its commands; the answers to
    // prompts come from this page.
    if (action === 'issue') body.via = agentOf[selected] || 'agent';
    if (action === 'issue' && mode !== 'not_displayed') {
      body.pin = pin.value;
      if (mode === 'disguised') body.confirm_pin = confirmPin.value;
    }
    continueBtn.disabled = true;
    try {
      const r = await Keyward.api('POST', '/api/v1/issuance', body);
      // Sent: the PIN has no business in the page any more.
      if (pin) pin.value = '';
      if (confirmPin) confirmPin.value = '';
      if (action === 'assign') {
        window.location.assign(`${userPage}?assigned=${encodeURIComponent(selected)}`);
        return;
      }
      startProgress(r.session_id, selected);
    } catch (e) {
      showError(e);
      updateContinue();
    }
  });

  function startProgress(id, serial) {
    session = { id, serial };
    // A reload (or a closed and reopened dialog) picks the session up again.
    window.history.replaceState(null, '', `?session=${encodeURIComponent(id)}`);
    stopped = true;
    if (deviceAbort) deviceAbort.abort();
    $('step-select').hidden = true;
    $('step-progress').hidden = false;
    $('progress-serial').textContent = serial;
    poll();
  }

  // The steps passed so far, the current one last.
  function noteStep(step) {
    const list = $('progress-steps');
    if (!step || (list.lastElementChild && list.lastElementChild.textContent === step)) return;
    for (const li of list.children) li.className = 'done';
    const li = document.createElement('li');
    li.textContent = step;
    li.className = 'current';
    list.append(li);
  }

  function schedule() {
    clearTimeout(pollTimer);
    pollTimer = setTimeout(poll, SESSION_POLL_MS);
  }

  async function poll() {
    let s;
    try {
      s = await Keyward.api('GET', `/api/v1/issuance/${encodeURIComponent(session.id)}`);
    } catch (e) {
      $('progress-step').textContent = `cannot read the session: ${Keyward.describe(e)}`;
      schedule();
      return;
    }
    $('progress-step').textContent = s.step || s.status;
    $('progress-state').textContent = s.status;
    noteStep(s.step);
    if (s.status === 'issued') {
      window.location.assign(`${userPage}?issued=${encodeURIComponent(session.serial)}`);
      return;
    }
    if (s.status === 'cancelled') {
      window.location.assign(`${userPage}?cancelled=${encodeURIComponent(session.serial)}`);
      return;
    }
    if (s.status === 'failed') {
      showFailure(s);
      return;
    }
    KeywardPrompts.render($('prompt-area'), s, session.id);
    schedule();
  }

  // -------------------------------------------------------------- failure
  function errorInfo(s) {
    const e = s.error || {};
    const lines = [];
    const add = (k, v) => { if (v !== undefined && v !== null && v !== '') lines.push(`${k}: ${v}`); };
    add('Error code', e.code);
    add('Message', e.message);
    add('Step', e.step || s.step);
    add('Device status word', e.status_word || e.sw);
    // The session id is the correlation id of every log line and audit event.
    add('Correlation id', e.correlation_id || e.session || s.session_id);
    add('Time', e.at || e.time);
    for (const [k, v] of Object.entries(e)) {
      if (!['code', 'message', 'step', 'status_word', 'sw', 'correlation_id', 'session', 'at', 'time'].includes(k)) {
        add(k, typeof v === 'object' ? JSON.stringify(v) : v);
      }
    }
    add('Device', s.serial);
    add('User', s.user);
    add('Device policy', s.policy);
    return lines.join('\n');
  }

  const failure = $('failure-dialog');
  function showFailure(s) {
    KeywardPrompts.clear($('prompt-area'));
    $('error-info').textContent = errorInfo(s);
    $('copied').hidden = true;
    if (!failure.open) failure.showModal();
  }

  $('copy-error').addEventListener('click', async () => {
    const text = $('error-info').textContent;
    try {
      await navigator.clipboard.writeText(text);
    } catch (_) {
      // Older browsers, or no clipboard permission: select and copy.
      const range = document.createRange();
      range.selectNodeContents($('error-info'));
      const sel = window.getSelection();
      sel.removeAllRanges();
      sel.addRange(range);
      document.execCommand('copy');
    }
    $('copied').hidden = false;
  });

  $('retry').addEventListener('click', async () => {
    try {
      await Keyward.api('POST', `/api/v1/issuance/${encodeURIComponent(session.id)}/retry`);
      failure.close();
      KeywardPrompts.clear($('prompt-area'));
      poll();
    } catch (e) {
      $('error-info').textContent += `\nRetry: ${Keyward.describe(e)}`;
    }
  });

  $('cancel-issuance').addEventListener('click', async () => {
    try {
      await Keyward.api('POST', `/api/v1/issuance/${encodeURIComponent(session.id)}/cancel`);
      window.location.assign(`${userPage}?cancelled=${encodeURIComponent(session.serial)}`);
    } catch (e) {
      $('error-info').textContent += `\nCancel: ${Keyward.describe(e)}`;
    }
  });
  // Escape must not leave a failed session without a choice.
  failure.addEventListener('cancel', (ev) => ev.preventDefault());

  const resume = new URLSearchParams(window.location.search).get('session');
  if (resume) {
    Keyward.api('GET', `/api/v1/issuance/${encodeURIComponent(resume)}`)
      .then((s) => startProgress(s.session_id, s.serial))
      .catch((e) => {
        window.history.replaceState(null, '', window.location.pathname);
        showError(e);
        updateContinue();
        watchDevices();
      });
  } else {
    updateContinue();
    watchDevices();
  }
});
