// Unit tests of the connection (src/conn.js) against a fake WebSocket and mocked timers: a
// node's M_LIMIT_EXCEEDED with retry_after_ms holds reconnects back; a node cut off from its
// cluster (close 1013) or catching up (auth answered M_UNAVAILABLE, then close 1013) is retried
// with the usual backoff and the same token, never taken for a logout (docs/protocol.md, "Error
// codes" and "Close codes"; docs/cluster.md). scripts/test-web.sh runs them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Connection } from '../src/conn.js';
import { Outbox } from '../src/outbox.js';

class FakeWebSocket {
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSED = 3;
  static all = [];

  constructor(url) {
    this.url = url;
    this.readyState = FakeWebSocket.CONNECTING;
    this.sent = [];
    FakeWebSocket.all.push(this);
  }

  send(data) {
    this.sent.push(JSON.parse(data));
  }

  close(code = 1000, reason = '') {
    if (this.readyState === FakeWebSocket.CLOSED) return;
    this.readyState = FakeWebSocket.CLOSED;
    queueMicrotask(() => this.onclose && this.onclose({ code, reason }));
  }

  // The node's side.
  accept() {
    this.readyState = FakeWebSocket.OPEN;
    this.onopen();
  }

  push(frame) {
    this.onmessage({ data: JSON.stringify(frame) });
  }

  /** The node closes the connection (the browser reports it as a close event). */
  drop(code, reason = '') {
    this.readyState = FakeWebSocket.CLOSED;
    this.onclose({ code, reason });
  }

  lastRequest(op) {
    return this.sent.filter((f) => f.op === op).at(-1);
  }
}

const flush = () => new Promise((r) => setImmediate(r));

function connect(t, { onState = () => {} } = {}) {
  t.mock.timers.enable({ apis: ['setTimeout', 'setInterval', 'Date'], now: 1_000_000 });
  FakeWebSocket.all = [];
  globalThis.WebSocket = FakeWebSocket;
  const states = [];
  const authFailed = [];
  const c = new Connection({
    url: 'ws://127.0.0.1/v1/ws',
    token: 'secret',
    onPush: () => {},
    onReady: async () => {},
    onState: (st) => {
      states.push(st);
      onState(st);
    },
    onAuthFailed: (code) => {
      authFailed.push(code);
      assert.fail(`auth failed: ${code}`);
    },
  });
  t.after(() => {
    c.stop();
    delete globalThis.WebSocket;
  });
  c.start();
  return { c, states, authFailed };
}

/** Answers the auth request of ws with ok: the connection goes online. */
async function serve(ws) {
  ws.accept();
  await flush();
  const auth = ws.lastRequest('auth');
  assert.equal(auth.token, 'secret', 'authenticates with the same token');
  ws.push({ op: 'ok', id: auth.id, user_id: '@a:a.test' });
  await flush();
}

/** Lets time pass until a new socket opens; returns how long that took (ms, 50 ms steps). */
async function untilReconnect(t, limit = 30000) {
  const n = FakeWebSocket.all.length;
  for (let ms = 50; ms <= limit; ms += 50) {
    t.mock.timers.tick(50);
    await flush();
    if (FakeWebSocket.all.length > n) return ms;
  }
  assert.fail(`no reconnect within ${limit} ms`);
}

/** localStorage as a browser keeps it, for the outbox. */
function memoryStorage(t) {
  const m = new Map();
  globalThis.localStorage = {
    get length() {
      return m.size;
    },
    key: (i) => [...m.keys()][i] ?? null,
    getItem: (k) => (m.has(k) ? m.get(k) : null),
    setItem: (k, v) => m.set(k, String(v)),
    removeItem: (k) => m.delete(k),
  };
  t.after(() => delete globalThis.localStorage);
  return m;
}

/** Lets time pass in small steps (timers fire, promises settle); returns the sockets opened. */
async function wait(t, ms) {
  for (let done = 0; done < ms; done += 50) {
    t.mock.timers.tick(50);
    await flush();
  }
  return FakeWebSocket.all.length;
}

test('a refused auth with M_LIMIT_EXCEEDED waits retry_after_ms before reconnecting', async (t) => {
  const { c, states } = connect(t);
  const ws = FakeWebSocket.all[0];
  ws.accept();
  await flush();
  const auth = ws.lastRequest('auth');
  assert.equal(auth.token, 'secret');
  // Too many connections for this user: the auth is answered M_LIMIT_EXCEEDED, then close 1008.
  ws.push({ op: 'error', id: auth.id, code: 'M_LIMIT_EXCEEDED', message: 'too many connections for this user', retry_after_ms: 4000 });
  await flush();
  ws.drop(1008);
  await flush();
  const st = states.at(-1);
  assert.equal(st.status, 'offline');
  assert.ok(st.retryAt >= Date.now() + 4000, `retryAt is ${st.retryAt - Date.now()} ms ahead, want 4000 at least`);
  // The usual backoff would try again within 0.5 s; "Retry now" and going online must not
  // either.
  assert.equal(await wait(t, 1000), 1, 'reconnected before retry_after_ms');
  c.retryNow();
  assert.equal(await wait(t, 2900), 1, 'Retry now reconnected before retry_after_ms');
  assert.equal(await wait(t, 1200 + 1000), 2, 'no reconnect once retry_after_ms was over');
  // The new connection is served: back to the usual backoff afterwards.
  FakeWebSocket.all[1].accept();
  await flush();
  const ws2 = FakeWebSocket.all[1];
  ws2.push({ op: 'ok', id: ws2.lastRequest('auth').id, user_id: '@a:a.test' });
  await flush();
  assert.equal(c.status, 'online');
  ws2.drop(1006);
  await flush();
  assert.equal(await wait(t, 600), 3, 'an ordinary drop reconnects within the backoff');
});

test('a connection refused with a frame of its own and close 1013 waits retry_after_ms', async (t) => {
  const { states } = connect(t);
  const ws = FakeWebSocket.all[0];
  ws.accept();
  await flush();
  // Too many unauthenticated connections on this node: an error without an id, then 1013.
  ws.push({ op: 'error', code: 'M_LIMIT_EXCEEDED', message: 'too many unauthenticated connections', retry_after_ms: 3000 });
  ws.drop(1013);
  await flush();
  assert.ok(states.at(-1).retryAt >= Date.now() + 3000);
  assert.equal(states.at(-1).busy, true, 'the banner can say the server is busy');
  assert.equal(await wait(t, 2900), 1, 'reconnected before retry_after_ms');
  assert.equal(await wait(t, 1000 + 200), 2);
});

const CUT_OFF = 'this node is cut off from its cluster';

test('a connection closed with 1013 (node cut off) reconnects after a backoff with the same token', async (t) => {
  const storage = memoryStorage(t);
  let outbox = null;
  // Wired as client.js wires them: the outbox sends over the connection while it is online.
  const { c, states, authFailed } = connect(t, { onState: (st) => st.status === 'online' && outbox && outbox.kick() });
  outbox = new Outbox({
    storageKey: 'parley.outbox.@a:a.test',
    online: () => c.status === 'online',
    send: async (it) => (await c.request('send', { room_id: it.room_id, type: it.type, content: it.content, txn_id: it.txn_id })).event_id,
    changed: () => {},
  });
  t.after(() => outbox.stop());
  const ws1 = FakeWebSocket.all[0];
  await serve(ws1);
  assert.equal(c.status, 'online');

  // A message goes out; before its answer the node, cut off for 10 s, closes every connection.
  const item = outbox.add('!r:a.test', 'm.room.message', { msgtype: 'm.text', body: 'hello' });
  await flush();
  const send1 = ws1.lastRequest('send');
  assert.equal(send1.txn_id, item.txn_id);
  ws1.drop(1013, CUT_OFF);
  await flush();

  assert.deepEqual(authFailed, [], 'the auth-failed path (logout) was taken');
  assert.equal(c.stopped, false);
  assert.equal(c.token, 'secret', 'the token was dropped');
  const st = states.at(-1);
  assert.equal(st.status, 'offline', 'the banner shows the connection as lost');
  assert.equal(st.everOnline, true);
  assert.ok(st.retryAt - Date.now() >= 250, `reconnect planned in ${st.retryAt - Date.now()} ms, want a backoff`);
  assert.equal(item.status, 'queued', 'the message in flight is queued again');
  assert.equal(outbox.items.length, 1);
  assert.ok([...storage.values()].some((v) => v.includes(item.txn_id)), 'the queued message is still stored');

  // No immediate reconnect: the backoff (250 to 500 ms after a connection that was online).
  assert.equal(await wait(t, 200), 1, 'reconnected without a backoff');
  assert.equal(await wait(t, 400), 2, 'no reconnect within the backoff');
  const ws2 = FakeWebSocket.all[1];
  await serve(ws2); // checks the token
  assert.equal(c.status, 'online');
  assert.deepEqual(authFailed, []);

  // The message goes out again with the same txn_id, and is done once the node answers.
  const send2 = ws2.lastRequest('send');
  assert.ok(send2, 'the queued message was not sent again');
  assert.equal(send2.txn_id, item.txn_id);
  ws2.push({ op: 'ok', id: send2.id, event_id: '$e1' });
  await flush();
  assert.equal(item.status, 'sent');
  assert.equal(item.event_id, '$e1');
});

test('an auth answered M_UNAVAILABLE and close 1013 is retried with a growing backoff, without a logout', async (t) => {
  const { c, states, authFailed } = connect(t);
  const delays = [];
  for (let i = 0; i < 6; i++) {
    const ws = FakeWebSocket.all.at(-1);
    ws.accept();
    await flush();
    const auth = ws.lastRequest('auth');
    assert.equal(auth.token, 'secret', 'authenticates with the same token');
    // A node still applying its log holds the auth up to 5 s; a node cut off answers at once.
    if (i === 0) assert.equal(await wait(t, 5000), 1, 'gave up on an auth the node is still holding');
    ws.push({ op: 'error', id: auth.id, code: 'M_UNAVAILABLE', message: i === 0 ? 'this node is catching up; retry' : CUT_OFF });
    // The close 1013 comes either after the client has handled the error, or before.
    if (i % 2 === 0) await flush();
    ws.drop(1013, CUT_OFF);
    await flush();
    assert.deepEqual(authFailed, [], 'the auth-failed path (logout) was taken');
    assert.equal(c.stopped, false);
    const st = states.at(-1);
    assert.equal(st.status, 'offline', 'the banner shows the connection as retrying');
    assert.equal(st.busy, false);
    const planned = st.retryAt - Date.now();
    const took = await untilReconnect(t);
    assert.ok(took >= planned && took < planned + 100, `reconnected after ${took} ms, planned ${planned} ms`);
    delays.push(took);
  }
  // Base 0.5 s doubling, each delay between half the base and the base: 0.25-0.5 s, 0.5-1 s,
  // 1-2 s, 2-4 s, 4-8 s, 8-15 s.
  for (let i = 1; i < delays.length; i++) assert.ok(delays[i] >= delays[i - 1], `delays do not grow: ${delays}`);
  assert.ok(delays[0] >= 250, `first retry after ${delays[0]} ms: a tight loop`);
  assert.ok(delays.at(-1) >= 4000, `delays do not grow: ${delays}`);
  assert.equal(FakeWebSocket.all.length, 7);

  // The node is back: the same token is accepted, and the backoff starts over.
  await serve(FakeWebSocket.all.at(-1));
  assert.equal(c.status, 'online');
  assert.deepEqual(authFailed, []);
  FakeWebSocket.all.at(-1).drop(1013, CUT_OFF);
  await flush();
  assert.ok((await untilReconnect(t)) <= 550, 'the backoff did not start over once online');
});

test('a send closed with 1009 (frame over the limit) fails; it is not sent again, the next message goes', async (t) => {
  memoryStorage(t);
  let outbox = null;
  const { c, authFailed } = connect(t, { onState: (st) => st.status === 'online' && outbox && outbox.kick() });
  outbox = new Outbox({
    storageKey: 'parley.outbox.@a:a.test',
    online: () => c.status === 'online',
    send: async (it) => (await c.request('send', { room_id: it.room_id, type: it.type, content: it.content, txn_id: it.txn_id })).event_id,
    changed: () => {},
  });
  t.after(() => outbox.stop());
  const ws1 = FakeWebSocket.all[0];
  await serve(ws1);
  c.request('ping', {}).catch(() => {}); // another request in flight: not the one at fault

  // A frame the node cannot take (over its ws.max_frame_bytes, set below the default 64 KiB that
  // the outbox checks before sending): the node closes the connection with 1009 instead of
  // answering.
  const big = outbox.add('!r:a.test', 'm.room.message', { msgtype: 'm.text', body: 'ok', format: 'org.matrix.custom.html', formatted_body: 'x'.repeat(40000) });
  const after = outbox.add('!r:a.test', 'm.room.message', { msgtype: 'm.text', body: 'after' });
  await flush();
  assert.equal(ws1.lastRequest('send').txn_id, big.txn_id);
  ws1.drop(1009, 'message too big');
  await flush();
  assert.equal(big.status, 'failed', 'the message that cost the connection is queued to go again');
  assert.match(big.error, /too large/i);
  assert.deepEqual(authFailed, []);

  assert.equal(await wait(t, 600), 2, 'no reconnect after the 1009');
  const ws2 = FakeWebSocket.all[1];
  await serve(ws2);
  const sends = ws2.sent.filter((f) => f.op === 'send');
  assert.deepEqual(sends.map((f) => f.txn_id), [after.txn_id], 'sent again, or the next message held back');
  ws2.push({ op: 'ok', id: sends[0].id, event_id: '$after' });
  await flush();
  assert.equal(after.status, 'sent');
  assert.equal(big.status, 'failed');
});

test('a 1009 after the frame at fault timed out fails no innocent request as too large', async (t) => {
  memoryStorage(t);
  const { c } = connect(t, {});
  const ws1 = FakeWebSocket.all[0];
  await serve(ws1);
  // A frame the node has answered: one no larger is within its limit.
  const padded = c.request('ping', { pad: 'x'.repeat(2000) });
  await flush();
  ws1.push({ op: 'ok', id: ws1.lastRequest('ping').id });
  await padded;
  // The frame over the limit was given up on already (its request timed out); the close
  // comes while only a small request waits.
  const small = c.request('sync', {}).then(() => null, (e) => e);
  await flush();
  ws1.drop(1009, 'message too big');
  const err = await small;
  assert.ok(err, 'the request outlived its connection');
  assert.notEqual(err.code, 'M_TOO_LARGE', 'a request the node could take was failed as too large');
});
