// A user's or room's avatar: its colour and its letter.

export function colorClass(userId) {
  let n = 0;
  for (const ch of userId || '') n = (n * 31 + ch.codePointAt(0)) >>> 0;
  return `c${n % 8}`;
}

export function initial(name) {
  const s = (name || '?').replace(/^[@#!]/, '');
  return (Array.from(s)[0] || '?').toUpperCase();
}
