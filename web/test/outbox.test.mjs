// Unit tests of the outbox (src/outbox.js): tabs of one user share one localStorage, and none
// may lose another's unsent messages from it. scripts/test-web.sh runs them.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Outbox, UNKNOWN_RETRIES, tooLong } from '../src/outbox.js';

const MINUTE = 60000;

/** localStorage as the tabs of one origin share it. */
class MemoryStorage {
  constructor() {
    this.m = new Map();
  }

  get length() {
    return this.m.size;
  }

  key(i) {
    return [...this.m.keys()][i] ?? null;
  }

  getItem(k) {
    return this.m.has(k) ? this.m.get(k) : null;
  }

  setItem(k, v) {
    this.m.set(k, String(v));
  }

  removeItem(k) {
    this.m.delete(k);
  }
}

const KEY = 'parley.outbox.@alice:a.test';

function setup(t) {
  t.mock.timers.enable({ apis: ['setTimeout', 'setInterval', 'Date'], now: 1_000_000 });
  globalThis.localStorage = new MemoryStorage();
  const tabs = [];
  t.after(() => {
    for (const tab of tabs) if (tab.stop) tab.stop();
    delete globalThis.localStorage;
  });
  /** A tab of the user: offline unless told, recording what it sends. */
  const open = (online = false) => {
    const tab = new Outbox({
      storageKey: KEY,
      online: () => tab.isOnline,
      send: async (it) => {
        tab.sent.push(it.txn_id);
        return `$ev-${it.txn_id}`;
      },
      changed: () => {},
    });
    tab.isOnline = online;
    tab.sent = [];
    tabs.push(tab);
    return tab;
  };
  return open;
}

const txns = (tab) => tab.items.map((it) => it.txn_id).sort();
const flush = () => new Promise((r) => setImmediate(r));

test('two tabs queueing at once: a later tab finds the messages of both', (t) => {
  const open = setup(t);
  const a = open();
  const b = open();
  const m1 = a.add('!r:a.test', 'm.room.message', { msgtype: 'm.text', body: 'from tab A' });
  t.mock.timers.tick(10);
  const m2 = b.add('!r:a.test', 'm.room.message', { msgtype: 'm.text', body: 'from tab B' });
  t.mock.timers.tick(10);
  a.add('!r:a.test', 'm.room.message', { msgtype: 'm.text', body: 'again from tab A' }); // A saves after B
  // Both tabs close (a reload, or the browser quits) before they could send.
  for (const tab of [a, b]) {
    if (tab.release) tab.release();
    if (tab.stop) tab.stop();
  }
  const c = open();
  assert.ok(c.items.some((it) => it.txn_id === m1.txn_id), 'tab A\'s first message was lost from storage');
  assert.ok(c.items.some((it) => it.txn_id === m2.txn_id), 'tab B\'s message was lost from storage');
  assert.deepEqual(c.items.map((it) => it.content.body), ['from tab A', 'from tab B', 'again from tab A'], 'in the order written');
  assert.ok(c.items.every((it) => it.status === 'queued'));
});

test('a tab that crashed: its queue is adopted once it has not been refreshed for a while', async (t) => {
  const open = setup(t);
  const a = open();
  const b = open(true);
  const m = a.add('!r:a.test', 'm.room.message', { msgtype: 'm.text', body: 'typed before the crash' });
  // Tab A stays alive: B, and a tab opened now, leave its queue alone (no sending twice).
  t.mock.timers.tick(10 * MINUTE);
  await flush();
  assert.deepEqual(txns(b), []);
  assert.deepEqual(txns(open()), []);
  // Tab A crashes: no release, its timers stop.
  a.stop();
  t.mock.timers.tick(10 * MINUTE);
  await flush();
  assert.deepEqual(txns(b).concat(b.sent).sort(), [m.txn_id, m.txn_id], 'B adopted and sent it');
  assert.deepEqual(b.sent, [m.txn_id], 'with its txn_id');
});

test('a reload takes its own queue back, with the same txn_ids', async (t) => {
  const open = setup(t);
  const a = open();
  const m = a.add('!r:a.test', 'm.room.message', { msgtype: 'm.text', body: 'hello' });
  a.release(); // pagehide
  a.stop();
  const reloaded = open(true);
  assert.deepEqual(txns(reloaded), [m.txn_id]);
  reloaded.kick();
  await flush();
  assert.deepEqual(reloaded.sent, [m.txn_id]);
  // Sent: nothing is left in storage for anyone to send again.
  assert.deepEqual(txns(open()), []);
});

test('the single queue of older versions is adopted', (t) => {
  const open = setup(t);
  localStorage.setItem(KEY, JSON.stringify([{ txn_id: 'wold.1', room_id: '!r:a.test', type: 'm.room.message', content: { body: 'old' }, status: 'sending', ts: 1 }]));
  const a = open();
  assert.deepEqual(txns(a), ['wold.1']);
  assert.equal(a.items[0].status, 'queued');
  assert.equal(localStorage.getItem(KEY), null);
});

test('the queues of another user are not touched', (t) => {
  const open = setup(t);
  const other = JSON.stringify({ ts: 0, items: [{ txn_id: 'w.x', room_id: '!r:a.test', type: 'm.room.message', content: { body: 'x' } }] });
  localStorage.setItem(`${KEY}.evil#abc`, other); // @alice:a.test.evil
  const a = open();
  assert.deepEqual(txns(a), []);
  assert.equal(localStorage.getItem(`${KEY}.evil#abc`), other);
});

class QuotaStorage {
  constructor(quota) { this.m = new Map(); this.quota = quota; }
  get length() { return this.m.size; }
  key(i) { return [...this.m.keys()][i] ?? null; }
  getItem(k) { return this.m.has(k) ? this.m.get(k) : null; }
  used() { let n = 0; for (const [k, v] of this.m) n += k.length + v.length; return n; }
  setItem(k, v) {
    v = String(v);
    const old = this.m.has(k) ? k.length + this.m.get(k).length : 0;
    if (this.used() - old + k.length + v.length > this.quota) { const e = new Error('QuotaExceededError'); e.name = 'QuotaExceededError'; throw e; }
    this.m.set(k, v);
  }
  removeItem(k) { this.m.delete(k); }
}

// Storage full: a queue adopted from a closed tab stays stored under its own key until this
// tab's queue holding it is stored (a review found it deleted first, then kept only in memory).
test('an adopted queue survives a failed write of the adopter', (t) => {
  t.mock.timers.enable({ apis: ['setTimeout', 'setInterval', 'Date'], now: 1_000_000 });
  const ls = new QuotaStorage(1 << 20);
  globalThis.localStorage = ls;
  t.after(() => delete globalThis.localStorage);
  const mk = () => new Outbox({ storageKey: 'parley.outbox.@alice:a.test', online: () => false, send: async () => '$x', changed: () => {} });
  const b = mk(); // tab B is open (offline)
  // Tab A queued a message, then closed (pagehide).
  const a = mk();
  const m = a.add('!r:a.test', 'm.room.message', { msgtype: 'm.text', body: 'typed offline in tab A' });
  a.release(); a.stop();
  // Tab B is open, offline, and storage is (nearly) full: B's own queue no longer fits.
  ls.quota = ls.used() + 10;
  b.add('!r:a.test', 'm.room.message', { msgtype: 'm.text', body: 'x'.repeat(200) });
  // B's heartbeat adopts A's queue.
  t.mock.timers.tick(10000);
  assert.ok(b.items.some((it) => it.txn_id === m.txn_id), 'B holds it in memory');
  // B is closed before it could connect: is A's message still anywhere in storage?
  b.release(); b.stop();
  const stored = [...ls.m.values()].join();
  assert.ok(stored.includes(m.txn_id), 'A\'s unsent message is gone from localStorage');
});

/** A tab whose sends are answered by answer(try): a code to refuse with, or null to store. */
function tabAnswering(t, answer) {
  const tries = [];
  const tab = new Outbox({
    storageKey: KEY,
    online: () => true,
    send: async (it) => {
      tries.push(it.txn_id);
      const code = answer(tries.length);
      if (code) throw Object.assign(new Error(`refused ${code}`), { code });
      return `$ev-${it.txn_id}`;
    },
    changed: () => {},
  });
  t.after(() => tab.stop());
  return { tab, tries };
}

test('a send refused M_UNKNOWN is tried again with its txn_id, then goes through', async (t) => {
  setup(t);
  const { tab, tries } = tabAnswering(t, (n) => (n <= 2 ? 'M_UNKNOWN' : null));
  const m = tab.add('!r:a.test', 'm.room.message', { msgtype: 'm.text', body: 'during a leader change' });
  for (let i = 0; i < 8; i++) {
    await flush();
    t.mock.timers.tick(1000);
  }
  await flush();
  assert.deepEqual(tries, [m.txn_id, m.txn_id, m.txn_id], 'the same txn_id each time');
  assert.equal(m.status, 'sent');
  assert.equal(m.event_id, `$ev-${m.txn_id}`);
});

test('a send refused M_UNKNOWN every time fails after its tries, and Retry tries again', async (t) => {
  setup(t);
  const { tab, tries } = tabAnswering(t, () => 'M_UNKNOWN');
  const m = tab.add('!r:a.test', 'm.room.message', { msgtype: 'm.text', body: 'never stored' });
  for (let i = 0; i < 20; i++) {
    await flush();
    t.mock.timers.tick(1000);
  }
  await flush();
  assert.equal(tries.length, 1 + UNKNOWN_RETRIES);
  assert.equal(m.status, 'failed');
  tab.retry(m.txn_id);
  for (let i = 0; i < 20; i++) {
    await flush();
    t.mock.timers.tick(1000);
  }
  await flush();
  assert.equal(tries.length, 2 * (1 + UNKNOWN_RETRIES), 'Retry by hand gets the tries again');
  assert.equal(m.status, 'failed');
});

test('a send the node refuses for good (M_FORBIDDEN) fails at once', async (t) => {
  setup(t);
  const { tab, tries } = tabAnswering(t, () => 'M_FORBIDDEN');
  const m = tab.add('!r:a.test', 'm.room.message', { msgtype: 'm.text', body: 'not allowed' });
  await flush();
  t.mock.timers.tick(10000);
  await flush();
  assert.deepEqual(tries, [m.txn_id]);
  assert.equal(m.status, 'failed');
});

test('a message over the body limit (32 KiB of UTF-8) fails without being sent', async (t) => {
  const open = setup(t);
  const a = open(true);
  // 11,000 characters of 3 bytes each: 33,000 bytes, over the limit in fewer than 32,768 characters.
  const long = a.add('!r:a.test', 'm.room.message', { msgtype: 'm.text', body: '語'.repeat(11000) });
  const edit = a.add('!r:a.test', 'm.room.message', {
    msgtype: 'm.text', body: `* ${'e'.repeat(32767)}`, 'm.new_content': { msgtype: 'm.text', body: 'e'.repeat(32767) },
    'm.relates_to': { rel_type: 'm.replace', event_id: '$x' },
  });
  const fits = a.add('!r:a.test', 'm.room.message', { msgtype: 'm.text', body: '語'.repeat(10922) }); // 32,766 bytes
  await flush();
  assert.deepEqual(a.sent, [fits.txn_id]);
  for (const it of [long, edit]) {
    assert.equal(it.status, 'failed');
    assert.match(it.error, /too long.*32 KB/i);
  }
});

test('an edit (or a message) whose bodies fit but whose content is over 48 KiB as sent fails without being sent', async (t) => {
  const open = setup(t);
  const a = open(true);
  const edit = (text) => ({
    msgtype: 'm.text', body: `* ${text}`, 'm.new_content': { msgtype: 'm.text', body: text },
    'm.relates_to': { rel_type: 'm.replace', event_id: '$x' },
  });
  // An edit carries its text twice (the fallback "* …" and m.new_content): 26,000 characters
  // are 52 KB of content, within the body limit (32 KiB) and a frame (64 KiB), but over the
  // node's 48 KiB of content (M_TOO_LARGE, which no retry gets past).
  const editContent = edit('e'.repeat(26000));
  assert.match(tooLong(editContent, '!r:a.test', 'm.room.message'), /too long for an edit.*twice.*48 KB.*about 24 KB/i);
  const big = a.add('!r:a.test', 'm.room.message', editContent);
  // Bodies of 20 KB and 30 KB: each fits, the content they make does not.
  const formatted = a.add('!r:a.test', 'm.room.message', {
    msgtype: 'm.text', body: 'p'.repeat(20000), format: 'org.matrix.custom.html', formatted_body: `<p>${'p'.repeat(30000)}</p>`,
  });
  // A body of control characters: 11,000 bytes, but 6 bytes each once escaped in JSON.
  const escaped = a.add('!r:a.test', 'm.room.message', { msgtype: 'm.text', body: '\u0001'.repeat(11000) });
  const fits = a.add('!r:a.test', 'm.room.message', { msgtype: 'm.text', body: 'f'.repeat(32000) });
  await flush();
  assert.deepEqual(a.sent, [fits.txn_id]);
  assert.equal(big.status, 'failed');
  assert.match(big.error, /too long for an edit.*48 KB/i);
  for (const it of [formatted, escaped]) {
    assert.equal(it.status, 'failed');
    assert.match(it.error, /^too long: .*48 KB/i);
  }
  // The limit is on the content's JSON as sent: exactly 48 KiB goes, one byte more does not.
  const sized = (n) => ({ msgtype: 'm.text', body: 'b'.repeat(20000), format: 'org.matrix.custom.html', formatted_body: 'h'.repeat(n) });
  const exact = (48 << 10) - JSON.stringify(sized(0)).length;
  assert.equal(tooLong(sized(exact), '!r:a.test', 'm.room.message'), '');
  assert.match(tooLong(sized(exact + 1), '!r:a.test', 'm.room.message'), /too long.*48 KB/i);
  // An edit of about 24 KB of text fits; one of a short text is far from the limit.
  assert.equal(tooLong(edit('e'.repeat(24000)), '!r:a.test', 'm.room.message'), '');
  assert.equal(tooLong(edit('ok'), '!r:a.test', 'm.room.message'), '');
  // Content within its limit in a frame over 64 KiB (a long room id) is refused too.
  assert.match(tooLong(sized(exact), '!'.repeat(20000), 'm.room.message'), /too long.*64 KB/i);
});
