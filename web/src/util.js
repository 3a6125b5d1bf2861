// Small DOM and text helpers. Text always goes in as text nodes: nothing here parses HTML.

/**
 * h('button', {class: 'x', onclick: fn, 'aria-label': 'Send'}, 'text', childNode, [more])
 * Attributes are set with setAttribute (never a style attribute: the CSP forbids inline
 * styles); children that are not nodes become text nodes.
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v == null || v === false) continue;
      if (k === 'class') el.className = v;
      else if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
      else if (k === 'value') el.value = v;
      else el.setAttribute(k, v === true ? '' : String(v));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c == null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

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

export function colorClass(userId) {
  let n = 0;
  for (const ch of userId || '') n = (n * 31 + ch.codePointAt(0)) >>> 0;
  return `c${n % 8}`;
}

export function initial(name) {
  const s = (name || '?').replace(/^[@#!]/, '');
  return (Array.from(s)[0] || '?').toUpperCase();
}

const timeFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const dayFmt = new Intl.DateTimeFormat(undefined, { weekday: 'long', month: 'long', day: 'numeric', year: 'numeric' });
const fullFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'medium' });

export const formatTime = (ts) => timeFmt.format(new Date(ts));
export const formatFull = (ts) => fullFmt.format(new Date(ts));

export function dayKey(ts) {
  const d = new Date(ts);
  return `${d.getFullYear()}-${d.getMonth()}-${d.getDate()}`;
}

export function formatDay(ts) {
  const today = dayKey(Date.now());
  const yesterday = dayKey(Date.now() - 86400000);
  const k = dayKey(ts);
  if (k === today) return 'Today';
  if (k === yesterday) return 'Yesterday';
  return dayFmt.format(new Date(ts));
}

export function debounce(fn, ms) {
  let t = 0;
  const d = (...args) => {
    clearTimeout(t);
    t = setTimeout(() => fn(...args), ms);
  };
  d.cancel = () => clearTimeout(t);
  return d;
}

export function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

export function loadJSON(key, fallback) {
  try {
    const v = localStorage.getItem(key);
    return v == null ? fallback : JSON.parse(v);
  } catch {
    return fallback;
  }
}

/** Stores value under key (null removes it); reports whether that worked. */
export function saveJSON(key, value) {
  try {
    if (value == null) localStorage.removeItem(key);
    else localStorage.setItem(key, JSON.stringify(value));
    return true;
  } catch {
    /* storage full or disabled: the client still works for this tab */
    return false;
  }
}

/** The localStorage keys that start with prefix. */
export function storageKeys(prefix) {
  const keys = [];
  try {
    for (let i = 0; i < localStorage.length; i++) {
      const k = localStorage.key(i);
      if (k != null && k.startsWith(prefix)) keys.push(k);
    }
  } catch {
    /* storage disabled */
  }
  return keys;
}
