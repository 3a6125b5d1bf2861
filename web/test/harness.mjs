// Test harness: a real Parley node (the binary scripts/test-web.sh built) on free loopback
// ports, and Debian's chromium driven by playwright-core.
import { spawn } from 'node:child_process';
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { get as httpsGet } from 'node:https';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

export const CHROMIUM = process.env.PARLEY_CHROMIUM || '/usr/bin/chromium';
export const CHROMIUM_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
  '--disable-quic', '--no-first-run', '--disable-component-update', '--disable-sync'];

export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * GET url over HTTPS, trusting only the CA certificate in the PEM file caFile; resolves to
 * { status, body } or rejects (also after timeoutMs).
 */
export function httpsGetText(url, caFile, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const req = httpsGet(url, { ca: readFileSync(caFile), timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => { body += d; });
      res.on('end', () => resolve({ status: res.statusCode, body }));
      res.on('error', reject);
    });
    req.on('timeout', () => req.destroy(new Error(`timeout after ${timeoutMs} ms: ${url}`)));
    req.on('error', reject);
  });
}

/**
 * One node process; start/stop can be repeated (same ports and data: a restart). With
 * tls = { cert, key, ca } (PEM file paths) it serves HTTPS and wss:// (PARLEY_TLS_CERT_FILE,
 * PARLEY_TLS_KEY_FILE), its url is https://, and the health check trusts only ca.
 */
export class Node {
  constructor({ bin, dir, tls, env }) {
    this.bin = bin;
    this.env = env || {}; // more PARLEY_* settings
    this.dir = dir || mkdtempSync(join(tmpdir(), 'parley-web-'));
    this.ownDir = !dir;
    this.tls = tls || null;
    this.proc = null;
  }

  async init() {
    this.httpPort = await freePort();
    this.raftPort = await freePort();
    this.url = `${this.tls ? 'https' : 'http'}://127.0.0.1:${this.httpPort}`;
    return this;
  }

  async healthy() {
    if (this.tls) {
      const { status, body } = await httpsGetText(`${this.url}/v1/health`, this.tls.ca);
      return status === 200 && JSON.parse(body).status === 'ok';
    }
    const res = await fetch(`${this.url}/v1/health`, { signal: AbortSignal.timeout(5000) });
    return res.ok && (await res.json()).status === 'ok';
  }

  async start() {
    const log = openSync(join(this.dir, 'node.log'), 'a');
    this.proc = spawn(this.bin, ['serve'], {
      env: {
        ...process.env,
        PARLEY_DATA_DIR: join(this.dir, 'data'),
        PARLEY_HTTP_LISTEN: `127.0.0.1:${this.httpPort}`,
        PARLEY_CLUSTER_RAFT_LISTEN: `127.0.0.1:${this.raftPort}`,
        PARLEY_LIMITS_SEND_PER_SECOND: '2000',
        PARLEY_LIMITS_SEND_BURST: '2000',
        PARLEY_LOG_LEVEL: process.env.PARLEY_LOG_LEVEL || 'warn',
        ...(this.tls ? { PARLEY_TLS_CERT_FILE: this.tls.cert, PARLEY_TLS_KEY_FILE: this.tls.key } : {}),
        ...this.env,
      },
      stdio: ['ignore', log, log],
    });
    closeSync(log);
    const proc = this.proc;
    writeFileSync(join(this.dir, 'node.pid'), String(proc.pid)); // for scripts/test-web.sh's cleanup
    this.exited = new Promise((resolve) => proc.on('exit', (code, sig) => resolve({ code, sig })));
    const deadline = Date.now() + 30000;
    for (;;) {
      if (proc.exitCode !== null) throw new Error(`the node exited (${proc.exitCode}); see ${join(this.dir, 'node.log')}`);
      try {
        if (await this.healthy()) return;
      } catch {
        /* not up yet */
      }
      if (Date.now() > deadline) throw new Error(`the node did not become healthy in 30 s; see ${join(this.dir, 'node.log')}`);
      await sleep(100);
    }
  }

  async stop(signal = 'SIGTERM') {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
    proc.kill(signal);
    const t = setTimeout(() => proc.kill('SIGKILL'), 15000);
    await this.exited;
    clearTimeout(t);
    this.proc = null;
  }

  cleanup() {
    if (this.ownDir) rmSync(this.dir, { recursive: true, force: true });
  }
}

/** opts are added to playwright's launch options (e.g. env: a HOME with an NSS database). */
export async function launchBrowser(opts = {}) {
  return chromium.launch({ executablePath: CHROMIUM, args: CHROMIUM_ARGS, headless: true, timeout: 60000, ...opts });
}

/**
 * A browser context for one person. Page errors and CSP violations are collected in
 * `problems` so that the tests can assert there were none.
 */
export async function newPerson(browser, baseURL, opts = {}) {
  const context = await browser.newContext({ baseURL, viewport: { width: 1280, height: 800 }, colorScheme: 'light', ...opts });
  context.setDefaultTimeout(15000);
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    const t = m.text();
    if (m.type() === 'error' && /Content Security Policy|Refused to/i.test(t)) problems.push(`csp: ${t}`);
  });
  return { context, page, problems };
}

/** Signs up through the form. */
export async function signUp(page, username, password = 'correct horse battery') {
  await page.goto('/');
  await page.getByRole('button', { name: 'Create an account' }).click();
  await page.getByLabel('Username').fill(username);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Create account' }).click();
  await page.locator('.shell').waitFor();
  await waitOnline(page);
}

export async function logIn(page, username, password = 'correct horse battery') {
  await page.goto('/');
  await page.getByLabel('Username').fill(username);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Log in' }).click();
  await page.locator('.shell').waitFor();
  await waitOnline(page);
}

/** Waits until the connection banner is gone (connected and synced). */
export async function waitOnline(page, timeout = 20000) {
  await page.waitForFunction(() => {
    const b = document.querySelector('.banner');
    return b && (b.hidden || b.classList.contains('online'));
  }, null, { timeout });
}

export async function createRoom(page, { name, alias, isPrivate = false }) {
  await page.getByRole('button', { name: 'New room' }).first().click();
  const dlg = page.getByRole('dialog');
  await dlg.getByLabel('Name').fill(name);
  await dlg.getByLabel('Address (alias)').fill(alias || '');
  if (isPrivate) await dlg.getByLabel(/Private/).check();
  await dlg.getByRole('button', { name: 'Create room' }).click();
  await dlg.waitFor({ state: 'detached' });
  await page.locator('#room-title', { hasText: name }).waitFor();
  return page.locator('.room-view').getAttribute('data-room-id');
}

export async function joinRoom(page, address) {
  await page.getByRole('button', { name: 'Join room' }).first().click();
  const dlg = page.getByRole('dialog');
  await dlg.getByLabel('Room address').fill(address);
  await dlg.getByRole('button', { name: 'Join' }).click();
  await dlg.waitFor({ state: 'detached' });
  await page.locator('.room-view:not([hidden])').waitFor();
  return page.locator('.room-view').getAttribute('data-room-id');
}

export async function openRoom(page, name) {
  await page.locator('.room-list .room-item', { hasText: name }).click();
  await page.locator('#room-title', { hasText: name }).waitFor();
}

export async function send(page, text) {
  const box = page.getByRole('textbox', { name: 'Message' });
  await box.fill(text);
  await box.press('Enter');
}

/** The message bodies shown in the open room, oldest first (pending ones included). */
export function bodies(page) {
  return page.locator('.events li.msg .msg-main > .body').allTextContents();
}

/** The li of the (newest) message whose body is exactly text. */
export function message(page, text) {
  return page.locator('.events li.msg').filter({ has: page.locator('.msg-main > .body', { hasText: new RegExp(`^${escapeRe(text)}$`) }) }).last();
}

export function escapeRe(s) {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/**
 * Sends messages over a WebSocket of its own from inside the page (same origin, the page's
 * session token): to seed history fast, or to send content the composer cannot make.
 */
export async function rawSend(page, roomId, contents) {
  const stamp = Date.now().toString(36);
  const out = await rawRequests(page, contents.map((c, i) => ({
    op: 'send', room_id: roomId, txn_id: `seed-${stamp}-${i}`,
    content: typeof c === 'string' ? { msgtype: 'm.text', body: c } : c,
  })));
  const bad = out.filter((f) => f.op !== 'ok');
  if (bad.length) throw new Error(`send failed: ${JSON.stringify(bad[0])}`);
  return out.map((f) => f.event_id);
}

// rawRequests sends frames (each given an id) on a WebSocket of the page's session of its own,
// all at once, and returns the answers in their order: what the client would not send itself.
export async function rawRequests(page, frames) {
  return page.evaluate(async (frames) => {
    const s = JSON.parse(localStorage.getItem('parley.session'));
    const ws = new WebSocket(`ws://${location.host}/v1/ws`);
    await new Promise((res, rej) => { ws.onopen = res; ws.onerror = () => rej(new Error('ws error')); });
    const waits = new Map();
    ws.onmessage = (m) => {
      const f = JSON.parse(m.data);
      const w = waits.get(f.id);
      if (w) { waits.delete(f.id); w(f); }
    };
    const req = (frame) => new Promise((res) => { waits.set(frame.id, res); ws.send(JSON.stringify(frame)); });
    const a = await req({ op: 'auth', id: 'auth', token: s.access_token });
    if (a.op !== 'ok') throw new Error(`auth: ${JSON.stringify(a)}`);
    const out = await Promise.all(frames.map((f, i) => req({ ...f, id: `r${i}` })));
    ws.close();
    return out;
  }, frames);
}
