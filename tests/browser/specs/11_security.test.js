// Security hardening (issue 15) in the portal: an administrator disables
// an operator on the Operators page and the operator's open session ends at
// once; too many failed sign-ins for a login are braked with a clear
// message (429 with Retry-After).
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

let server;
let browser;

test.before(async () => {
  server = await h.startServer();
  await h.seed(server);
  browser = await h.launch();
});

test.after(async () => {
  if (browser) await browser.close();
  if (server) await server.stop();
});

test('disabling an operator ends their open session', async () => {
  const op = await h.newPage(browser, server);
  await h.signIn(op, server, 'operator');
  await op.goto(`${server.url}/users`);
  assert.equal(new URL(op.url()).pathname, '/users');

  const admin = await h.newPage(browser, server);
  await h.signIn(admin, server, 'admin2');
  await admin.goto(`${server.url}/admin/operators`);
  const row = admin.locator('#operators-table tr[data-login="operator"]');
  admin.once('dialog', (d) => d.accept());
  await Promise.all([admin.waitForNavigation(), row.locator('button.disable').click()]);
  assert.match(await admin.locator('#operators-table tr[data-login="operator"] td.status').textContent(), /disabled/);
  await h.shot(admin, '11-operator-disabled');

  // The operator's next request finds no session.
  await op.goto(`${server.url}/users`);
  assert.equal(new URL(op.url()).pathname, '/signin');
  await h.shot(op, '11-disabled-operator-signed-out');
  // And cannot sign in again.
  await op.fill('#login', 'operator');
  await op.fill('#password', h.PASSWORDS.operator);
  await op.click('#signin-form button[type="submit"]');
  await op.waitForSelector('.error');
  assert.match(await op.textContent('.error'), /wrong password/);

  // Enabled again, they sign in.
  const row2 = admin.locator('#operators-table tr[data-login="operator"]');
  await Promise.all([admin.waitForNavigation(), row2.locator('button.enable').click()]);
  await h.signIn(op, server, 'operator');
  assert.notEqual(new URL(op.url()).pathname, '/signin');
  assert.deepEqual(admin.problems, []);
  await op.context().close();
  await admin.context().close();
});

test('too many failed sign-ins for a login are braked, with a message that says when to try again', async () => {
  const page = await h.newPage(browser, server);
  await page.goto(`${server.url}/signin`);
  for (let i = 0; i < 5; i += 1) {
    await page.fill('#login', 'helpdesk');
    await page.fill('#password', `not-the-password-${i}`);
    await page.click('#signin-form button[type="submit"]');
    await page.waitForSelector('.error');
    assert.match(await page.textContent('.error'), /wrong password/);
  }
  await page.fill('#login', 'helpdesk');
  await page.fill('#password', h.PASSWORDS.helpdesk);
  const [res] = await Promise.all([
    page.waitForResponse((r) => r.url().endsWith('/signin') && r.request().method() === 'POST'),
    page.click('#signin-form button[type="submit"]'),
  ]);
  assert.equal(res.status(), 429);
  assert.ok(Number(res.headers()['retry-after']) > 0);
  await page.waitForSelector('.error');
  assert.match(await page.textContent('.error'), /Too many sign-in attempts\. Try again in \d+ seconds\./);
  await h.shot(page, '11-sign-in-braked');
  assert.ok(!(await page.context().cookies()).some((c) => c.name === 'kw_session'));
  await page.context().close();
});
