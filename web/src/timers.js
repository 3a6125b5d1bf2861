// Waiting: a debounced call, a pause.

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
