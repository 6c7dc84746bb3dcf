// Test harness of the portal tests: starts `keyward serve` (the binary cargo
// built, target/debug/keyward) on a free port with a fresh data folder and a
// bootstrap API token, seeds it through the REST API, and launches Debian's
// Chromium headless through playwright-core.
'use strict';

const { spawn } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { chromium } = require('playwright-core');
const { AxeBuilder } = require('@axe-core/playwright');

const ROOT = path.resolve(__dirname, '..', '..', '..');
const BIN = process.env.KEYWARD_BIN || path.join(ROOT, 'target', 'debug', 'keyward');
const CHROMIUM = process.env.KEYWARD_CHROMIUM || '/usr/bin/chromium';
const SHOTS = process.env.KEYWARD_SCREENSHOTS || path.join(ROOT, 'ci-artifacts', 'screenshots');

// The flags of domain-notes.md section 6 (root, closed network).
const CHROMIUM_FLAGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
];

// Known passwords of the seeded accounts (test-only, in a throwaway server).
const PASSWORDS = {
  operator: 'operator-password-1',
  helpdesk: 'helpdesk-password-1',
  admin2: 'admin2-password-1',
  alice: 'alice-password-1',
};

function randomToken() {
  return `kw_browser_${crypto.randomBytes(18).toString('hex')}`;
}

// Starts `keyward <subcommand>` and resolves once it prints its URL.
async function startServer(options = {}) {
  if (!fs.existsSync(BIN)) {
    throw new Error(`${BIN} is missing: build it first (cargo build -p keyward)`);
  }
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-browser-'));
  const token = randomToken();
  const args = [options.subcommand || 'serve', '--data-dir', dataDir, '--listen', '127.0.0.1:0',
    ...(options.args || [])];
  const env = { ...process.env, KEYWARD_BOOTSTRAP_TOKEN: token, KEYWARD_LOG: 'info', ...(options.env || {}) };
  delete env.KEYWARD_CONFIG;
  delete env.KEYWARD_DATABASE_URL;
  const child = spawn(BIN, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`keyward did not start:\n${output}`)), 60000);
    const onData = (chunk) => {
      output += chunk.toString();
      const m = output.match(/(?:keyward listening on|Keyward demo is running at) (http\S+)/);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', (c) => { output += c.toString(); });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`keyward exited (${code}):\n${output}`));
    });
  });
  child.stdout.on('data', (c) => { output += c.toString(); });
  const server = {
    url,
    token,
    dataDir,
    child,
    output: () => output,
    async stop() {
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        await new Promise((r) => child.once('exit', r));
      }
      fs.rmSync(dataDir, { recursive: true, force: true });
    },
  };
  return server;
}

// One API call with the bootstrap administrator token (or `auth`).
async function api(server, method, p, body, auth) {
  const headers = { Accept: 'application/json' };
  if (auth && auth.cookie) {
    headers.Cookie = auth.cookie;
    if (method !== 'GET') headers['X-CSRF-Token'] = auth.csrf;
  } else {
    headers.Authorization = `Bearer ${(auth && auth.token) || server.token}`;
  }
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(`${server.url}/api/v1${p}`, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
  return { status: res.status, data };
}

async function must(server, method, p, body, auth) {
  const r = await api(server, method, p, body, auth);
  if (r.status >= 300) throw new Error(`${method} ${p}: ${r.status} ${JSON.stringify(r.data)}`);
  return r.data;
}

// An account with a one-time password, which is then changed to a known one.
async function account(server, login, role, userLogin) {
  const created = await must(server, 'POST', '/operators', { login, role, user_login: userLogin || null });
  const signIn = await fetch(`${server.url}/api/v1/auth/session`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ login, password: created.one_time_password }),
  });
  const info = await signIn.json();
  const cookie = signIn.headers.get('set-cookie').split(';')[0];
  await must(server, 'POST', '/auth/password',
    { current_password: created.one_time_password, new_password: PASSWORDS[login] },
    { cookie, csrf: info.csrf_token });
}

const PIV_STANDARD = {
  name: 'PIV Standard',
  description: 'PIV Authentication and Digital Signature keys on P-256',
  device_types: ['c4000', 'yubikey5', 'piv'],
  pin_application: {
    min_length: 6, max_length: 8, character_set: 'numeric', max_repeated: 2, max_sequential: 2,
    history_count: 0, pin_retry_count: 3, puk_retry_count: 3,
  },
  management_key: 'keep',
  pki_applications: [
    {
      name: 'PIV Authentication', slot: '9a', algorithm: 'eccp256', certificate_authority: 'Keyward Issuing CA',
      template: {
        subject_dn: 'CN={display_name},UID={login}', subject_alt_names: ['upn', 'mail'], validity_days: 365,
        key_usage: ['digital_signature'], extended_key_usage: ['client_auth', 'smartcard_logon'],
      },
    },
    {
      name: 'Digital Signature', slot: '9c', algorithm: 'eccp256', certificate_authority: 'Keyward Issuing CA',
      template: {
        subject_dn: 'CN={display_name},UID={login}', subject_alt_names: ['upn', 'mail'], validity_days: 365,
        key_usage: ['digital_signature', 'non_repudiation'], extended_key_usage: ['email_protection', 'document_signing'],
      },
    },
  ],
  fido_application: null,
  require_device_attestation: false,
};

const USERS = [
  ['alice', 'Alice Archer', '1001'],
  ['albert', 'Albert Adams', '1004'],
  ['bob', 'Bob Baker', '1002'],
  ['carol', 'Carol Chen', '1003'],
];

// Users, the PIV Standard policy, settings, and the portal accounts:
// operator (Issuance Operator), helpdesk (Help Desk), admin2 (Administrator)
// and alice (User, linked to the user alice).
async function seed(server, settings = {}) {
  for (const [login, name, rid] of USERS) {
    await must(server, 'POST', '/users', {
      login, upn: `${login}@example.com`, display_name: name, email: `${login}@example.com`,
      attributes: { objectSid: `S-1-5-21-1004336348-1177238915-682003330-${rid}` },
    });
  }
  await must(server, 'POST', '/policies', PIV_STANDARD);
  await setSettings(server, { initial_pin_display_mode: 'displayed', change_pin_during_issuance: 'false', ...settings });
  await account(server, 'operator', 'issuance_operator');
  await account(server, 'helpdesk', 'help_desk');
  await account(server, 'admin2', 'administrator');
  await account(server, 'alice', 'user', 'alice');
}

async function setSettings(server, settings) {
  for (const [key, value] of Object.entries(settings)) {
    await must(server, 'PUT', `/settings/${key}`, { value: String(value) });
  }
}

// WCAG 2.1 AA: axe-core checks every page a test visits (each load); a
// serious or critical finding fails the spec file when its browser closes.
const AXE_TAGS = ['wcag2a', 'wcag2aa', 'wcag21a', 'wcag21aa'];
const AXE_FAILS = ['serious', 'critical'];

async function axeCheck(page, origin) {
  const url = page.url();
  if (!url.startsWith(origin)) return;
  let result;
  try {
    // Bounded: a page closed or stuck mid-navigation must not hold the run.
    result = await Promise.race([
      new AxeBuilder({ page }).withTags(AXE_TAGS).analyze(),
      new Promise((_, reject) => setTimeout(() => reject(new Error('axe timed out')), 15000).unref()),
    ]);
  } catch (_) {
    return; // navigated away (or closed) meanwhile: the next load is checked
  }
  for (const v of result.violations.filter((x) => AXE_FAILS.includes(x.impact))) {
    const where = v.nodes.slice(0, 3).map((n) => n.target.join(' ')).join('; ');
    page.a11y.push(`${new URL(url).pathname}: ${v.id} (${v.impact}): ${v.help}: ${where}`);
  }
}

async function launch() {
  const browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_FLAGS });
  browser.keywardPages = [];
  const close = browser.close.bind(browser);
  browser.close = async () => {
    const found = [];
    for (const page of browser.keywardPages) {
      await Promise.allSettled(page.axeRuns);
      found.push(...page.a11y);
    }
    await close();
    const unique = [...new Set(found)];
    if (unique.length) {
      // The spec file fails (its exit status), once its after hooks have
      // stopped its servers: a throw here would leave them running.
      console.log(`not ok - accessibility (axe-core, WCAG 2.1 AA), serious or critical:\n${unique.map((u) => `  ${u}`).join('\n')}`);
      process.exitCode = 1;
    }
  };
  return browser;
}

// A fresh context (its own cookies) with clipboard access for Copy buttons.
async function newPage(browser, server) {
  const context = await browser.newContext({ viewport: { width: 1200, height: 900 } });
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: server.url });
  const page = await context.newPage();
  const problems = [];
  // Script errors and CSP violations; an HTTP error status the test provoked
  // on purpose (a wrong password is a 401) is not one.
  page.on('console', (m) => {
    if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) problems.push(m.text());
  });
  page.on('pageerror', (e) => problems.push(String(e)));
  page.problems = problems;
  page.a11y = [];
  page.axeRuns = [];
  page.on('load', () => page.axeRuns.push(axeCheck(page, server.url)));
  if (browser.keywardPages) browser.keywardPages.push(page);
  return page;
}

async function signIn(page, server, login, password) {
  await page.goto(`${server.url}/signin`);
  await page.fill('#login', login);
  await page.fill('#password', password || PASSWORDS[login]);
  await Promise.all([page.waitForNavigation(), page.click('#signin-form button[type="submit"]')]);
}

// Screenshots are artifacts for people reading a CI run, not assertions: one
// that cannot be taken is reported and the test goes on. (CI once saw headless
// Chromium on a loaded 2-core machine produce no frame for 30 s while a page
// was live, and the run failed on the picture rather than on anything tested.)
async function shot(page, name) {
  fs.mkdirSync(SHOTS, { recursive: true });
  const file = path.join(SHOTS, `${name}.png`);
  try {
    await page.screenshot({ path: file, fullPage: true, timeout: 15000 });
  } catch (e) {
    console.log(`# screenshot ${name} not taken: ${String(e.message).split('\n')[0]}`);
    return null;
  }
  return file;
}

module.exports = {
  ROOT, BIN, PASSWORDS, PIV_STANDARD, startServer, api, must, seed, setSettings, launch, newPage, signIn, shot,
};
