// Get Initial PIN in the User Portal: with "Device initial PIN display mode"
// = Not Displayed and "Change PIN during issuance" = No, a virtual YubiKey on
// pcscd/vpcd is issued with `keyward issue`; the user then reveals the PIN
// once, after a confirmation, and the PIN works on the device.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');
const pcsc = require('../lib/pcsc');

const SERIAL = '33000001';
let server;
let browser;
let card;

test.before(async () => {
  server = await h.startServer();
  await h.seed(server, { initial_pin_display_mode: 'not_displayed', change_pin_during_issuance: 'false' });
  await h.must(server, 'POST', '/devices', { device_type: 'yubikey5', serial: SERIAL, firmware_version: '5.7.1' });
  card = await pcsc.startVcard(['--profile', 'yubikey5', '--firmware', '5.7.1', '--serial', SERIAL]);
  const issued = await pcsc.run(h.BIN, ['issue', '--server', server.url, '--token', server.token,
    '--user', 'alice', '--policy', 'PIV Standard', '--serial', SERIAL]);
  assert.equal(issued.status, 0, `keyward issue failed:\n${issued.stdout}\n${issued.stderr}`);
  browser = await h.launch();
});

test.after(async () => {
  if (browser) await browser.close();
  if (card) await card.stop();
  if (server) await server.stop();
});

test('the user reveals the initial PIN once, after confirming, and it works on the device', async () => {
  const page = await h.newPage(browser, server);
  await h.signIn(page, server, 'alice');
  assert.equal(new URL(page.url()).pathname, '/me');
  // A user sees only the User Portal.
  const links = await page.$$eval('header nav a', (as) => as.map((a) => a.getAttribute('href')));
  assert.deepEqual(links, ['/me', '/agents']);
  const device = page.locator(`article.device[data-serial="${SERIAL}"]`);
  assert.match(await device.textContent(), /Issued/);
  const button = device.locator('.get-initial-pin');
  await button.waitFor({ state: 'visible' });
  await h.shot(page, '03-my-devices');

  // Not now: nothing is revealed.
  await button.click();
  await page.waitForSelector('#confirm-reveal[open]');
  await h.shot(page, '03-initial-pin-confirm');
  await page.click('#reveal-cancel');
  assert.equal((await h.must(server, 'GET', `/devices/${SERIAL}`)).state, 'issued');

  await button.click();
  await page.click('#reveal-confirm');
  await page.waitForSelector('#revealed[open]');
  const pin = (await page.textContent('#revealed-pin')).trim();
  assert.match(pin, /^[0-9]{6,8}$/);
  await h.shot(page, '03-initial-pin-revealed');
  await page.click('#revealed-done');
  // Gone from the page once the person is done, and the button with it.
  assert.equal((await page.textContent('#revealed-pin')).trim(), '');
  assert.equal(await device.locator('.get-initial-pin').count(), 0);
  assert.ok(!(await page.content()).includes(pin), 'the PIN is not left in the page');

  // Revealed once: after a reload there is no button, and the API says gone.
  await page.reload();
  await page.waitForLoadState('networkidle');
  assert.equal(await page.locator(`article.device[data-serial="${SERIAL}"] .initial-pin:not([hidden])`).count(), 0);
  const again = await page.evaluate(async (serial) => {
    const csrf = document.querySelector('meta[name="csrf-token"]').content;
    const r = await fetch(`/api/v1/me/devices/${serial}/initial-pin`, { method: 'POST', headers: { 'X-CSRF-Token': csrf } });
    return r.status;
  }, SERIAL);
  assert.equal(again, 410);
  assert.deepEqual(page.problems.filter((p) => !p.includes('410')), []);
  await page.context().close();

  // The revealed PIN is the device's PIN (checked with Yubico's own tool).
  const verify = await pcsc.run('yubico-piv-tool', ['-r', 'Virtual', '-a', 'verify-pin', '-P', pin]);
  assert.equal(verify.status, 0, `yubico-piv-tool verify-pin:\n${verify.stdout}${verify.stderr}`);
  // The audit trail records the reveal, never the PIN.
  const audit = await h.must(server, 'GET', '/audit?limit=1000');
  assert.ok(audit.items.some((e) => e.action === 'device.initial_pin_revealed'));
  assert.ok(!JSON.stringify(audit).includes(pin));
  assert.ok(!server.output().includes(pin), 'the PIN is not in the server output');
});
