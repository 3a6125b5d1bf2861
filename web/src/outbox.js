// Messages (and edits, reactions) not yet confirmed by the node. Each keeps its txn_id for
// every retry, so that a message whose first try did reach the node is not stored twice. The
// queue is kept in localStorage, so a reload does not lose what was typed either.
//
// Every tab of the user keeps its queue under a key of its own, storageKey#TAB, so that two
// tabs never overwrite each other's queue. A tab with items refreshes its key's time now and
// then (HEARTBEAT_MS); a tab that closes or reloads marks its key free (release, on pagehide).
// A key that is free, or has not been refreshed for ORPHAN_MS (its tab crashed, or was killed),
// is adopted by the next tab that looks (at its start, then on every heartbeat): it takes the
// items over and sends them. Should two tabs adopt the same key at once, both send its items
// with the same txn_id, which the node stores once.
import { ConnectionError, MAX_FRAME_BYTES, frameBytes } from './conn.js';
import { newTxnId, randomId } from './ids.js';
import { loadJSON, saveJSON, storageKeys } from './storage.js';
import { sleep } from './timers.js';

const HEARTBEAT_MS = 10000;
// Sends refused M_UNKNOWN are tried again this often (after 1, 2 and 4 s) before they fail.
export const UNKNOWN_RETRIES = 3;
// Browsers slow down the timers of background tabs (down to once a minute): a live tab's key
// may go that long without a refresh.
export const ORPHAN_MS = 150000;
// The node refuses a message body over 32 KiB of UTF-8, and a content whose JSON (as sent) is
// over 48 KiB (M_TOO_LARGE); it closes the connection on a frame over its limit (1009): such a
// message is not sent, it fails at once, saying why.
export const MAX_BODY_BYTES = 32 << 10;
export const MAX_CONTENT_BYTES = 48 << 10;

const utf8 = new TextEncoder();

/**
 * Why content cannot be sent (a sentence for the user), or '' when it can: a body over the
 * node's limit, a content over its limit, or a send frame over the node's frame limit. An edit
 * carries its text twice (the fallback "* …" and m.new_content), so an edited text holds only
 * about half the content limit; a formatted_body counts too, and JSON's escapes (of control
 * characters, quotes, backslashes) make the content larger than its bodies.
 */
export function tooLong(content, roomId = '', type = 'm.room.message', txnId = newTxnId()) {
  const nc = content && content['m.new_content'];
  for (const body of [content && content.body, nc && nc.body]) {
    if (typeof body !== 'string' || body.length * 3 <= MAX_BODY_BYTES) continue; // short: no need to count
    const bytes = utf8.encode(body).length;
    if (bytes > MAX_BODY_BYTES) return `Too long: ${Math.ceil(bytes / 1024)} KB, the limit is ${MAX_BODY_BYTES >> 10} KB`;
  }
  // The node counts the content's bytes as they arrive: JSON.stringify's, as conn.js sends it.
  const contentBytes = utf8.encode(JSON.stringify(content) ?? '').length;
  if (contentBytes > MAX_CONTENT_BYTES) {
    const size = `${Math.ceil(contentBytes / 1024)} KB to send, the limit is ${MAX_CONTENT_BYTES >> 10} KB`;
    return nc
      ? `Too long for an edit, which carries its text twice: ${size}, so about ${MAX_CONTENT_BYTES >> 11} KB of edited text`
      : `Too long: ${size}`;
  }
  const bytes = frameBytes('send', { room_id: roomId, txn_id: txnId, type, content });
  if (bytes <= MAX_FRAME_BYTES) return '';
  return `Too long: ${Math.ceil(bytes / 1024)} KB to send, the limit is ${MAX_FRAME_BYTES >> 10} KB`;
}

export class Outbox {
  /**
   * @param {object} o
   * @param {string} o.storageKey this user's prefix: the keys are storageKey#TAB (storageKey
   *   alone, the single queue of older versions, is adopted too)
   * @param {(item) => Promise<string>} o.send sends one item, resolves with the event id
   * @param {() => boolean} o.online
   * @param {() => void} o.changed
   */
  constructor(o) {
    Object.assign(this, o);
    this.key = `${this.storageKey}#${randomId(6)}`;
    this.items = [];
    this.running = false;
    this.stopped = false;
    this.adopt(false); // the app sends them once it is online
    this.timer = setInterval(() => this.heartbeat(), HEARTBEAT_MS);
  }

  /**
   * Writes this tab's queue (the items not yet sent) with the time: this tab is alive. Reports
   * whether the queue is stored.
   */
  save(ts = Date.now()) {
    if (this.stopped) return false;
    const items = this.items.filter((it) => !it.event_id);
    return saveJSON(this.key, items.length ? { ts, items } : null);
  }

  /** The tab is going away (pagehide): its queue is free for the next tab to adopt. */
  release() {
    this.save(0);
  }

  /** No more sending and no more writing (logout): what is stored stays for clearing. */
  stop() {
    this.stopped = true;
    clearInterval(this.timer);
  }

  heartbeat() {
    if (this.stopped) return;
    if (this.items.some((it) => !it.event_id)) this.save();
    this.adopt();
  }

  /** Takes over the queues of the tabs that are gone, and the queue of older versions. */
  adopt(notify = true) {
    if (this.stopped) return;
    const now = Date.now();
    let adopted = 0;
    const taken = [];
    for (const key of storageKeys(this.storageKey)) {
      if (key === this.key || (key !== this.storageKey && !key.startsWith(`${this.storageKey}#`))) continue;
      const v = loadJSON(key, null);
      const old = Array.isArray(v);
      if (!old && v && typeof v.ts === 'number' && now - v.ts < ORPHAN_MS) continue; // its tab is alive
      taken.push(key);
      for (const it of (old ? v : v && v.items) || []) {
        if (!it || !it.txn_id || !it.room_id || it.event_id || this.items.some((x) => x.txn_id === it.txn_id)) continue;
        this.items.push({ ...it, status: it.status === 'failed' ? 'failed' : 'queued' });
        adopted++;
      }
    }
    if (!adopted) {
      // Nothing new in them: they go once this tab's queue (holding any repeats) is stored.
      if (taken.length && this.save()) for (const key of taken) saveJSON(key, null);
      return;
    }
    this.items.sort((a, b) => (a.ts || 0) - (b.ts || 0)); // sent in the order they were written
    // The adopted keys go only once this tab's queue holds their items: with storage full,
    // they stay for a later adoption (which skips what it has by txn_id).
    if (this.save()) for (const key of taken) saveJSON(key, null);
    if (!notify) return;
    this.changed();
    this.kick();
  }

  add(roomId, type, content) {
    const item = { txn_id: newTxnId(), room_id: roomId, type, content, status: 'queued', ts: Date.now() };
    this.items.push(item);
    this.save();
    this.changed();
    this.kick();
    return item;
  }

  forRoom(roomId) {
    return this.items.filter((it) => it.room_id === roomId);
  }

  /** The node's echo of our event: the item is done. */
  confirmed(txnId, eventId) {
    const i = this.items.findIndex((it) => it.txn_id === txnId || (eventId && it.event_id === eventId));
    if (i < 0) return;
    this.items.splice(i, 1);
    this.save();
    this.changed();
  }

  /** Forgets items the node has confirmed (a sync has delivered their events by now). */
  dropSent() {
    const n = this.items.length;
    this.items = this.items.filter((it) => !it.event_id);
    if (this.items.length !== n) this.changed();
  }

  retry(txnId) {
    const it = this.items.find((x) => x.txn_id === txnId);
    if (!it) return;
    it.status = 'queued';
    it.error = '';
    this.save();
    this.changed();
    this.kick();
  }

  discard(txnId) {
    this.items = this.items.filter((x) => x.txn_id !== txnId);
    this.save();
    this.changed();
  }

  /** Sends queued items one at a time, in order, while online. */
  async kick() {
    if (this.running) return;
    this.running = true;
    try {
      for (;;) {
        if (this.stopped || !this.online()) return;
        const it = this.items.find((x) => x.status === 'queued');
        if (!it) return;
        const why = tooLong(it.content, it.room_id, it.type, it.txn_id);
        if (why) {
          it.status = 'failed';
          it.error = why;
          this.save();
          this.changed();
          continue;
        }
        it.status = 'sending';
        this.changed();
        try {
          it.event_id = await this.send(it);
          it.status = 'sent';
          this.save();
          this.changed();
        } catch (err) {
          if (err instanceof ConnectionError) {
            it.status = 'queued'; // same txn_id again after the reconnect
            this.changed();
            return;
          }
          if (err.code === 'M_LIMIT_EXCEEDED' || err.code === 'M_UNAVAILABLE') {
            it.status = 'queued';
            this.changed();
            await sleep(Math.max(200, Math.min(err.retryAfterMs || 1000, 30000)));
            continue;
          }
          // M_UNKNOWN is the node's own trouble, a commit whose outcome it does not know (its
          // leader changed under it, say): the same txn_id again is safe, and usually goes
          // through. A few tries, then the user decides.
          if (err.code === 'M_UNKNOWN' && (it.unknownTries || 0) < UNKNOWN_RETRIES) {
            it.unknownTries = (it.unknownTries || 0) + 1;
            it.status = 'queued';
            this.changed();
            await sleep(1000 * 2 ** (it.unknownTries - 1));
            continue;
          }
          it.unknownTries = 0; // a Retry by hand gets its own tries
          it.status = 'failed';
          it.error = err.message || err.code;
          this.save();
          this.changed();
        }
      }
    } finally {
      this.running = false;
    }
  }
}
