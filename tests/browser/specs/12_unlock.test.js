// After issuance, part 2 (issue 16) in the portals: the help desk creates
// an unlock request on the User page (Create Unlock Request); alice sees it
// in the User Portal and unlocks her device at her own workstation agent,
// choosing a new PIN whose rules are checked as she types; the help desk
// also unlocks a device at its own agent (the assisted unlock), and gives
// the answers of an Offline Unlock: a YubiKey's PUK, a C4000's response.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');
const { startAgent, approveInPortal } = require('../lib/agent');

const SERIAL = '37000001';
const ASSISTED = '37000002';
const C4000 = '47000003';
let server;
let browser;
let agents = [];

async function reported(serial) {
  const deadline = Date.now() + 20000;
  for (;;) {
    const seen = await h.must(server, 'GET', '/agents/devices');
    if (seen.devices.some((d) => d.serial === serial)) return;
    assert.ok(Date.now() < deadline, `the agent reports ${serial}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function issueViaAgent(serial) {
  const start = await h.must(server, 'POST', '/issuance',
    { user: 'alice', policy: 'PIV Standard', serial, pin: '735194', via: 'agent' });
  const deadline = Date.now() + 60000;
  for (;;) {
    const s = await h.must(server, 'GET', `/issuance/${start.session_id}`);
    if (s.status === 'issued') return;
    assert.ok(!['failed', 'cancelled'].includes(s.status), JSON.stringify(s));
    assert.ok(Date.now() < deadline, `issuance of ${serial} did not end`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

// Fills the PIN dialog's new PIN (a rule-breaking one first: Unlock stays
// disabled and the failing rule is marked), then unlocks.
async function unlockInDialog(page, serial) {
  await page.waitForSelector('#change-pin[open]');
  assert.match(await page.textContent('#change-pin-title'), new RegExp(`Unlock of device ${serial}`));
  assert.ok(await page.isHidden('#change-pin-current'));
  await page.type('#change-pin-new', '111111');
  await page.fill('#change-pin-confirm', '111111');
  await page.waitForSelector('#change-pin-rules li.fail');
  assert.ok(await page.isDisabled('#change-pin-start'));
  await page.fill('#change-pin-new', '');
  await page.type('#change-pin-new', '246813');
  await page.fill('#change-pin-confirm', '246813');
  await page.waitForSelector('#change-pin-start:not([disabled])');
  await page.click('#change-pin-start');
  await page.waitForSelector('#change-pin-done:not([hidden]), #change-pin-failed:not([hidden])', { timeout: 60000 });
  assert.ok(await page.isVisible('#change-pin-done'), await page.textContent('#change-pin-failed'));
  assert.match(await page.textContent('#change-pin-done'), /is unlocked/);
}

test.before(async () => {
  server = await h.startServer();
  await h.seed(server, { initial_pin_display_mode: 'displayed' });
  for (const serial of [SERIAL, ASSISTED]) {
    await h.must(server, 'POST', '/devices', { device_type: 'yubikey5', serial, firmware_version: '5.7.1' });
  }
  await h.must(server, 'POST', '/devices', { device_type: 'c4000', serial: C4000, firmware_version: '1.0.0' });
  // Offline unlock of a C4000 needs a management key of its own.
  await h.must(server, 'POST', '/policies', { ...h.PIV_STANDARD, name: 'PIV Own Key', management_key: 'random', device_types: ['c4000', 'yubikey5'] });
  browser = await h.launch();
});

test.after(async () => {
  if (browser) await browser.close();
  for (const a of agents) await a.stop();
  if (server) await server.stop();
});

test('Create Unlock Request on the User page; alice completes it in the User Portal', async () => {
  const alice = await h.newPage(browser, server);
  await h.signIn(alice, server, 'alice');
  const agent = await startAgent(server, [`yubikey5:${SERIAL}`], 'ws-alice');
  agents.push(agent);
  await approveInPortal(alice, server, agent);
  await reported(SERIAL);
  await issueViaAgent(SERIAL);

  // No request yet: no Unlock in the User Portal.
  await alice.goto(`${server.url}/me`);
  const mine = alice.locator(`article.device[data-serial="${SERIAL}"]`);
  assert.equal(await mine.locator('.unlock-pin').count(), 0);

  const desk = await h.newPage(browser, server);
  await h.signIn(desk, server, 'helpdesk');
  await desk.goto(`${server.url}/users/alice`);
  const article = desk.locator(`article.device[data-serial="${SERIAL}"]`);
  await article.locator('button.action-unlock-requests').click();
  await desk.waitForSelector('#device-action-dialog[open]');
  assert.match(await desk.textContent('#device-action-warning'), /User Portal/);
  await h.shot(desk, '12-create-unlock-request');
  await Promise.all([desk.waitForNavigation(), desk.click('#device-action-confirm')]);
  assert.match(await desk.textContent('#notice'), new RegExp(`Device ${SERIAL} was given an unlock request`));

  await alice.goto(`${server.url}/me`);
  assert.match(await mine.locator('.unlock-request').textContent(), /unlock request/);
  await mine.locator('.unlock-pin').click();
  await h.shot(alice, '12-user-portal-unlock-dialog');
  await unlockInDialog(alice, SERIAL);
  await h.shot(alice, '12-user-portal-unlocked');
  await Promise.all([alice.waitForNavigation(), alice.click('#change-pin-close')]);
  // Used once: the request and its button are gone.
  assert.equal(await alice.locator(`article.device[data-serial="${SERIAL}"] .unlock-pin`).count(), 0);
  const audit = JSON.stringify(await h.must(server, 'GET', '/audit?limit=1000'));
  assert.match(audit, /device\.unlock_request/);
  assert.match(audit, /device\.unlock"/);
  assert.ok(!audit.includes('246813'), 'no PIN in the audit trail');
  assert.deepEqual(alice.problems, []);
  assert.deepEqual(desk.problems, []);
});

test('the help desk unlocks a device at its own agent', async () => {
  const desk = await h.newPage(browser, server);
  await h.signIn(desk, server, 'helpdesk');
  const agent = await startAgent(server, [`yubikey5:${ASSISTED}`, `c4000:${C4000}`], 'ws-helpdesk');
  agents.push(agent);
  await approveInPortal(desk, server, agent);
  await reported(ASSISTED);
  // Issued to alice through the help desk's agent (the API's administrator
  // token may use any agent, audited).
  const start = await h.must(server, 'POST', '/issuance',
    { user: 'alice', policy: 'PIV Standard', serial: ASSISTED, pin: '735194', via: 'agent' });
  const deadline = Date.now() + 60000;
  for (;;) {
    const s = await h.must(server, 'GET', `/issuance/${start.session_id}`);
    if (s.status === 'issued') break;
    assert.ok(!['failed', 'cancelled'].includes(s.status), JSON.stringify(s));
    assert.ok(Date.now() < deadline, 'issued');
    await new Promise((r) => setTimeout(r, 200));
  }
  await desk.goto(`${server.url}/users/alice`);
  await desk.locator(`article.device[data-serial="${ASSISTED}"] .unlock-pin`).click();
  await unlockInDialog(desk, ASSISTED);
  await h.shot(desk, '12-assisted-unlock-done');
  assert.deepEqual(desk.problems, []);
});

test('Offline Unlock: a YubiKey\'s PUK, a C4000\'s response, with the PIN rules', async () => {
  const desk = await h.newPage(browser, server);
  await h.signIn(desk, server, 'helpdesk');
  await reported(C4000);
  const start = await h.must(server, 'POST', '/issuance',
    { user: 'alice', policy: 'PIV Own Key', serial: C4000, pin: '735194', via: 'agent' });
  const deadline = Date.now() + 60000;
  for (;;) {
    const s = await h.must(server, 'GET', `/issuance/${start.session_id}`);
    if (s.status === 'issued') break;
    assert.ok(!['failed', 'cancelled'].includes(s.status), JSON.stringify(s));
    assert.ok(Date.now() < deadline, 'issued');
    await new Promise((r) => setTimeout(r, 200));
  }
  await desk.goto(`${server.url}/users/alice`);
  // The YubiKey: its PUK, disclosed once the help desk asks.
  await desk.locator(`article.device[data-serial="${ASSISTED}"] button.offline-unlock`).click();
  await desk.waitForSelector('#offline-unlock[open]');
  assert.ok(await desk.isHidden('#offline-unlock-challenge'));
  await desk.click('#offline-unlock-go');
  await desk.waitForSelector('#offline-unlock-answer:not([hidden])');
  assert.equal(await desk.textContent('#offline-unlock-kind'), 'PUK');
  assert.match(await desk.textContent('#offline-unlock-value'), /^\d{8}$/);
  assert.ok(await desk.locator('#offline-unlock-rules li').count() > 0);
  await h.shot(desk, '12-offline-unlock-puk');
  await desk.click('#offline-unlock-close');
  // The C4000: the challenge in, the response out (hexadecimal).
  await desk.locator(`article.device[data-serial="${C4000}"] button.offline-unlock`).click();
  await desk.waitForSelector('#offline-unlock[open]');
  await desk.fill('#offline-unlock-challenge', '00112233445566778899AABBCCDDEEFF');
  await desk.click('#offline-unlock-go');
  await desk.waitForSelector('#offline-unlock-answer:not([hidden])');
  assert.equal(await desk.textContent('#offline-unlock-kind'), 'Response');
  assert.match(await desk.textContent('#offline-unlock-value'), /^[0-9A-F]{32}$/);
  await h.shot(desk, '12-offline-unlock-response');
  await desk.click('#offline-unlock-close');
  const audit = JSON.stringify(await h.must(server, 'GET', '/audit?limit=1000'));
  assert.match(audit, /device\.puk_disclosed/);
  assert.match(audit, /device\.offline_unlock/);
  assert.deepEqual(desk.problems, []);
});
