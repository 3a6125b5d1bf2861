// Logging out revokes the session's token on the node (/v1/logout). When the node cannot be
// reached (offline, the node down), forgetting the token in this browser would leave it valid
// on the node: it waits in localStorage (parley.revoke.TOKEN) and goes at the next chance, from
// this page (every RETRY_MS, and when the browser is back online) or the next one that loads.
// Only tokens of sessions logged out are there, never the one in use: a later login is not
// touched. Each token has a key of its own, so that tabs keeping and forgetting tokens at once
// never write over each other's (the key shows no more than its value, the token, would).
// A token that cannot be stored (storage full or disabled) waits in this page only.
import * as api from './api.js';
import { loadJSON, saveJSON, storageKeys } from './storage.js';

const PREFIX = 'parley.revoke.';
// The single list of older versions, moved to keys of their own.
const LEGACY_KEY = 'parley.revoke';
const RETRY_MS = 30000;

const inPage = new Set();

const keyOf = (token) => PREFIX + token;

function adoptLegacy() {
  const list = loadJSON(LEGACY_KEY, null);
  if (!Array.isArray(list)) return;
  const kept = list.filter((t) => typeof t === 'string' && t).every((t) => saveJSON(keyOf(t), t));
  if (kept) saveJSON(LEGACY_KEY, null);
}

function waiting() {
  adoptLegacy();
  const stored = storageKeys(PREFIX).map((k) => loadJSON(k, null)).filter((t) => typeof t === 'string' && t);
  return [...new Set([...stored, ...inPage])];
}

function forget(token) {
  inPage.delete(token);
  saveJSON(keyOf(token), null);
}

/**
 * Keeps the token for revoking, before anything else of the session is forgotten. Reports
 * whether it is stored; if not, only this page can still revoke it.
 */
export function revokeLater(token) {
  if (saveJSON(keyOf(token), token)) return true;
  inPage.add(token);
  return false;
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
