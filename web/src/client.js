// The chat client: state kept in sync with the node over one WebSocket, and the view.
import * as api from './api.js';
import { colorClass, initial } from './avatar.js';
import { Connection, ConnectionError } from './conn.js';
import { dayKey, formatDay, formatFull, formatTime } from './dates.js';
import { h } from './dom.js';
import { preview, renderBody } from './format.js';
import { localpart, orgOf } from './ids.js';
import { Outbox, tooLong } from './outbox.js';
import { revoke, revokeLater } from './revocation.js';
import { Room, isCountable, isShown } from './room.js';
import { loadJSON, saveJSON, storageKeys } from './storage.js';
import { debounce } from './timers.js';

const REACTIONS = ['👍', '❤️', '😂', '🎉', '😮', '😢'];
const GROUP_MS = 5 * 60 * 1000;
const REPEAT_GRACE_MS = 3000;

export function startClient(root, session, hooks) {
  const me = session.user_id;
  const myOrg = orgOf(me);
  const S = {
    rooms: new Map(),
    currentId: loadJSON(`parley.room.${me}`, null),
    next: null,
    syncing: false,
    buffer: [],
    presence: new Map([[me, 'online']]),
    readPos: loadJSON(`parley.read.${me}`, {}),
    sentRead: new Map(),
    replyTo: null,
    editing: null,
    view: 'room', // on narrow screens: 'rooms' (the list) or 'room'
    membersOpen: window.matchMedia('(min-width: 1100px)').matches,
    stickBottom: true,
    rovingKey: null,
    conn: null,
    connState: { status: 'connecting', everOnline: false },
    typingSentRoom: null,
    typingSentAt: 0,
    stopped: false,
    backOnlineUntil: 0,
  };
  if (!window.matchMedia('(min-width: 720px)').matches) S.view = 'rooms';

  const outbox = new Outbox({
    storageKey: `parley.outbox.${me}`,
    online: () => S.connState.status === 'online',
    send: async (it) => {
      try {
        const ws = S.conn.ws;
        const res = await S.conn.request('send', { room_id: it.room_id, txn_id: it.txn_id, type: it.type, content: it.content });
        // The event's push comes with the ok. When it has not come a while later on the same
        // connection, the node answered a repeat of a txn_id it stored before (the first try's
        // reply was lost) with an event older than what this client loaded (a limited sync
        // after a long disconnect): it shows in its place when paging back, not as a copy left
        // pending at the bottom (nor, for an edit, over later edits). After a reconnect the
        // sync confirms it instead (or dropSent forgets it).
        setTimeout(() => {
          if (S.stopped || S.conn.ws !== ws) return;
          const room = S.rooms.get(it.room_id);
          if (!room || !room.byId.has(res.event_id)) outbox.confirmed(it.txn_id, res.event_id);
        }, REPEAT_GRACE_MS);
        return res.event_id;
      } catch (err) {
        // No answer in time: take the connection as broken. The reconnect syncs, then the
        // outbox sends again with the same txn_id.
        if (err.code === 'TIMEOUT') S.conn.drop();
        throw err;
      }
    },
    changed: () => invalidate('timeline', 'rooms'),
  });
  // The window's and document's listeners end with this client (shutdown): after a logout and
  // a login in the same page, the old client must not stay reachable through them.
  const listening = new AbortController();
  const { signal } = listening;

  // Closing or reloading the tab leaves its queue to the next tab (or the reloaded page).
  window.addEventListener('pagehide', () => outbox.release(), { signal });
  // Back from the back/forward cache, its queue is this tab's again, unless the user logged out
  // meanwhile (this page missed the storage event): then nothing of theirs is written back.
  window.addEventListener('pageshow', (e) => {
    if (!e.persisted || S.stopped) return;
    const cur = loadJSON(hooks.sessionKey, null);
    if (!cur || cur.access_token !== session.access_token) {
      stopTyping();
      shutdown();
      hooks.onLogout('You were logged out in another tab.');
      return;
    }
    outbox.save();
  }, { signal });

  // ---------------------------------------------------------------- the shell

  const E = {};
  E.banner = h('div', { class: 'banner', role: 'status', 'aria-live': 'polite', hidden: true });
  E.announcer = h('div', { class: 'sr-only', 'aria-live': 'polite', id: 'announcer' });
  E.roomList = h('ul', { class: 'room-list', 'aria-label': 'Rooms' });
  E.inviteList = h('ul', { class: 'room-list invites', 'aria-label': 'Invitations' });
  E.invitesHead = h('h2', { class: 'section', hidden: true }, 'Invitations');
  E.sidebar = h('aside', { class: 'sidebar', 'aria-label': 'Rooms and account' },
    h('header', { class: 'side-head' },
      h('div', { class: 'brand' }, h('span', { class: 'logo', 'aria-hidden': 'true' }, 'P'), 'Parley')),
    h('div', { class: 'side-actions' },
      h('button', { type: 'button', class: 'primary', onclick: createRoomDialog }, 'New room'),
      h('button', { type: 'button', onclick: () => joinRoomDialog() }, 'Join room')),
    E.invitesHead, E.inviteList,
    h('h2', { class: 'section' }, 'Rooms'),
    h('nav', { 'aria-label': 'Your rooms' }, E.roomList),
    h('footer', { class: 'me' },
      h('span', { class: `avatar small ${colorClass(me)}`, 'aria-hidden': 'true' }, initial(localpart(me))),
      h('span', { class: 'me-id', title: me }, me),
      h('button', { type: 'button', class: 'small', onclick: logout }, 'Log out')));

  E.title = h('h2', { class: 'room-title', id: 'room-title' });
  E.subtitle = h('p', { class: 'room-sub' });
  E.back = h('button', { type: 'button', class: 'icon back', 'aria-label': 'Back to rooms', onclick: () => { S.view = 'rooms'; invalidate('layout'); } }, '←');
  E.membersBtn = h('button', {
    type: 'button', class: 'members-toggle', 'aria-controls': 'members', 'aria-expanded': 'false',
    onclick: () => { S.membersOpen = !S.membersOpen; invalidate('layout', 'members'); if (S.membersOpen) fetchMembers(); },
  });
  E.roomHead = h('header', { class: 'room-head' }, E.back, h('div', { class: 'room-names' }, E.title, E.subtitle), E.membersBtn);
  E.events = h('ol', { class: 'events', 'aria-labelledby': 'room-title' });
  E.older = h('div', { class: 'older' });
  E.jump = h('button', { type: 'button', class: 'jump', hidden: true, onclick: () => { S.stickBottom = true; scrollToBottom(); markRead(); } }, '↓ New messages');
  E.timeline = h('div', { class: 'timeline', tabindex: '-1' }, E.older, E.events);
  E.typing = h('div', { class: 'typing', 'aria-live': 'polite' });
  E.context = h('div', { class: 'composer-context', hidden: true });
  E.input = h('textarea', {
    id: 'composer', rows: '1', placeholder: 'Message', 'aria-label': 'Message', enterkeyhint: 'send',
    'aria-describedby': 'composer-help composer-error',
  });
  E.send = h('button', { type: 'submit', class: 'primary send', 'aria-label': 'Send' }, 'Send');
  E.composerError = h('p', { class: 'form-error composer-error', role: 'alert', id: 'composer-error' });
  E.composer = h('form', { class: 'composer', 'aria-label': 'Write a message' },
    E.context, E.composerError,
    h('div', { class: 'composer-row' }, E.input, E.send),
    h('p', { class: 'sr-only', id: 'composer-help' }, 'Enter sends, Shift+Enter starts a new line, Up edits your last message, Escape cancels a reply or an edit.'));
  E.roomView = h('div', { class: 'room-view' }, E.roomHead, h('div', { class: 'timeline-wrap' }, E.timeline, E.jump), E.typing, E.composer);
  E.empty = h('div', { class: 'empty' });
  E.main = h('main', { class: 'main', 'aria-label': 'Conversation' }, E.roomView, E.empty);
  E.memberList = h('ul', { class: 'member-list' });
  E.membersHead = h('h2', { id: 'members-title' }, 'Members');
  E.members = h('aside', { class: 'members', id: 'members', 'aria-labelledby': 'members-title' },
    h('header', { class: 'members-head' }, E.membersHead,
      h('button', { type: 'button', class: 'icon', 'aria-label': 'Close the member list', onclick: () => { S.membersOpen = false; invalidate('layout'); E.membersBtn.focus(); } }, '✕')),
    E.memberList,
    h('footer', { class: 'members-foot' },
      h('button', { type: 'button', onclick: inviteDialog }, 'Invite someone'),
      h('button', { type: 'button', class: 'danger', onclick: leaveRoom }, 'Leave room')));
  E.shell = h('div', { class: 'shell' }, E.sidebar, E.main, E.members);
  E.members.addEventListener('keydown', (e) => {
    if (e.key === 'Escape' && !window.matchMedia('(min-width: 1100px)').matches) {
      S.membersOpen = false;
      invalidate('layout');
      E.membersBtn.focus();
    }
  });
  E.skip = h('a', { href: '#composer', class: 'skip', onclick: (e) => { e.preventDefault(); E.input.focus(); } }, 'Skip to the message box');
  root.replaceChildren(E.skip, E.banner, E.shell, E.announcer);

  const caches = { rooms: new Map(), invites: new Map(), events: new Map(), members: new Map() };

  // ---------------------------------------------------------------- rendering

  const dirty = new Set();
  let renderQueued = false;
  function invalidate(...parts) {
    for (const p of parts) dirty.add(p);
    if (!renderQueued) {
      renderQueued = true;
      setTimeout(flush, 0);
    }
  }

  function flush() {
    renderQueued = false;
    if (S.stopped) return;
    const d = new Set(dirty);
    dirty.clear();
    if (d.has('layout') || d.has('all')) renderLayout();
    if (d.has('rooms') || d.has('all')) renderRooms();
    if (d.has('header') || d.has('all')) renderHeader();
    if (d.has('timeline') || d.has('all')) renderTimeline();
    if (d.has('typing') || d.has('all')) renderTyping();
    if (d.has('members') || d.has('all')) renderMembers();
    if (d.has('banner') || d.has('all')) renderBanner();
    if (d.has('context') || d.has('all')) renderContext();
  }

  const current = () => (S.currentId ? S.rooms.get(S.currentId) : null);

  function renderLayout() {
    const room = current();
    const joined = room && room.membership === 'join';
    E.shell.dataset.view = joined ? S.view : 'rooms';
    E.shell.classList.toggle('members-open', !!(joined && S.membersOpen));
    E.roomView.hidden = !joined;
    E.empty.hidden = !!joined;
    E.members.hidden = !(joined && S.membersOpen);
    E.membersBtn.setAttribute('aria-expanded', String(!!(joined && S.membersOpen)));
    if (!joined) renderEmpty();
  }

  function renderEmpty() {
    const joinedCount = [...S.rooms.values()].filter((r) => r.membership === 'join').length;
    E.empty.replaceChildren(h('div', { class: 'empty-card' },
      h('h2', null, `Welcome, ${localpart(me)}`),
      h('p', null, !S.synced ? 'Loading your rooms…' : joinedCount ? 'Pick a room, or start something new.' : `You are not in any room yet. Create one, or join one by its address, like #general:${myOrg}.`),
      h('div', { class: 'empty-actions' },
        h('button', { type: 'button', class: 'primary', onclick: createRoomDialog }, 'Create a room'),
        h('button', { type: 'button', onclick: () => joinRoomDialog() }, 'Join a room'))));
  }

  function unreadCount(room) {
    if (room.membership !== 'join') return 0;
    let marker = S.readPos[room.id];
    if (marker == null) {
      // No marker from this browser yet: what came after my own last event is unread.
      marker = 0;
      for (let i = room.events.length - 1; i >= 0; i--) {
        if (room.events[i].sender === me) {
          marker = room.events[i].stream_pos || 0;
          break;
        }
      }
    }
    let n = 0;
    for (let i = room.events.length - 1; i >= 0; i--) {
      const ev = room.events[i];
      if ((ev.stream_pos || 0) <= marker) break;
      if (isCountable(ev, me)) n++;
    }
    return n;
  }

  function renderRooms() {
    const rooms = [...S.rooms.values()];
    const joined = rooms.filter((r) => r.membership === 'join').sort((a, b) => a.displayName.localeCompare(b.displayName) || a.id.localeCompare(b.id));
    const invites = rooms.filter((r) => r.membership === 'invite');
    let total = 0;
    const items = joined.map((room) => {
      const n = unreadCount(room);
      total += n;
      const sel = room.id === S.currentId;
      const pending = outbox.forRoom(room.id).some((it) => it.status !== 'sent');
      const more = n > 0 && room.start && !room.historyComplete && n >= countCountable(room);
      const label = n ? `${n}${more ? '+' : ''}` : '';
      return {
        key: room.id,
        sig: `${room.displayName}|${label}|${sel}|${pending}`,
        build: () => h('li', null, h('button', {
          type: 'button', class: `room-item${n ? ' unread' : ''}`, 'aria-current': sel ? 'page' : null,
          'data-fk': 'open', onclick: () => selectRoom(room.id, true),
          'aria-label': `${room.displayName}${n ? `, ${label} unread` : ''}${pending ? ', sending' : ''}`,
        },
        h('span', { class: `avatar small ${colorClass(room.id)}`, 'aria-hidden': 'true' }, initial(room.displayName)),
        h('span', { class: 'room-name' }, room.displayName),
        pending ? h('span', { class: 'pending-dot', 'aria-hidden': 'true', title: 'Sending' }, '⋯') : null,
        n ? h('span', { class: 'badge', 'aria-hidden': 'true' }, label) : null)),
      };
    });
    reconcile(E.roomList, caches.rooms, items);
    if (!joined.length) {
      E.roomList.replaceChildren(h('li', { class: 'none' }, S.synced ? 'No rooms yet' : 'Loading…'));
      caches.rooms.clear();
    }
    E.invitesHead.hidden = !invites.length;
    reconcile(E.inviteList, caches.invites, invites.map((room) => ({
      key: room.id,
      sig: room.displayName,
      build: () => h('li', { class: 'invite' },
        h('span', { class: 'room-name' }, room.displayName),
        h('span', { class: 'invite-actions' },
          h('button', { type: 'button', class: 'primary small', 'data-fk': 'accept', onclick: () => acceptInvite(room), 'aria-label': `Accept the invitation to ${room.displayName}` }, 'Accept'),
          h('button', { type: 'button', class: 'small', 'data-fk': 'decline', onclick: () => declineInvite(room), 'aria-label': `Decline the invitation to ${room.displayName}` }, 'Decline'))),
    })));
    document.title = total ? `(${total}) Parley` : 'Parley';
  }

  function countCountable(room) {
    return room.events.reduce((n, ev) => n + (isCountable(ev, me) ? 1 : 0), 0);
  }

  function renderHeader() {
    const room = current();
    if (!room) return;
    E.title.textContent = room.displayName;
    const bits = [];
    if (room.alias && room.alias !== room.displayName) bits.push(room.alias);
    if (room.topic) bits.push(room.topic);
    E.subtitle.textContent = bits.join(' · ');
    E.subtitle.hidden = !bits.length;
    const n = room.members ? room.members.filter((m) => m.membership === 'join').length : room.memberCount;
    E.membersBtn.textContent = `Members · ${n || 0}`;
    E.roomView.dataset.roomId = room.id;
  }

  function renderTyping() {
    const room = current();
    const who = room ? room.typing.filter((u) => u !== me).map(localpart) : [];
    let text = '';
    if (who.length === 1) text = `${who[0]} is typing…`;
    else if (who.length === 2) text = `${who[0]} and ${who[1]} are typing…`;
    else if (who.length > 2) text = `${who.length} people are typing…`;
    if (E.typing.textContent !== text) E.typing.textContent = text;
  }

  function renderBanner() {
    const st = S.connState;
    let text = '';
    let retry = false;
    if (st.status === 'offline') {
      const secs = Math.max(0, Math.ceil(((st.retryAt || Date.now()) - Date.now()) / 1000));
      if (st.busy) text = `The server is busy. Reconnecting in ${secs} s…`;
      else text = st.everOnline ? `Connection lost. Reconnecting in ${secs} s…` : `Cannot reach the server. Retrying in ${secs} s…`;
      retry = true;
    } else if (st.status === 'connecting') {
      text = st.everOnline ? 'Reconnecting…' : 'Connecting…';
    } else if (Date.now() < S.backOnlineUntil) {
      text = 'Back online.';
    }
    E.banner.hidden = !text;
    E.banner.className = `banner ${st.status}`;
    E.banner.replaceChildren(h('span', null, text),
      retry ? h('button', { type: 'button', class: 'small', onclick: () => S.conn.retryNow() }, 'Retry now') : null);
  }

  const bannerTimer = setInterval(() => {
    if (S.stopped) clearInterval(bannerTimer);
    else if (S.connState.status === 'offline' || (S.backOnlineUntil && Date.now() < S.backOnlineUntil + 1500)) invalidate('banner');
  }, 1000);

  function renderContext() {
    const room = current();
    const target = room && (S.replyTo || S.editing) ? room.byId.get(S.replyTo || S.editing) : null;
    if (!target) {
      S.replyTo = null;
      S.editing = null;
      E.context.hidden = true;
      E.context.replaceChildren();
      E.composer.classList.remove('editing');
      return;
    }
    E.context.hidden = false;
    E.composer.classList.toggle('editing', !!S.editing);
    const label = S.editing ? 'Editing your message' : `Replying to ${localpart(target.sender)}`;
    E.context.replaceChildren(
      h('span', { class: 'ctx-label' }, label),
      h('span', { class: 'ctx-text' }, preview(displayContent(room, target) || {}, 80)),
      h('button', { type: 'button', class: 'icon small', 'aria-label': S.editing ? 'Cancel the edit' : 'Cancel the reply', onclick: cancelContext }, '✕'));
  }

  function cancelContext() {
    if (S.editing) E.input.value = '';
    S.replyTo = null;
    S.editing = null;
    autosize();
    invalidate('context');
    E.input.focus();
  }

  // ------------------------------------------------------------- the timeline

  function displayContent(room, ev) {
    // An edit on its way shows at once; one the node refused does not (it shows as not sent).
    const pendingEdit = outbox.items.filter((it) => it.room_id === room.id && it.status !== 'failed' && isEdit(it.content)
      && it.content['m.relates_to'].event_id === ev.event_id).pop();
    if (pendingEdit) return pendingEdit.content['m.new_content'];
    const edit = room.latestEdit(ev);
    if (edit) return edit.content['m.new_content'];
    return ev.content;
  }

  function isEdit(content) {
    const rel = content && content['m.relates_to'];
    return !!(rel && rel.rel_type === 'm.replace');
  }

  function isRedacted(ev) {
    return !ev.content || (ev.type === 'm.room.message' && typeof ev.content.body !== 'string');
  }

  function receiptPositions(room) {
    const at = new Map();
    if (!room.receipts.size) return at;
    const index = new Map();
    room.events.forEach((ev, i) => index.set(ev.event_id, i));
    for (const [user, eventId] of room.receipts) {
      if (user === me) continue;
      let i = index.get(eventId);
      if (i == null) continue;
      while (i >= 0 && !isShown(room.events[i])) i--;
      if (i < 0) continue;
      const id = room.events[i].event_id;
      if (!at.has(id)) at.set(id, []);
      at.get(id).push(user);
    }
    return at;
  }

  function timelineItems(room) {
    const items = [];
    const receipts = receiptPositions(room);
    let prev = null;
    let prevDay = null;
    const dayItem = (ts) => {
      const k = dayKey(ts);
      if (k === prevDay) return;
      prevDay = k;
      prev = null;
      const label = formatDay(ts);
      items.push({ key: `day-${k}`, sig: label, build: () => h('li', { class: 'day', role: 'separator' }, h('span', null, label)) });
    };
    for (const ev of room.events) {
      if (!isShown(ev)) continue;
      dayItem(ev.origin_ts);
      const seen = receipts.get(ev.event_id) || [];
      if (ev.type === 'm.room.message') {
        const reply = !isRedacted(ev) && ev.content['m.relates_to'] && ev.content['m.relates_to']['m.in_reply_to'];
        const grouped = !!(prev && prev.type === 'm.room.message' && prev.sender === ev.sender && !reply
          && ev.origin_ts - prev.origin_ts < GROUP_MS);
        const content = displayContent(room, ev);
        const edited = content !== ev.content;
        const reactions = isRedacted(ev) ? [] : room.reactionsFor(ev.event_id, me);
        const target = reply && room.byId.get(reply.event_id);
        const quoteSig = target ? `${target.event_id}:${isRedacted(target)}:${preview(displayContent(room, target) || {}, 80)}` : reply ? 'missing' : '';
        const sig = [grouped, isRedacted(ev), edited && JSON.stringify(content), reactions.map((r) => `${r.key}${r.count}${r.mine ? '*' : ''}`).join(','),
          seen.join(','), quoteSig, ev.event_id === S.replyTo || ev.event_id === S.editing].join('|');
        items.push({ key: ev.event_id, sig, build: () => messageEl(room, ev, { grouped, content, edited, reactions, target, reply, seen }) });
      } else {
        items.push({ key: ev.event_id, sig: seen.join(','), build: () => systemEl(room, ev, seen) });
      }
      prev = ev;
    }
    const offline = S.connState.status !== 'online';
    for (const it of outbox.forRoom(room.id)) {
      // Edits show in their message at once, reactions once the node has them; refused, either
      // shows here, with Retry and Discard, as a message does.
      const reaction = it.type === 'm.reaction';
      if (it.type !== 'm.room.message' && !reaction) continue;
      if ((reaction || isEdit(it.content)) && it.status !== 'failed') continue;
      if (it.event_id && room.byId.has(it.event_id)) continue;
      dayItem(it.ts);
      const sig = `${it.status}|${offline}|${it.error || ''}`;
      items.push({ key: `txn-${it.txn_id}`, sig, build: () => pendingEl(room, it, offline) });
    }
    return items;
  }

  function avatar(userId) {
    return h('span', { class: `avatar ${colorClass(userId)}`, 'aria-hidden': 'true' }, initial(localpart(userId)));
  }

  function actionButton(label, glyph, fk, onclick, cls) {
    return h('button', { type: 'button', class: `act rove${cls ? ` ${cls}` : ''}`, tabindex: '-1', 'aria-label': label, title: label, 'data-fk': fk, onclick }, glyph);
  }

  function seenEl(seen) {
    if (!seen.length) return null;
    const names = seen.map(localpart);
    return h('div', { class: 'receipts', title: seen.join(', ') },
      seen.slice(0, 5).map((u) => h('span', { class: `avatar tiny ${colorClass(u)}`, 'aria-hidden': 'true' }, initial(localpart(u)))),
      h('span', { class: 'seen-text' }, `Seen by ${names.join(', ')}`));
  }

  function messageEl(room, ev, o) {
    const own = ev.sender === me;
    const redacted = isRedacted(ev);
    const c = o.content || {};
    const emote = c.msgtype === 'm.emote';
    const li = h('li', {
      class: `msg${o.grouped ? ' grouped' : ''}${own ? ' own' : ''}${redacted ? ' redacted' : ''}${c.msgtype === 'm.notice' ? ' notice' : ''}`,
      tabindex: '-1', 'data-kind': 'msg',
    });
    const name = localpart(ev.sender);
    const head = h('div', { class: 'msg-head' },
      h('span', { class: 'sender', title: ev.sender }, name),
      h('time', { datetime: new Date(ev.origin_ts).toISOString(), title: formatFull(ev.origin_ts) }, formatTime(ev.origin_ts)));
    let quote = null;
    if (o.reply) {
      const t = o.target;
      quote = h('button', {
        type: 'button', class: 'quote rove', tabindex: '-1', 'data-fk': 'quote',
        onclick: () => t && focusEvent(t.event_id),
        'aria-label': t ? `In reply to ${localpart(t.sender)}: ${isRedacted(t) ? 'deleted message' : preview(displayContent(room, t) || {}, 80)}` : 'In reply to an earlier message',
      },
      t ? [h('span', { class: 'quote-sender' }, localpart(t.sender)), ' ', isRedacted(t) ? h('em', null, 'deleted message') : preview(displayContent(room, t) || {}, 100)]
        : h('em', null, 'In reply to an earlier message'));
    }
    let body;
    if (redacted) body = h('div', { class: 'body deleted' }, h('em', null, 'Message deleted'));
    else if (emote) body = h('div', { class: 'body emote' }, `* ${name} `, renderBody(c));
    else body = renderBody(c);
    const reacts = o.reactions.length ? h('div', { class: 'reactions' }, o.reactions.map((r) => h('button', {
      type: 'button', class: `reaction rove${r.mine ? ' mine' : ''}`, tabindex: '-1', 'aria-pressed': String(!!r.mine), 'data-fk': `re-${r.key}`,
      title: [...r.senders].map(localpart).join(', '),
      'aria-label': `${r.key} ${r.count}, from ${[...r.senders].map(localpart).join(', ')}${r.mine ? ', remove yours' : ', add yours'}`,
      onclick: () => toggleReaction(room, ev, r.key, r.mine),
    }, h('span', { class: 'emoji' }, r.key), ` ${r.count}`))) : null;
    const actions = redacted ? null : h('div', { class: 'msg-actions', role: 'group', 'aria-label': 'Message actions' },
      actionButton('React', '☺', 'react', (e) => reactPicker(room, ev, e.currentTarget)),
      actionButton('Reply', '↩', 'reply', () => startReply(ev)),
      own ? actionButton('Edit', '✎', 'edit', () => startEdit(room, ev)) : null,
      own ? actionButton('Delete', '🗑', 'delete', () => confirmDelete(room, ev), 'danger') : null);
    li.append(
      o.grouped ? h('span', { class: 'gutter' }, h('time', { datetime: new Date(ev.origin_ts).toISOString(), title: formatFull(ev.origin_ts) }, formatTime(ev.origin_ts)))
        : avatar(ev.sender),
      h('div', { class: 'msg-main' },
        o.grouped ? h('span', { class: 'sr-only' }, `${name}: `) : head,
        quote, body,
        o.edited && !redacted ? h('span', { class: 'edited' }, '(edited)') : null,
        reacts, seenEl(o.seen)),
      actions);
    return li;
  }

  function pendingEl(room, it, offline) {
    const failed = it.status === 'failed';
    const edit = isEdit(it.content);
    const rel = it.type === 'm.reaction' && it.content['m.relates_to'];
    let body;
    let what = edit ? 'Edit not sent' : 'Not sent';
    if (rel) {
      const target = room.byId.get(rel.event_id);
      const on = target && !isRedacted(target) ? `“${preview(displayContent(room, target) || {}, 80)}”` : 'a message';
      body = h('div', { class: 'body' }, h('span', { class: 'emoji' }, rel.key), ` on ${on}`);
      what = 'Reaction not sent';
    } else {
      body = renderBody((edit && it.content['m.new_content']) || it.content);
    }
    const li = h('li', { class: `msg own pending${failed ? ' failed' : ''}`, tabindex: '-1', 'data-kind': 'msg', 'data-txn': it.txn_id },
      avatar(me),
      h('div', { class: 'msg-main' },
        h('div', { class: 'msg-head' }, h('span', { class: 'sender' }, localpart(me))),
        body,
        h('div', { class: 'status' },
          failed ? [h('span', null, `${what}: ${it.error || 'error'}. `),
            h('button', { type: 'button', class: 'link rove', tabindex: '-1', 'data-fk': 'retry', onclick: () => outbox.retry(it.txn_id) }, 'Retry'), ' · ',
            h('button', { type: 'button', class: 'link rove', tabindex: '-1', 'data-fk': 'discard', onclick: () => outbox.discard(it.txn_id) }, 'Discard')]
            : h('span', null, offline ? 'Waiting for the connection…' : 'Sending…'))));
    return li;
  }

  function systemText(room, ev) {
    const c = ev.content || {};
    const who = localpart(ev.sender);
    switch (ev.type) {
      case 'm.room.create': return `${who} created the room`;
      case 'm.room.name': return c.name ? `${who} named the room “${c.name}”` : `${who} removed the room name`;
      case 'm.room.topic': return c.topic ? `${who} set the topic: ${c.topic}` : `${who} removed the topic`;
      case 'm.room.member': {
        const target = localpart(ev.state_key);
        const self = ev.state_key === ev.sender;
        switch (c.membership) {
          case 'join': return `${target} joined`;
          case 'invite': return `${who} invited ${target}`;
          case 'leave': return self ? `${target} left` : `${who} removed ${target}`;
          case 'ban': return `${who} banned ${target}`;
          default: return `${target}: membership changed`;
        }
      }
      default: return ev.type;
    }
  }

  function systemEl(room, ev, seen) {
    return h('li', { class: 'sys', tabindex: '-1', 'data-kind': 'sys' },
      h('span', { class: 'sys-text' }, systemText(room, ev)),
      h('time', { datetime: new Date(ev.origin_ts).toISOString(), title: formatFull(ev.origin_ts) }, formatTime(ev.origin_ts)),
      seenEl(seen));
  }

  function atBottom() {
    const t = E.timeline;
    return t.scrollHeight - t.scrollTop - t.clientHeight < 60;
  }

  function scrollToBottom() {
    E.timeline.scrollTop = E.timeline.scrollHeight;
    E.jump.hidden = true;
  }

  let lastRenderedRoom = null;
  let anchorBottomNext = false;

  function renderTimeline() {
    const room = current();
    if (!room || room.membership !== 'join') return;
    if (lastRenderedRoom !== room.id) {
      caches.events.clear();
      E.events.replaceChildren();
      lastRenderedRoom = room.id;
      S.stickBottom = true;
      S.rovingKey = null;
    }
    const t = E.timeline;
    const fromBottom = t.scrollHeight - t.scrollTop;
    const keepTop = t.scrollTop;
    const before = E.events.lastElementChild;
    reconcile(E.events, caches.events, timelineItems(room));
    // Top of the timeline: a button to load older messages, or where it all began.
    if (room.historyComplete) {
      E.older.replaceChildren(h('p', { class: 'beginning' }, `This is the beginning of ${room.displayName}.`));
    } else if (room.start && room.olderFailed && !room.loadingOlder) {
      // The page back failed (for a room of another org, most often its org cannot be reached):
      // the token is kept; this button, or scrolling up to here again, asks again.
      const org = orgOf(room.id);
      E.older.replaceChildren(h('div', { class: 'older-failed', role: 'status' },
        h('span', null, org && org !== myOrg ? `Older messages are with ${org}, which cannot be reached right now. ` : 'Older messages could not be loaded. '),
        h('button', { type: 'button', class: 'small load-older', onclick: () => loadOlder(room) }, 'Try again')));
    } else if (room.start) {
      E.older.replaceChildren(h('button', { type: 'button', class: 'small load-older', disabled: room.loadingOlder, onclick: () => loadOlder(room) },
        room.loadingOlder ? 'Loading…' : 'Load older messages'));
    } else {
      E.older.replaceChildren(h('p', { class: 'beginning' }, room.loaded ? '' : 'Loading…'));
    }
    applyRoving();
    if (S.stickBottom) scrollToBottom();
    else if (anchorBottomNext) t.scrollTop = t.scrollHeight - fromBottom;
    else t.scrollTop = keepTop;
    anchorBottomNext = false;
    if (!S.stickBottom && E.events.lastElementChild !== before) E.jump.hidden = false;
    markRead();
    // Fill the screen: keep loading while there is no scroll bar (not after a failure).
    if (room.start && !room.historyComplete && !room.loadingOlder && !room.olderFailed && t.scrollHeight <= t.clientHeight + 40) loadOlder(room);
  }

  // After a failed page back, scrolling near the top asks again only once the timeline was
  // scrolled away from there and back: not on every scroll event while it stays up there.
  let olderArmed = true;
  E.timeline.addEventListener('scroll', () => {
    S.stickBottom = atBottom();
    if (S.stickBottom) {
      E.jump.hidden = true;
      markRead();
    }
    const room = current();
    if (E.timeline.scrollTop >= 300) olderArmed = true;
    else if (room && room.start && !room.historyComplete && !room.loadingOlder && (!room.olderFailed || olderArmed)) loadOlder(room);
  }, { passive: true });

  // Keyboard: one tab stop in the timeline; arrows move between messages (roving tabindex).
  function applyRoving() {
    const items = E.events.querySelectorAll('li[data-kind]');
    if (!items.length) return;
    let cur = null;
    if (S.rovingKey) cur = E.events.querySelector(`li[data-key="${CSS.escape(S.rovingKey)}"]`);
    if (!cur) cur = items[items.length - 1];
    for (const li of E.events.querySelectorAll('li[tabindex="0"]')) if (li !== cur) setRove(li, false);
    setRove(cur, true);
  }

  function setRove(li, on) {
    li.tabIndex = on ? 0 : -1;
  }

  // A message's buttons are tab stops only while focus is in that message.
  function setInner(li, on) {
    for (const b of li.querySelectorAll('.rove')) b.tabIndex = on ? 0 : -1;
  }

  E.events.addEventListener('focusin', (e) => {
    const li = e.target.closest('li[data-kind]');
    if (!li) return;
    setInner(li, true);
    if (li.dataset.key === S.rovingKey && li.tabIndex === 0) return;
    for (const other of E.events.querySelectorAll('li[tabindex="0"]')) if (other !== li) setRove(other, false);
    S.rovingKey = li.dataset.key;
    setRove(li, true);
  });
  E.events.addEventListener('focusout', (e) => {
    const li = e.target.closest('li[data-kind]');
    if (li && !(e.relatedTarget && li.contains(e.relatedTarget))) setInner(li, false);
  });

  E.events.addEventListener('keydown', (e) => {
    const li = e.target.closest('li[data-kind]');
    if (!li) return;
    const all = [...E.events.querySelectorAll('li[data-kind]')];
    const i = all.indexOf(li);
    const go = (j) => {
      const el = all[Math.max(0, Math.min(all.length - 1, j))];
      if (el) {
        el.focus();
        el.scrollIntoView({ block: 'nearest' });
      }
    };
    const room = current();
    const ev = room && room.byId.get(li.dataset.key);
    if (e.key === 'ArrowUp') {
      e.preventDefault();
      if (i === 0 && room) loadOlder(room);
      go(i - 1);
    } else if (e.key === 'ArrowDown') {
      e.preventDefault();
      if (i === all.length - 1) E.input.focus();
      else go(i + 1);
    } else if (e.key === 'Home' && e.target === li) {
      e.preventDefault();
      go(0);
    } else if (e.key === 'End' && e.target === li) {
      e.preventDefault();
      go(all.length - 1);
    } else if (e.key === 'Escape') {
      e.preventDefault();
      E.input.focus();
    } else if (e.target === li && ev && ev.type === 'm.room.message' && !isRedacted(ev) && !e.ctrlKey && !e.metaKey && !e.altKey) {
      if (e.key === 'r') {
        e.preventDefault();
        startReply(ev);
      } else if (e.key === 'e' && ev.sender === me) {
        e.preventDefault();
        startEdit(room, ev);
      } else if ((e.key === 'Delete' || e.key === 'Backspace') && ev.sender === me) {
        e.preventDefault();
        confirmDelete(room, ev);
      }
    }
  });

  function focusEvent(eventId) {
    const li = E.events.querySelector(`li[data-key="${CSS.escape(eventId)}"]`);
    if (li) {
      li.focus();
      li.scrollIntoView({ block: 'center' });
      li.classList.add('flash');
      setTimeout(() => li.classList.remove('flash'), 1200);
    }
  }

  // ------------------------------------------------------------------ members

  function renderMembers() {
    const room = current();
    if (!room || !S.membersOpen) return;
    const list = (room.members || []).filter((m) => m.membership === 'join' || m.membership === 'invite');
    list.sort((a, b) => (rank(a) - rank(b)) || a.user_id.localeCompare(b.user_id));
    E.membersHead.textContent = `Members (${list.filter((m) => m.membership === 'join').length})`;
    reconcile(E.memberList, caches.members, list.map((m) => {
      const pres = m.membership === 'invite' ? 'invited' : (S.presence.get(m.user_id) || m.presence || 'offline');
      const role = m.power >= 100 ? 'admin' : m.power >= 50 ? 'moderator' : '';
      return {
        key: m.user_id,
        sig: `${pres}|${role}`,
        build: () => h('li', { class: `member ${pres}` },
          h('span', { class: 'avatar-wrap' }, avatar(m.user_id), h('span', { class: `presence ${pres}`, 'aria-hidden': 'true' })),
          h('span', { class: 'member-name', title: m.user_id }, localpart(m.user_id),
            h('span', { class: 'member-id' }, m.user_id)),
          role ? h('span', { class: 'role' }, role) : null,
          h('span', { class: 'sr-only' }, `, ${pres}`)),
      };
    }));
    if (!room.members) E.memberList.replaceChildren(h('li', { class: 'none' }, 'Loading…'));
  }

  function rank(m) {
    if (m.membership === 'invite') return 3;
    return (S.presence.get(m.user_id) || m.presence) === 'online' ? 0 : 1;
  }

  async function fetchMembers() {
    const room = current();
    if (!room || room.membership !== 'join' || !connected()) return;
    try {
      const res = await S.conn.request('members', { room_id: room.id });
      room.members = res.members || [];
      for (const m of room.members) if (m.presence) S.presence.set(m.user_id, m.presence);
      room.memberCount = room.members.filter((m) => m.membership === 'join').length;
      invalidate('members', 'header');
    } catch {
      /* retried on the next change */
    }
  }
  const fetchMembersSoon = debounce(fetchMembers, 300);

  // ------------------------------------------------------------ sync & pushes

  const connected = () => !!(S.conn && S.conn.ws && S.conn.ws.readyState === WebSocket.OPEN);

  function getRoom(id) {
    let room = S.rooms.get(id);
    if (!room) {
      room = new Room(id);
      S.rooms.set(id, room);
    }
    return room;
  }

  async function onReady() {
    S.syncing = true;
    S.buffer = [];
    let res;
    const full = !S.next;
    try {
      try {
        res = await S.conn.request('sync', full ? {} : { since: S.next }, 30000);
      } catch (err) {
        if (err.code !== 'M_INVALID_PARAM' || full) throw err;
        S.next = null;
        return await onReady();
      }
      applySync(res, full);
      S.next = res.next;
      S.synced = true;
    } finally {
      S.syncing = false;
    }
    const buffered = S.buffer;
    S.buffer = [];
    for (const f of buffered) onEventPush(f.event, true);
    outbox.dropSent();
    for (const room of S.rooms.values()) room.olderFailed = false; // worth another try now
    refreshRooms();
    fetchMembers();
    if (S.currentId && !S.rooms.has(S.currentId)) S.currentId = null;
    invalidate('all');
  }

  function applySync(res, full) {
    if (full) {
      for (const id of [...S.rooms.keys()]) if (!(res.rooms && res.rooms[id])) S.rooms.delete(id);
    }
    for (const [id, r] of Object.entries(res.rooms || {})) {
      const room = getRoom(id);
      const events = r.events || [];
      if (full || r.limited) room.resetTimeline();
      for (const ev of r.state || []) {
        room.applyState(ev);
        if (ev.type === 'm.room.member' && ev.state_key === me) room.membership = ev.content.membership;
      }
      for (const ev of events) {
        if (ev.type === 'm.room.member' && ev.state_key === me && ev.content) room.membership = ev.content.membership;
      }
      const added = room.addEvents(events, true);
      if (full || r.limited) {
        room.start = r.start || null;
        room.historyComplete = !r.start;
        room.loaded = room.membership === 'join';
      }
      handleAdded(room, added, false);
      // Joined since the last sync: the events before `since` come from history.
      if (room.membership === 'join' && !room.loaded) loadInitial(room);
    }
    // Joined rooms without news keep their timeline; a full sync lists every room.
  }

  function onPush(frame) {
    switch (frame.op) {
      case 'event':
        if (S.syncing) S.buffer.push(frame);
        else onEventPush(frame.event, true);
        break;
      case 'typing': {
        const room = S.rooms.get(frame.room_id);
        if (room) {
          room.typing = frame.user_ids || [];
          if (room.id === S.currentId) invalidate('typing');
        }
        break;
      }
      case 'receipt': {
        const room = S.rooms.get(frame.room_id);
        if (!room) break;
        if (frame.user_id === me) {
          const ev = room.byId.get(frame.event_id);
          if (ev) setReadPos(room, ev.stream_pos || 0);
        } else {
          room.receipts.set(frame.user_id, frame.event_id);
          if (room.id === S.currentId) invalidate('timeline');
        }
        break;
      }
      case 'presence':
        S.presence.set(frame.user_id, frame.presence);
        invalidate('members');
        break;
      default:
    }
  }

  function onEventPush(ev, live) {
    if (!ev || !ev.room_id) return;
    const known = S.rooms.has(ev.room_id);
    const room = getRoom(ev.room_id);
    if (!known) {
      room.membership = ev.type === 'm.room.member' && ev.state_key === me ? ev.content.membership : 'join';
      refreshRoomsSoon();
    }
    const added = room.addEvents([ev], true);
    handleAdded(room, added, live);
  }

  function handleAdded(room, added, live) {
    if (!added.length) return;
    const isCurrent = room.id === S.currentId;
    for (const ev of added) {
      if (ev.sender === me) outbox.confirmed(ev.unsigned && ev.unsigned.txn_id, ev.event_id);
      if (ev.type === 'm.room.member') {
        if (ev.state_key === me) {
          const m = ev.content && ev.content.membership;
          room.membership = m;
          if (m === 'join' && !room.loaded) loadInitial(room);
          refreshRoomsSoon();
        }
        if (isCurrent) fetchMembersSoon();
      }
      if (ev.type === 'm.room.name' || ev.type === 'm.room.topic') invalidate('header');
      if (live && isCurrent && isCountable(ev, me)) {
        announce(`${localpart(ev.sender)}: ${preview(ev.content, 200)}`);
      }
      if (ev.type === 'm.room.message' && ev.sender !== me) {
        // A message after someone's receipt moves nothing, but their typing stops.
        room.typing = room.typing.filter((u) => u !== ev.sender);
      }
    }
    if (room.membership === 'leave' || room.membership === 'ban') removeRoom(room);
    invalidate('rooms');
    if (isCurrent) invalidate('timeline', 'typing', 'context');
  }

  function removeRoom(room) {
    S.rooms.delete(room.id);
    if (S.currentId === room.id) {
      S.currentId = null;
      S.view = 'rooms';
    }
    invalidate('all', 'layout');
  }

  function announce(text) {
    E.announcer.textContent = text;
  }

  async function refreshRooms() {
    if (!connected()) return;
    try {
      const res = await S.conn.request('rooms', {});
      for (const r of res.rooms || []) {
        const room = getRoom(r.room_id);
        room.name = r.name || '';
        room.topic = r.topic || '';
        room.alias = r.alias || room.alias;
        room.memberCount = r.members;
        room.membership = r.membership;
        if (room.membership === 'join' && !room.loaded) loadInitial(room);
      }
      invalidate('rooms', 'header', 'layout');
    } catch {
      /* the next sync refreshes */
    }
  }
  const refreshRoomsSoon = debounce(refreshRooms, 250);

  async function loadInitial(room) {
    if (room.loadingInitial) return;
    room.loadingInitial = true;
    try {
      const res = await S.conn.request('history', { room_id: room.id, limit: 50 });
      room.addEvents(res.events || [], true);
      if (!room.loaded) {
        room.start = res.start || null;
        room.historyComplete = !res.start;
        room.loaded = true;
      }
      room.version++;
      invalidate('rooms', 'timeline', 'header');
    } catch {
      /* loaded on the next sync */
    } finally {
      room.loadingInitial = false;
    }
  }

  async function loadOlder(room) {
    if (room.loadingOlder || room.historyComplete || !room.start || !connected()) return;
    const before = room.start;
    room.loadingOlder = true;
    olderArmed = false;
    invalidate('timeline');
    try {
      const res = await S.conn.request('history', { room_id: room.id, before, limit: 50 });
      // A limited sync reset the timeline meanwhile: this page belongs to the old one.
      if (room.start !== before) return;
      // false: the home org of the room could not be reached; start stays for trying again.
      if (room.addHistoryPage(before, res)) anchorBottomNext = true;
    } catch {
      if (room.start === before) room.olderFailed = true; // the button or the scroll tries again
    } finally {
      room.loadingOlder = false;
      invalidate('timeline');
    }
  }

  // ------------------------------------------------------------ read markers

  function setReadPos(room, pos) {
    if (S.stopped || (S.readPos[room.id] || 0) >= pos) return;
    S.readPos[room.id] = pos;
    saveJSON(`parley.read.${me}`, S.readPos);
    invalidate('rooms');
  }

  const sendReadSoon = debounce((roomId, eventId) => {
    if (S.sentRead.get(roomId) === eventId || S.connState.status !== 'online') return;
    S.sentRead.set(roomId, eventId);
    S.conn.request('read', { room_id: roomId, event_id: eventId }).catch(() => S.sentRead.delete(roomId));
  }, 400);

  function markRead() {
    if (S.stopped) return;
    const room = current();
    if (!room || room.membership !== 'join' || !room.events.length) return;
    if (document.visibilityState !== 'visible' || !S.stickBottom) return;
    if (E.shell.dataset.view === 'rooms' && !window.matchMedia('(min-width: 720px)').matches) return;
    const last = room.events[room.events.length - 1];
    setReadPos(room, last.stream_pos || 0);
    // The receipt names the newest event of someone else: one on the user's own message tells
    // nobody anything, and every `read` is a write that counts against the user's send budget
    // (a `read` after each message sent made every message cost two writes).
    for (let i = room.events.length - 1; i >= 0; i--) {
      if (room.events[i].sender !== me) {
        sendReadSoon(room.id, room.events[i].event_id);
        break;
      }
    }
  }
  document.addEventListener('visibilitychange', markRead, { signal });
  window.addEventListener('focus', markRead, { signal });

  // ---------------------------------------------------------------- actions

  function selectRoom(id, focusComposer) {
    if (S.currentId !== id) {
      stopTyping();
      S.replyTo = null;
      S.editing = null;
      E.input.value = '';
      E.composerError.textContent = '';
      autosize();
    }
    S.currentId = id;
    S.view = 'room';
    saveJSON(`parley.room.${me}`, id);
    const room = current();
    if (room && room.membership === 'join' && !room.loaded) loadInitial(room);
    invalidate('all', 'layout');
    fetchMembers();
    if (focusComposer) setTimeout(() => E.input.focus(), 0);
  }

  function startReply(ev) {
    S.editing = null;
    S.replyTo = ev.event_id;
    invalidate('context', 'timeline');
    E.input.focus();
  }

  function startEdit(room, ev) {
    S.replyTo = null;
    S.editing = ev.event_id;
    const c = displayContent(room, ev) || {};
    E.input.value = c.body || '';
    autosize();
    invalidate('context', 'timeline');
    E.input.focus();
    E.input.setSelectionRange(E.input.value.length, E.input.value.length);
  }

  function toggleReaction(room, ev, key, mine) {
    if (mine) {
      // Every reaction of mine with this key goes, or one would stay and the pill with it.
      const g = room.reactionsFor(ev.event_id, me).find((x) => x.key === key);
      for (const id of g && g.mineIds.length ? g.mineIds : [mine]) redact(room, id);
      return;
    }
    // Mine is on its way already (a double click, a slow or lost connection): not a second one.
    // One the node refused goes again, as its Retry would.
    const queued = outbox.items.find((it) => it.room_id === room.id && it.type === 'm.reaction' && !it.event_id
      && it.content['m.relates_to'] && it.content['m.relates_to'].event_id === ev.event_id
      && it.content['m.relates_to'].key === key);
    if (!queued) outbox.add(room.id, 'm.reaction', { 'm.relates_to': { rel_type: 'm.annotation', event_id: ev.event_id, key } });
    else if (queued.status === 'failed') outbox.retry(queued.txn_id);
  }

  async function redact(room, eventId) {
    try {
      await S.conn.request('redact', { room_id: room.id, event_id: eventId });
    } catch (err) {
      toast(err instanceof ConnectionError ? 'Not connected: try again once the connection is back.' : `Could not delete: ${err.message}`);
    }
  }

  function reactPicker(room, ev, anchor) {
    const close = (refocus = true) => {
      if (!pop.isConnected) return;
      pop.remove();
      document.removeEventListener('mousedown', outside, true);
      if (refocus && anchor.isConnected) anchor.focus();
    };
    const outside = (e) => {
      if (!pop.contains(e.target)) close(false);
    };
    const pop = h('div', { class: 'picker', role: 'dialog', 'aria-label': 'Pick a reaction' },
      REACTIONS.map((k) => h('button', {
        type: 'button', class: 'emoji-btn', 'aria-label': `React with ${k}`,
        onclick: () => {
          const existing = room.reactionsFor(ev.event_id, me).find((r) => r.key === k);
          if (!existing || !existing.mine) toggleReaction(room, ev, k, null);
          close();
        },
      }, k)));
    pop.addEventListener('keydown', (e) => {
      const btns = [...pop.querySelectorAll('button')];
      const i = btns.indexOf(document.activeElement);
      if (e.key === 'Escape') {
        e.preventDefault();
        e.stopPropagation();
        close();
      } else if (e.key === 'ArrowRight' || e.key === 'ArrowLeft') {
        e.preventDefault();
        e.stopPropagation();
        btns[(i + (e.key === 'ArrowRight' ? 1 : -1) + btns.length) % btns.length].focus();
      } else if (e.key === 'ArrowUp' || e.key === 'ArrowDown') {
        e.stopPropagation();
      }
    });
    pop.addEventListener('focusout', (e) => {
      if (!pop.contains(e.relatedTarget)) setTimeout(() => !pop.contains(document.activeElement) && close(false), 0);
    });
    anchor.closest('li').append(pop);
    document.addEventListener('mousedown', outside, true);
    pop.querySelector('button').focus();
  }

  function confirmDelete(room, ev) {
    dialog({
      title: 'Delete this message?',
      body: [h('p', null, 'Everyone in the room will see that a message was deleted.'),
        h('blockquote', { class: 'dialog-quote' }, preview(displayContent(room, ev) || {}, 200))],
      submit: 'Delete',
      danger: true,
      onSubmit: async () => {
        await S.conn.request('redact', { room_id: room.id, event_id: ev.event_id });
      },
    });
  }

  function toast(text) {
    const t = h('div', { class: 'toast', role: 'alert' }, text);
    document.body.append(t);
    setTimeout(() => t.remove(), 5000);
  }

  // ---------------------------------------------------------------- composer

  function autosize() {
    E.input.style.height = 'auto';
    E.input.style.height = `${Math.min(E.input.scrollHeight, Math.round(window.innerHeight * 0.4))}px`;
  }

  function sendTyping(typing) {
    const roomId = typing ? S.currentId : S.typingSentRoom;
    if (!roomId || S.connState.status !== 'online') return;
    S.typingSentRoom = typing ? roomId : null;
    S.typingSentAt = typing ? Date.now() : 0;
    S.conn.request('typing', { room_id: roomId, typing, timeout_ms: 30000 }).catch(() => {});
  }
  const typingIdle = debounce(() => stopTyping(), 5000);
  function stopTyping() {
    typingIdle.cancel();
    if (S.typingSentRoom) sendTyping(false);
  }

  E.input.addEventListener('input', () => {
    autosize();
    if (E.composerError.textContent) E.composerError.textContent = '';
    if (!E.input.value.trim()) {
      stopTyping();
      return;
    }
    if (S.typingSentRoom !== S.currentId || Date.now() - S.typingSentAt > 20000) sendTyping(true);
    typingIdle();
  });
  E.input.addEventListener('blur', () => stopTyping());

  E.input.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && e.keyCode !== 229) {
      e.preventDefault();
      submitComposer();
    } else if (e.key === 'Escape' && (S.replyTo || S.editing)) {
      e.preventDefault();
      cancelContext();
    } else if (e.key === 'ArrowUp' && !E.input.value && !e.shiftKey) {
      const room = current();
      const mine = room && [...room.events].reverse().find((ev) => ev.sender === me && ev.type === 'm.room.message' && isShown(ev) && !isRedacted(ev));
      if (mine) {
        e.preventDefault();
        startEdit(room, mine);
      }
    }
  });
  E.composer.addEventListener('submit', (e) => {
    e.preventDefault();
    submitComposer();
    E.input.focus();
  });

  function submitComposer() {
    const room = current();
    const text = E.input.value;
    if (!room || !text.trim()) return;
    let content;
    if (S.editing) {
      const target = room.byId.get(S.editing);
      const old = target && displayContent(room, target);
      if (old && old.body === text) {
        cancelContext();
        return;
      }
      const msgtype = (old && old.msgtype) || 'm.text';
      content = { msgtype, body: `* ${text}`, 'm.new_content': { msgtype, body: text }, 'm.relates_to': { rel_type: 'm.replace', event_id: S.editing } };
    } else if (/^\/me\s/.test(text)) {
      content = { msgtype: 'm.emote', body: text.replace(/^\/me\s+/, '') };
    } else {
      content = { msgtype: 'm.text', body: text };
    }
    if (S.replyTo && !S.editing) content['m.relates_to'] = { 'm.in_reply_to': { event_id: S.replyTo } };
    // The node would refuse it: the text stays in the composer, to shorten or split.
    const why = tooLong(content, room.id, 'm.room.message');
    if (why) {
      E.composerError.textContent = `${why}. ${S.editing ? 'Shorten it.' : 'Shorten it or split it into several messages.'}`;
      return;
    }
    E.composerError.textContent = '';
    outbox.add(room.id, 'm.room.message', content);
    E.input.value = '';
    autosize();
    S.replyTo = null;
    S.editing = null;
    stopTyping();
    S.stickBottom = true;
    invalidate('context', 'timeline');
  }

  // ------------------------------------------------------------------ dialogs

  function dialog({ title, body, submit, danger, onSubmit, initialFocus }) {
    const error = h('p', { class: 'form-error', role: 'alert' });
    const ok = h('button', { type: 'submit', class: danger ? 'danger-solid' : 'primary' }, submit);
    const form = h('form', { class: 'dialog-form' },
      h('h2', { id: 'dialog-title' }, title), body, error,
      h('div', { class: 'dialog-actions' },
        h('button', { type: 'button', onclick: () => dlg.close() }, 'Cancel'), ok));
    const dlg = h('dialog', { 'aria-labelledby': 'dialog-title' }, form);
    const opener = document.activeElement;
    form.addEventListener('submit', async (e) => {
      e.preventDefault();
      error.textContent = '';
      ok.disabled = true;
      try {
        await onSubmit(error);
        dlg.close();
      } catch (err) {
        error.textContent = err.userMessage || friendly(err);
      } finally {
        ok.disabled = false;
      }
    });
    dlg.addEventListener('close', () => {
      dlg.remove();
      if (opener && opener.isConnected) opener.focus();
    });
    document.body.append(dlg);
    dlg.showModal();
    if (initialFocus) initialFocus.focus();
    return dlg;
  }

  function friendly(err) {
    switch (err.code) {
      case 'DISCONNECTED':
      case 'TIMEOUT': return 'Not connected to the server. Try again in a moment.';
      case 'M_ROOM_IN_USE': return 'That address is taken. Pick another alias.';
      case 'M_NOT_FOUND': return 'No room has that address.';
      case 'M_FORBIDDEN': return 'You cannot do that here (the room may be private: ask for an invitation).';
      case 'M_UNAVAILABLE': return 'That organization cannot be reached right now.';
      case 'M_LIMIT_EXCEEDED': return 'Slow down a little and try again.';
      case 'M_INVALID_PARAM': return `Check the fields: ${err.message}`;
      default: return err.message || 'Something went wrong.';
    }
  }

  function field(id, label, input, hint) {
    return h('div', { class: 'field' }, h('label', { for: id }, label), input, hint ? h('p', { class: 'hint', id: `${id}-hint` }, hint) : null);
  }

  function createRoomDialog() {
    const name = h('input', { id: 'cr-name', required: true, maxlength: '255', autocomplete: 'off' });
    const alias = h('input', { id: 'cr-alias', maxlength: '64', autocomplete: 'off', spellcheck: 'false', autocapitalize: 'none', 'aria-describedby': 'cr-alias-hint' });
    const topic = h('input', { id: 'cr-topic', maxlength: '500', autocomplete: 'off' });
    const pub = h('input', { type: 'radio', name: 'vis', id: 'cr-public', value: 'public', checked: true });
    const priv = h('input', { type: 'radio', name: 'vis', id: 'cr-private', value: 'private' });
    const fed = h('input', { type: 'checkbox', id: 'cr-federate', checked: true });
    let aliasTouched = false;
    const slug = (s) => s.toLowerCase().normalize('NFKD').replace(/[^a-z0-9._-]+/g, '-').replace(/^-+|-+$/g, '').slice(0, 64);
    name.addEventListener('input', () => { if (!aliasTouched) alias.value = slug(name.value); });
    alias.addEventListener('input', () => { aliasTouched = true; alias.value = alias.value.toLowerCase(); });
    dialog({
      title: 'Create a room',
      body: [
        field('cr-name', 'Name', name),
        field('cr-alias', 'Address (alias)', alias, `People join with #alias:${myOrg}. Leave it empty for no address.`),
        field('cr-topic', 'Topic (optional)', topic),
        h('fieldset', null, h('legend', null, 'Who can join'),
          h('label', { class: 'check' }, pub, ' Public: anyone with the address'),
          h('label', { class: 'check' }, priv, ' Private: only people you invite')),
        h('label', { class: 'check' }, fed, ' Federated: people of other organizations may take part'),
      ],
      submit: 'Create room',
      initialFocus: name,
      onSubmit: async () => {
        if (!name.value.trim()) throw Object.assign(new Error(), { userMessage: 'Give the room a name.' });
        const a = alias.value.trim().replace(/^#/, '').replace(/:.*$/, '');
        if (a && !/^[a-z0-9._-]{1,64}$/.test(a)) throw Object.assign(new Error(), { userMessage: 'An alias uses lower-case letters, digits and . _ - only.' });
        const params = { name: name.value.trim(), visibility: priv.checked ? 'private' : 'public', federate: fed.checked };
        if (a) params.alias = a;
        if (topic.value.trim()) params.topic = topic.value.trim();
        const res = await S.conn.request('create_room', params);
        const room = getRoom(res.room_id);
        room.membership = 'join';
        room.name = params.name;
        room.topic = params.topic || '';
        if (a) room.alias = `#${a}:${myOrg}`;
        await loadInitial(room);
        refreshRooms();
        selectRoom(room.id, true);
      },
    });
  }

  function joinRoomDialog(prefill) {
    const addr = h('input', { id: 'jr-room', required: true, autocomplete: 'off', spellcheck: 'false', autocapitalize: 'none', placeholder: `#general:${myOrg}`, 'aria-describedby': 'jr-room-hint', value: prefill || '' });
    dialog({
      title: 'Join a room',
      body: [field('jr-room', 'Room address', addr, `An alias like #general:${myOrg} (or #room:other-org for another organization), or a room id.`)],
      submit: 'Join',
      initialFocus: addr,
      onSubmit: async () => {
        let target = addr.value.trim();
        if (!target) throw Object.assign(new Error(), { userMessage: 'Enter a room address.' });
        if (!/^[#!]/.test(target)) target = `#${target}`;
        if (!target.includes(':')) target = `${target}:${myOrg}`;
        // An alias is lower case, its org too: "#General:Acme.test" is #general:acme.test, not a
        // room of an org that cannot be reached. Room ids are not: they keep their case.
        if (target.startsWith('#')) target = target.toLowerCase();
        await joinRoom(target);
      },
    });
  }

  async function joinRoom(target) {
    const res = await S.conn.request('join', { room: target });
    const room = getRoom(res.room_id);
    room.membership = 'join';
    if (target.startsWith('#')) room.alias = room.alias || target;
    await loadInitial(room);
    refreshRooms();
    selectRoom(room.id, true);
  }

  async function acceptInvite(room) {
    try {
      await joinRoom(room.id);
    } catch (err) {
      toast(friendly(err));
    }
  }

  async function declineInvite(room) {
    try {
      await S.conn.request('leave', { room_id: room.id });
      removeRoom(room);
    } catch (err) {
      toast(friendly(err));
    }
  }

  function inviteDialog() {
    const room = current();
    if (!room) return;
    const who = h('input', { id: 'inv-user', required: true, autocomplete: 'off', spellcheck: 'false', autocapitalize: 'none', placeholder: `@name:${myOrg}` });
    dialog({
      title: `Invite to ${room.displayName}`,
      body: [field('inv-user', 'User', who, 'A user id like @name:org, or just the name for someone here.')],
      submit: 'Invite',
      initialFocus: who,
      onSubmit: async () => {
        let u = who.value.trim();
        if (!u) throw Object.assign(new Error(), { userMessage: 'Enter a user.' });
        if (!u.startsWith('@')) u = `@${u}`;
        if (!u.includes(':')) u = `${u}:${myOrg}`;
        await S.conn.request('invite', { room_id: room.id, user_id: u });
        fetchMembersSoon();
      },
    });
  }

  function leaveRoom() {
    const room = current();
    if (!room) return;
    dialog({
      title: `Leave ${room.displayName}?`,
      body: [h('p', null, room.alias ? `You can join again with ${room.alias} if the room is public.` : 'You will need an invitation to come back.')],
      submit: 'Leave',
      danger: true,
      onSubmit: async () => {
        await S.conn.request('leave', { room_id: room.id });
        removeRoom(room);
      },
    });
  }

  async function logout() {
    stopTyping();
    shutdown();
    // Kept until the node has revoked it (offline, that waits for the next chance), before the
    // session goes: the user's other tabs see it go (a storage event) and stop too.
    const kept = revokeLater(session.access_token);
    hooks.forgetSession();
    clearUserData();
    const revoked = await revoke(session.access_token);
    clearUserData(); // anything another tab wrote before it saw the session end
    // Neither revoked nor stored (storage full or disabled): only this page can still end it.
    hooks.onLogout(revoked || kept ? undefined : 'You are logged out in this browser, but the server could not be reached to end the session, and this browser could not store it to end it later: it may still be valid on the server. This page keeps trying while it stays open.');
  }

  /** Stops the client for good: no more requests, sends, timers or writes to localStorage. */
  function shutdown() {
    S.stopped = true;
    listening.abort();
    S.conn.stop();
    outbox.stop();
    sendReadSoon.cancel();
    typingIdle.cancel();
  }

  /**
   * Forgets what this browser keeps of the user, so that the next one to use it finds nothing
   * of theirs: read markers, the open room, and the outboxes of all their tabs (unsent
   * messages). The session (the token) is main.js's: hooks.forgetSession.
   */
  function clearUserData() {
    saveJSON(`parley.read.${me}`, null);
    saveJSON(`parley.room.${me}`, null);
    const box = `parley.outbox.${me}`;
    for (const k of storageKeys(box)) if (k === box || k.startsWith(`${box}#`)) saveJSON(k, null);
  }

  // Logged out in another tab (its session is gone from localStorage, or another one is
  // there): this tab ends as well, and writes nothing more.
  window.addEventListener('storage', (e) => {
    if (S.stopped || (e.key !== null && e.key !== hooks.sessionKey)) return;
    const cur = loadJSON(hooks.sessionKey, null);
    if (cur && cur.access_token === session.access_token) return;
    stopTyping();
    shutdown();
    hooks.onLogout('You were logged out in another tab.');
  }, { signal });

  // ------------------------------------------------------------------ helpers

  /**
   * Puts the elements of items (in order) in container, reusing those whose sig did not
   * change, and gives focus back to an element that was rebuilt while it had it.
   */
  function reconcile(container, cache, items) {
    const active = document.activeElement;
    let focusKey = null;
    let focusSub = null;
    if (active && container.contains(active)) {
      const keyed = active.closest('[data-key]');
      if (keyed) {
        focusKey = keyed.dataset.key;
        focusSub = active.dataset.fk || null;
      }
    }
    const used = new Map();
    const els = items.map((it) => {
      const c = cache.get(it.key);
      if (c && c.sig === it.sig) {
        used.set(it.key, c);
        return c.el;
      }
      const el = it.build();
      el.dataset.key = it.key;
      const n = { sig: it.sig, el };
      used.set(it.key, n);
      return el;
    });
    let cur = container.firstChild;
    for (const el of els) {
      if (el === cur) {
        cur = cur.nextSibling;
        continue;
      }
      container.insertBefore(el, cur);
    }
    while (cur) {
      const n = cur.nextSibling;
      cur.remove();
      cur = n;
    }
    cache.clear();
    for (const [k, v] of used) cache.set(k, v);
    if (focusKey && !container.contains(document.activeElement)) {
      const el = used.get(focusKey) && used.get(focusKey).el;
      if (el) {
        if (container === E.events) S.rovingKey = focusKey;
        const sub = focusSub && el.querySelector(`[data-fk="${CSS.escape(focusSub)}"]`);
        if (sub && sub.tabIndex < 0) sub.tabIndex = 0;
        (sub || el).focus({ preventScroll: true });
      }
    }
  }

  // --------------------------------------------------------------- start up

  window.addEventListener('online', () => S.conn && S.conn.retryNow(), { signal });
  window.addEventListener('resize', debounce(() => invalidate('layout'), 100), { signal });

  S.conn = new Connection({
    url: api.wsURL(),
    token: session.access_token,
    onPush,
    onReady,
    onState: (st) => {
      const was = S.connState.status;
      S.connState = st;
      if (st.status === 'online') {
        if (was !== 'online' && st.everOnline && S.wasOffline) S.backOnlineUntil = Date.now() + 2500;
        S.wasOffline = false;
        outbox.kick();
      } else if (st.status === 'offline') {
        S.wasOffline = true;
        if (S.currentId) {
          const room = current();
          if (room) room.typing = [];
        }
      }
      invalidate('banner', 'timeline', 'typing');
    },
    onAuthFailed: () => {
      // Unsent messages stay for this user's next login here, unless they logged out (in
      // another tab: the session is gone already, and so is their data).
      const cur = loadJSON(hooks.sessionKey, null);
      if (cur && cur.access_token === session.access_token) outbox.release();
      shutdown();
      hooks.onLogout('Your session has ended. Please log in again.');
    },
  });
  S.conn.start();
  invalidate('all', 'layout');
}
