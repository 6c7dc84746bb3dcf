// The failure dialog: a virtual device removed mid-issuance (the agent's
// `remove-after`), the error information copied to the clipboard, Retry
// after re-insertion ends Issued, Cancel returns to the User page with the
// device no longer assigned to the user.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');
const { startAgent, approveInPortal } = require('../lib/agent');

let server;
let browser;
let agent;
let page;

test.before(async () => {
  server = await h.startServer();
  await h.seed(server, { initial_pin_display_mode: 'displayed', change_pin_during_issuance: 'false' });
  for (const serial of ['35000001', '35000002']) {
    await h.must(server, 'POST', '/devices', { device_type: 'yubikey5', serial, firmware_version: '5.7.1' });
  }
  browser = await h.launch();
  page = await h.newPage(browser, server);
  await h.signIn(page, server, 'operator');
  // Each device goes away after 6 relayed commands: in the second batch.
  agent = await startAgent(server, ['yubikey5:35000001:remove-after=6', 'yubikey5:35000002:remove-after=6']);
  await approveInPortal(page, server, agent);
});

test.after(async () => {
  if (browser) await browser.close();
  if (agent) await agent.stop();
  if (server) await server.stop();
});

// Until the agent reports a reinserted device again, the server has nobody
// to relay its commands through.
async function reportedAgain(serial) {
  const deadline = Date.now() + 20000;
  for (;;) {
    const seen = await h.must(server, 'GET', '/agents/devices');
    if (seen.devices.some((d) => d.serial === serial)) return;
    assert.ok(Date.now() < deadline, `the agent reports ${serial} again`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function issueUntilFailure(login, serial) {
  await page.goto(`${server.url}/users/${login}/add-device`);
  const row = page.locator(`#device-list tr[data-serial="${serial}"]`);
  await row.waitFor({ timeout: 20000 });
  await row.click();
  await page.waitForFunction(() => document.querySelector('#policy').value === 'PIV Standard');
  await page.type('#pin', '735194');
  await page.waitForSelector('#continue:not([disabled])');
  await page.click('#continue');
  await page.waitForSelector('#failure-dialog[open]', { timeout: 60000 });
  const info = await page.textContent('#error-info');
  assert.match(info, /Error code: /);
  assert.match(info, /Step: /);
  assert.match(info, new RegExp(`Device: ${serial}`));
  assert.ok(!info.includes('735194'), 'no PIN in the error information');
  return info;
}

test('Copy puts the error information on the clipboard; Retry after re-insertion ends Issued', async () => {
  const info = await issueUntilFailure('alice', '35000001');
  assert.match(await page.textContent('#failure-dialog'), /do not remove the device/i);
  await h.shot(page, '05-failure-dialog');
  await page.click('#copy-error');
  await page.waitForSelector('#copied:not([hidden])');
  const clip = await page.evaluate(() => navigator.clipboard.readText());
  assert.equal(clip, info);
  assert.equal((await h.must(server, 'GET', '/devices/35000001')).state, 'produced');

  // The device back in the reader, then Retry: same device, same policy, same PIN.
  assert.equal(await agent.control('35000001', 'insert'), 'ok');
  await reportedAgain('35000001');
  await page.click('#retry');
  await page.waitForURL(/\/users\/alice\?issued=35000001$/, { timeout: 60000 });
  assert.match(await page.textContent('article.device[data-serial="35000001"]'), /Issued/);
  await h.shot(page, '05-retry-issued');
  assert.equal((await h.must(server, 'GET', '/devices/35000001')).state, 'issued');
});

test('Cancel returns to the User page, and the device is no longer assigned to the user', async () => {
  await issueUntilFailure('bob', '35000002');
  // A reload brings the same session, failed, back with its dialog.
  assert.match(page.url(), /\?session=[0-9a-f-]{36}$/);
  await page.reload();
  await page.waitForSelector('#failure-dialog[open]', { timeout: 20000 });
  assert.match(await page.textContent('#error-info'), /Device: 35000002/);
  await page.click('#cancel-issuance');
  await page.waitForURL(/\/users\/bob\?cancelled=35000002$/);
  assert.match(await page.textContent('#notice'), /no longer assigned/);
  assert.equal(await page.locator('article.device[data-serial="35000002"]').count(), 0);
  await h.shot(page, '05-cancelled');
  const device = await h.must(server, 'GET', '/devices/35000002');
  assert.equal(device.state, 'produced');
  assert.equal(device.assigned_user, null);
  assert.deepEqual(page.problems, []);
});

test('the cancelled device is recycled at once from the Devices page, through the agent', async () => {
  assert.equal(await agent.control('35000002', 'insert'), 'ok');
  await reportedAgain('35000002');
  await page.goto(`${server.url}/devices?q=35000002`);
  await Promise.all([page.waitForNavigation(), page.click('tr[data-serial="35000002"] a.recycle')]);
  assert.equal(new URL(page.url()).pathname, '/devices/35000002/recycle');
  await page.click('#recycle-start');
  await page.waitForSelector('#recycle-done:not([hidden])', { timeout: 60000 }).catch(async (e) => {
    throw new Error(`${e.message}: ${await page.textContent('#recycle')}`);
  });
  await h.shot(page, '05-recycled');
  const device = await h.must(server, 'GET', '/devices/35000002');
  assert.equal(device.state, 'available');
  assert.equal(device.reason, 'recycled');
  assert.deepEqual(page.problems, []);
});
