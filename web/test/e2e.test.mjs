// Browser tests of the web client against a real node: run by scripts/test-web.sh, which
// builds the node binary and passes it in PARLEY_BIN.
//
//   PARLEY_BIN=/tmp/parley node --test test/e2e.test.mjs
//
// PARLEY_SCREENSHOT: where to write the screenshot for the docs (default ../docs/screenshot.png).
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import {
  Node, bodies, createRoom, joinRoom, launchBrowser, logIn, message, newPerson, openRoom, rawRequests, rawSend, send, signUp, sleep,
  waitOnline,
} from './harness.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const SCREENSHOT = resolve(process.env.PARLEY_SCREENSHOT || resolve(here, '../../docs/screenshot.png'));
const T = { timeout: 120000 };

const names = { alice: 'alice', bob: 'bob' }; // a fresh node: plain names
let node;
let browser;
let alice;
let bob;
const people = [];
let general;
let generalAlias;

before(async () => {
  assert.ok(process.env.PARLEY_BIN, 'set PARLEY_BIN to a built parley binary');
  node = await new Node({ bin: process.env.PARLEY_BIN, dir: process.env.PARLEY_WEB_TMP }).init();
  await node.start();
  browser = await launchBrowser();
});

after(async () => {
  if (browser) await browser.close().catch(() => {});
  if (node) {
    await node.stop();
    node.cleanup();
  }
});

async function person(name, opts) {
  const p = await newPerson(browser, node.url, opts);
  p.name = name;
  people.push(p);
  return p;
}

function assertNoProblems() {
  const all = people.flatMap((p) => p.problems.map((x) => `${p.name}: ${x}`));
  assert.deepEqual(all, [], 'page errors or CSP violations');
}

async function countOf(page, text) {
  return (await bodies(page)).filter((b) => b === text).length;
}

async function waitCount(page, text, n = 1, timeout = 15000) {
  const deadline = Date.now() + timeout;
  let c;
  while ((c = await countOf(page, text)) !== n) {
    if (Date.now() > deadline) assert.fail(`expected ${n} × ${JSON.stringify(text)}, saw ${c}: ${JSON.stringify(await bodies(page))}`);
    await sleep(100);
  }
}

test('the node serves the client with the security headers', T, async () => {
  const res = await fetch(`${node.url}/`);
  assert.equal(res.status, 200, 'GET / (is web.Handler() wired into node/http.go?)');
  const csp = res.headers.get('content-security-policy') || '';
  assert.match(csp, /default-src 'self'/);
  assert.match(csp, /script-src 'self'(;|$)/);
  assert.match(csp, /frame-ancestors 'none'/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
  assert.equal(res.headers.get('x-frame-options'), 'DENY');
  assert.equal(res.headers.get('x-content-type-options'), 'nosniff');
  assert.equal(res.headers.get('referrer-policy'), 'no-referrer');
  assert.match(await res.text(), /<script src="app\.js" defer><\/script>/);
  const js = await fetch(`${node.url}/app.js`);
  assert.equal(js.status, 200);
  assert.match(js.headers.get('content-type'), /javascript/);
});

test('two users in two browsers chat both ways', T, async () => {
  alice = await person('alice');
  bob = await person('bob');
  await signUp(alice.page, names.alice);
  await signUp(bob.page, names.bob);

  generalAlias = 'general';
  general = await createRoom(alice.page, { name: 'General', alias: generalAlias });
  assert.match(general, /^!.+:localhost$/);
  await joinRoom(bob.page, `#${generalAlias}:localhost`);
  await bob.page.locator('#room-title', { hasText: 'General' }).waitFor();

  await send(alice.page, 'Hello Bob 👋');
  await waitCount(bob.page, 'Hello Bob 👋');
  await send(bob.page, 'Hi Alice! Good to see you.');
  await waitCount(alice.page, 'Hi Alice! Good to see you.');

  // Shift+Enter makes a new line; Enter sends.
  const box = alice.page.getByRole('textbox', { name: 'Message' });
  await box.click();
  await alice.page.keyboard.type('line one');
  await alice.page.keyboard.press('Shift+Enter');
  await alice.page.keyboard.type('line two');
  await alice.page.keyboard.press('Enter');
  await waitCount(bob.page, 'line one\nline two');
  assert.equal(await box.inputValue(), '');

  // Each message once, on both sides, in the same order.
  const a = await bodies(alice.page);
  const b = await bodies(bob.page);
  assert.deepEqual(a, ['Hello Bob 👋', 'Hi Alice! Good to see you.', 'line one\nline two']);
  assert.deepEqual(b, a);

  // The member list shows both, online.
  const members = alice.page.locator('#members');
  if (!(await members.isVisible())) await alice.page.getByRole('button', { name: /^Members/ }).click();
  await members.locator('.member.online', { hasText: names.bob }).waitFor();
  await members.locator('.member.online', { hasText: names.alice }).waitFor();

  // Unread counts: Bob is in another room when Alice writes in General.
  await createRoom(bob.page, { name: 'Random', alias: 'random' });
  await send(alice.page, 'Are you there?');
  const item = bob.page.locator('.room-list .room-item', { hasText: 'General' });
  await item.locator('.badge', { hasText: '1' }).waitFor();
  assert.match(await item.getAttribute('aria-label'), /1 unread/);
  await item.click();
  await waitCount(bob.page, 'Are you there?');
  await item.locator('.badge').waitFor({ state: 'detached' });
  assertNoProblems();
});

test('typing indicator and read marker appear for the other user', T, async () => {
  await openRoom(alice.page, 'General');
  await openRoom(bob.page, 'General');
  const box = alice.page.getByRole('textbox', { name: 'Message' });
  await box.click();
  await alice.page.keyboard.type('I am typing something');
  await bob.page.locator('.typing', { hasText: `${names.alice} is typing…` }).waitFor();
  await box.fill('');
  await bob.page.locator('.typing', { hasText: 'typing' }).waitFor({ state: 'detached' }).catch(async () => {
    await bob.page.waitForFunction(() => !document.querySelector('.typing').textContent);
  });

  await send(alice.page, 'Did you read this?');
  await waitCount(bob.page, 'Did you read this?');
  // Bob has the room open at the bottom: his client sends a read receipt, and Alice sees it.
  await message(alice.page, 'Did you read this?').locator('.receipts', { hasText: `Seen by ${names.bob}` }).waitFor();
  assertNoProblems();
});

test('replies, edits, reactions and deletes', T, async () => {
  const ap = alice.page;
  const bp = bob.page;
  // Alice replies to Bob's message.
  const hi = message(ap, 'Hi Alice! Good to see you.');
  await hi.hover();
  await hi.getByRole('button', { name: 'Reply' }).click();
  await ap.locator('.composer-context', { hasText: `Replying to ${names.bob}` }).waitFor();
  await send(ap, 'Likewise!');
  const reply = message(bp, 'Likewise!');
  await reply.locator('.quote', { hasText: 'Hi Alice! Good to see you.' }).waitFor();

  // Alice edits her own message; Bob sees the new text, marked edited.
  const mine = message(ap, 'Are you there?');
  await mine.hover();
  await mine.getByRole('button', { name: 'Edit' }).click();
  const box = ap.getByRole('textbox', { name: 'Message' });
  assert.equal(await box.inputValue(), 'Are you there?');
  await box.fill('Are you there, Bob?');
  await box.press('Enter');
  const edited = message(bp, 'Are you there, Bob?');
  await edited.locator('.edited').waitFor();
  assert.equal(await countOf(bp, 'Are you there?'), 0);
  assert.equal(await hi.getByRole('button', { name: 'Edit' }).count(), 0, 'no Edit on the messages of others');

  // Bob reacts; Alice sees it and adds hers; Bob sees two.
  await edited.hover();
  await edited.getByRole('button', { name: 'React' }).click();
  await bp.getByRole('button', { name: 'React with 👍' }).click();
  const aliceView = message(ap, 'Are you there, Bob?');
  const pill = aliceView.locator('.reaction', { hasText: '👍' });
  await pill.filter({ hasText: '1' }).waitFor();
  assert.equal(await pill.getAttribute('aria-pressed'), 'false');
  await pill.click();
  await edited.locator('.reaction', { hasText: '👍 2' }).waitFor();
  await aliceView.locator('.reaction[aria-pressed="true"]', { hasText: '👍 2' }).waitFor();
  // ... and takes it back.
  await aliceView.locator('.reaction', { hasText: '👍 2' }).click();
  await edited.locator('.reaction', { hasText: '👍 1' }).waitFor();

  // Alice deletes (redacts) her message; both see it gone.
  const del = message(ap, 'Likewise!');
  await del.hover();
  await del.getByRole('button', { name: 'Delete' }).click();
  await ap.getByRole('dialog').getByRole('button', { name: 'Delete' }).click();
  await waitCount(bp, 'Likewise!', 0);
  await bp.locator('.events li.msg.redacted', { hasText: 'Message deleted' }).first().waitFor();
  await waitCount(ap, 'Likewise!', 0);
  assert.equal(await message(bp, 'Hi Alice! Good to see you.').getByRole('button', { name: 'Delete' }).count(), 0,
    'no Delete on the messages of others');
  assertNoProblems();
});

test('a private room by invitation; unreachable and private rooms say why', T, async () => {
  const ap = alice.page;
  const bp = bob.page;
  await createRoom(ap, { name: 'Secret plans', alias: 'secret', isPrivate: true });
  // Bob cannot join by alias without an invitation.
  await bp.getByRole('button', { name: 'Join room' }).first().click();
  let dlg = bp.getByRole('dialog');
  await dlg.getByLabel('Room address').fill('#secret:localhost');
  await dlg.getByRole('button', { name: 'Join' }).click();
  await dlg.getByRole('alert').filter({ hasText: /private|invitation/ }).waitFor();
  // Another organization that cannot be reached: the dialog says so.
  await dlg.getByLabel('Room address').fill('#room:other-org.test');
  await dlg.getByRole('button', { name: 'Join' }).click();
  await dlg.getByRole('alert').filter({ hasText: /cannot be reached|No room/ }).waitFor();
  await dlg.getByRole('button', { name: 'Cancel' }).click();

  // Alice invites Bob from the member list; Bob accepts.
  const members = ap.locator('#members');
  if (!(await members.isVisible())) await ap.getByRole('button', { name: /^Members/ }).click();
  await members.getByRole('button', { name: 'Invite someone' }).click();
  dlg = ap.getByRole('dialog');
  await dlg.getByLabel('User').fill(names.bob);
  await dlg.getByRole('button', { name: 'Invite' }).click();
  await dlg.waitFor({ state: 'detached' });
  await members.locator('.member.invited', { hasText: names.bob }).waitFor();
  await bp.getByRole('button', { name: 'Accept the invitation to Secret plans' }).click();
  await bp.locator('#room-title', { hasText: 'Secret plans' }).waitFor();
  await send(bp, 'Thanks for the invitation');
  await waitCount(ap, 'Thanks for the invitation');
  await members.locator('.member.online', { hasText: names.bob }).waitFor();
  assertNoProblems();
});

test('script in body and formatted_body runs no script', T, async () => {
  const payload = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script><svg onload="window.__pwned=3"></svg>'
    + '<a href="javascript:window.__pwned=4">click me</a><iframe srcdoc="<script>parent.__pwned=5</script>"></iframe>';
  await openRoom(alice.page, 'General');
  await openRoom(bob.page, 'General');
  // As plain text from the composer: shown as the characters typed.
  await send(alice.page, payload);
  await waitCount(bob.page, payload);
  // As formatted_body through the node's sanitizer.
  await rawSend(alice.page, general, [{ msgtype: 'm.text', body: 'formatted payload', format: 'org.matrix.custom.html', formatted_body: `<b>bold</b> ${payload}` }]);
  await bob.page.locator('.events .body.html b', { hasText: 'bold' }).waitFor();

  // Defence in depth: a formatted_body that did not go through the node's sanitizer (injected
  // into Carol's WebSocket) is still cleaned by DOMPurify.
  const carol = await person('carol');
  let inject;
  await carol.context.routeWebSocket(/\/v1\/ws$/, (ws) => {
    const server = ws.connectToServer();
    ws.onMessage((m) => server.send(m));
    server.onMessage((m) => ws.send(m));
    inject = (frame) => ws.send(JSON.stringify(frame));
  });
  await signUp(carol.page, 'carol');
  await joinRoom(carol.page, `#${generalAlias}:localhost`);
  await waitCount(carol.page, payload);
  inject({
    op: 'event',
    event: {
      event_id: '$injected-xss', room_id: general, sender: `@mallory:localhost`, origin: 'localhost', origin_ts: Date.now(),
      type: 'm.room.message', prev_events: [], depth: 1, hashes: { sha256: 'x' }, stream_pos: 9e15,
      content: { msgtype: 'm.text', body: 'injected', format: 'org.matrix.custom.html', formatted_body: `<i>injected</i>${payload}<form action="https://evil.example"><input name=x></form><style>body{display:none}</style>` },
    },
  });
  const injected = carol.page.locator('.events li.msg', { hasText: 'injected' });
  await injected.locator('.body.html i', { hasText: 'injected' }).waitFor();
  await injected.getByText('click me').click(); // href removed: nothing runs, nothing navigates

  await sleep(500);
  for (const p of [alice, bob, carol]) {
    assert.equal(await p.page.evaluate(() => window.__pwned), undefined, 'a payload ran');
    const bad = await p.page.locator('.events img, .events script, .events svg, .events iframe, .events form, .events style, .events [onerror], .events [onload]').count();
    assert.equal(bad, 0, 'dangerous elements made it into the timeline');
    const hrefs = await p.page.locator('.events a[href]').evaluateAll((as) => as.map((a) => a.getAttribute('href')));
    assert.ok(hrefs.every((h) => /^(https?:|mailto:)/.test(h)), `unsafe links: ${hrefs}`);
  }
  assert.equal(await carol.page.evaluate(() => location.pathname), '/');
  // Chrome reports the inline handlers and styles of the injected HTML as CSP violations
  // while DOMPurify parses it (blocked, and removed before anything reaches the page): they
  // are expected for Carol only. Alice and Bob got the node's sanitized HTML.
  assert.ok(carol.problems.every((x) => x.startsWith('csp: ')), carol.problems.join('\n'));
  carol.problems.length = 0;
  assertNoProblems();
  await carol.context.close();
  people.splice(people.indexOf(carol), 1);
});

test('a room address typed with capitals joins the room', T, async () => {
  const hal = await person('hal');
  const iris = await person('iris');
  await signUp(hal.page, 'hal');
  const caps = await createRoom(hal.page, { name: 'Capitals', alias: 'capitals' });
  await signUp(iris.page, 'iris');
  // Aliases and org names are lower case (docs/protocol.md): "#Capitals:LocalHost" can only
  // mean #capitals:localhost, not a room of an org "LocalHost" that cannot be reached.
  assert.equal(await joinRoom(iris.page, '#Capitals:LocalHost'), caps);
  await iris.page.locator('#room-title', { hasText: 'Capitals' }).waitFor();
  assertNoProblems();
  for (const p of [hal, iris]) {
    await p.context.close();
    people.splice(people.indexOf(p), 1);
  }
});

test('an edit the node refuses shows as not sent, not as applied', T, async () => {
  const gwen = await person('gwen');
  const fred = await person('fred');
  await signUp(gwen.page, 'gwen');
  await signUp(fred.page, 'fred');
  const roomId = await createRoom(gwen.page, { name: 'Edits', alias: 'edits' });
  await joinRoom(fred.page, '#edits:localhost');
  const original = 'sent while fred may still write';
  await send(fred.page, original);
  const msg = message(fred.page, original);
  await msg.locator('.status').waitFor({ state: 'detached' }); // sent: no longer pending
  // Messages now need power 50 here: the node refuses Fred's edit (M_FORBIDDEN). (An edit too
  // large for the node never leaves the composer: "an edit too large for the node says so".)
  const [set] = await rawRequests(gwen.page, [{
    op: 'set_state', room_id: roomId, type: 'm.room.power_levels',
    content: { users: { '@gwen:localhost': 100 }, events: { 'm.room.message': 50 }, state_default: 50, ban: 50, kick: 50, redact: 50 },
  }]);
  assert.equal(set.op, 'ok', JSON.stringify(set));
  const replacement = 'the edit nobody else sees';
  const box = fred.page.getByRole('textbox', { name: 'Message' });
  await box.press('ArrowUp');
  assert.equal(await box.inputValue(), original);
  await box.fill(replacement);
  await box.press('Enter');
  const failed = fred.page.locator('.events li.msg.failed');
  await failed.filter({ hasText: /Edit not sent/ }).waitFor();
  assert.equal(await countOf(fred.page, original), 1, 'the message shows the edit nobody else sees');
  assert.equal(await msg.locator('.edited').count(), 0);
  // Discarded, it is gone; the message stays as it was.
  await failed.getByRole('button', { name: 'Discard' }).click();
  await failed.waitFor({ state: 'detached' });
  assert.equal(await countOf(fred.page, original), 1);
  assert.equal(await countOf(fred.page, replacement), 0);
  assertNoProblems();
  for (const p of [gwen, fred]) {
    await p.context.close();
    people.splice(people.indexOf(p), 1);
  }
});

test('sign-up on a node with registration closed says so, not "wrong password"', T, async () => {
  const closed = await new Node({ bin: process.env.PARLEY_BIN, env: { PARLEY_REGISTRATION_OPEN: 'false' } }).init();
  await closed.start();
  try {
    const eve = await person('eve');
    await eve.page.goto(closed.url);
    await eve.page.getByRole('button', { name: 'Create an account' }).click();
    await eve.page.getByLabel('Username').fill('eve');
    await eve.page.getByLabel('Password').fill('correct horse battery');
    await eve.page.getByRole('button', { name: 'Create account' }).click();
    const error = eve.page.locator('#auth-error');
    await error.filter({ hasText: /\S/ }).waitFor();
    assert.match(await error.textContent(), /registration is closed/i);
    // Logging in with an unknown name is still the one answer for both mistakes.
    await eve.page.getByRole('button', { name: 'Log in' }).last().click();
    await eve.page.getByLabel('Password').fill('correct horse battery');
    await eve.page.getByRole('button', { name: 'Log in' }).first().click();
    await error.filter({ hasText: 'Wrong username or password.' }).waitFor();
    assertNoProblems();
    await eve.context.close();
    people.splice(people.indexOf(eve), 1);
  } finally {
    await closed.stop();
    closed.cleanup();
  }
});

test('a message over the size limit says so and stays in the composer; the next one goes', T, async () => {
  const dora = await person('dora');
  await signUp(dora.page, 'dora');
  await createRoom(dora.page, { name: 'Long reads', alias: 'long-reads' });
  // 23,000 characters of 3 bytes: 69,000 bytes, over the body limit (32 KiB) and, sent, over
  // the frame limit (64 KiB), where the node closes the connection (1009) rather than answer.
  const long = '語'.repeat(23000);
  const box = dora.page.getByRole('textbox', { name: 'Message' });
  await box.fill(long);
  await box.press('Enter');
  const error = dora.page.locator('#composer-error');
  await error.filter({ hasText: /Too long: 68 KB, the limit is 32 KB/ }).waitFor();
  assert.equal(await box.inputValue(), long, 'the text left the composer');
  assert.equal(await dora.page.locator('.events li.msg.pending').count(), 0, 'queued anyway');

  await send(dora.page, 'short enough');
  await waitCount(dora.page, 'short enough');
  assert.equal(await error.textContent(), '', 'the error stays after the text changed');
  await sleep(1000);
  assert.equal(await dora.page.locator('.banner').isHidden(), true, 'the connection was lost');
  assert.deepEqual(await bodies(dora.page), ['short enough']);
  assertNoProblems();
  await dora.context.close();
  people.splice(people.indexOf(dora), 1);
});

test('history scroll-back over 200 messages', T, async () => {
  const N = 230;
  const roomId = await createRoom(alice.page, { name: 'History', alias: 'history' });
  const texts = Array.from({ length: N }, (_, i) => `history ${String(i).padStart(3, '0')}`);
  for (let i = 0; i < N; i += 100) await rawSend(alice.page, roomId, texts.slice(i, i + 100));

  async function scrollBack(page) {
    await page.locator('.events li.msg', { hasText: texts[N - 1] }).waitFor();
    const start = Date.now();
    while (!(await page.locator('.older .beginning', { hasText: 'beginning' }).isVisible())) {
      assert.ok(Date.now() - start < 60000, 'scroll-back did not reach the beginning in 60 s');
      await page.locator('.timeline').evaluate((el) => { el.scrollTop = 0; el.dispatchEvent(new Event('scroll')); });
      await sleep(150);
    }
    const got = (await bodies(page)).filter((b) => b.startsWith('history '));
    assert.deepEqual(got, texts, 'every message once, in order');
  }
  // Bob joins: his client pages back with history from the join.
  await joinRoom(bob.page, '#history:localhost');
  await scrollBack(bob.page);
  // Alice reloads: she pages back from the start token of her initial sync.
  await alice.page.reload();
  await waitOnline(alice.page);
  await openRoom(alice.page, 'History');
  await scrollBack(alice.page);
  assertNoProblems();
});

// A room of another org pages back past this org's join through the room's home org (`b`
// tokens); when that org cannot be reached the node answers with what it stores and no token
// (docs/protocol.md). One node is one org here, so a proxy in Gil's browser plays that part:
// it hands out `b` tokens in place of the node's `p` tokens (and maps them back), strips
// stream_pos from those pages like from backfilled events, and answers the first try of the
// first two such pages the way the node does when the home org is down.
test('paging back: a page that failed for an unreachable org is tried again, nothing shows twice', T, async () => {
  const texts = Array.from({ length: 230 }, (_, i) => `history ${String(i).padStart(3, '0')}`);
  const gil = await person('gil');
  const ptoken = new Map(); // our b token -> the node's p token
  const failFirst = new Set();
  const pages = new Map(); // history request id -> whether its first try fails
  let minted = 0;
  let failed = 0;
  await gil.context.routeWebSocket(/\/v1\/ws$/, (ws) => {
    const server = ws.connectToServer();
    const mint = (p) => {
      const b = `b$gil-${++minted}`;
      ptoken.set(b, p);
      if (minted <= 2) failFirst.add(b);
      return b;
    };
    ws.onMessage((m) => {
      const f = JSON.parse(m);
      if (f.op === 'history' && ptoken.has(f.before)) {
        pages.set(f.id, failFirst.delete(f.before));
        server.send(JSON.stringify({ ...f, before: ptoken.get(f.before) }));
        return;
      }
      server.send(m);
    });
    server.onMessage((m) => {
      const f = JSON.parse(m);
      if (f.op !== 'ok') {
        ws.send(m);
        return;
      }
      if (pages.has(f.id)) {
        const fail = pages.get(f.id);
        pages.delete(f.id);
        if (fail) {
          failed++;
          ws.send(JSON.stringify({ op: 'ok', id: f.id, events: f.events.filter((e) => e.type !== 'm.room.message'), incomplete: true }));
          return;
        }
        for (const e of f.events) delete e.stream_pos;
      }
      if (f.start) f.start = mint(f.start);
      for (const r of Object.values(f.rooms || {})) if (r.start) r.start = mint(r.start);
      ws.send(JSON.stringify(f));
    });
  });
  const p = gil.page;
  await signUp(p, 'gil');
  await joinRoom(p, '#history:localhost');
  await p.locator('.events li.msg', { hasText: texts.at(-1) }).waitFor();
  const older = p.locator('.older');
  const toTop = () => p.locator('.timeline').evaluate((el) => { el.scrollTop = 0; el.dispatchEvent(new Event('scroll')); });

  // The first page back fails: no "beginning of the room", a way to try again.
  await toTop();
  await older.locator('.older-failed').waitFor();
  assert.equal(await older.locator('.beginning').count(), 0);
  // Staying up there does not ask again and again.
  for (let i = 0; i < 5; i++) {
    await toTop();
    await sleep(100);
  }
  assert.equal(failed, 1);
  await older.getByRole('button', { name: 'Try again' }).click();
  await older.locator('.older-failed').waitFor({ state: 'detached' });

  // The next one fails too; scrolling down and up again tries it again.
  const start = Date.now();
  while (failed < 2) {
    assert.ok(Date.now() - start < 20000, 'the second page was not asked for');
    await toTop();
    await sleep(150);
  }
  await older.locator('.older-failed').waitFor();
  await p.locator('.timeline').evaluate((el) => { el.scrollTop = 1000; el.dispatchEvent(new Event('scroll')); });
  await toTop();
  await older.locator('.older-failed').waitFor({ state: 'detached' });

  // On to the beginning: every message once, in order.
  while (!(await older.locator('.beginning', { hasText: 'beginning' }).isVisible())) {
    assert.ok(Date.now() - start < 60000, 'scroll-back did not reach the beginning in 60 s');
    await toTop();
    await sleep(150);
  }
  assert.equal(failed, 2);
  assert.deepEqual((await bodies(p)).filter((b) => b.startsWith('history ')), texts, 'every message once, in order');
  const ids = await p.locator('.events li[data-key]').evaluateAll((lis) => lis.map((li) => li.dataset.key));
  assert.equal(new Set(ids).size, ids.length, 'no event twice');
  assertNoProblems();
  await gil.context.close();
  people.splice(people.indexOf(gil), 1);
});

test('after the node restarts the client reconnects; messages sent meanwhile appear once', T, async () => {
  await openRoom(alice.page, 'General');
  await openRoom(bob.page, 'General');
  // Alice's client: for "reply lost", drop the reply and the echo and cut the connection, as
  // if it failed right after the node committed the message; for "request lost", drop the
  // request and cut the connection, as if it failed before the node saw it.
  let dropped = 0;
  let lostRequests = 0;
  const sends = [];
  await alice.context.routeWebSocket(/\/v1\/ws$/, (ws) => {
    const server = ws.connectToServer();
    let victim = null;
    ws.onMessage((m) => {
      const f = JSON.parse(m);
      if (f.op === 'send') sends.push(f);
      if (f.op === 'send' && f.content && f.content.body === 'request lost' && !lostRequests) {
        lostRequests++;
        ws.close({ code: 4000, reason: 'test: request lost' });
        return;
      }
      if (f.op === 'send' && f.content && f.content.body === 'reply lost' && !dropped) victim = f;
      server.send(m);
    });
    server.onMessage((m) => {
      const f = JSON.parse(m);
      if (victim && ((f.op === 'ok' && f.id === victim.id) || (f.op === 'event' && f.event.unsigned && f.event.unsigned.txn_id === victim.txn_id))) {
        if (f.op === 'ok') {
          dropped++;
          victim = null;
          ws.close({ code: 4000, reason: 'test: reply lost' });
        }
        return;
      }
      ws.send(m);
    });
  });
  // Routing applies to new sockets: make Alice's client reconnect through it.
  await node.stop();
  await alice.page.locator('.banner', { hasText: /Connection lost|Reconnecting/ }).waitFor();
  await bob.page.locator('.banner', { hasText: /Connection lost|Reconnecting/ }).waitFor();

  // Sent while the node is down: queued, shown as waiting.
  await send(alice.page, 'sent while down 1');
  await send(alice.page, 'sent while down 2');
  await message(alice.page, 'sent while down 2').locator('.status', { hasText: 'Waiting for the connection' }).waitFor();

  await node.start();
  await waitOnline(alice.page, 40000);
  await waitOnline(bob.page, 40000);
  for (const t of ['sent while down 1', 'sent while down 2']) {
    await waitCount(bob.page, t, 1);
    await waitCount(alice.page, t, 1);
  }
  await send(bob.page, 'welcome back');
  await waitCount(alice.page, 'welcome back', 1);

  // The reply of this send is lost and the connection cut: the client re-sends it with the
  // same txn_id (or learns it from sync), and the node stores it once.
  await send(alice.page, 'reply lost');
  await waitCount(bob.page, 'reply lost', 1);
  await waitOnline(alice.page, 40000);
  await waitCount(alice.page, 'reply lost', 1);
  assert.equal(dropped, 1, 'the test dropped one reply');
  const txns = new Set(sends.filter((f) => f.content.body === 'reply lost').map((f) => f.txn_id));
  assert.equal(txns.size, 1, 'every try of one message uses one txn_id');
  await send(alice.page, 'after the lost reply');
  await waitCount(bob.page, 'after the lost reply', 1);

  // The request never reached the node: after the reconnect the client sends it again, with
  // the same txn_id.
  await send(alice.page, 'request lost');
  await waitCount(bob.page, 'request lost', 1);
  await waitCount(alice.page, 'request lost', 1);
  const tries = sends.filter((f) => f.content.body === 'request lost');
  assert.equal(lostRequests, 1);
  assert.ok(tries.length >= 2, 'sent again after the reconnect');
  assert.equal(new Set(tries.map((f) => f.txn_id)).size, 1, 'with the same txn_id');
  await sleep(500);
  for (const p of [alice.page, bob.page]) {
    for (const t of ['sent while down 1', 'sent while down 2', 'welcome back', 'reply lost', 'after the lost reply', 'request lost']) {
      assert.equal(await countOf(p, t), 1, `${t} shown once`);
    }
    assert.equal(await p.locator('.events li.msg.pending').count(), 0, 'nothing left pending');
  }
  assertNoProblems();
});

// A message whose reply (and echo) was lost as the connection failed, with the connection
// back only after more than a sync's worth of messages (50) came into the room: the sync after
// the reconnect is limited, without that message, so the client sends it again with its
// txn_id and the node answers with the event stored the first time. That event is older than
// the timeline the limited sync loaded: it shows once, in its place when paging back, and not
// as a copy left "Sending…" at the bottom.
test('a re-sent message older than a limited sync shows once, in its place', T, async () => {
  const ann = await person('ann');
  const ben = await person('ben');
  await signUp(ann.page, 'ann');
  await signUp(ben.page, 'ben');
  const roomId = await createRoom(ann.page, { name: 'Busy', alias: 'busy' });
  await joinRoom(ben.page, '#busy:localhost');
  await rawSend(ben.page, roomId, ['before the gap']);
  await waitCount(ann.page, 'before the gap', 1);

  let hold = false;
  let dropped = 0;
  await ann.context.routeWebSocket(/\/v1\/ws$/, (ws) => {
    if (hold) {
      ws.close({ code: 4000, reason: 'test: still cut off' });
      return;
    }
    const server = ws.connectToServer();
    let victim = null;
    ws.onMessage((m) => {
      const f = JSON.parse(m);
      if (f.op === 'send' && f.content && f.content.body === 'lost reply' && !dropped) victim = f;
      server.send(m);
    });
    server.onMessage((m) => {
      const f = JSON.parse(m);
      if (victim && ((f.op === 'ok' && f.id === victim.id) || (f.op === 'event' && f.event.unsigned && f.event.unsigned.txn_id === victim.txn_id))) {
        if (f.op === 'ok') {
          dropped++;
          victim = null;
          hold = true;
          ws.close({ code: 4000, reason: 'test: reply lost' });
        }
        return;
      }
      ws.send(m);
    });
  });
  await ann.page.reload(); // its socket goes through the route
  await ann.page.locator('#room-title', { hasText: 'Busy' }).waitFor();
  await waitOnline(ann.page);
  await send(ann.page, 'lost reply');
  await ann.page.locator('.banner', { hasText: /Connection lost|Reconnecting/ }).waitFor();
  assert.equal(dropped, 1, 'the test dropped the reply');
  await rawSend(ben.page, roomId, Array.from({ length: 60 }, (_, i) => `busy ${i}`));
  hold = false;
  await ann.page.getByRole('button', { name: 'Retry now' }).click();
  await waitOnline(ann.page, 40000);
  await waitCount(ann.page, 'busy 59', 1);
  // The outbox has its answer: nothing of Ann's is waiting any more.
  await ann.page.waitForFunction(() => !Object.keys(localStorage).some((k) => k.startsWith('parley.outbox.') && localStorage.getItem(k) && localStorage.getItem(k) !== 'null'));
  for (let i = 0; i < 100 && (await ann.page.locator('.events li.msg.pending').count()); i++) await sleep(100);
  assert.equal(await ann.page.locator('.events li.msg.pending').count(), 0, 'nothing left pending');
  assert.equal(await countOf(ann.page, 'lost reply'), 0, 'not among the newest 50: not shown before paging back');
  assert.equal((await bodies(ann.page)).at(-1), 'busy 59');

  // Paging back to the beginning: every message once, in order.
  const beginning = ann.page.locator('.older .beginning', { hasText: 'This is the beginning' });
  for (let i = 0; i < 20 && !(await beginning.count()); i++) {
    await ann.page.evaluate(() => { document.querySelector('.timeline').scrollTop = 0; });
    await sleep(300);
  }
  await beginning.waitFor();
  const expected = ['before the gap', 'lost reply', ...Array.from({ length: 60 }, (_, i) => `busy ${i}`)];
  assert.deepEqual(await bodies(ann.page), expected);
  assert.deepEqual(await bodies(ben.page), expected);
  assertNoProblems();
  for (const p of [ann, ben]) {
    await p.context.close();
    people.splice(people.indexOf(p), 1);
  }
});

// A page of older messages is read by the node at one moment; a message on it deleted right
// after is redacted by a push that can reach the client before that page does (here the test
// holds the page back until then). The page still holds the message's text: it must show as
// deleted all the same, not with the text its author deleted.
test('a message deleted while its page of history is on the way shows as deleted', T, async () => {
  const cara = await person('cara');
  const dan = await person('dan');
  await signUp(cara.page, 'cara');
  await signUp(dan.page, 'dan');
  const roomId = await createRoom(cara.page, { name: 'Archive', alias: 'archive' });
  await joinRoom(dan.page, '#archive:localhost');
  const [secretId] = await rawSend(cara.page, roomId, ['secret', ...Array.from({ length: 60 }, (_, i) => `filler ${i}`)]);
  await waitCount(dan.page, 'filler 59', 1);

  let held = null;
  let redactionPushed = false;
  await dan.context.routeWebSocket(/\/v1\/ws$/, (ws) => {
    const server = ws.connectToServer();
    const pages = new Set();
    ws.onMessage((m) => {
      const f = JSON.parse(m);
      if (f.op === 'history' && f.before) pages.add(f.id);
      server.send(m);
    });
    server.onMessage((m) => {
      const f = JSON.parse(m);
      if (!held && f.op === 'ok' && pages.has(f.id) && (f.events || []).some((e) => e.event_id === secretId)) {
        held = () => ws.send(m);
        return;
      }
      if (f.op === 'event' && f.event.type === 'm.room.redaction' && f.event.redacts === secretId) redactionPushed = true;
      ws.send(m);
    });
  });
  await dan.page.reload(); // its socket goes through the route; the sync brings the newest 50
  await dan.page.locator('#room-title', { hasText: 'Archive' }).waitFor();
  await waitOnline(dan.page);
  assert.equal(await countOf(dan.page, 'secret'), 0, 'not loaded yet');
  for (let i = 0; i < 50 && !held; i++) {
    await dan.page.evaluate(() => { document.querySelector('.timeline').scrollTop = 0; });
    await sleep(100);
  }
  assert.ok(held, 'the page with the message was asked for');
  // Cara deletes it now; its redaction reaches Dan before the page read before it.
  const [res] = await rawRequests(cara.page, [{ op: 'redact', room_id: roomId, event_id: secretId }]);
  assert.equal(res.op, 'ok', JSON.stringify(res));
  for (let i = 0; i < 100 && !redactionPushed; i++) await sleep(50);
  assert.ok(redactionPushed, 'the redaction was pushed to Dan');
  await sleep(300);
  held();
  await waitCount(dan.page, 'filler 0', 1);
  await sleep(300);
  assert.equal(await countOf(dan.page, 'secret'), 0, 'the deleted text is not shown');
  await dan.page.locator('.events li.msg.redacted', { hasText: 'Message deleted' }).first().waitFor();
  assertNoProblems();
  for (const p of [cara, dan]) {
    await p.context.close();
    people.splice(people.indexOf(p), 1);
  }
});

// A reaction shows only once its event is back from the node. A second click on the pill before
// that (a double click, a slow connection) must not add a second reaction, which would then stay
// (the pill pressed, the count unchanged) when the user takes theirs back; and reactions of
// the user's made twice elsewhere (two tabs) all go with one click.
test('a double click on a reaction adds one; taking it back removes every one of mine', T, async () => {
  const eve = await person('eve');
  const finn = await person('finn');
  await signUp(eve.page, 'eve');
  await signUp(finn.page, 'finn');
  const roomId = await createRoom(finn.page, { name: 'Pills', alias: 'pills' });
  await joinRoom(eve.page, '#pills:localhost');
  await send(finn.page, 'react to me');
  const mineF = message(finn.page, 'react to me');
  await mineF.hover();
  await mineF.getByRole('button', { name: 'React' }).click();
  await finn.page.getByRole('button', { name: 'React with 👍' }).click();
  await mineF.locator('.reaction', { hasText: '👍 1' }).waitFor();

  // Eve's connection is slow: her sends take 600 ms to reach the node.
  await eve.context.routeWebSocket(/\/v1\/ws$/, (ws) => {
    const server = ws.connectToServer();
    ws.onMessage((m) => {
      if (JSON.parse(m).op === 'send') setTimeout(() => server.send(m), 600);
      else server.send(m);
    });
    server.onMessage((m) => ws.send(m));
  });
  await eve.page.reload();
  await eve.page.locator('#room-title', { hasText: 'Pills' }).waitFor();
  await waitOnline(eve.page);
  const pill = message(eve.page, 'react to me').locator('.reaction', { hasText: '👍' });
  await pill.filter({ hasText: '1' }).waitFor();
  await pill.dblclick();
  await mineF.locator('.reaction', { hasText: '👍 2' }).waitFor();
  await sleep(1500); // a second reaction would be back by now
  await pill.and(eve.page.locator('[aria-pressed="true"]')).waitFor();
  await pill.click();
  await mineF.locator('.reaction', { hasText: '👍 1' }).waitFor({ timeout: 5000 });
  await pill.and(eve.page.locator('[aria-pressed="false"]')).waitFor({ timeout: 5000 });

  // Two reactions of Eve's with one key (made by two tabs at once): one click takes both back.
  const target = await message(finn.page, 'react to me').getAttribute('data-key');
  const content = { 'm.relates_to': { rel_type: 'm.annotation', event_id: target, key: '👍' } };
  const twice = await rawRequests(eve.page, [1, 2].map((i) => ({
    op: 'send', room_id: roomId, type: 'm.reaction', txn_id: `twice-${Date.now()}-${i}`, content,
  })));
  for (const f of twice) assert.equal(f.op, 'ok', JSON.stringify(f));
  await mineF.locator('.reaction', { hasText: '👍 2' }).waitFor();
  await pill.and(eve.page.locator('[aria-pressed="true"]')).waitFor();
  await pill.click();
  await mineF.locator('.reaction', { hasText: '👍 1' }).waitFor({ timeout: 5000 });
  await sleep(500);
  assert.equal(await mineF.locator('.reaction', { hasText: '👍 1' }).count(), 1, 'Finn\'s alone');
  assert.equal(await pill.getAttribute('aria-pressed'), 'false');
  assertNoProblems();
  for (const p of [eve, finn]) {
    await p.context.close();
    people.splice(people.indexOf(p), 1);
  }
});

// Typing notices and read receipts are writes, rate limited per user together with sends
// (limits.send_per_second): a client must not spend the user's budget on them. Writing and
// sending a message costs one typing notice when the user starts, one when the message goes,
// and no read receipt for the user's own message (the client sent one after every message).
test('sending messages spends few writes on typing notices and read receipts', T, async () => {
  const ivy = await person('ivy');
  const jon = await person('jon');
  await signUp(ivy.page, 'ivy');
  await signUp(jon.page, 'jon');
  const roomId = await createRoom(ivy.page, { name: 'Budget', alias: 'budget' });
  await joinRoom(jon.page, '#budget:localhost');
  const sent = [];
  const mine = new Set();
  ivy.page.on('websocket', (ws) => {
    ws.on('framesent', (f) => { try { sent.push(JSON.parse(f.payload)); } catch { /* not JSON */ } });
    ws.on('framereceived', (f) => {
      try {
        const j = JSON.parse(f.payload);
        if (j.op === 'event' && j.event.sender === '@ivy:localhost') mine.add(j.event.event_id);
      } catch { /* not JSON */ }
    });
  });
  await ivy.page.reload(); // the frames of its new socket are seen
  await ivy.page.locator('#room-title', { hasText: 'Budget' }).waitFor();
  await waitOnline(ivy.page);
  const [jons] = await rawSend(jon.page, roomId, ['from jon']);
  await waitCount(ivy.page, 'from jon', 1);
  await sleep(600); // its receipt goes
  const box = ivy.page.getByRole('textbox', { name: 'Message' });
  await box.click();
  for (let i = 0; i < 5; i++) {
    await ivy.page.keyboard.type(`message ${i}`, { delay: 20 });
    await ivy.page.keyboard.press('Enter');
    await waitCount(ivy.page, `message ${i}`, 1);
  }
  await sleep(1000); // a receipt would be out by now
  const ops = (op) => sent.filter((f) => f.op === op);
  assert.equal(ops('send').length, 5);
  assert.equal(mine.size, 5, 'Ivy\'s messages came back');
  const reads = ops('read').map((f) => f.event_id);
  assert.ok(reads.includes(jons), 'a receipt for Jon\'s message');
  assert.deepEqual(reads.filter((id) => mine.has(id)), [], 'no receipt for Ivy\'s own messages');
  assert.ok(ops('typing').length <= 2 * 5, `typing notices: ${ops('typing').length} for 5 messages`);
  assertNoProblems();
  for (const p of [ivy, jon]) {
    await p.context.close();
    people.splice(people.indexOf(p), 1);
  }
});

test('a phone-sized screen, with the keyboard alone', T, async () => {
  const phone = await person('bob on a phone', { viewport: { width: 390, height: 844 } });
  const p = phone.page;
  await p.goto('/');
  // Log in: the username field has focus.
  await p.keyboard.type(names.bob);
  await p.keyboard.press('Tab');
  await p.keyboard.type('correct horse battery');
  await p.keyboard.press('Enter');
  await p.locator('.shell').waitFor();
  await waitOnline(p);
  // The room list fills the screen; Tab reaches the General room.
  assert.equal(await p.locator('.shell').getAttribute('data-view'), 'rooms');
  let found = false;
  for (let i = 0; i < 25 && !found; i++) {
    await p.keyboard.press('Tab');
    found = await p.evaluate(() => document.activeElement && document.activeElement.classList.contains('room-item')
      && document.activeElement.textContent.includes('General'));
  }
  assert.ok(found, 'Tab reaches the General room');
  await p.keyboard.press('Enter');
  await p.locator('#room-title', { hasText: 'General' }).waitFor();
  assert.equal(await p.locator('.shell').getAttribute('data-view'), 'room');
  assert.ok(await p.locator('.sidebar').isHidden(), 'one column on a phone');
  // The composer has focus: write two lines and send.
  await p.waitForFunction(() => document.activeElement && document.activeElement.id === 'composer');
  await p.keyboard.type('from my phone');
  await p.keyboard.press('Shift+Enter');
  await p.keyboard.type('second line');
  await p.keyboard.press('Enter');
  await waitCount(alice.page, 'from my phone\nsecond line');
  // The phone swaps its pending copy for the committed event when the push arrives; Shift+Tab
  // during that swap would land on a removed element, so wait for it.
  await p.waitForFunction(() => !document.querySelector('li.msg.pending'));

  // Shift+Tab to the timeline, arrows to a message, r to reply.
  await p.keyboard.press('Shift+Tab');
  await p.waitForFunction(() => document.activeElement && document.activeElement.matches('li.msg'));
  await p.keyboard.press('ArrowUp');
  const target = await p.evaluate(() => document.activeElement.querySelector('.msg-main > .body').textContent);
  await p.keyboard.press('r');
  await p.locator('.composer-context', { hasText: 'Replying to' }).waitFor();
  await p.keyboard.type('reply by keyboard');
  await p.keyboard.press('Enter');
  const r = message(alice.page, 'reply by keyboard');
  await r.locator('.quote', { hasText: target.slice(0, 20) }).waitFor();
  await p.waitForFunction(() => !document.querySelector('li.msg.pending'));

  // React with the keyboard: Tab into the focused message's actions.
  await p.keyboard.press('Shift+Tab');
  await p.waitForFunction(() => document.activeElement && document.activeElement.matches('li.msg'));
  const reacted = await p.evaluate(() => document.activeElement.querySelector('.msg-main > .body').textContent);
  let onReact = false;
  for (let i = 0; i < 6 && !onReact; i++) {
    await p.keyboard.press('Tab');
    onReact = await p.evaluate(() => document.activeElement.getAttribute('aria-label') === 'React');
  }
  assert.ok(onReact, 'Tab reaches the React button of the focused message');
  await p.keyboard.press('Enter');
  await p.keyboard.press('ArrowRight'); // ❤️
  await p.keyboard.press('Enter');
  await message(alice.page, reacted).locator('.reaction', { hasText: '❤️ 1' }).waitFor();

  // Up in the empty composer edits the last own message.
  await p.getByRole('textbox', { name: 'Message' }).focus();
  await p.keyboard.press('ArrowUp');
  await p.locator('.composer-context', { hasText: 'Editing' }).waitFor();
  await p.keyboard.press('Escape');
  await p.locator('.composer-context').waitFor({ state: 'hidden' });

  // Nothing wider than the screen; Back returns to the room list.
  assert.ok(await p.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth), 'no horizontal scroll');
  await p.getByRole('button', { name: 'Back to rooms' }).click();
  await p.locator('.sidebar').waitFor();
  assert.ok(await p.locator('.main').isHidden());
  assertNoProblems();
  await phone.context.close();
  people.splice(people.indexOf(phone), 1);
});

/**
 * Routes the WebSocket of every page of person through a proxy that, while hold.sends is set,
 * keeps the `send` requests from the node (in hold.held): the messages stay unsent.
 */
async function holdSends(p) {
  const hold = { sends: false, held: [], seen: [] };
  await p.context.routeWebSocket(/\/v1\/ws$/, (ws) => {
    const server = ws.connectToServer();
    ws.onMessage((m) => {
      const f = JSON.parse(m);
      if (f.op === 'send') (hold.sends ? hold.held : hold.seen).push(f);
      if (f.op === 'send' && hold.sends) return;
      server.send(m);
    });
    server.onMessage((m) => ws.send(m));
  });
  return hold;
}

async function openTab(p) {
  const page = await p.context.newPage();
  page.on('pageerror', (e) => p.problems.push(`pageerror: ${e.message}`));
  await page.goto('/');
  await page.locator('.shell').waitFor();
  await waitOnline(page);
  return page;
}

test('two tabs of one user queue messages at once: none is lost, each is sent once', T, async () => {
  const fay = await person('fay');
  const hold = await holdSends(fay);
  await signUp(fay.page, 'fay');
  await createRoom(fay.page, { name: 'Fay notes', alias: 'fay-notes' });
  const tab1 = fay.page;
  const tab2 = await openTab(fay);
  await openRoom(tab2, 'Fay notes');
  // Not connected to the node for sending: both tabs queue, each in turn.
  hold.sends = true;
  const texts = ['queued in tab one', 'queued in tab two', 'queued in tab one again'];
  await send(tab1, texts[0]);
  await send(tab2, texts[1]);
  await send(tab1, texts[2]);
  await message(tab1, texts[2]).locator('.status', { hasText: 'Sending' }).waitFor();
  await message(tab2, texts[1]).locator('.status', { hasText: 'Sending' }).waitFor();
  // (A tab sends one message at a time: its second waits for the answer to its first.)
  assert.deepEqual(hold.held.map((f) => f.content.body).sort(), [texts[0], texts[1]]);
  // Both tabs are closed before any of it reached the node; a new tab sends it all.
  await tab1.close();
  await tab2.close();
  hold.sends = false;
  const tab3 = await openTab(fay);
  await openRoom(tab3, 'Fay notes');
  for (const t of texts) await waitCount(tab3, t, 1);
  await tab3.waitForFunction(() => !document.querySelector('li.msg.pending'));
  assert.deepEqual((await bodies(tab3)).filter((b) => b.startsWith('queued in')), texts, 'in the order written');
  // With the txn_ids of the first tries.
  for (const f of hold.held) {
    assert.deepEqual(hold.seen.filter((g) => g.content.body === f.content.body).map((g) => g.txn_id), [f.txn_id]);
  }
  await sleep(500);
  for (const t of texts) assert.equal(await countOf(tab3, t), 1, `${t} shown once`);
  assertNoProblems();
  await fay.context.close();
  people.splice(people.indexOf(fay), 1);
});

test('logging out leaves nothing of the user in the browser, in any of their tabs', T, async () => {
  const erin = await person('erin');
  const hold = await holdSends(erin);
  const tab1 = erin.page;
  await signUp(tab1, 'erin');
  await joinRoom(tab1, `#${generalAlias}:localhost`);
  await send(tab1, 'erin was here');
  await waitCount(tab1, 'erin was here');
  const tab2 = await openTab(erin);
  await openRoom(tab2, 'General');
  hold.sends = true;
  await send(tab1, 'never sent, tab one');
  await send(tab2, 'never sent, tab two');
  const stored = () => tab1.evaluate(() => Object.keys(localStorage).sort());
  const me = '@erin:localhost';
  // What a session leaves in localStorage: the token, read markers, the open room, the outboxes.
  await tab1.waitForFunction((me) => localStorage.getItem(`parley.read.${me}`) && localStorage.getItem(`parley.room.${me}`)
    && Object.keys(localStorage).filter((k) => k.startsWith(`parley.outbox.${me}`)).map((k) => localStorage.getItem(k)).join().includes('tab two'), me);
  assert.ok((await stored()).includes('parley.session'));

  await tab1.getByRole('button', { name: 'Log out' }).click();
  await tab1.getByRole('button', { name: 'Log in' }).waitFor();
  // The other tab is logged out too, and writes nothing more.
  await tab2.getByRole('button', { name: 'Log in' }).waitFor();
  await sleep(1000);
  assert.deepEqual(await stored(), [], 'localStorage after the logout');
  assert.deepEqual(await tab2.evaluate(() => Object.keys(localStorage)), []);
  assertNoProblems();
  await erin.context.close();
  people.splice(people.indexOf(erin), 1);
});

test('a reaction the node refuses shows as not sent, with Retry and Discard', T, async () => {
  const kim = await person('kim');
  const lou = await person('lou');
  await signUp(kim.page, 'kim');
  await signUp(lou.page, 'lou');
  const roomId = await createRoom(kim.page, { name: 'Quiet', alias: 'quiet' });
  await joinRoom(lou.page, '#quiet:localhost');
  await send(kim.page, 'no reactions here');
  // Reactions need power 50 in this room: the node refuses Lou's (M_FORBIDDEN).
  const levels = (reaction) => ({
    op: 'set_state', room_id: roomId, type: 'm.room.power_levels',
    content: { users: { '@kim:localhost': 100 }, events: { 'm.reaction': reaction }, state_default: 50, ban: 50, kick: 50, redact: 50 },
  });
  const [set] = await rawRequests(kim.page, [levels(50)]);
  assert.equal(set.op, 'ok', JSON.stringify(set));
  const msg = message(lou.page, 'no reactions here');
  const react = async (key) => {
    await msg.hover();
    await msg.getByRole('button', { name: 'React' }).click();
    await lou.page.getByRole('button', { name: `React with ${key}` }).click();
  };
  await react('👍');
  const failed = lou.page.locator('.events li.msg.failed');
  await failed.filter({ hasText: /Reaction not sent/ }).filter({ hasText: '👍' }).waitFor();
  assert.equal(await msg.locator('.reaction').count(), 0, 'a pill for a reaction nobody else sees');
  // Allowed again, Retry sends it: Kim sees it, and the failed line goes.
  const [unset] = await rawRequests(kim.page, [levels(0)]);
  assert.equal(unset.op, 'ok', JSON.stringify(unset));
  await failed.getByRole('button', { name: 'Retry' }).click();
  await message(kim.page, 'no reactions here').locator('.reaction', { hasText: '👍 1' }).waitFor();
  await failed.waitFor({ state: 'detached' });
  // Refused once more, Discard forgets it, here and in the stored outbox.
  const [reset] = await rawRequests(kim.page, [levels(50)]);
  assert.equal(reset.op, 'ok', JSON.stringify(reset));
  await react('🎉');
  await failed.filter({ hasText: '🎉' }).waitFor();
  await failed.getByRole('button', { name: 'Discard' }).click();
  await failed.waitFor({ state: 'detached' });
  const stored = await lou.page.evaluate(() => Object.keys(localStorage).filter((k) => k.startsWith('parley.outbox.')).map((k) => localStorage.getItem(k)).join());
  assert.doesNotMatch(stored, /🎉/);
  assertNoProblems();
  for (const p of [kim, lou]) {
    await p.context.close();
    people.splice(people.indexOf(p), 1);
  }
});

test('an edit too large for the node says so and stays in the composer', T, async () => {
  const ned = await person('ned');
  await signUp(ned.page, 'ned');
  await createRoom(ned.page, { name: 'Big edits', alias: 'big-edits' });
  const original = 'a'.repeat(32000);
  await send(ned.page, original);
  await message(ned.page, original).locator('.status').waitFor({ state: 'detached' });
  // The edit carries the text twice (the fallback "* …" and m.new_content): 26,000 characters
  // fit each body (32 KiB) and a frame (64 KiB), but not the node's 48 KiB of content, which it
  // would refuse M_TOO_LARGE on every try.
  const replacement = 'b'.repeat(26000);
  const box = ned.page.getByRole('textbox', { name: 'Message' });
  await box.press('ArrowUp');
  await box.fill(replacement);
  await box.press('Enter');
  const error = ned.page.locator('#composer-error');
  await error.filter({ hasText: /Too long for an edit.*48 KB.*about 24 KB/ }).waitFor();
  assert.equal(await box.inputValue(), replacement, 'the text left the composer');
  assert.equal(await ned.page.locator('.events li.msg.pending').count(), 0, 'queued anyway');
  assert.equal(await ned.page.locator('.composer.editing').count(), 1, 'no longer editing');
  // Nothing went: a message sent after it is the next thing the node answers on the same
  // connection, and the original is unchanged.
  await box.press('Escape');
  await send(ned.page, 'after the big edit');
  await message(ned.page, 'after the big edit').locator('.status').waitFor({ state: 'detached' });
  assert.equal(await ned.page.locator('.banner').isHidden(), true, 'the connection was lost');
  assert.equal(await countOf(ned.page, original), 1, 'the original was edited');
  assert.equal(await ned.page.getByText(/Edit not sent/).count(), 0, 'an edit was sent and refused');
  assertNoProblems();
  await ned.context.close();
  people.splice(people.indexOf(ned), 1);
});

/** Whether the node still takes a token: auth on a WebSocket from page (another browser context). */
function tokenWorks(page, token) {
  return page.evaluate(async (token) => {
    const ws = new WebSocket(`ws://${location.host}/v1/ws`);
    await new Promise((res, rej) => { ws.onopen = res; ws.onerror = () => rej(new Error('ws error')); });
    const answer = await new Promise((res) => {
      ws.onmessage = (m) => res(JSON.parse(m.data));
      ws.send(JSON.stringify({ op: 'auth', id: 'a', token }));
    });
    ws.close();
    return answer.op === 'ok';
  }, token);
}

async function waitTokenRevoked(page, token) {
  const deadline = Date.now() + 15000;
  while (await tokenWorks(page, token)) {
    if (Date.now() > deadline) assert.fail('the token still works');
    await sleep(200);
  }
}

test('logging out offline revokes the token once the node can be reached, not the next session', T, async () => {
  const mel = await person('mel');
  const checker = await person('mel-checker');
  await checker.page.goto('/');
  const works = (token) => tokenWorks(checker.page, token);
  const waitRevoked = (token) => waitTokenRevoked(checker.page, token);
  const token = () => mel.page.evaluate(() => JSON.parse(localStorage.getItem('parley.session')).access_token);
  await signUp(mel.page, 'mel');
  const first = await token();

  // Offline: the logout cannot reach the node. Back online, the sign-in page revokes it.
  await mel.context.setOffline(true);
  await mel.page.getByRole('button', { name: 'Log out' }).click();
  await mel.page.getByRole('button', { name: 'Log in' }).waitFor();
  assert.equal(await works(first), true);
  assert.equal(await mel.page.locator('.auth-notice').count(), 0, 'a notice though the token is kept');
  await mel.context.setOffline(false);
  await waitRevoked(first);

  // The node cannot be reached for the logout, and still not at the next login: a fresh page
  // load revokes it, and leaves the new session alone.
  await logIn(mel.page, 'mel');
  const second = await token();
  await mel.page.route('**/v1/logout', (route) => route.abort());
  await mel.page.getByRole('button', { name: 'Log out' }).click();
  await mel.page.getByRole('button', { name: 'Log in' }).waitFor();
  await logIn(mel.page, 'mel');
  const third = await token();
  assert.equal(await works(second), true);
  await mel.page.unroute('**/v1/logout');
  await mel.page.reload();
  await mel.page.locator('.shell').waitFor();
  await waitRevoked(second);
  await waitOnline(mel.page);
  assert.equal(await works(third), true, 'the new session was logged out');
  assert.equal(await token(), third);
  await sleep(500);
  assertNoProblems();
  for (const p of [mel, checker]) {
    await p.context.close();
    people.splice(people.indexOf(p), 1);
  }
});

test('logging out offline with storage full says the session may still be valid, and the page still revokes it', T, async () => {
  const otto = await person('otto');
  const checker = await person('otto-checker');
  await checker.page.goto('/');
  await signUp(otto.page, 'otto');
  const token = await otto.page.evaluate(() => JSON.parse(localStorage.getItem('parley.session')).access_token);
  // localStorage full to the last character: the token cannot be kept for a later revoke.
  await otto.page.evaluate(() => {
    let n = 0;
    for (let size = 1 << 20; size >= 1; size >>= 1) {
      const fill = 'x'.repeat(size);
      for (;;) {
        try {
          localStorage.setItem(`fill.${n++}`, fill);
        } catch {
          break;
        }
      }
    }
  });
  await otto.context.setOffline(true);
  await otto.page.getByRole('button', { name: 'Log out' }).click();
  await otto.page.locator('.auth-notice', { hasText: /may still be valid on the server/ }).waitFor();
  assert.equal(await tokenWorks(checker.page, token), true);
  // Back online, the page that kept it revokes it.
  await otto.context.setOffline(false);
  await waitTokenRevoked(checker.page, token);
  assertNoProblems();
  for (const p of [otto, checker]) {
    await p.context.close();
    people.splice(people.indexOf(p), 1);
  }
});

test('screenshot for the docs', T, async () => {
  const ap = alice.page;
  const bp = bob.page;
  await createRoom(ap, { name: 'Design review', alias: 'design-review' });
  await joinRoom(bp, '#design-review:localhost');
  await openRoom(ap, 'Design review');
  await send(ap, 'The new client is live on the node: open http://127.0.0.1:8080/ and sign up.');
  await waitCount(bp, 'The new client is live on the node: open http://127.0.0.1:8080/ and sign up.');
  await send(bp, 'Loads instantly, and it works on my phone too.');
  await waitCount(ap, 'Loads instantly, and it works on my phone too.');
  await send(bp, 'Dark mode follows the system setting 🌙');
  await waitCount(ap, 'Dark mode follows the system setting 🌙');
  const m = message(ap, 'Loads instantly, and it works on my phone too.');
  await m.hover();
  await m.getByRole('button', { name: 'Reply' }).click();
  await send(ap, 'And when the connection drops it catches up by itself, nothing lost or doubled.');
  await waitCount(bp, 'And when the connection drops it catches up by itself, nothing lost or doubled.');
  const d = message(bp, 'And when the connection drops it catches up by itself, nothing lost or doubled.');
  await d.hover();
  await d.getByRole('button', { name: 'React' }).click();
  await bp.getByRole('button', { name: 'React with 🎉' }).click();
  await message(ap, 'And when the connection drops it catches up by itself, nothing lost or doubled.').locator('.reaction', { hasText: '🎉 1' }).waitFor();
  await message(ap, 'And when the connection drops it catches up by itself, nothing lost or doubled.').locator('.receipts').waitFor();
  await bp.getByRole('textbox', { name: 'Message' }).click();
  await bp.keyboard.type('Ship it');
  await ap.locator('.typing', { hasText: 'is typing' }).waitFor();
  const members = ap.locator('#members');
  if (!(await members.isVisible())) await ap.getByRole('button', { name: /^Members/ }).click();
  await members.locator('.member', { hasText: names.bob }).waitFor();
  await ap.mouse.move(0, 0);
  await ap.locator('.composer textarea').blur();
  await sleep(300);
  mkdirSync(dirname(SCREENSHOT), { recursive: true });
  await ap.screenshot({ path: SCREENSHOT });
  assertNoProblems();
});
