// Sign-in form, cookies, CSP, CSRF refusal of forged posts, and what each
// role sees: a Help Desk operator sees no administration page.
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

test('signed out, / leads to a sign-in page that is a POST form, with a CSP without unsafe-inline', async () => {
  const page = await h.newPage(browser, server);
  const res = await page.goto(`${server.url}/`);
  assert.equal(new URL(page.url()).pathname, '/signin');
  const csp = res.headers()['content-security-policy'];
  assert.ok(csp && csp.includes("script-src 'self'"), `CSP: ${csp}`);
  assert.ok(!csp.includes('unsafe-inline'), `CSP: ${csp}`);
  const form = page.locator('form#signin-form');
  assert.equal(await form.getAttribute('method'), 'post');
  assert.equal(await form.getAttribute('action'), '/signin');
  assert.equal(await page.locator('form#signin-form input[name="csrf"]').count(), 1);
  // No inline script or style anywhere in the page.
  const html = await page.content();
  assert.ok(!/<script(?![^>]*\bsrc=)[^>]*>/i.test(html), 'no inline <script>');
  assert.ok(!/\sstyle=/i.test(html), 'no style attribute');
  await h.shot(page, '01-signin');

  // A wrong password: the form again, with an error, and no session.
  await page.fill('#login', 'operator');
  await page.fill('#password', 'not-the-password');
  await page.click('#signin-form button[type="submit"]');
  await page.waitForSelector('.error');
  assert.match(await page.textContent('.error'), /wrong password/);
  assert.ok(!(await page.context().cookies()).some((c) => c.name === 'kw_session'));
  assert.deepEqual(page.problems, []);
  await page.context().close();
});

test('a forged sign-in post without the CSRF token is refused with 403, even with the right password', async () => {
  const form = new URLSearchParams({ login: 'operator', password: h.PASSWORDS.operator });
  const res = await fetch(`${server.url}/signin`, {
    method: 'POST', body: form, redirect: 'manual',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
  });
  assert.equal(res.status, 403);
  assert.equal(res.headers.get('set-cookie'), null);
  // A token of the attacker's own, without the matching cookie: refused too.
  form.set('csrf', 'forged-token-forged-token-forged-token');
  const res2 = await fetch(`${server.url}/signin`, {
    method: 'POST', body: form, redirect: 'manual',
    headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
  });
  assert.equal(res2.status, 403);
});

test('signed in: session cookie HttpOnly and SameSite=Strict; forged posts without the token are refused', async () => {
  const page = await h.newPage(browser, server);
  await h.signIn(page, server, 'operator');
  assert.equal(new URL(page.url()).pathname, '/users');
  const session = (await page.context().cookies()).find((c) => c.name === 'kw_session');
  assert.ok(session, 'session cookie set');
  assert.equal(session.httpOnly, true);
  assert.equal(session.sameSite, 'Strict');
  // The page's script cannot read it.
  assert.ok(!(await page.evaluate(() => document.cookie)).includes('kw_session'));

  // With the session cookie but without the CSRF token: 403 for a form post
  // and for an API call; nothing changes (still signed in).
  const signOut = await page.request.post(`${server.url}/signout`, { form: { nothing: 'x' }, maxRedirects: 0 });
  assert.equal(signOut.status(), 403);
  const apiPost = await page.request.post(`${server.url}/api/v1/users`, {
    data: { login: 'mallory', display_name: 'Mallory' }, maxRedirects: 0,
  });
  assert.equal(apiPost.status(), 403);
  const mallory = await h.api(server, 'GET', '/users/mallory');
  assert.equal(mallory.status, 404);
  await page.goto(`${server.url}/users`);
  assert.equal(new URL(page.url()).pathname, '/users');

  // Sign out through the page's own form (with its token).
  await Promise.all([page.waitForNavigation(), page.click('header form button')]);
  assert.equal(new URL(page.url()).pathname, '/signin');
  await page.goto(`${server.url}/users`);
  assert.equal(new URL(page.url()).pathname, '/signin');
  await page.context().close();
});

const ADMIN_PAGES = ['/admin/policies', '/admin/settings', '/admin/passkey-services', '/admin/operators', '/admin/audit'];

test('a Help Desk operator sees no administration page, and cannot open one', async () => {
  const page = await h.newPage(browser, server);
  await h.signIn(page, server, 'helpdesk');
  const links = await page.$$eval('header nav a', (as) => as.map((a) => a.getAttribute('href')));
  // Agents: the help desk replaces and recycles devices at its own agents.
  assert.deepEqual(links, ['/users', '/devices', '/requests', '/agents']);
  await h.shot(page, '01-helpdesk-users');
  for (const p of ADMIN_PAGES) {
    const res = await page.goto(`${server.url}${p}`);
    assert.equal(res.status(), 403, p);
  }
  await h.shot(page, '01-helpdesk-admin-refused');
  // No Add Device on the User page for the Help Desk.
  await page.goto(`${server.url}/users/alice`);
  assert.equal(await page.locator('#add-device').count(), 0);
  const dialog = await page.goto(`${server.url}/users/alice/add-device`);
  assert.equal(dialog.status(), 403);
  await page.context().close();
});

test('an administrator sees and uses the administration pages', async () => {
  const page = await h.newPage(browser, server);
  await h.signIn(page, server, 'admin2');
  const links = await page.$$eval('header nav a', (as) => as.map((a) => a.getAttribute('href')));
  for (const p of ADMIN_PAGES) assert.ok(links.includes(p), `${p} in ${links}`);
  for (const p of ADMIN_PAGES) {
    const res = await page.goto(`${server.url}${p}`);
    assert.equal(res.status(), 200, p);
  }
  // Change a setting through the page: Device initial PIN display mode.
  await page.goto(`${server.url}/admin/settings`);
  await page.selectOption('#setting-initial_pin_display_mode', 'disguised');
  await Promise.all([
    page.waitForNavigation(),
    page.click('button[form="form-initial_pin_display_mode"]'),
  ]);
  assert.equal(await page.inputValue('#setting-initial_pin_display_mode'), 'disguised');
  const settings = await h.must(server, 'GET', '/settings');
  assert.equal(settings.initial_pin_display_mode, 'disguised');
  await h.shot(page, '01-admin-settings');
  // Edit a device policy's document: the server checks it, the page shows it.
  await page.goto(`${server.url}/admin/policies`);
  const card = page.locator('section.policy[data-policy="PIV Standard"]');
  assert.match(await card.textContent(), /at least 6 characters/);
  await card.locator('summary').click();
  const doc = JSON.parse(await card.locator('textarea').inputValue());
  doc.description = 'Edited in the portal';
  doc.pin_application.min_length = 2; // below what the devices allow: refused
  await card.locator('textarea').fill(JSON.stringify(doc, null, 2));
  await card.locator('button[type="submit"]').click();
  await page.waitForSelector('.api-error:not([hidden])');
  assert.match(await page.textContent('.api-error'), /min_length|PIN/i);
  doc.pin_application.min_length = 6;
  await card.locator('textarea').fill(JSON.stringify(doc, null, 2));
  await Promise.all([page.waitForNavigation(), card.locator('button[type="submit"]').click()]);
  assert.match(await page.textContent('section.policy[data-policy="PIV Standard"]'), /Edited in the portal/);
  await h.shot(page, '01-admin-policies');

  // Create an operator account: its one-time password is shown once.
  await page.goto(`${server.url}/admin/operators`);
  await page.fill('form[data-api-url="/api/v1/operators"] input[name="login"]', 'helpdesk2');
  await page.selectOption('form[data-api-url="/api/v1/operators"] select[name="role"]', 'help_desk');
  await page.click('form[data-api-url="/api/v1/operators"] button[type="submit"]');
  await page.waitForSelector('#new-account .api-result:not([hidden])');
  assert.match(await page.textContent('#new-account .api-result'), /"one_time_password": "[^"]{10,}"/);
  await h.shot(page, '01-admin-operator-created');
  await page.goto(`${server.url}/admin/audit`);
  assert.match(await page.textContent('#audit-table'), /settings\.set/);
  assert.match(await page.textContent('#audit-table'), /operator\.create/);
  assert.deepEqual(page.problems, []);
  await page.context().close();
});

test('under TLS the session and sign-in cookies are also Secure', async () => {
  const { spawnSync } = require('node:child_process');
  const fs = require('node:fs');
  const os = require('node:os');
  const path = require('node:path');
  const https = require('node:https');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-browser-tls-'));
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  const made = spawnSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256',
    '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=127.0.0.1',
    '-addext', 'subjectAltName=IP:127.0.0.1'], { encoding: 'utf8' });
  assert.equal(made.status, 0, made.stderr);
  const tls = await h.startServer({ env: { KEYWARD_TLS_CERT: cert, KEYWARD_TLS_KEY: key } });
  try {
    assert.match(tls.url, /^https:/);
    // The first administrator's one-time password, printed once at first start.
    const otp = tls.output().match(/one-time password: (\S+)/)[1];
    const get = (p, options = {}) => new Promise((resolve, reject) => {
      const req = https.request(`${tls.url}${p}`, { rejectUnauthorized: false, ...options }, (res) => {
        let body = '';
        res.on('data', (c) => { body += c; });
        res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body }));
      });
      req.on('error', reject);
      if (options.body) req.write(options.body);
      req.end();
    });
    const page = await get('/signin');
    const pre = page.headers['set-cookie'].join('\n');
    assert.match(pre, /kw_signin_csrf=[^;]+; Path=\/signin; HttpOnly; SameSite=Strict; Max-Age=\d+; Secure/);
    const csrf = page.body.match(/name="csrf" value="([^"]+)"/)[1];
    const token = pre.match(/kw_signin_csrf=([^;]+)/)[1];
    const body = new URLSearchParams({ csrf, login: 'admin', password: otp }).toString();
    const signedIn = await get('/signin', {
      method: 'POST', body,
      headers: { 'Content-Type': 'application/x-www-form-urlencoded', Cookie: `kw_signin_csrf=${token}` },
    });
    assert.equal(signedIn.status, 303);
    // Over HTTPS the session cookie is host-only (`__Host-`), Secure, HSTS sent.
    const session = signedIn.headers['set-cookie'].find((c) => c.startsWith('__Host-kw_session='));
    assert.match(session, /Path=\/; HttpOnly; SameSite=Strict; Max-Age=\d+; Secure/);
    assert.match(signedIn.headers['strict-transport-security'] || '', /max-age=\d+/);
  } finally {
    await tls.stop();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
