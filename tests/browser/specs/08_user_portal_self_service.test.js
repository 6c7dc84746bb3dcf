// The User Portal's self-service on a device at the person's own
// workstation agent: with "Who can bind the device to the user?" = User,
// alice completes the issuance of the device assigned to her (Complete
// issuance), then changes its PIN (Change PIN, the new PIN's rules checked
// as she types); her old PIN is refused afterwards, with the tries left.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');
const { startAgent, approveInPortal } = require('../lib/agent');

const SERIAL = '38000001';
let server;
let browser;
let agent;

test.before(async () => {
  server = await h.startServer();
  await h.seed(server, { initial_pin_display_mode: 'displayed', who_can_bind: 'user' });
  await h.must(server, 'POST', '/devices', { device_type: 'yubikey5', serial: SERIAL, firmware_version: '5.7.1' });
  await h.must(server, 'POST', '/issuance', { user: 'alice', policy: 'PIV Standard', serial: SERIAL, action: 'assign' });
  browser = await h.launch();
});

test.after(async () => {
  if (browser) await browser.close();
  if (agent) await agent.stop();
  if (server) await server.stop();
});

async function reported(serial) {
  const deadline = Date.now() + 20000;
  for (;;) {
    const seen = await h.must(server, 'GET', '/agents/devices');
    if (seen.devices.some((d) => d.serial === serial)) return;
    assert.ok(Date.now() < deadline, `the agent reports ${serial}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function changePin(page, current, fresh) {
  const device = page.locator(`article.device[data-serial="${SERIAL}"]`);
  await device.locator('.change-pin').click();
  await page.waitForSelector('#change-pin[open]');
  await page.fill('#change-pin-current', current);
  await page.type('#change-pin-new', fresh);
  await page.fill('#change-pin-confirm', fresh);
  await page.waitForSelector('#change-pin-start:not([disabled])');
  await page.click('#change-pin-start');
  await page.waitForSelector('#change-pin-done:not([hidden]), #change-pin-failed:not([hidden])', { timeout: 60000 });
}

test('alice completes the issuance of her assigned device, then changes its PIN', async () => {
  const page = await h.newPage(browser, server);
  await h.signIn(page, server, 'alice');
  // Her own workstation agent, approved by her on the Agents page.
  agent = await startAgent(server, [`yubikey5:${SERIAL}`], 'ws-alice');
  await approveInPortal(page, server, agent);
  await reported(SERIAL);

  await page.goto(`${server.url}/me`);
  const device = page.locator(`article.device[data-serial="${SERIAL}"]`);
  assert.match(await device.textContent(), /Assigned/);
  await device.locator('.complete-issuance').click();
  await page.waitForSelector('#complete[open]');
  await page.fill('#complete-pin', '735194');
  await h.shot(page, '08-complete-issuance');
  await page.click('#complete-start');
  await page.waitForSelector('#complete-done:not([hidden])', { timeout: 60000 });
  assert.match(await page.textContent('#complete-done'), /is issued/);
  await h.shot(page, '08-complete-issuance-done');
  await Promise.all([page.waitForNavigation(), page.click('#complete-close')]);
  assert.match(await page.locator(`article.device[data-serial="${SERIAL}"]`).textContent(), /Issued/);

  // A new PIN breaking the rules keeps Change PIN disabled.
  await page.locator(`article.device[data-serial="${SERIAL}"] .change-pin`).click();
  await page.waitForSelector('#change-pin[open]');
  await page.fill('#change-pin-current', '735194');
  await page.type('#change-pin-new', '111111');
  await page.fill('#change-pin-confirm', '111111');
  await page.waitForSelector('#change-pin-rules li.fail');
  assert.ok(await page.isDisabled('#change-pin-start'));
  await h.shot(page, '08-change-pin-rules');
  await page.click('#change-pin-close');

  await changePin(page, '735194', '24681357');
  assert.match(await page.textContent('#change-pin-done'), /is changed/);
  await h.shot(page, '08-change-pin-done');
  await page.click('#change-pin-close');

  // The old PIN is the device's no more.
  await changePin(page, '735194', '13572468');
  const refused = await page.textContent('#change-pin-failed');
  assert.match(refused, /2 tries left/);
  // Said once (issue 19: it was said twice).
  assert.equal(refused.match(/tries left/gi).length, 1, refused);
  await h.shot(page, '08-change-pin-wrong');
  assert.deepEqual(page.problems, []);
  assert.equal((await h.must(server, 'GET', `/devices/${SERIAL}`)).state, 'issued');
  for (const pin of ['735194', '24681357', '13572468']) {
    assert.ok(!(await page.content()).includes(pin), 'no PIN left in the page');
  }
  await page.context().close();
});
