// Messages (and edits, reactions) not yet confirmed by the node. Each keeps its txn_id for
// every retry, so that a message whose first try did reach the node is not stored twice. The
// queue is kept in localStorage, so a reload does not lose what was typed either.
import { ConnectionError } from './conn.js';
import { loadJSON, newTxnId, saveJSON, sleep } from './util.js';

export class Outbox {
  /**
   * @param {object} o
   * @param {string} o.storageKey
   * @param {(item) => Promise<string>} o.send sends one item, resolves with the event id
   * @param {() => boolean} o.online
   * @param {() => void} o.changed
   */
  constructor(o) {
    Object.assign(this, o);
    this.items = loadJSON(this.storageKey, []).filter((it) => it && it.txn_id && it.room_id);
    for (const it of this.items) if (it.status === 'sending') it.status = 'queued';
    this.running = false;
  }

  save() {
    saveJSON(this.storageKey, this.items.filter((it) => !it.event_id));
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
        if (!this.online()) return;
        const it = this.items.find((x) => x.status === 'queued');
        if (!it) return;
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
