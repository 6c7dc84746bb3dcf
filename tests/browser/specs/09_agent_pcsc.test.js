// The operator issues a device that a workstation agent holds over real
// PC/SC (issue 11): a `keyward vcard` C4000 on pcscd's vpcd reader, a
// `keyward agent` looking at pcscd, paired in the portal; Add Device in the
// browser; the agent relays every batch over PC/SC on one connection. Then
// OpenSC (a tool nobody here wrote) logs in with the PIN the operator typed.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');
const pcsc = require('../lib/pcsc');
const { startAgent, approveInPortal } = require('../lib/agent');

const SERIAL = '34000901';
const OPENSC_PKCS11 = '/usr/lib/x86_64-linux-gnu/opensc-pkcs11.so';

let server;
let browser;
let agent;
let card;
let page;

test.before(async () => {
  card = await pcsc.startVcard(['--profile', 'c4000', '--serial', SERIAL]);
  server = await h.startServer();
  await h.seed(server, { initial_pin_display_mode: 'displayed', change_pin_during_issuance: 'false' });
  await h.must(server, 'POST', '/devices', { device_type: 'c4000', serial: SERIAL });
  browser = await h.launch();
  page = await h.newPage(browser, server);
  await h.signIn(page, server, 'operator');
});

test.after(async () => {
  if (browser) await browser.close();
  if (agent) await agent.stop();
  if (server) await server.stop();
  if (card) await card.stop();
});

test('the operator issues a C4000 held by an agent over PC/SC, and OpenSC logs in with its PIN', async () => {
  agent = await startAgent(server, [], 'ws-pcsc', undefined, { pcsc: true });
  await approveInPortal(page, server, agent);
  await page.goto(`${server.url}/users/alice`);
  await Promise.all([page.waitForNavigation(), page.click('#add-device')]);
  const row = page.locator(`#device-list tr[data-serial="${SERIAL}"]`);
  await row.waitFor({ timeout: 20000 });
  await row.click();
  await page.waitForFunction(() => document.querySelector('#policy').value === 'PIV Standard');
  await page.type('#pin', '735194');
  await page.waitForSelector('#continue:not([disabled])');
  await h.shot(page, '09-agent-pcsc-ready');
  await page.click('#continue');
  const done = page.waitForURL(new RegExp(`/users/alice\\?issued=${SERIAL}$`), { timeout: 60000 });
  const failed = page.waitForSelector('#failure-dialog[open]', { timeout: 60000 })
    .then(async () => { throw new Error(`issuance failed: ${await page.textContent('#error-info')}\nagent:\n${agent.output()}`); }, () => {});
  await Promise.race([done, failed]);
  const device = page.locator(`article.device[data-serial="${SERIAL}"]`);
  assert.match(await device.textContent(), /Issued/);
  assert.equal(await device.locator('table.credentials tbody tr').count(), 2);
  await h.shot(page, '09-agent-pcsc-issued');
  // Every batch went over PC/SC through the agent, which let the card go
  // with a reset at the end.
  const deadline = Date.now() + 10000;
  while (!/released \(reset\)/.test(agent.output())) {
    if (Date.now() > deadline) throw new Error(`the agent kept the card:\n${agent.output()}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.match(agent.output(), /batch 3 /);
  const login = await pcsc.run('pkcs11-tool', ['--module', OPENSC_PKCS11, '--login', '--pin', '735194', '--list-objects']);
  assert.equal(login.status, 0, login.stdout + login.stderr);
  assert.match(login.stdout, /Certificate Object/);
  assert.deepEqual(page.problems, []);
});
