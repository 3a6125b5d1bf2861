// Unit tests of the revocation of logged-out tokens (src/revocation.js): tabs of one user share
// one localStorage, and none may lose a token another tab keeps there for revoking, or it would
// stay valid on the node for good. Each tab is its own instance of the module; the node's
// /v1/logout is a stand-in that records what it revoked.
import { test } from 'node:test';
import assert from 'node:assert/strict';

/**
 * localStorage as the tabs of one origin share it. between, when set, runs once right after a
 * read has returned its value: another tab's operation that lands between this tab's read and
 * its next write.
 */
class MemoryStorage {
  constructor() {
    this.m = new Map();
    this.between = null;
    this.full = false;
  }

  get length() {
    return this.m.size;
  }

  key(i) {
    return [...this.m.keys()][i] ?? null;
  }

  getItem(k) {
    const v = this.m.has(k) ? this.m.get(k) : null;
    const other = this.between;
    this.between = null;
    if (other) other();
    return v;
  }

  setItem(k, v) {
    if (this.full) throw new Error('QuotaExceededError');
    this.m.set(k, String(v));
  }

  removeItem(k) {
    this.m.delete(k);
  }
}

let tabCount = 0;

function setup(t) {
  const storage = new MemoryStorage();
  globalThis.localStorage = storage;
  const node = { reachable: true, revoked: [] };
  const realFetch = globalThis.fetch;
  globalThis.fetch = async (path, o) => {
    if (!node.reachable) throw new TypeError('fetch failed');
    assert.equal(path, '/v1/logout');
    node.revoked.push(o.headers.Authorization.replace(/^Bearer /, ''));
    return new Response('{}', { status: 200, headers: { 'Content-Type': 'application/json' } });
  };
  t.after(() => {
    delete globalThis.localStorage;
    globalThis.fetch = realFetch;
  });
  /** A tab of the user: a fresh instance of the module over the shared storage. */
  const open = () => import(`../src/revocation.js?tab=${++tabCount}`);
  /** Runs first, with other landing between one of its reads and its next write (or after it). */
  const interleaved = async (first, other) => {
    let ran = false;
    storage.between = () => {
      ran = true;
      other();
    };
    await first();
    storage.between = null;
    if (!ran) other();
  };
  return { storage, node, open, interleaved };
}

test('two tabs keeping a token each at once: both are revoked', async (t) => {
  const { node, open, interleaved } = setup(t);
  const a = await open();
  const b = await open();
  node.reachable = false;
  await interleaved(() => a.revokeLater('token-1'), () => b.revokeLater('token-2'));
  node.reachable = true;
  await (await open()).revokeWaiting();
  assert.deepEqual(node.revoked.sort(), ['token-1', 'token-2']);
});

test('a tab revoking its token while another keeps one: the other stays until revoked', async (t) => {
  const { storage, node, open, interleaved } = setup(t);
  const a = await open();
  const b = await open();
  node.reachable = false;
  a.revokeLater('token-1');
  assert.equal(await a.revoke('token-1'), false, 'not reached');
  node.reachable = true;
  // Tab A's revoke reaches the node, and forgets token-1 as tab B keeps token-2 (it logs out offline).
  await interleaved(() => a.revoke('token-1'), () => b.revokeLater('token-2'));
  assert.deepEqual(node.revoked, ['token-1']);
  await (await open()).revokeWaiting();
  assert.deepEqual(node.revoked, ['token-1', 'token-2'], 'token-2 was lost before it was revoked');
  assert.equal(storage.length, 0, 'revoked tokens are forgotten');
});

test('a token that cannot be stored (storage full) says so, and this page still revokes it', async (t) => {
  const { storage, node, open } = setup(t);
  const a = await open();
  storage.full = true;
  node.reachable = false;
  assert.equal(a.revokeLater('token-1'), false);
  assert.equal(await a.revoke('token-1'), false);
  node.reachable = true;
  await a.revokeWaiting();
  assert.deepEqual(node.revoked, ['token-1']);
  storage.full = false;
  assert.equal(a.revokeLater('token-2'), true);
});

test('tokens an older version kept in one list (parley.revoke) are revoked too', async (t) => {
  const { storage, node, open } = setup(t);
  storage.setItem('parley.revoke', JSON.stringify(['token-1', 'token-2']));
  await (await open()).revokeWaiting();
  assert.deepEqual(node.revoked.sort(), ['token-1', 'token-2']);
  assert.equal(storage.length, 0);
});
