// `keyward demo` as a newcomer meets it: the printed URL and sign-ins, an
// in-process agent with two virtual devices already paired; the operator
// issues the C4000 to alice in the browser, and alice sees it in the User
// Portal.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

let server;
let browser;

test.before(async () => {
  server = await h.startServer({ subcommand: 'demo' });
  browser = await h.launch();
});

test.after(async () => {
  if (browser) await browser.close();
  if (server) await server.stop();
});

test('a newcomer signs in with the printed demo sign-in and issues a device in the browser', async () => {
  const out = server.output();
  const [, login, password] = out.match(/operator \(Issuance Operator\): (\S+) \/ (\S+)/);
  const [, userLogin, userPassword] = out.match(/user alice \(User Portal\):\s+(\S+) \/ (\S+)/);
  const page = await h.newPage(browser, server);
  await h.signIn(page, server, login, password);
  await page.goto(`${server.url}/users/alice/add-device`);
  const rows = page.locator('#device-list tr[data-serial]');
  await rows.first().waitFor({ timeout: 30000 });
  await h.shot(page, '07-demo-add-device');
  const c4000 = page.locator('#device-list tr[data-serial]', { hasText: 'Crescendo C4000' }).first();
  const serial = await c4000.getAttribute('data-serial');
  await c4000.click();
  await page.waitForSelector('#policy option[value="PIV Standard"]', { state: 'attached' });
  await page.selectOption('#policy', 'PIV Standard');
  await page.waitForSelector('#pin-rules li[data-rule]', { state: 'attached' });
  await page.type('#pin', '735194');
  await page.waitForSelector('#continue:not([disabled])');
  await page.click('#continue');
  await page.waitForURL(new RegExp(`/users/alice\\?issued=${serial}$`), { timeout: 60000 });
  assert.match(await page.textContent(`article.device[data-serial="${serial}"]`), /Issued/);
  await h.shot(page, '07-demo-issued');
  await page.context().close();

  const user = await h.newPage(browser, server);
  await h.signIn(user, server, userLogin, userPassword);
  assert.match(await user.textContent(`article.device[data-serial="${serial}"]`), /Issued/);
  await h.shot(user, '07-demo-user-portal');
  // Users pair their own agents: the demo's is paired to alice as well.
  await user.goto(`${server.url}/agents`);
  await user.locator('#agents-table tbody tr[data-agent]').first().waitFor();
  assert.match(await user.textContent('#agents-table'), /account:alice/);
  assert.deepEqual(user.problems, []);
  await user.context().close();
});
