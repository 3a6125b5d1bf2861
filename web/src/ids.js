// Identifiers: those this client makes (txn ids, tab keys) and the parts of the node's
// (user and room ids).

export function randomId(bytes = 9) {
  const a = new Uint8Array(bytes);
  crypto.getRandomValues(a);
  return Array.from(a, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** A txn_id: unique per (user, message); the same one is reused for every retry. */
export function newTxnId() {
  return `w${Date.now().toString(36)}.${randomId(6)}`;
}

export function localpart(userId) {
  const m = /^@([^:]+):/.exec(userId || '');
  return m ? m[1] : userId || '';
}

export function orgOf(id) {
  const i = (id || '').indexOf(':');
  return i < 0 ? '' : id.slice(i + 1);
}
