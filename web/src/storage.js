// localStorage as JSON, failing soft: with storage full or disabled the client still works
// for this tab.

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
