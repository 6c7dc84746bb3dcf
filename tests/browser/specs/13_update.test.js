// After issuance, part 3 (issue 17) in the portals: the help desk's Request
// Update on the User page lists the Applied changes of the chosen policy
// before it confirms; the pending update shows on the device (with Cancel
// Update Request); alice starts it in the User Portal with the device at
// her own agent, answering its PIN prompts there (a wrong current PIN
// first: Retry starts the update again).
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');
const { startAgent, approveInPortal } = require('../lib/agent');

const SERIAL = '47000013';
let server;
let browser;
let agent;

test.before(async () => {
  server = await h.startServer();
  await h.seed(server, { initial_pin_display_mode: 'displayed' });
  await h.must(server, 'POST', '/devices', { device_type: 'c4000', serial: SERIAL, firmware_version: '1.0.0' });
  // Eight-digit PINs and no Digital Signature certificate.
  await h.must(server, 'POST', '/policies', {
    ...h.PIV_STANDARD,
    name: 'PIV Eight',
    pin_application: { ...h.PIV_STANDARD.pin_application, min_length: 8 },
    pki_applications: [h.PIV_STANDARD.pki_applications[0]],
  });
  browser = await h.launch();
});

test.after(async () => {
  if (browser) await browser.close();
  if (agent) await agent.stop();
  if (server) await server.stop();
});

test('Request Update lists the applied changes; alice carries it out in the User Portal', async () => {
  const alice = await h.newPage(browser, server);
  await h.signIn(alice, server, 'alice');
  agent = await startAgent(server, [`c4000:${SERIAL}`], 'ws-alice-update');
  await approveInPortal(alice, server, agent);
  const seenBy = Date.now() + 20000;
  while (!(await h.must(server, 'GET', '/agents/devices')).devices.some((d) => d.serial === SERIAL)) {
    assert.ok(Date.now() < seenBy, `the agent reports ${SERIAL}`);
    await new Promise((r) => setTimeout(r, 200));
  }
  const start = await h.must(server, 'POST', '/issuance',
    { user: 'alice', policy: 'PIV Standard', serial: SERIAL, pin: '735194', via: 'agent' });
  const deadline = Date.now() + 60000;
  for (;;) {
    const s = await h.must(server, 'GET', `/issuance/${start.session_id}`);
    if (s.status === 'issued') break;
    assert.ok(!['failed', 'cancelled'].includes(s.status), JSON.stringify(s));
    assert.ok(Date.now() < deadline, 'issued');
    await new Promise((r) => setTimeout(r, 200));
  }

  // The help desk requests the update, seeing the changes first.
  const desk = await h.newPage(browser, server);
  await h.signIn(desk, server, 'helpdesk');
  await desk.goto(`${server.url}/users/alice`);
  const card = desk.locator(`article.device[data-serial="${SERIAL}"]`);
  await card.locator('button.request-update').click();
  await desk.waitForSelector('#update-dialog[open]');
  await desk.waitForSelector('#update-policy option[value="PIV Eight"]', { state: 'attached' });
  // Its own policy: nothing changes on the device.
  await desk.waitForSelector('#update-none:not([hidden])');
  await desk.selectOption('#update-policy', 'PIV Eight');
  await desk.waitForSelector('#update-changes li[data-change="change_pin"]');
  const changes = await desk.locator('#update-changes li').evaluateAll((els) => els.map((e) => e.dataset.change));
  assert.deepEqual(changes, ['remove_certificate', 'change_pin']);
  assert.match(await desk.textContent('#update-changes'), /Digital Signature|slot 9C/i);
  await h.shot(desk, '13-request-update-changes');
  await Promise.all([desk.waitForNavigation(), desk.click('#update-confirm')]);
  assert.match(await desk.textContent('#notice'), new RegExp(`Device ${SERIAL} was given an update request`));
  const pending = card.locator('.pending-update');
  assert.match(await pending.textContent(), /Change the PIN/);
  assert.ok(await pending.locator('button.cancel-update').isVisible());
  await h.shot(desk, '13-update-pending');

  // alice sees it in the User Portal and carries it out at her agent.
  await alice.goto(`${server.url}/me`);
  const mine = alice.locator(`article.device[data-serial="${SERIAL}"]`);
  assert.match(await mine.locator('.pending-update').textContent(), /Change the PIN/);
  assert.equal(await mine.locator('button.cancel-update').count(), 0, 'the person cannot cancel it');
  await mine.locator('button.start-update').click();
  await alice.waitForSelector('#update-dialog[open]');
  await alice.waitForSelector('#update-prompts #prompt-set_new_pin', { timeout: 30000 });
  // A wrong current PIN fails the attempt (the request stays pending);
  // Retry starts it again at her agent, as for an issuance.
  await alice.fill('#prompt-enter_pin', '111111');
  await alice.fill('#prompt-set_new_pin', '24681357');
  await alice.fill('#prompt-set_new_pin-again', '24681357');
  await alice.click('#prompt-continue');
  await alice.waitForSelector('#update-retry:not([hidden])', { timeout: 60000 });
  assert.match(await alice.textContent('#update-error'), /current PIN is wrong/);
  await h.shot(alice, '13-user-portal-update-retry');
  await alice.click('#update-retry');
  await alice.waitForSelector('#update-prompts #prompt-set_new_pin', { timeout: 30000 });
  assert.ok(await alice.isHidden('#update-error'));
  await alice.fill('#prompt-enter_pin', '735194');
  await alice.fill('#prompt-set_new_pin', '24681357');
  await alice.fill('#prompt-set_new_pin-again', '24681357');
  await h.shot(alice, '13-user-portal-update-pin');
  await alice.click('#prompt-continue');
  await alice.waitForSelector('#update-done:not([hidden]), #update-error:not([hidden])', { timeout: 60000 });
  assert.ok(await alice.isVisible('#update-done'), await alice.textContent('#update-error'));
  await h.shot(alice, '13-user-portal-updated');
  await Promise.all([alice.waitForNavigation(), alice.click('#update-close')]);
  assert.equal(await alice.locator(`article.device[data-serial="${SERIAL}"] .pending-update`).count(), 0);
  const device = await h.must(server, 'GET', `/devices/${SERIAL}`);
  const eight = await h.must(server, 'GET', '/policies/PIV%20Eight');
  assert.equal(device.device_policy, eight.id);
  const audit = JSON.stringify(await h.must(server, 'GET', '/audit?limit=1000'));
  assert.match(audit, /device\.update_request/);
  assert.match(audit, /device\.update"/);
  assert.ok(!audit.includes('24681357'), 'no PIN in the audit trail');
  assert.deepEqual(alice.problems, []);
  assert.deepEqual(desk.problems, []);
});
