// A virtual device on pcscd's vpcd reader for the browser tests: makes sure
// pcscd runs with the vpcd reader (as crates/keyward/tests/common/pcsc.rs
// does), then spawns `keyward vcard` and waits for it to print `ready`.
// The caller holds /tmp/keyward-pcsc.lock (tests/browser/run takes it).
'use strict';

const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { BIN } = require('./harness');

const VPCD_PORT = 35963;

function vpcdListening() {
  const r = spawnSync('ss', ['-ltnH'], { encoding: 'utf8' });
  return r.status === 0 && r.stdout.split('\n').some((l) => l.includes(`:${VPCD_PORT} `));
}

async function ensurePcscd() {
  if (!fs.existsSync('/usr/lib/pcsc/drivers/serial/libifdvpcd.so')) {
    throw new Error('vpcd driver missing: apt-get install pcscd vsmartcard-vpcd');
  }
  if (vpcdListening()) return;
  const dir = '/tmp/keyward-pcscd';
  fs.mkdirSync(dir, { recursive: true });
  const conf = path.join(dir, 'reader.conf');
  fs.writeFileSync(conf, 'FRIENDLYNAME "Virtual PCD"\nDEVICENAME /dev/null:0x8C7B\n'
    + 'LIBPATH /usr/lib/pcsc/drivers/serial/libifdvpcd.so\nCHANNELID 0x8C7B\n');
  fs.mkdirSync('/run/pcscd', { recursive: true });
  const log = fs.openSync(path.join(dir, 'pcscd.log'), 'a');
  const child = spawn('pcscd', ['-f', '-a', '-c', conf], { stdio: ['ignore', log, log], detached: true });
  child.unref();
  const start = Date.now();
  while (!vpcdListening()) {
    if (Date.now() - start > 15000) throw new Error('pcscd did not open the vpcd port; see /tmp/keyward-pcscd/pcscd.log');
    await new Promise((r) => setTimeout(r, 100));
  }
}

// `keyward vcard --profile ... --serial ...` on vpcd; resolves when ready.
async function startVcard(extra) {
  await ensurePcscd();
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'keyward-browser-vcard-'));
  const child = spawn(BIN, ['vcard', '--ca-dir', path.join(dir, 'ca'), '--control', path.join(dir, 'control'), ...extra],
    { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`keyward vcard not ready:\n${output}`)), 30000);
    child.stdout.on('data', (c) => {
      output += c.toString();
      if (output.split('\n').some((l) => l.trim() === 'ready')) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.stderr.on('data', (c) => { output += c.toString(); });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`keyward vcard exited (${code}):\n${output}`));
    });
  });
  return {
    dir,
    control: path.join(dir, 'control'),
    async stop() {
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        await new Promise((r) => child.once('exit', r));
      }
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

// Runs a program to its end; resolves with { status, stdout, stderr }.
function run(program, args, options = {}) {
  return new Promise((resolve) => {
    const child = spawn(program, args, { stdio: ['ignore', 'pipe', 'pipe'], ...options });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c) => { stdout += c.toString(); });
    child.stderr.on('data', (c) => { stderr += c.toString(); });
    child.on('exit', (status) => resolve({ status, stdout, stderr }));
  });
}

module.exports = { ensurePcscd, startVcard, run };
