// After issuance, part 1 (issue 14) in the portals: on the User page the
// help desk suspends and resumes a device, declares an incident, replaces a
// device (temporary while the original is forgotten, then Original found;
// then permanent), each through the device's menu and its confirmation
// dialog; Add Device shows issued devices as not selectable; in the User
// Portal the person sees a suspended device as such and reports a device
// lost, after a warning that it cannot be undone.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');
const { startAgent, approveInPortal } = require('../lib/agent');

const S = ['39000001', '39000002', '39000003', '39000004', '39000005'];
let server;
let browser;
let agent;
let page;

// Issues `serial` to alice through the paired agent (the API: the test's
// subject is what follows issuance).
async function issueViaAgent(serial) {
  const start = await h.must(server, 'POST', '/issuance',
    { user: 'alice', policy: 'PIV Standard', serial, pin: '735194', via: 'agent' });
  const deadline = Date.now() + 60000;
  for (;;) {
    const s = await h.must(server, 'GET', `/issuance/${start.session_id}`);
    if (s.status === 'issued') return;
    assert.ok(!['failed', 'cancelled'].includes(s.status), JSON.stringify(s));
    assert.ok(Date.now() < deadline, `issuance of ${serial} did not end: ${JSON.stringify(s)}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function device(serial) {
  return h.must(server, 'GET', `/devices/${serial}`);
}

// Opens the device's action from its menu, fills the dialog, confirms.
async function act(serial, action, { reason, note } = {}) {
  const article = page.locator(`article.device[data-serial="${serial}"]`);
  await article.locator(`button.action-${action}`).click();
  await page.waitForSelector('#device-action-dialog[open]');
  if (reason) await page.selectOption('#device-action-reason', reason);
  if (note) await page.fill('#device-action-note', note);
  return article;
}

async function confirm() {
  await Promise.all([page.waitForNavigation(), page.click('#device-action-confirm')]);
}

async function finishIssuance(serial) {
  const done = page.waitForURL(new RegExp(`/users/alice\\?issued=${serial}$`), { timeout: 60000 });
  const failed = page.waitForSelector('#failure-dialog[open]', { timeout: 60000 })
    .then(async () => { throw new Error(`issuance failed: ${await page.textContent('#error-info')}`); }, () => {});
  await Promise.race([done, failed]);
}

test.before(async () => {
  server = await h.startServer();
  await h.seed(server, { initial_pin_display_mode: 'displayed' });
  for (const serial of S) {
    await h.must(server, 'POST', '/devices', { device_type: 'yubikey5', serial, firmware_version: '5.7.1' });
  }
  browser = await h.launch();
  page = await h.newPage(browser, server);
  await h.signIn(page, server, 'helpdesk');
  // The help desk's own workstation agent, with the five devices.
  agent = await startAgent(server, S.map((s) => `yubikey5:${s}`), 'ws-helpdesk');
  await approveInPortal(page, server, agent);
  const deadline = Date.now() + 20000;
  for (;;) {
    const seen = await h.must(server, 'GET', '/agents/devices');
    if (S.every((s) => seen.devices.some((d) => d.serial === s))) break;
    assert.ok(Date.now() < deadline, 'the agent reports its devices');
    await new Promise((r) => setTimeout(r, 200));
  }
  for (const serial of [S[0], S[1], S[4]]) await issueViaAgent(serial);
});

test.after(async () => {
  if (browser) await browser.close();
  if (agent) await agent.stop();
  if (server) await server.stop();
});

test('the help desk sees only the actions the device\'s state allows', async () => {
  await page.goto(`${server.url}/users/alice`);
  const menu = await page.$$eval(`article.device[data-serial="${S[0]}"] button.device-action`, (bs) => bs.map((b) => b.dataset.action));
  assert.deepEqual(menu, ['unlock-requests', 'incident', 'suspend', 'replace', 'terminate']);
  // No Add Device for the help desk (it replaces, it does not issue).
  assert.equal(await page.locator('#add-device').count(), 0);
  await h.shot(page, '10-user-page-device-menu');
});

test('Suspend puts the certificates on hold, Resume releases them', async () => {
  await page.goto(`${server.url}/users/alice`);
  await act(S[0], 'suspend', { note: 'on leave' });
  assert.match(await page.textContent('#device-action-warning'), /on hold/);
  await h.shot(page, '10-suspend-dialog');
  await confirm();
  assert.match(await page.textContent('#notice'), new RegExp(`Device ${S[0]} was suspended`));
  const article = page.locator(`article.device[data-serial="${S[0]}"]`);
  assert.match(await article.locator('ul.marks').textContent(), /Suspended/);
  assert.match(await article.locator('ul.marks').textContent(), /2 certificate\(s\) on hold/);
  assert.equal(await article.locator('tr.on-hold').count(), 2);
  const menu = await article.locator('button.device-action').evaluateAll((bs) => bs.map((b) => b.dataset.action));
  assert.deepEqual(menu, ['unlock-requests', 'incident', 'resume', 'replace', 'terminate']);
  await h.shot(page, '10-suspended');
  assert.equal((await device(S[0])).suspended, true);
  await act(S[0], 'resume');
  await confirm();
  assert.equal(await page.locator(`article.device[data-serial="${S[0]}"] ul.marks`).count(), 0);
  assert.equal((await device(S[0])).suspended, false);
  assert.deepEqual(page.problems, []);
});

test('Declare Incident with a reason and a note', async () => {
  await page.goto(`${server.url}/users/alice`);
  await act(S[4], 'incident', { reason: 'damaged', note: 'cracked' });
  await h.shot(page, '10-declare-incident-dialog');
  await confirm();
  const d = await device(S[4]);
  assert.equal(`${d.state} ${d.reason}`, 'invalid damaged');
  assert.equal(d.history[d.history.length - 1].note, 'cracked');
  await h.shot(page, '10-incident-declared');
});

test('Replace Device, temporary: the original forgotten, a temporary device issued; then Original found', async () => {
  await page.goto(`${server.url}/users/alice`);
  await act(S[0], 'replace', { reason: 'forgotten' });
  await Promise.all([page.waitForNavigation(), page.click('#device-action-confirm')]);
  assert.match(new URL(page.url()).search, new RegExp(`replaces=${S[0]}&reason=forgotten`));
  assert.match(await page.textContent('#replacing'), /temporary/);
  // Issued devices are listed, not selectable.
  const issued = page.locator(`#device-list tr[data-serial="${S[1]}"]`);
  await issued.waitFor({ timeout: 20000 });
  assert.ok(await issued.locator('input[type="radio"]').isDisabled());
  assert.match(await issued.getAttribute('class'), /unselectable/);
  await h.shot(page, '10-replace-temporary-choose-device');
  await page.locator(`#device-list tr[data-serial="${S[2]}"]`).click();
  await page.waitForFunction(() => document.querySelector('#policy').value === 'PIV Standard');
  await page.type('#pin', '735194');
  await page.waitForSelector('#continue:not([disabled])');
  await page.click('#continue');
  await finishIssuance(S[2]);
  const original = await device(S[0]);
  assert.equal(`${original.state} ${original.reason}`, 'invalid forgotten');
  const temp = await device(S[2]);
  assert.equal(temp.replacement.reason, 'forgotten');
  await page.goto(`${server.url}/users/alice`);
  assert.match(await page.locator(`article.device[data-serial="${S[2]}"] ul.marks`).textContent(), /Temporary device in place of 39000001/);
  assert.match(await page.locator(`article.device[data-serial="${S[0]}"] ul.marks`).textContent(), /Replaced by 39000003/);
  await h.shot(page, '10-temporary-issued');
  // Original found: the temporary device ends.
  await act(S[0], 'restore');
  await h.shot(page, '10-original-found-dialog');
  await confirm();
  assert.equal((await device(S[0])).state, 'issued');
  assert.equal((await device(S[2])).state, 'terminated');
  await h.shot(page, '10-original-found');
});

test('Replace Device, permanent: lost; the original is terminated once the new device is issued', async () => {
  await page.goto(`${server.url}/users/alice`);
  await act(S[0], 'replace', { reason: 'lost' });
  await Promise.all([page.waitForNavigation(), page.click('#device-action-confirm')]);
  assert.match(await page.textContent('#replacing'), /permanent/);
  await page.locator(`#device-list tr[data-serial="${S[3]}"]`).waitFor({ timeout: 20000 });
  await page.locator(`#device-list tr[data-serial="${S[3]}"]`).click();
  await page.waitForFunction(() => document.querySelector('#policy').value === 'PIV Standard');
  await page.type('#pin', '735194');
  await page.waitForSelector('#continue:not([disabled])');
  await page.click('#continue');
  await finishIssuance(S[3]);
  assert.equal((await device(S[0])).state, 'terminated');
  assert.equal((await device(S[3])).state, 'issued');
  await h.shot(page, '10-permanent-replacement-issued');
  assert.deepEqual(page.problems, []);
});

test('the User Portal shows a suspended device as such, and reports a device lost after a warning', async () => {
  await h.must(server, 'POST', `/devices/${S[3]}/suspend`, { expected_version: (await device(S[3])).version });
  const me = await h.newPage(browser, server);
  await h.signIn(me, server, 'alice');
  await me.goto(`${server.url}/me`);
  const suspended = me.locator(`article.device[data-serial="${S[3]}"]`);
  assert.match(await suspended.textContent(), /suspended: it cannot be used/);
  assert.equal(await suspended.locator('.change-pin').count(), 0);
  await h.shot(me, '10-portal-suspended');
  const article = me.locator(`article.device[data-serial="${S[1]}"]`);
  await article.locator('button.action-incident').click();
  await me.waitForSelector('#device-action-dialog[open]');
  assert.match(await me.textContent('#device-action-warning'), /cannot be undone/);
  const reasons = await me.$$eval('#device-action-reason option', (os) => os.map((o) => o.value));
  assert.deepEqual(reasons, ['lost', 'stolen']);
  await me.selectOption('#device-action-reason', 'lost');
  await h.shot(me, '10-portal-report-lost');
  await Promise.all([me.waitForNavigation(), me.click('#device-action-confirm')]);
  assert.match(await me.textContent('#notice'), new RegExp(`Device ${S[1]} was declared lost or stolen`));
  const d = await device(S[1]);
  assert.equal(`${d.state} ${d.reason}`, 'invalid lost');
  assert.equal(await me.locator(`article.device[data-serial="${S[1]}"] button.device-action`).count(), 0);
  await h.shot(me, '10-portal-reported-lost');
  assert.deepEqual(me.problems, []);
  await me.context().close();
});
