// The full Add Device flow in the browser, in each display mode, against a
// paired `keyward agent` with virtual devices: the device list updates on
// its own, Action Type, fitting policies, the PIN rules checked as the
// person types, progress, the prompts, and the User page with the new
// device's details at the end.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const h = require('../lib/harness');
const { startAgent, approveInPortal } = require('../lib/agent');

let server;
let browser;
let agent;
let page;

test.before(async () => {
  server = await h.startServer();
  await h.seed(server, { initial_pin_display_mode: 'displayed', change_pin_during_issuance: 'false' });
  // The inventory records the firmware the virtual devices report (a
  // YubiKey 5.7 has an AES-192 factory management key).
  for (const [type, serial, fw] of [['yubikey5', '34000001', '5.7.1'], ['c4000', '34000002', null],
    ['yubikey5', '34000003', '5.7.1'], ['yubikey5', '34000004', '5.7.1'], ['c4000', '34000005', null]]) {
    await h.must(server, 'POST', '/devices', { device_type: type, serial, firmware_version: fw });
  }
  browser = await h.launch();
  page = await h.newPage(browser, server);
  await h.signIn(page, server, 'operator');
});

test.after(async () => {
  if (browser) await browser.close();
  if (agent) await agent.stop();
  if (server) await server.stop();
});

async function openDialog(login) {
  await page.goto(`${server.url}/users/${login}`);
  await Promise.all([page.waitForNavigation(), page.click('#add-device')]);
  assert.equal(new URL(page.url()).pathname, `/users/${login}/add-device`);
}

async function chooseDevice(serial) {
  const row = page.locator(`#device-list tr[data-serial="${serial}"]`);
  await row.waitFor({ timeout: 20000 });
  await row.click();
  // PIV Standard is the one policy that fits: selected for the person.
  await page.waitForFunction(() => document.querySelector('#policy').value === 'PIV Standard');
}

async function finishOnUserPage(login, serial, name) {
  const done = page.waitForURL(new RegExp(`/users/${login}\\?issued=${serial}$`), { timeout: 60000 });
  const failed = page.waitForSelector('#failure-dialog[open]', { timeout: 60000 })
    .then(async () => { throw new Error(`issuance failed: ${await page.textContent('#error-info')}`); }, () => {});
  await Promise.race([done, failed]);
  const device = page.locator(`article.device[data-serial="${serial}"]`);
  assert.match(await device.textContent(), /Issued/);
  assert.match(await device.textContent(), /PIV Standard/);
  assert.equal(await device.locator('table.credentials tbody tr').count(), 2, 'certificates in 9a and 9c');
  assert.match(await page.textContent('#notice'), new RegExp(`Device ${serial} was issued`));
  await h.shot(page, name);
  assert.equal((await h.must(server, 'GET', `/devices/${serial}`)).state, 'issued');
}

test('without a paired agent the dialog says how to start and pair one', async () => {
  await openDialog('alice');
  await page.waitForSelector('#no-agent:not([hidden])');
  // The hint names the URL the operator reached the server at.
  assert.ok((await page.textContent('#no-agent')).includes(`keyward agent --server ${server.url}`));
  await h.shot(page, '04-add-device-no-agent');
});

test('the agent is paired on the Agents page, and its devices appear in the open dialog on their own', async () => {
  await openDialog('alice');
  const other = await h.newPage(browser, server);
  await h.signIn(other, server, 'operator');
  agent = await startAgent(server, ['yubikey5:34000001', 'c4000:34000002', 'yubikey5:34000003', 'yubikey5:34000004', 'c4000:34000005']);
  await approveInPortal(other, server, agent, '04-agents-paired');
  await other.context().close();
  // No reload: the long poll brings the devices.
  await page.locator('#device-list tr[data-serial="34000001"]').waitFor({ timeout: 20000 });
  assert.ok(await page.locator('#no-agent').isHidden());
  assert.equal(await page.locator('#device-list tr[data-serial]').count(), 5);
});

test('Displayed: one visible PIN field, the rules checked as the person types, issued', async () => {
  await openDialog('alice');
  assert.equal(await page.inputValue('#action-type'), 'issue');
  assert.equal(await page.getAttribute('#pin', 'type'), 'text');
  assert.equal(await page.locator('#confirm-pin').count(), 0);
  await chooseDevice('34000001');
  assert.equal(await page.getAttribute('#pin-info', 'aria-label'), 'PIN rules');
  await page.click('#pin-info');
  await page.waitForSelector('#pin-rules li[data-rule]');
  const rules = await page.$$eval('#pin-rules li', (lis) => lis.map((li) => li.textContent));
  assert.ok(rules.length >= 4, rules.join('|'));
  await page.type('#pin', '1112');
  await page.waitForSelector('#pin-rules li.fail');
  // In words too, not only by colour and mark (and the list is live).
  assert.match(await page.textContent('#pin-rules li.fail'), /^Not met: /);
  assert.equal(await page.getAttribute('#pin-rules', 'aria-live'), 'polite');
  assert.ok(await page.isDisabled('#continue'));
  await h.shot(page, '04-displayed-pin-rules-failing');
  await page.fill('#pin', '');
  await page.type('#pin', '735194');
  await page.waitForFunction(() => !document.querySelector('#pin-rules li.fail')
    && document.querySelectorAll('#pin-rules li.pass').length > 0);
  await page.waitForSelector('#continue:not([disabled])');
  await h.shot(page, '04-displayed-ready');
  await page.click('#continue');
  // Polled on a timer, not on animation frames (CI once saw the section
  // visible and the wait never end).
  await page.waitForFunction(() => !document.getElementById('step-progress').hidden
    && document.querySelectorAll('#progress-steps li').length > 0, null, { polling: 100 });
  await h.shot(page, '04-displayed-progress');
  await finishOnUserPage('alice', '34000001', '04-displayed-issued');
  // KEYWARD_README_SHOT=1 refreshes the README's picture of the User page.
  if (process.env.KEYWARD_README_SHOT) {
    fs.mkdirSync(path.join(h.ROOT, 'docs', 'img'), { recursive: true });
    await page.screenshot({ path: path.join(h.ROOT, 'docs', 'img', 'user-page.png'), fullPage: true });
  }
});

test('Disguised: masked PIN with confirmation; a mismatch holds Continue back; issued', async () => {
  await h.setSettings(server, { initial_pin_display_mode: 'disguised' });
  await openDialog('bob');
  assert.equal(await page.getAttribute('#pin', 'type'), 'password');
  assert.equal(await page.getAttribute('#confirm-pin', 'type'), 'password');
  await chooseDevice('34000002');
  await page.type('#pin', '402817');
  await page.type('#confirm-pin', '402818');
  await page.waitForSelector('#pin-mismatch:not([hidden])');
  assert.ok(await page.isDisabled('#continue'));
  await h.shot(page, '04-disguised-mismatch');
  await page.fill('#confirm-pin', '402817');
  await page.waitForSelector('#continue:not([disabled])');
  await page.click('#continue');
  await finishOnUserPage('bob', '34000002', '04-disguised-issued');
});

test('Not Displayed with Change PIN during issuance: no PIN field; the new PIN is set at the end through a prompt', async () => {
  await h.setSettings(server, { initial_pin_display_mode: 'not_displayed', change_pin_during_issuance: 'true' });
  await openDialog('carol');
  assert.equal(await page.locator('#pin').count(), 0);
  // No rules button without a PIN field beside it (issue 19).
  assert.equal(await page.locator('#pin-info').count(), 0);
  assert.match(await page.textContent('#pin-not-displayed'), /sets their own PIN at the end/);
  await chooseDevice('34000003');
  await page.waitForSelector('#continue:not([disabled])');
  await page.click('#continue');
  await page.waitForSelector('#prompt-set_new_pin', { timeout: 60000 });
  await h.shot(page, '04-not-displayed-set-new-pin');
  await page.fill('#prompt-set_new_pin', '591736');
  await page.fill('#prompt-set_new_pin-again', '591736');
  await page.click('#prompt-continue');
  await finishOnUserPage('carol', '34000003', '04-not-displayed-issued');
});

test('Not Displayed without Change PIN: nobody is asked; the user then finds Get Initial PIN in the User Portal', async (t) => {
  await h.setSettings(server, { initial_pin_display_mode: 'not_displayed', change_pin_during_issuance: 'false' });
  t.after(() => h.setSettings(server, { initial_pin_display_mode: 'displayed' }));
  await openDialog('alice');
  assert.equal(await page.locator('#pin').count(), 0);
  assert.match(await page.textContent('#pin-not-displayed'), /Get Initial PIN/);
  await chooseDevice('34000005');
  await page.waitForSelector('#continue:not([disabled])');
  await page.click('#continue');
  await finishOnUserPage('alice', '34000005', '04-not-displayed-no-change-issued');
  const user = await h.newPage(browser, server);
  await h.signIn(user, server, 'alice');
  await user.locator('article.device[data-serial="34000005"] .get-initial-pin').waitFor({ state: 'visible' });
  await user.context().close();
});

test('Assign Device: the device is bound to the user with the policy, nothing else', async () => {
  await openDialog('albert');
  await chooseDevice('34000004');
  await page.selectOption('#action-type', 'assign');
  assert.ok(await page.locator('#pin-entry').isHidden());
  await page.waitForSelector('#continue:not([disabled])');
  await page.click('#continue');
  await page.waitForURL(/\/users\/albert\?assigned=34000004$/);
  assert.match(await page.textContent('article.device[data-serial="34000004"]'), /Assigned/);
  assert.deepEqual(page.problems, []);
});

test('an agent revoked on the Agents page leaves the dialog with the no-agent message', async () => {
  await page.goto(`${server.url}/agents`);
  const row = page.locator('#agents-table tbody tr[data-agent]');
  await row.waitFor();
  assert.match(await row.textContent(), /ws-browser-test/);
  assert.match(await row.textContent(), /paired/);
  page.once('dialog', (d) => d.accept());
  await row.locator('button:text("Revoke")').click();
  await page.waitForFunction(() => /revoked/.test(document.querySelector('#agents-table tbody tr[data-agent]').textContent));
  await h.shot(page, '04-agent-revoked');
  await openDialog('alice');
  await page.waitForSelector('#no-agent:not([hidden])', { timeout: 20000 });
  assert.equal(await page.locator('#device-list tr[data-serial]').count(), 0);
  assert.deepEqual(page.problems, []);
});

test('a Help Desk operator declares an incident for an issued device on the User page, and cannot issue', async () => {
  const hd = await h.newPage(browser, server);
  await h.signIn(hd, server, 'helpdesk');
  await hd.goto(`${server.url}/users/alice`);
  assert.equal(await hd.locator('#add-device').count(), 0);
  const device = hd.locator('article.device[data-serial="34000001"]');
  await device.locator('button.action-incident').click();
  await hd.waitForSelector('#device-action-dialog[open]');
  await hd.selectOption('#device-action-reason', 'lost');
  await Promise.all([hd.waitForNavigation(), hd.click('#device-action-confirm')]);
  const after = hd.locator('article.device[data-serial="34000001"]');
  assert.match(await after.textContent(), /Invalid \(lost\)/);
  await h.shot(hd, '04-helpdesk-incident');
  const record = await h.must(server, 'GET', '/devices/34000001');
  assert.equal(record.state, 'invalid');
  assert.equal(record.reason, 'lost');
  assert.deepEqual(hd.problems, []);
  await hd.context().close();
});
