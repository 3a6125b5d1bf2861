// Entry point: the sign-in / sign-up screen, then the chat client.
import * as api from './api.js';
import { startClient } from './client.js';
import { h } from './dom.js';
import { revokeWaiting, startRevoking } from './revocation.js';
import { loadJSON, saveJSON } from './storage.js';

const SESSION_KEY = 'parley.session';
const root = document.getElementById('app');

const ERRORS = {
  M_FORBIDDEN: 'Wrong username or password.',
  M_USER_IN_USE: 'That username is taken. Pick another one.',
  M_INVALID_USERNAME: 'Usernames use lower-case letters, digits and . _ = - only.',
  M_WEAK_PASSWORD: 'Use a password of at least 8 characters.',
  M_LIMIT_EXCEEDED: 'Too many attempts. Wait a moment and try again.',
};
// The same code means something else when signing up: the node's config closed registration.
const REGISTER_ERRORS = { ...ERRORS, M_FORBIDDEN: 'Registration is closed on this server. Ask its administrator for an account.' };

let org = '';

function showAuth(notice) {
  let mode = 'login';
  const error = h('p', { class: 'form-error', role: 'alert', id: 'auth-error' });
  const username = h('input', {
    id: 'auth-username', name: 'username', autocomplete: 'username', required: true, autocapitalize: 'none',
    spellcheck: 'false', maxlength: '64', 'aria-describedby': 'auth-username-hint auth-error',
  });
  const password = h('input', {
    id: 'auth-password', name: 'password', type: 'password', autocomplete: 'current-password', required: true,
    'aria-describedby': 'auth-password-hint auth-error',
  });
  const hint = h('p', { class: 'hint', id: 'auth-username-hint' });
  const pwHint = h('p', { class: 'hint', id: 'auth-password-hint' });
  const submit = h('button', { type: 'submit', class: 'primary wide' });
  const title = h('h1', { id: 'auth-title' });
  const switchText = h('span');
  const switchBtn = h('button', { type: 'button', class: 'link', onclick: () => setMode(mode === 'login' ? 'register' : 'login') });

  function setMode(m) {
    mode = m;
    title.textContent = m === 'login' ? 'Log in to Parley' : 'Create your Parley account';
    submit.textContent = m === 'login' ? 'Log in' : 'Create account';
    switchText.textContent = m === 'login' ? 'New here? ' : 'Already have an account? ';
    switchBtn.textContent = m === 'login' ? 'Create an account' : 'Log in';
    password.setAttribute('autocomplete', m === 'login' ? 'current-password' : 'new-password');
    pwHint.textContent = m === 'login' ? '' : 'At least 8 characters.';
    hint.textContent = org ? `You will be @${username.value || 'name'}:${org}` : '';
    error.textContent = '';
  }
  username.addEventListener('input', () => {
    username.value = username.value.toLowerCase();
    hint.textContent = org ? `You will be @${username.value || 'name'}:${org}` : '';
  });

  const form = h('form', { class: 'auth-card', 'aria-labelledby': 'auth-title', novalidate: true },
    h('div', { class: 'brand', 'aria-hidden': 'true' }, h('span', { class: 'logo' }, 'P'), 'Parley'),
    title,
    notice ? h('p', { class: 'auth-notice', role: 'status' }, notice) : null,
    h('label', { for: 'auth-username' }, 'Username'), username, hint,
    h('label', { for: 'auth-password' }, 'Password'), password, pwHint,
    error, submit,
    h('p', { class: 'switch' }, switchText, switchBtn));

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    error.textContent = '';
    const u = username.value.trim().replace(/^@/, '').replace(/:.*$/, '');
    if (!u) {
      error.textContent = 'Enter your username.';
      username.focus();
      return;
    }
    if (!password.value) {
      error.textContent = 'Enter your password.';
      password.focus();
      return;
    }
    if (mode === 'register' && password.value.length < 8) {
      error.textContent = ERRORS.M_WEAK_PASSWORD;
      password.focus();
      return;
    }
    submit.disabled = true;
    form.setAttribute('aria-busy', 'true');
    try {
      const res = mode === 'login' ? await api.login(u, password.value) : await api.register(u, password.value);
      const session = { user_id: res.user_id, access_token: res.access_token };
      saveJSON(SESSION_KEY, session);
      run(session);
      revokeWaiting(); // the node answers now: the tokens of earlier logouts go too
    } catch (err) {
      error.textContent = (mode === 'login' ? ERRORS : REGISTER_ERRORS)[err.code] || err.message || 'Something went wrong.';
      submit.disabled = false;
      form.removeAttribute('aria-busy');
    }
  });

  setMode('login');
  root.replaceChildren(h('main', { class: 'auth' }, form));
  document.title = 'Parley';
  username.focus();
  if (!org) {
    api.health().then((hl) => {
      org = hl.org || '';
      setMode(mode);
    }, () => {});
  }
}

function run(session) {
  // Forgets the session unless another tab has already put a new one in its place.
  const forgetSession = () => {
    const cur = loadJSON(SESSION_KEY, null);
    if (!cur || cur.access_token === session.access_token) saveJSON(SESSION_KEY, null);
  };
  startClient(root, session, {
    sessionKey: SESSION_KEY,
    forgetSession,
    onLogout(notice) {
      forgetSession();
      showAuth(notice);
    },
  });
}

startRevoking();
const saved = loadJSON(SESSION_KEY, null);
if (saved && saved.user_id && saved.access_token) run(saved);
else showAuth();
