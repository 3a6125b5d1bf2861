// Browser test of the client over HTTPS: a node serving TLS with a certificate from a throwaway
// CA (scripts/dev-certs.sh, openssl), and Debian's chromium trusting that CA the way a person's
// would on Linux: through the NSS database in $HOME/.pki/nssdb (certutil, from libnss3-tools),
// not --ignore-certificate-errors. Run by scripts/test-web.sh; by hand:
//
//   PARLEY_BIN=/tmp/parley node --test test/https.test.mjs
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Node, createRoom, launchBrowser, message, newPerson, send, signUp } from './harness.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const DEV_CERTS = resolve(here, '../../scripts/dev-certs.sh');
const T = { timeout: 120000 };
const CA_NICK = 'parley-test-ca';

let work; // temp dir: certs/, home/ (with the CA), bare-home/ (without), node/
let ownWork = false;
let certs;
let node;
let browser; // chromium whose NSS database trusts the test CA
let bare; // chromium with an empty HOME: no test CA

function run(cmd, args, what) {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', timeout: 30000, stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (e) {
    if (e.code === 'ENOENT') assert.fail(`${cmd} is missing: ${what}`);
    throw new Error(`${cmd} ${args.join(' ')} failed: ${e.message}\n${e.stdout || ''}${e.stderr || ''}`);
  }
}

/** A fresh NSS database in home/.pki/nssdb; with ca, that CA trusted for TLS servers. */
function nssHome(home, ca) {
  const db = join(home, '.pki', 'nssdb');
  mkdirSync(db, { recursive: true });
  const need = 'install libnss3-tools (apt-get install libnss3-tools)';
  run('certutil', ['-d', `sql:${db}`, '-N', '--empty-password'], need);
  if (ca) {
    run('certutil', ['-d', `sql:${db}`, '-A', '-t', 'C,,', '-n', CA_NICK, '-i', ca], need);
    const list = run('certutil', ['-d', `sql:${db}`, '-L'], need);
    assert.match(list, new RegExp(`${CA_NICK}\\s+C,,`), `the CA is not in the NSS database:\n${list}`);
  }
  return home;
}

function launchWithHome(home) {
  // Only HOME (and the XDG dirs that follow it) differ from the other tests' chromium.
  const env = { ...process.env, HOME: home };
  for (const k of ['XDG_CONFIG_HOME', 'XDG_DATA_HOME', 'XDG_CACHE_HOME']) delete env[k];
  return launchBrowser({ env }); // the harness's executablePath and flags
}

before(async () => {
  assert.ok(process.env.PARLEY_BIN, 'set PARLEY_BIN to a built parley binary');
  if (process.env.PARLEY_WEB_TMP) {
    work = join(process.env.PARLEY_WEB_TMP, 'https');
    mkdirSync(work, { recursive: true });
  } else {
    work = mkdtempSync(join(tmpdir(), 'parley-web-https-'));
    ownWork = true;
  }
  const dir = join(work, 'certs');
  run('bash', [DEV_CERTS, dir, 'web'], 'bash is needed for scripts/dev-certs.sh');
  certs = { ca: join(dir, 'ca.crt'), cert: join(dir, 'web.crt'), key: join(dir, 'web.key') };

  const nodeDir = join(work, 'node');
  mkdirSync(nodeDir, { recursive: true });
  node = await new Node({ bin: process.env.PARLEY_BIN, dir: nodeDir, tls: certs }).init();
  await node.start();
  assert.match(node.url, /^https:\/\/127\.0\.0\.1:\d+$/);

  browser = await launchWithHome(nssHome(join(work, 'home'), certs.ca));
  bare = await launchWithHome(nssHome(join(work, 'bare-home'), null));
});

after(async () => {
  for (const b of [browser, bare]) if (b) await b.close().catch(() => {});
  if (node) await node.stop();
  if (work && ownWork) rmSync(work, { recursive: true, force: true });
});

test('Chromium loads the client over https:// with the test CA', T, async () => {
  const { context, page, problems } = await newPerson(browser, node.url);
  const sockets = [];
  page.on('websocket', (ws) => sockets.push(ws.url()));
  try {
    // The page itself: a real 200 over TLS, the certificate issued by the test CA.
    const res = await page.goto('/', { timeout: 15000 });
    assert.ok(res, 'no response for https://127.0.0.1/');
    assert.equal(res.status(), 200);
    const sec = await res.securityDetails();
    assert.ok(sec, 'no TLS details: was the page loaded over https?');
    assert.equal(sec.issuer, 'Parley dev CA');
    assert.equal(sec.subjectName, 'web');
    assert.match(sec.protocol, /^TLS 1\.[23]$/);
    assert.equal(await page.evaluate(() => location.protocol), 'https:');
    assert.ok(page.url().startsWith(`${node.url}/`), `on ${page.url()}, not the node`);

    // Sign up through the form, make a room and send: the send goes over the WebSocket, so
    // its confirmation proves wss:// works too.
    await signUp(page, 'tls-alice');
    await createRoom(page, { name: 'Secure room', alias: 'secure' });
    const text = 'Hello over TLS 🔒';
    await send(page, text);
    await message(page, text).waitFor({ timeout: 15000 });
    await page.locator('.events li.msg:not(.pending)').filter({ has: page.locator('.msg-main > .body', { hasText: text }) })
      .waitFor({ timeout: 15000 });
    assert.ok(sockets.length >= 1, 'the client opened no WebSocket');
    for (const u of sockets) assert.ok(u.startsWith(`wss://127.0.0.1:${node.httpPort}/v1/ws`), `WebSocket not over wss: ${u}`);

    // Still the https page, no interstitial: no chrome-error:// document, no cert error text.
    assert.equal(await page.evaluate(() => location.protocol), 'https:');
    assert.ok(page.url().startsWith(`${node.url}/`), `on ${page.url()}`);
    for (const f of page.frames()) assert.ok(!f.url().startsWith('chrome-error:'), `error page: ${f.url()}`);
    const shown = await page.locator('body').innerText();
    assert.doesNotMatch(shown, /ERR_CERT|Your connection is not private|NET::ERR/);
    assert.deepEqual(problems, [], 'page errors or CSP violations');
  } finally {
    await context.close().catch(() => {});
  }
});

test('Chromium without the test CA refuses the node certificate', T, async () => {
  // A browser that differs only in its NSS database: so the trust above came from the CA.
  const context = await bare.newContext();
  try {
    const page = await context.newPage();
    await assert.rejects(page.goto(`${node.url}/`, { timeout: 15000 }), /net::ERR_CERT_AUTHORITY_INVALID/);
  } finally {
    await context.close().catch(() => {});
  }
});
