// A workstation agent for the browser tests: `keyward agent` with in-process
// virtual devices (`--virtual KIND:SERIAL[:remove-after=N]`) and their
// control sockets; the pairing code it prints is approved in the portal.
'use strict';

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const { BIN } = require('./harness');

// A folder for an agent: its state (credential, the virtual devices'
// manufacturer CA in state/virtual-ca) and the devices' control sockets.
function agentDir() {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-browser-agent-'));
}

// `opts.pcsc`: the agent looks at pcscd's readers too (a `keyward vcard` on
// vpcd is then its device); `opts.hidSockets`: virtual USB keys' HID sockets.
async function startAgent(server, devices, name = 'ws-browser-test', dir = agentDir(), opts = {}) {
  const control = path.join(dir, 'control');
  fs.mkdirSync(control);
  const args = ['agent', '--server', server.url, '--state-dir', path.join(dir, 'state'), '--name', name,
    ...(opts.pcsc ? [] : ['--no-pcsc']), '--no-hidraw', '--virtual-control', control];
  for (const s of opts.hidSockets || []) args.push('--hid-socket', s);
  for (const d of devices) args.push('--virtual', d);
  const child = spawn(BIN, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stderr.on('data', (c) => { output += c.toString(); });
  const code = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`keyward agent printed no pairing code:\n${output}`)), 30000);
    child.stdout.on('data', (c) => {
      output += c.toString();
      const m = output.match(/pairing code: (\S+)/);
      if (m) {
        clearTimeout(timer);
        resolve(m[1]);
      }
    });
    child.on('exit', (status) => {
      clearTimeout(timer);
      reject(new Error(`keyward agent exited (${status}):\n${output}`));
    });
  });
  return {
    code,
    output: () => output,
    // A control command (`remove`, `insert`, `touch`, ...) to one virtual device.
    control(serial, command) {
      return new Promise((resolve, reject) => {
        const sock = net.createConnection(path.join(control, `${serial}.sock`));
        let answer = '';
        sock.on('connect', () => sock.write(`${command}\n`));
        sock.on('data', (c) => {
          answer += c.toString();
          if (answer.includes('\n')) {
            sock.end();
            resolve(answer.trim());
          }
        });
        sock.on('error', reject);
      });
    },
    async stop() {
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        await new Promise((r) => child.once('exit', r));
      }
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

// Approves the agent's pairing code on the portal's Agents page.
async function approveInPortal(page, server, agent, shotName) {
  await page.goto(`${server.url}/agents`);
  await page.fill('#pairing-code', agent.code);
  await page.click('#approve-form button[type="submit"]');
  await page.waitForSelector('#approve-result:not([hidden])');
  await page.waitForSelector('#agents-table tbody tr[data-agent]');
  if (shotName) {
    const h = require('./harness');
    await h.shot(page, shotName);
  }
}

module.exports = { agentDir, startAgent, approveInPortal };
