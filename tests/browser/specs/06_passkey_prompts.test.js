// The passkey registration prompts in the Add Device dialog: a policy with a
// FIDO application registers the device's passkey with a Passkey-Enabled
// Service (the simulated Entra ID tenant, `keyward entra-standin`). Shared
// PIN: the device PIN is entered again for the registration; unshared: a
// FIDO PIN is set; both confirm the registration before the device is used.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const { spawn } = require('node:child_process');
const h = require('../lib/harness');
const pcsc = require('../lib/pcsc');
const { agentDir, startAgent, approveInPortal } = require('../lib/agent');

const SECRET = 'browser-standin-client-secret-4711';
const CLIENT_ID = '5b1a4c0e-6a55-4d7c-9a61-2f3c9d7e0a11';
let server;
let browser;
let agent;
let tenant;
let page;
// The first agent's folder: its virtual manufacturer CA is the one the
// tenant trusts.
let firstAgentDir;

async function startTenant(caFile) {
  const child = spawn(h.BIN, ['entra-standin', '--client-id', CLIENT_ID, '--trust', caFile,
    '--user', 'alice@example.com', '--user', 'bob@example.com', '--user', 'carol@example.com'],
  { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, KEYWARD_STANDIN_CLIENT_SECRET: SECRET } });
  let output = '';
  const info = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`entra-standin did not start:\n${output}`)), 30000);
    child.stdout.on('data', (c) => {
      output += c.toString();
      const line = output.split('\n').find((l) => l.startsWith('{'));
      if (line) {
        clearTimeout(timer);
        resolve(JSON.parse(line));
      }
    });
    child.stderr.on('data', (c) => { output += c.toString(); });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`entra-standin exited (${code}):\n${output}`));
    });
  });
  return {
    info,
    async stop() {
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        await new Promise((r) => child.once('exit', r));
      }
    },
  };
}

function policy(name, serviceId, shared) {
  return {
    name,
    device_types: ['c4000'],
    management_key: 'random',
    pin_application: {
      min_length: 6, max_length: 8, character_set: 'numeric', max_repeated: 2, max_sequential: 2,
      pin_retry_count: 3, puk_retry_count: 3,
    },
    pki_applications: [{
      name: 'PIV Authentication', slot: '9a', algorithm: 'eccp256', certificate_authority: 'Keyward Issuing CA',
      template: {
        subject_dn: 'CN={display_name},UID={login}', subject_alt_names: ['upn'], validity_days: 365,
        key_usage: ['digital_signature'], extended_key_usage: ['client_auth', 'smartcard_logon'],
      },
    }],
    fido_application: {
      passkey_service_id: serviceId, passkey_service_name: 'Simulated tenant', share_device_pin: shared, cred_protect: 1,
    },
  };
}

test.before(async () => {
  server = await h.startServer();
  await h.seed(server, { initial_pin_display_mode: 'displayed', change_pin_during_issuance: 'false' });
  // The virtual devices' manufacturer CA, made before the agent starts, so
  // that the tenant trusts their attestation.
  const dir = agentDir();
  firstAgentDir = dir;
  const ca = await pcsc.run(h.BIN, ['vcard', 'ca-cert', '--ca-dir', path.join(dir, 'state', 'virtual-ca')]);
  assert.equal(ca.status, 0, ca.stderr);
  const caFile = path.join(dir, 'virtual-ca.pem');
  require('node:fs').writeFileSync(caFile, ca.stdout);
  tenant = await startTenant(caFile);
  const service = await h.must(server, 'POST', '/passkey-services', {
    name: 'Simulated tenant', tenant_id: tenant.info.tenant_id, client_id: CLIENT_ID, client_secret: SECRET,
    authority_url: tenant.info.authority_url, graph_url: tenant.info.graph_url,
    scope: 'https://graph.microsoft.com/.default',
  });
  await h.must(server, 'POST', '/policies', policy('Passkey shared PIN', service.id, true));
  await h.must(server, 'POST', '/policies', policy('Passkey own FIDO PIN', service.id, false));
  for (const serial of ['36000001', '36000002', '36000003']) {
    await h.must(server, 'POST', '/devices', { device_type: 'c4000', serial, firmware_version: '1.0.0' });
  }
  browser = await h.launch();
  page = await h.newPage(browser, server);
  await h.signIn(page, server, 'operator');
  agent = await startAgent(server, ['c4000:36000001', 'c4000:36000002', 'c4000:36000003'], 'ws-passkeys', dir);
  await approveInPortal(page, server, agent);
});

test.after(async () => {
  if (browser) await browser.close();
  if (agent) await agent.stop();
  if (tenant) await tenant.stop();
  if (server) await server.stop();
});

async function start(login, serial, policyName, pin) {
  await page.goto(`${server.url}/users/${login}/add-device`);
  const row = page.locator(`#device-list tr[data-serial="${serial}"]`);
  await row.waitFor({ timeout: 20000 });
  await row.click();
  await page.waitForSelector(`#policy option[value="${policyName}"]`, { state: 'attached' });
  await page.selectOption('#policy', policyName);
  await page.waitForSelector('#pin-rules li[data-rule]', { state: 'attached' });
  await page.type('#pin', pin);
  await page.waitForSelector('#continue:not([disabled])');
  await page.click('#continue');
}

// Answers the prompt forms as they come, until the User page shows the device.
async function answerUntilIssued(login, serial, answers, shotPrefix) {
  const seen = [];
  const deadline = Date.now() + 90000;
  while (Date.now() < deadline) {
    if (new URL(page.url()).pathname === `/users/${login}`) break;
    if (await page.locator('#failure-dialog[open]').count()) {
      throw new Error(`issuance failed: ${await page.textContent('#error-info')}`);
    }
    const form = page.locator('#prompt-area form.prompt');
    if (await form.count()) {
      const kinds = await form.locator('.prompt-item').evaluateAll((els) => els.map((e) => e.dataset.kind));
      const key = kinds.join('+');
      if (!seen.includes(key)) {
        seen.push(key);
        await h.shot(page, `${shotPrefix}-${key}`);
      }
      for (const kind of kinds) {
        if (answers[kind] === undefined) continue;
        await page.fill(`#prompt-${kind}`, answers[kind]);
        if (await page.locator(`#prompt-${kind}-again`).count()) await page.fill(`#prompt-${kind}-again`, answers[kind]);
      }
      await page.click('#prompt-continue');
      // The form leaves the page once its answers are taken; a refusal stays.
      await page.waitForFunction(() => !document.querySelector('#prompt-area form.prompt')
        || document.querySelector('#prompt-area form.prompt .error:not([hidden])'));
      const refused = page.locator('#prompt-area form.prompt .error:not([hidden])');
      if (await refused.count()) throw new Error(`answer refused: ${await refused.textContent()}`);
      continue;
    }
    await page.waitForTimeout(200);
  }
  await page.waitForURL(new RegExp(`/users/${login}\\?issued=${serial}$`), { timeout: 5000 });
  const device = page.locator(`article.device[data-serial="${serial}"]`);
  assert.match(await device.textContent(), /Issued/);
  assert.match(await device.textContent(), /passkey/);
  await h.shot(page, `${shotPrefix}-issued`);
  return seen;
}

test('shared PIN set at the start: the registration is confirmed (the device PIN serves it); a passkey on record', async () => {
  await start('alice', '36000001', 'Passkey shared PIN', '735194');
  const seen = await answerUntilIssued('alice', '36000001', { enter_pin: '735194', enter_fido_pin: '735194' }, '06-shared');
  assert.ok(seen.some((k) => k.includes('confirm_touch')), `prompts: ${seen}`);
});

test('shared PIN, Not Displayed with Change PIN during issuance: the registration shows the initial PIN, then the person sets their PIN', async (t) => {
  await h.setSettings(server, { initial_pin_display_mode: 'not_displayed', change_pin_during_issuance: 'true' });
  t.after(() => h.setSettings(server, { initial_pin_display_mode: 'displayed', change_pin_during_issuance: 'false' }));
  await page.goto(`${server.url}/users/carol/add-device`);
  const row = page.locator('#device-list tr[data-serial="36000003"]');
  await row.waitFor({ timeout: 20000 });
  await row.click();
  await page.waitForSelector('#policy option[value="Passkey shared PIN"]', { state: 'attached' });
  await page.selectOption('#policy', 'Passkey shared PIN');
  await page.waitForSelector('#continue:not([disabled])');
  await page.click('#continue');
  // Any initial PIN shown (show_initial_pin) is typed back by the dialog itself.
  const seen = await answerUntilIssued('carol', '36000003', { set_new_pin: '591736' }, '06-shared-not-displayed');
  const registration = seen.findIndex((k) => k.includes('confirm_touch'));
  const newPin = seen.findIndex((k) => k.includes('set_new_pin'));
  assert.ok(registration >= 0 && newPin >= 0, `prompts: ${seen}`);
  // Issue 6: the initial PIN is shown in the registration prompt; the
  // person's own PIN comes after the registration.
  assert.ok(seen[registration].includes('show_initial_pin'), `prompts: ${seen}`);
  assert.ok(registration < newPin, `the registration comes first: ${seen}`);
});

test('unshared PIN: a FIDO PIN is set during the registration; a passkey on record', async () => {
  await start('bob', '36000002', 'Passkey own FIDO PIN', '735194');
  const seen = await answerUntilIssued('bob', '36000002', { set_fido_pin: '864213' }, '06-unshared');
  assert.ok(seen.some((k) => k.includes('set_fido_pin')), `prompts: ${seen}`);
  assert.ok(seen.some((k) => k.includes('confirm_touch')), `prompts: ${seen}`);
  assert.deepEqual(page.problems.filter((p) => !/status of 4\d\d/.test(p)), []);
});

test('an administrator tests the Passkey-Enabled Service connection on its page', async () => {
  const admin = await h.newPage(browser, server);
  await h.signIn(admin, server, 'admin2');
  await admin.goto(`${server.url}/admin/passkey-services`);
  const card = admin.locator('section[data-service="Simulated tenant"]');
  assert.match(await card.textContent(), /never shown/);
  assert.ok(!(await admin.content()).includes(SECRET), 'the client secret is not in the page');
  await card.locator('input[name="user"]').fill('bob@example.com');
  await card.locator('button:text("Test connection")').click();
  const result = card.locator('.api-result');
  await result.waitFor();
  const text = await result.textContent();
  assert.match(text, /"verdict": "ok"/);
  await h.shot(admin, '06-passkey-service-test');
  assert.deepEqual(admin.problems, []);
  await admin.context().close();
});

// Issue 16, a blocked FIDO PIN: the help desk unlocks a device (at its own
// agent) whose own FIDO PIN was mistyped until PIN_BLOCKED. After the new
// PIN, the dialog says what a FIDO reset needs and erases before the person
// confirms; confirmed just after a reinsertion, FIDO is reset and the
// passkey registered again with a new FIDO PIN, in the same session.
test('an unlock resets a blocked FIDO PIN after its warning and registers the passkey again', async () => {
  const SERIAL = '36000004';
  await h.must(server, 'POST', '/devices', { device_type: 'c4000', serial: SERIAL, firmware_version: '1.0.0' });
  const desk = await h.newPage(browser, server);
  await h.signIn(desk, server, 'helpdesk');
  // The same manufacturer CA as the first agent's devices (the tenant
  // trusts it).
  const deskDir = agentDir();
  require('node:fs').cpSync(path.join(firstAgentDir, 'state', 'virtual-ca'),
    path.join(deskDir, 'state', 'virtual-ca'), { recursive: true });
  const deskAgent = await startAgent(server, [`c4000:${SERIAL}`], 'ws-helpdesk-fido', deskDir);
  try {
    await approveInPortal(desk, server, deskAgent);
    const seenBy = Date.now() + 20000;
    while (!(await h.must(server, 'GET', '/agents/devices')).devices.some((d) => d.serial === SERIAL)) {
      assert.ok(Date.now() < seenBy, `the agent reports ${SERIAL}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    // Issued to bob through that agent (the API's administrator token may
    // use any agent), the prompts answered over the API.
    const started = await h.must(server, 'POST', '/issuance',
      { user: 'bob', policy: 'Passkey own FIDO PIN', serial: SERIAL, pin: '735194', via: 'agent' });
    const id = started.session_id;
    const deadline = Date.now() + 60000;
    let answeredSeq = -1;
    for (;;) {
      const s = await h.must(server, 'GET', `/issuance/${id}`);
      if (s.status === 'issued') break;
      assert.ok(s.status === 'running', JSON.stringify(s));
      if (s.prompts.length && s.seq !== answeredSeq) {
        answeredSeq = s.seq;
        await h.must(server, 'POST', `/issuance/${id}/relay`, {
          protocol: 1, session_id: id, seq: s.seq, responses: [],
          answers: { set_fido_pin: '864213', confirm_touch: 'true' },
        });
      }
      assert.ok(Date.now() < deadline, 'issued');
      await new Promise((r) => setTimeout(r, 200));
    }
    // bob mistypes his FIDO PIN until it blocks (reinserting at each
    // PIN_AUTH_BLOCKED).
    for (let i = 0; ; i++) {
      const answer = await deskAgent.control(SERIAL, 'wrong-fido-pin');
      if (answer === 'ok PIN_BLOCKED') break;
      if (answer === 'ok PIN_AUTH_BLOCKED') assert.equal(await deskAgent.control(SERIAL, 'power-cycle'), 'ok');
      else assert.equal(answer, 'ok PIN_INVALID');
      assert.ok(i < 12, 'the FIDO PIN blocks');
    }

    await desk.goto(`${server.url}/users/bob`);
    await desk.locator(`article.device[data-serial="${SERIAL}"] .unlock-pin`).click();
    await desk.waitForSelector('#change-pin[open]');
    await desk.type('#change-pin-new', '246813');
    await desk.fill('#change-pin-confirm', '246813');
    await desk.waitForSelector('#change-pin-start:not([disabled])');
    await desk.click('#change-pin-start');
    // The reset's warning, before anything is erased.
    const warning = desk.locator('#change-pin-prompts form.prompt');
    await warning.waitFor({ timeout: 30000 });
    const kinds = await warning.locator('.prompt-item').evaluateAll((els) => els.map((e) => e.dataset.kind));
    assert.deepEqual(kinds, ['reinsert_device', 'confirm_touch']);
    const text = await warning.textContent();
    assert.match(text, /FIDO PIN is blocked/);
    assert.match(text, /within 10 seconds/);
    assert.match(text, /touch/);
    assert.match(text, /erases every passkey/);
    assert.match(text, /every website and service/);
    await h.shot(desk, '06-fido-reset-warning');
    // Taken out and put back, then confirmed within its seconds.
    assert.equal(await deskAgent.control(SERIAL, 'power-cycle'), 'ok');
    await desk.click('#prompt-continue');
    // The passkey registered again: a new FIDO PIN (the reset cleared it).
    await desk.waitForSelector('#change-pin-prompts #prompt-set_fido_pin', { timeout: 30000 });
    await desk.fill('#prompt-set_fido_pin', '975310');
    await desk.fill('#prompt-set_fido_pin-again', '975310');
    await desk.click('#prompt-continue');
    await desk.waitForSelector('#change-pin-done:not([hidden]), #change-pin-failed:not([hidden])', { timeout: 60000 });
    assert.ok(await desk.isVisible('#change-pin-done'), await desk.textContent('#change-pin-failed'));
    assert.match(await desk.textContent('#change-pin-notice'), /registered again/);
    await h.shot(desk, '06-fido-reset-done');
    // The erased passkey is deleted at the tenant by a job; the device is
    // not left waiting for a registration.
    const until = Date.now() + 20000;
    for (;;) {
      const done = await h.must(server, 'GET', `/jobs?device=${SERIAL}&state=done`);
      if (done.filter((j) => j.kind === 'delete_passkey').length === 1) break;
      assert.ok(Date.now() < until, `the erased passkey is deleted: ${JSON.stringify(done)}`);
      await new Promise((r) => setTimeout(r, 200));
    }
    const device = await h.must(server, 'GET', `/devices/${SERIAL}`);
    assert.equal(device.passkey_reregistration, false);
    assert.deepEqual(desk.problems, []);
  } finally {
    await deskAgent.stop();
  }
});
