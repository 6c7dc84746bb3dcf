// Requests (issue 18) in the portals: Add Device under a policy that
// requires approval offers Request Issuance; a second operator approves it
// on the Requests page; the operator then issues the device. A bulk CSV
// uploaded on the Requests page is collected at Add Device as the device
// arrives at the agent, and the batch shows it issued.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');
const { startAgent, approveInPortal } = require('../lib/agent');

const HELD = '47000015';
const BULK = '47000016';
let server;
let browser;
let agent;
let operator;

async function reported(serial) {
  const deadline = Date.now() + 20000;
  while (!(await h.must(server, 'GET', '/agents/devices')).devices.some((d) => d.serial === serial)) {
    assert.ok(Date.now() < deadline, `the agent reports ${serial}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

// Add Device for `login` with `serial` and `policy`: the dialog's state
// after the policy is chosen.
async function choose(login, serial, policy) {
  await operator.goto(`${server.url}/users/${login}/add-device`);
  const row = operator.locator(`#device-list tr[data-serial="${serial}"]`);
  await row.waitFor({ timeout: 20000 });
  await row.click();
  await operator.waitForSelector(`#policy option[value="${policy}"]`, { state: 'attached' });
  await operator.selectOption('#policy', policy);
}

async function issue(login, serial) {
  await operator.waitForSelector('#pin-rules li[data-rule]', { state: 'attached' });
  assert.equal((await operator.textContent('#continue')).trim(), 'Continue');
  await operator.fill('#pin', '');
  await operator.type('#pin', '735194');
  await operator.waitForSelector('#continue:not([disabled])');
  await Promise.all([
    operator.waitForURL(new RegExp(`/users/${login}\\?issued=${serial}$`), { timeout: 60000 }),
    operator.click('#continue'),
  ]);
}

test.before(async () => {
  server = await h.startServer();
  await h.seed(server, { initial_pin_display_mode: 'displayed' });
  for (const serial of [HELD, BULK]) {
    await h.must(server, 'POST', '/devices', { device_type: 'c4000', serial, firmware_version: '1.0.0' });
  }
  await h.must(server, 'POST', '/policies', { ...h.PIV_STANDARD, name: 'PIV Approved', approval_required_for: ['issuance'] });
  browser = await h.launch();
  operator = await h.newPage(browser, server);
  await h.signIn(operator, server, 'operator');
  agent = await startAgent(server, [`c4000:${HELD}`, `c4000:${BULK}`], 'ws-requests');
  await approveInPortal(operator, server, agent);
  await reported(HELD);
  await reported(BULK);
});

test.after(async () => {
  if (browser) await browser.close();
  if (agent) await agent.stop();
  if (server) await server.stop();
});

test('an issuance waits for a second operator\'s approval', async () => {
  await choose('alice', HELD, 'PIV Approved');
  await operator.waitForSelector('#approval-note:not([hidden])');
  assert.equal((await operator.textContent('#continue')).trim(), 'Request Issuance');
  await operator.waitForSelector('#continue:not([disabled])');
  await operator.click('#continue');
  await operator.waitForFunction(() => document.querySelector('#approval-note').textContent.startsWith('Requested'));
  await h.shot(operator, '15-request-issuance');
  // The requester cannot decide it.
  await operator.goto(`${server.url}/requests`);
  const mine = operator.locator('#pending-requests tr[data-request]');
  assert.equal(await mine.count(), 1);
  assert.equal(await mine.locator('button.approve').count(), 0);

  const approver = await h.newPage(browser, server);
  await h.signIn(approver, server, 'admin2');
  await approver.goto(`${server.url}/requests`);
  assert.match(await approver.textContent('#pending-title'), /Waiting for approval \(1\)/);
  await h.shot(approver, '15-requests-pending');
  await Promise.all([
    approver.waitForNavigation(),
    approver.locator('#pending-requests tr[data-request] button.approve').click(),
  ]);
  assert.match(await approver.textContent('#approved-title'), /\(1\)/);

  await choose('alice', HELD, 'PIV Approved');
  await operator.waitForFunction(() => document.querySelector('#continue').textContent.trim() === 'Continue');
  await issue('alice', HELD);
  const used = await h.must(server, 'GET', '/requests?state=used');
  assert.equal(used.length, 1, JSON.stringify(used));
  assert.deepEqual(operator.problems, []);
  assert.deepEqual(approver.problems, []);
});

test('a bulk batch uploaded on the Requests page is collected at the agent', async () => {
  const fs = require('node:fs');
  const path = require('node:path');
  const os = require('node:os');
  const file = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'kw-bulk-')), 'batch.csv');
  fs.writeFileSync(file, `login,policy,serial\nbob,PIV Standard,${BULK}\n`);
  await operator.goto(`${server.url}/requests`);
  await operator.setInputFiles('#requests-import input[type="file"]', file);
  await operator.click('#requests-import button[type="submit"]');
  await operator.waitForSelector('#requests-import-result:not([hidden])');
  const made = JSON.parse(await operator.textContent('#requests-import-result'));
  assert.equal(made.imported, 1, JSON.stringify(made));
  await h.shot(operator, '15-bulk-uploaded');
  // bob's requested device is offered first, marked.
  await operator.goto(`${server.url}/users/bob/add-device`);
  await operator.waitForSelector(`#device-list tbody tr[data-serial="${BULK}"].requested`, { timeout: 20000 });
  assert.equal(await operator.getAttribute('#device-list tbody tr:first-child', 'data-serial'), BULK);
  await choose('bob', BULK, 'PIV Standard');
  await issue('bob', BULK);
  const batch = await h.must(server, 'GET', `/request-batches/${made.batch}`);
  assert.equal(batch.issued, 1, JSON.stringify(batch));
  assert.equal(batch.waiting, 0, JSON.stringify(batch));
  assert.deepEqual(operator.problems, []);
});
