// Logging out revokes the session's token on the node (/v1/logout). When the node cannot be
// reached (offline, the node down), forgetting the token in this browser would leave it valid
// on the node: it waits in localStorage (parley.revoke) and goes at the next chance, from this
// page (every RETRY_MS, and when the browser is back online) or the next one that loads. Only
// tokens of sessions logged out are there, never the one in use: a later login is not touched.
import * as api from './api.js';
import { loadJSON, saveJSON } from './storage.js';

const KEY = 'parley.revoke';
const RETRY_MS = 30000;

function waiting() {
  const v = loadJSON(KEY, []);
  return Array.isArray(v) ? v.filter((t) => typeof t === 'string' && t) : [];
}

function forget(token) {
  const rest = waiting().filter((t) => t !== token);
  saveJSON(KEY, rest.length ? rest : null);
}

/** Keeps the token for revoking, before anything else of the session is forgotten. */
export function revokeLater(token) {
  const list = waiting();
  if (!list.includes(token)) saveJSON(KEY, [...list, token]);
}

/**
 * Asks the node to revoke the token; resolves to whether it is gone there (revoked now, or
 * already). Not reached, or not able to answer, the token stays for a later try.
 */
export async function revoke(token) {
  try {
    await api.logout(token);
  } catch (err) {
    // 0: no answer; 408, 429, 5xx: worth asking again. Any other answer (401 M_UNKNOWN_TOKEN:
    // revoked already) will not change.
    if (err.status === 0 || err.status === 408 || err.status === 429 || err.status >= 500) return false;
  }
  forget(token);
  return true;
}

let busy = false;

/** Tries every token waiting, one at a time. */
export async function revokeWaiting() {
  if (busy) return;
  busy = true;
  try {
    for (const token of waiting()) await revoke(token);
  } finally {
    busy = false;
  }
}

/** Starts the tries: now, when the browser is back online, and every RETRY_MS while any wait. */
export function startRevoking() {
  revokeWaiting();
  window.addEventListener('online', () => revokeWaiting());
  setInterval(() => {
    if (waiting().length) revokeWaiting();
  }, RETRY_MS);
}
