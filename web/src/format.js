// Message bodies. Plain bodies are text nodes (with links made from http(s) URLs by DOM
// calls, never by parsing HTML). formatted_body is shown only after DOMPurify, with a
// short list of tags and attributes: defence in depth behind the node's own sanitizer.
import DOMPurify from 'dompurify';
import { h } from './dom.js';

const ALLOWED_TAGS = ['a', 'b', 'strong', 'i', 'em', 'u', 's', 'del', 'strike', 'code', 'pre', 'blockquote', 'p', 'br',
  'ul', 'ol', 'li', 'h1', 'h2', 'h3', 'h4', 'h5', 'h6', 'hr', 'span', 'sub', 'sup', 'table', 'thead', 'tbody', 'tr', 'th', 'td'];
const ALLOWED_ATTR = ['href', 'title'];

const purify = DOMPurify(window);
purify.addHook('afterSanitizeAttributes', (node) => {
  if (node.tagName === 'A') {
    const href = node.getAttribute('href') || '';
    if (!/^(https?:|mailto:)/i.test(href)) node.removeAttribute('href');
    node.setAttribute('rel', 'noopener noreferrer nofollow');
    node.setAttribute('target', '_blank');
  }
});

/** Sanitizes an HTML fragment into a DocumentFragment (no string goes into innerHTML). */
export function sanitizeToFragment(html) {
  return purify.sanitize(html, {
    ALLOWED_TAGS,
    ALLOWED_ATTR,
    ALLOW_DATA_ATTR: false,
    ALLOW_ARIA_ATTR: false,
    RETURN_DOM_FRAGMENT: true,
    ADD_ATTR: ['target'],
  });
}

const URL_RE = /\bhttps?:\/\/[^\s<>"']+[^\s<>"'.,;:!?)\]]/gi;

/** Text with http(s) links, as nodes. */
export function linkify(text) {
  const out = [];
  let last = 0;
  for (const m of text.matchAll(URL_RE)) {
    if (m.index > last) out.push(document.createTextNode(text.slice(last, m.index)));
    out.push(h('a', { href: m[0], rel: 'noopener noreferrer nofollow', target: '_blank' }, m[0]));
    last = m.index + m[0].length;
  }
  if (last < text.length) out.push(document.createTextNode(text.slice(last)));
  return out;
}

/** The body of an m.room.message content, as nodes. */
export function renderBody(content) {
  if (content.format === 'org.matrix.custom.html' && typeof content.formatted_body === 'string') {
    return h('div', { class: 'body html' }, sanitizeToFragment(content.formatted_body));
  }
  return h('div', { class: 'body' }, linkify(String(content.body ?? '')));
}

/** A one-line preview of a message (reply quotes, the reply bar, announcements). */
export function preview(content, max = 140) {
  const body = String((content && content.body) ?? '').replace(/\s+/g, ' ').trim();
  return body.length > max ? `${body.slice(0, max - 1)}…` : body;
}
