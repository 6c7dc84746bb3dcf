// User search (login and display-name prefix) and the User page with the
// user's details and devices; the devices inventory search.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

let server;
let browser;

test.before(async () => {
  server = await h.startServer();
  await h.seed(server);
  // A device assigned to alice with the policy (Action Type "Assign Device").
  await h.must(server, 'POST', '/devices', { device_type: 'yubikey5', serial: '32000001', firmware_version: '5.7.1' });
  await h.must(server, 'POST', '/devices', { device_type: 'c4000', serial: '32000002' });
  await h.must(server, 'POST', '/issuance', { user: 'alice', policy: 'PIV Standard', serial: '32000001', action: 'assign' });
  browser = await h.launch();
});

test.after(async () => {
  if (browser) await browser.close();
  if (server) await server.stop();
});

test('an operator searches users by login and by display name and opens the User page', async () => {
  const page = await h.newPage(browser, server);
  await h.signIn(page, server, 'operator');
  await page.fill('#user-search', 'al');
  await Promise.all([page.waitForNavigation(), page.press('#user-search', 'Enter')]);
  const logins = await page.$$eval('#users-table tbody td:first-child', (tds) => tds.map((t) => t.textContent.trim()));
  assert.deepEqual(logins, ['albert', 'alice']);
  await h.shot(page, '02-user-search');

  await page.fill('#user-search', 'Bob');
  await page.selectOption('select[name="by"]', 'display_name');
  await Promise.all([page.waitForNavigation(), page.click('form.search button')]);
  const byName = await page.$$eval('#users-table tbody td:first-child', (tds) => tds.map((t) => t.textContent.trim()));
  assert.deepEqual(byName, ['bob']);
  // The search is a GET form: the query is in the URL, and it holds no secret.
  assert.match(page.url(), /q=Bob&by=display_name/);

  await page.fill('#user-search', 'zz');
  await page.selectOption('select[name="by"]', 'login');
  await Promise.all([page.waitForNavigation(), page.click('form.search button')]);
  assert.match(await page.textContent('#users-table'), /No user matches/);

  await page.fill('#user-search', 'alice');
  await Promise.all([page.waitForNavigation(), page.click('form.search button')]);
  await Promise.all([page.waitForNavigation(), page.click('#users-table a:text("alice")')]);
  assert.equal(new URL(page.url()).pathname, '/users/alice');
  const details = await page.textContent('#user-details');
  assert.match(details, /Alice Archer/);
  assert.match(details, /alice@example\.com/);
  assert.match(details, /S-1-5-21-1004336348-1177238915-682003330-1001/);
  const device = page.locator('article.device[data-serial="32000001"]');
  assert.match(await device.textContent(), /Assigned/);
  assert.match(await device.textContent(), /PIV Standard/);
  assert.match(await device.textContent(), /YubiKey 5/);
  assert.equal(await page.locator('#add-device').count(), 1);
  await h.shot(page, '02-user-page');
  assert.deepEqual(page.problems, []);
  await page.context().close();
});

test('the devices inventory is searched by serial prefix and state', async () => {
  const page = await h.newPage(browser, server);
  await h.signIn(page, server, 'operator');
  await page.goto(`${server.url}/devices`);
  let serials = await page.$$eval('#devices-table tbody tr[data-serial]', (trs) => trs.map((t) => t.dataset.serial));
  assert.deepEqual(serials, ['32000001', '32000002']);
  await page.goto(`${server.url}/devices?q=3200&state=available`);
  serials = await page.$$eval('#devices-table tbody tr[data-serial]', (trs) => trs.map((t) => t.dataset.serial));
  assert.deepEqual(serials, ['32000002']);
  await h.shot(page, '02-devices');
  await page.context().close();
});

test('devices are imported from a CSV file on the Devices page', async () => {
  const page = await h.newPage(browser, server);
  await h.signIn(page, server, 'operator');
  await page.goto(`${server.url}/devices`);
  await page.setInputFiles('#csv-import input[type="file"]', {
    name: 'devices.csv',
    mimeType: 'text/csv',
    buffer: Buffer.from('device_type,serial,firmware_version\nyubikey5,32000010,5.4.3\nc4000,32000011,\n'),
  });
  await Promise.all([page.waitForNavigation(), page.click('#csv-import button')]);
  const serials = await page.$$eval('#devices-table tbody tr[data-serial]', (trs) => trs.map((t) => t.dataset.serial));
  assert.ok(serials.includes('32000010') && serials.includes('32000011'), serials.join(','));
  assert.deepEqual(page.problems, []);
  await page.context().close();
});
