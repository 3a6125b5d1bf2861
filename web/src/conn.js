// The WebSocket connection to the node: auth, request/reply by id, pushes, and reconnecting
// with exponential backoff and jitter. What to do once authenticated (sync, re-send) is the
// app's business: see onReady. A node that refuses a connection for a rate limit
// (M_LIMIT_EXCEEDED, to the auth request or as a frame of its own before closing with 1013)
// says how long to wait in retry_after_ms: no reconnect comes before that, "Retry now" and the
// browser's online event included.

export class ProtocolError extends Error {
  constructor(frame) {
    super(frame.message || frame.code || 'error');
    this.code = frame.code || 'M_UNKNOWN';
    this.retryAfterMs = frame.retry_after_ms;
  }
}

/** The connection dropped (or was not open) before the reply came. */
export class ConnectionError extends Error {
  constructor(msg = 'not connected') {
    super(msg);
    this.code = 'DISCONNECTED';
  }
}

const utf8 = new TextEncoder();
// The node's default ws.max_frame_bytes: it closes the connection (1009) on a larger frame.
export const MAX_FRAME_BYTES = 64 << 10;
const PING_EVERY_MS = 25000;
const REQUEST_TIMEOUT_MS = 20000;
const MAX_BACKOFF_MS = 15000;

function frameOf(op, params, id) {
  return JSON.stringify({ ...params, op, id });
}

/** The size in bytes of a request's frame, with an id as long as any this client gives. */
export function frameBytes(op, params) {
  return utf8.encode(frameOf(op, params, `r${Number.MAX_SAFE_INTEGER}`)).length;
}

export class Connection {
  /**
   * @param {object} o
   * @param {string} o.url ws:// or wss:// URL of /v1/ws
   * @param {string} o.token access token
   * @param {(frame: object) => void} o.onPush event/typing/receipt/presence frames
   * @param {() => Promise<void>} o.onReady called after auth; resolve when resumed
   * @param {(state: object) => void} o.onState {status: 'connecting'|'online'|'offline', retryAt?}
   * @param {(code: string) => void} o.onAuthFailed the token is no longer valid
   */
  constructor(o) {
    Object.assign(this, o);
    this.ws = null;
    this.seq = 0;
    this.pending = new Map();
    // The largest frame of ours the node has answered: one no larger is within its limit.
    this.largestAnswered = 0;
    this.attempt = 0;
    this.timer = 0;
    this.pingTimer = 0;
    this.stopped = false;
    this.status = 'offline';
    this.everOnline = false;
    this.notBefore = 0; // no reconnect before this time (ms): the node's retry_after_ms
  }

  start() {
    this.stopped = false;
    this.open();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    clearInterval(this.pingTimer);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.close(1000, 'bye');
    }
    this.failPending(new ConnectionError('stopped'));
  }

  /**
   * Reconnect now instead of waiting for the backoff (a "Retry now" button, going online);
   * while the node's retry_after_ms runs, at its end.
   */
  retryNow() {
    if (this.stopped || this.ws) return;
    const wait = this.notBefore - Date.now();
    if (wait > 0) {
      this.armReconnect(wait, true);
      return;
    }
    clearTimeout(this.timer);
    this.open();
  }

  /** The node asked to wait ms before trying again (retry_after_ms of M_LIMIT_EXCEEDED). */
  holdOff(ms) {
    if (!(typeof ms === 'number' && ms > 0 && Number.isFinite(ms))) return;
    this.notBefore = Math.max(this.notBefore, Date.now() + ms);
    // A reconnect already planned (the close came first) moves back as well.
    if (!this.ws && !this.stopped && this.status === 'offline') this.armReconnect(Math.max(0, this.notBefore - Date.now()), true);
  }

  /** Drop the socket as if the network failed; the usual reconnect follows. */
  drop() {
    if (this.ws) this.ws.close(4000, 'client reset');
  }

  setState(status, extra = {}) {
    this.status = status;
    this.onState({ status, attempt: this.attempt, everOnline: this.everOnline, ...extra });
  }

  open() {
    this.setState('connecting');
    let ws;
    try {
      ws = new WebSocket(this.url);
    } catch {
      this.scheduleReconnect();
      return;
    }
    this.ws = ws;
    let authed = false;
    ws.onopen = async () => {
      try {
        await this.rawRequest(ws, 'auth', { token: this.token });
      } catch (err) {
        if (err instanceof ProtocolError && (err.code === 'M_UNKNOWN_TOKEN' || err.code === 'M_MISSING_TOKEN')) {
          this.stopped = true;
          this.onAuthFailed(err.code);
        } else {
          // Over a connection limit: not again before retry_after_ms.
          if (err instanceof ProtocolError) this.holdOff(err.retryAfterMs);
          // No answer in time, or another error (a node too busy to serve): start over with
          // the usual backoff rather than wait on this connection for good.
          if (this.ws === ws) ws.close(4000, 'auth failed');
        }
        return;
      }
      authed = true;
      try {
        await this.onReady();
      } catch (err) {
        // Could not resume (node catching up, connection dropped): start over.
        if (err instanceof ProtocolError) this.holdOff(err.retryAfterMs);
        if (this.ws === ws) ws.close(4000, 'resume failed');
        return;
      }
      if (this.ws !== ws) return;
      this.attempt = 0;
      this.everOnline = true;
      this.setState('online');
      clearInterval(this.pingTimer);
      this.pingTimer = setInterval(() => this.keepalive(ws), PING_EVERY_MS);
    };
    ws.onmessage = (msg) => {
      let frame;
      try {
        frame = JSON.parse(msg.data);
      } catch {
        return;
      }
      if (frame.op === 'ok' || frame.op === 'error') {
        const p = this.pending.get(frame.id);
        if (p) {
          this.pending.delete(frame.id);
          clearTimeout(p.timer);
          this.largestAnswered = Math.max(this.largestAnswered, p.bytes);
          if (frame.op === 'ok') p.resolve(frame);
          else p.reject(new ProtocolError(frame));
        } else if (frame.op === 'error' && !authed && (frame.code === 'M_UNKNOWN_TOKEN' || frame.code === 'M_MISSING_TOKEN')) {
          this.stopped = true;
          this.onAuthFailed(frame.code);
        } else if (frame.op === 'error' && frame.code === 'M_LIMIT_EXCEEDED') {
          // A refusal of the connection itself (too many unauthenticated connections), without
          // an id; the close (1013) follows.
          this.holdOff(frame.retry_after_ms);
        }
        return;
      }
      this.onPush(frame);
    };
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      this.ws = null;
      clearInterval(this.pingTimer);
      // 1009: a frame of ours was over the node's limit (ws.max_frame_bytes). It is the
      // largest request still waiting (the node reads in order and never answered it): it fails
      // for good, or the outbox would send it again after every reconnect, and lose the
      // connection each time.
      if (ev.code === 1009) this.failLargest();
      this.failPending(new ConnectionError('connection closed'));
      if (ev.code === 4001 && !authed) {
        this.stopped = true;
        this.onAuthFailed('M_UNKNOWN_TOKEN');
        return;
      }
      if (!this.stopped) this.scheduleReconnect();
    };
  }

  scheduleReconnect() {
    this.ws = null;
    const base = Math.min(MAX_BACKOFF_MS, 500 * 2 ** this.attempt);
    const delay = Math.round(base / 2 + Math.random() * (base / 2));
    this.attempt++;
    this.armReconnect(delay, false);
  }

  /**
   * Opens again after delay ms, or when the node's retry_after_ms is over if that is later
   * (plus a little jitter, so that the clients it refused do not all come back at once).
   */
  armReconnect(delay, exact) {
    const wait = this.notBefore - Date.now();
    const busy = wait > 0;
    if (busy && wait >= delay) delay = exact ? wait : wait + Math.round(Math.random() * Math.min(1000, wait / 4));
    this.setState('offline', { retryAt: Date.now() + delay, busy });
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.open(), delay);
  }

  async keepalive(ws) {
    try {
      await this.rawRequest(ws, 'ping', {}, 10000);
    } catch (err) {
      if (err.code === 'TIMEOUT' && this.ws === ws) ws.close(4000, 'ping timeout');
    }
  }

  failLargest() {
    let worst = null;
    for (const [id, p] of this.pending) if (!worst || p.bytes > this.pending.get(worst).bytes) worst = id;
    if (worst == null) return;
    const p = this.pending.get(worst);
    // Not one the node could have taken: the frame over its limit is gone already (timed
    // out), and this one fails as a dropped connection's requests do.
    if (p.bytes <= this.largestAnswered) return;
    this.pending.delete(worst);
    clearTimeout(p.timer);
    p.reject(new ProtocolError({ code: 'M_TOO_LARGE', message: 'too large for the server' }));
  }

  failPending(err) {
    for (const p of this.pending.values()) {
      clearTimeout(p.timer);
      p.reject(err);
    }
    this.pending.clear();
  }

  rawRequest(ws, op, params = {}, timeoutMs = REQUEST_TIMEOUT_MS) {
    return new Promise((resolve, reject) => {
      if (!ws || ws.readyState !== WebSocket.OPEN) {
        reject(new ConnectionError());
        return;
      }
      const id = `r${++this.seq}`;
      const timer = setTimeout(() => {
        if (this.pending.delete(id)) {
          const e = new ConnectionError('request timed out');
          e.code = 'TIMEOUT';
          reject(e);
        }
      }, timeoutMs);
      const frame = frameOf(op, params, id);
      this.pending.set(id, { resolve, reject, timer, bytes: utf8.encode(frame).length });
      ws.send(frame);
    });
  }

  /** Sends a request on the current connection: resolves with the ok frame. */
  request(op, params, timeoutMs) {
    return this.rawRequest(this.ws, op, params, timeoutMs);
  }
}
