// Unit tests of the connection (src/conn.js) against a fake WebSocket and mocked timers: a
// node's M_LIMIT_EXCEEDED with retry_after_ms holds reconnects back (docs/protocol.md, "Error
// codes" and "Close codes"). scripts/test-web.sh runs them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Connection } from '../src/conn.js';

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
  drop(code) {
    this.readyState = FakeWebSocket.CLOSED;
    this.onclose({ code, reason: '' });
  }

  lastRequest(op) {
    return this.sent.filter((f) => f.op === op).at(-1);
  }
}

const flush = () => new Promise((r) => setImmediate(r));

function connect(t) {
  t.mock.timers.enable({ apis: ['setTimeout', 'setInterval', 'Date'], now: 1_000_000 });
  FakeWebSocket.all = [];
  globalThis.WebSocket = FakeWebSocket;
  const states = [];
  const c = new Connection({
    url: 'ws://127.0.0.1/v1/ws',
    token: 'secret',
    onPush: () => {},
    onReady: async () => {},
    onState: (st) => states.push(st),
    onAuthFailed: (code) => assert.fail(`auth failed: ${code}`),
  });
  t.after(() => {
    c.stop();
    delete globalThis.WebSocket;
  });
  c.start();
  return { c, states };
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
