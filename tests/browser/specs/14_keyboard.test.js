// Accessibility (issue 19, part 3): the main flows with the keyboard only,
// as a person who cannot use a pointer walks them: an operator's Add Device
// (the device chosen, the policy, the PIN, Continue), and in the User
// Portal Get Initial PIN and Change PIN. Nothing here is clicked: Tab moves
// the focus, Space and Enter act, arrows choose in a list. axe-core checks
// every page on the way (lib/harness.js).
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');
const { startAgent, approveInPortal } = require('../lib/agent');

const ADDED = '47000014';
const OWN = '47000015';
let server;
let browser;
const agents = [];

// Tab until `selector` has the focus (at most `limit` presses).
async function tabTo(page, selector, limit = 80) {
  for (let i = 0; i < limit; i++) {
    const there = await page.evaluate((s) => !!document.activeElement && document.activeElement.matches(s), selector);
    if (there) return;
    await page.keyboard.press('Tab');
  }
  throw new Error(`the keyboard never reached ${selector}`);
}

async function reported(serial) {
  const deadline = Date.now() + 20000;
  while (!(await h.must(server, 'GET', '/agents/devices')).devices.some((d) => d.serial === serial)) {
    assert.ok(Date.now() < deadline, `the agent reports ${serial}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

// Signs in with the keyboard: the login field has the focus first.
async function signInByKeyboard(page, login) {
  await page.goto(`${server.url}/signin`);
  await tabTo(page, '#login');
  await page.keyboard.type(login);
  await page.keyboard.press('Tab');
  await page.keyboard.type(h.PASSWORDS[login]);
  await Promise.all([page.waitForNavigation(), page.keyboard.press('Enter')]);
}

test.before(async () => {
  server = await h.startServer();
  await h.seed(server, { initial_pin_display_mode: 'displayed' });
  for (const serial of [ADDED, OWN]) {
    await h.must(server, 'POST', '/devices', { device_type: 'c4000', serial, firmware_version: '1.0.0' });
  }
  browser = await h.launch();
});

test.after(async () => {
  if (browser) await browser.close();
  for (const a of agents) await a.stop();
  if (server) await server.stop();
});

test('Add Device with the keyboard only', async () => {
  const page = await h.newPage(browser, server);
  await signInByKeyboard(page, 'operator');
  const agent = await startAgent(server, [`c4000:${ADDED}`], 'ws-keyboard-operator');
  agents.push(agent);
  await approveInPortal(page, server, agent);
  await reported(ADDED);
  await page.goto(`${server.url}/users/alice/add-device`);
  const radio = `#device-list tr[data-serial="${ADDED}"] input[type="radio"]`;
  await page.waitForSelector(radio);
  await tabTo(page, radio);
  await page.keyboard.press('Space');
  await page.waitForSelector('#policy:not([disabled]) option[value="PIV Standard"]', { state: 'attached' });
  await tabTo(page, '#policy');
  for (let i = 0; i < 5 && (await page.inputValue('#policy')) !== 'PIV Standard'; i++) {
    await page.keyboard.press('ArrowDown');
  }
  assert.equal(await page.inputValue('#policy'), 'PIV Standard');
  await page.waitForSelector('#pin-rules li[data-rule]', { state: 'attached' });
  await tabTo(page, '#pin');
  await page.keyboard.type('735194');
  // The PIN rules button is reached and named for a screen reader.
  await tabTo(page, '#pin-info');
  assert.equal(await page.getAttribute('#pin-info', 'aria-label'), 'PIN rules');
  await page.keyboard.press('Enter');
  await page.waitForSelector('#pin-rules:not([hidden])');
  await page.waitForSelector('#continue:not([disabled])');
  await tabTo(page, '#continue');
  await h.shot(page, '14-keyboard-add-device');
  await Promise.all([
    page.waitForURL(new RegExp(`/users/alice\\?issued=${ADDED}$`), { timeout: 60000 }),
    page.keyboard.press('Enter'),
  ]);
  assert.match(await page.locator(`article.device[data-serial="${ADDED}"]`).textContent(), /Issued/);
  assert.deepEqual(page.problems, []);
});

test('Get Initial PIN and Change PIN with the keyboard only', async () => {
  // alice's device, issued Not Displayed through her own agent.
  const alice = await h.newPage(browser, server);
  await signInByKeyboard(alice, 'alice');
  const agent = await startAgent(server, [`c4000:${OWN}`], 'ws-keyboard-alice');
  agents.push(agent);
  await approveInPortal(alice, server, agent);
  await reported(OWN);
  await h.setSettings(server, { initial_pin_display_mode: 'not_displayed', change_pin_during_issuance: 'false' });
  const start = await h.must(server, 'POST', '/issuance', { user: 'alice', policy: 'PIV Standard', serial: OWN, via: 'agent' });
  const deadline = Date.now() + 60000;
  for (;;) {
    const s = await h.must(server, 'GET', `/issuance/${start.session_id}`);
    if (s.status === 'issued') break;
    assert.ok(!['failed', 'cancelled'].includes(s.status), JSON.stringify(s));
    assert.ok(Date.now() < deadline, 'issued');
    await new Promise((r) => setTimeout(r, 200));
  }
  await alice.goto(`${server.url}/me`);
  const reveal = `article.device[data-serial="${OWN}"] .get-initial-pin`;
  await alice.waitForSelector(reveal);
  await tabTo(alice, reveal);
  await alice.keyboard.press('Enter');
  await alice.waitForSelector('#confirm-reveal[open]');
  await tabTo(alice, '#reveal-confirm');
  await alice.keyboard.press('Enter');
  await alice.waitForSelector('#revealed[open]');
  const pin = (await alice.textContent('#revealed-pin')).trim();
  assert.match(pin, /^[0-9]{6,8}$/);
  await tabTo(alice, '#revealed-done');
  await alice.keyboard.press('Enter');
  await alice.waitForSelector('#revealed[open]', { state: 'detached' }).catch(() => {});

  const change = `article.device[data-serial="${OWN}"] .change-pin`;
  await tabTo(alice, change);
  await alice.keyboard.press('Enter');
  await alice.waitForSelector('#change-pin[open]');
  // The dialog puts the focus on the current PIN.
  await tabTo(alice, '#change-pin-current', 1);
  await alice.keyboard.type(pin);
  await tabTo(alice, '#change-pin-new');
  await alice.keyboard.type('24681357');
  await tabTo(alice, '#change-pin-confirm');
  await alice.keyboard.type('24681357');
  await alice.waitForSelector('#change-pin-start:not([disabled])');
  // The rules are announced (a live region) and say pass or fail in words.
  assert.equal(await alice.getAttribute('#change-pin-rules', 'aria-live'), 'polite');
  await tabTo(alice, '#change-pin-start');
  await alice.keyboard.press('Enter');
  await alice.waitForSelector('#change-pin-done:not([hidden]), #change-pin-failed:not([hidden])', { timeout: 60000 });
  assert.ok(await alice.isVisible('#change-pin-done'), await alice.textContent('#change-pin-failed'));
  await h.shot(alice, '14-keyboard-change-pin');
  assert.deepEqual(alice.problems, []);
});
