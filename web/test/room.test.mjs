// Unit tests of the timeline model (src/room.js), run with the browser tests. The unit tests
// of the outbox and of the connection run with them (scripts/test-web.sh names this file).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Room } from '../src/room.js';

const msg = (id, pos) => ({ event_id: id, type: 'm.room.message', content: { body: id }, ...(pos == null ? {} : { stream_pos: pos }) });
const order = (room) => room.events.map((e) => e.event_id).join(' ');

test('events order by stream position, whatever order they come in', () => {
  const r = new Room('!r:a.test');
  r.addEvents([msg('c', 3), msg('a', 1)], true);
  r.addEvents([msg('b', 2), msg('d', 4), msg('a', 1)], true);
  assert.equal(order(r), 'a b c d');
});

// History pages of a room of another org reach back before this org joined; those events
// have no stream_pos (docs/protocol.md). They are older than everything loaded: they go first,
// page by page, never after the newest messages.
test('history pages without stream positions go before what is loaded', () => {
  const r = new Room('!r:b.test');
  r.addEvents([msg('new1', 10), msg('new2', 11)], true);
  r.addEvents([msg('old3'), msg('old4')], false); // the page just before: oldest first
  r.addEvents([msg('old1'), msg('old2')], false); // and the one before that
  assert.equal(order(r), 'old1 old2 old3 old4 new1 new2');
  r.addEvents([msg('new3', 12)], true); // a push after paging back
  assert.equal(order(r), 'old1 old2 old3 old4 new1 new2 new3');
  assert.equal(r.events.at(-1).event_id, 'new3');
  r.addEvents([msg('old2'), msg('new1', 10)], false); // repeats are ignored
  assert.equal(r.events.length, 7);
});

// Paging back into the part of a room of another org from before this org joined goes through
// the room's home org (a `b` token). When that org cannot be reached, the node answers with
// the events this org stores (the room's first state events) and no start token
// (docs/protocol.md): that is no beginning of the room. The token stays for trying again, and
// the page that comes then shows every event once, in order.
const state = (id, type, pos) => ({ event_id: id, type, state_key: '', content: {}, stream_pos: pos });

test('a failed backfill keeps the start token; the retry shows each event once, in order', () => {
  const r = new Room('!r:b.test');
  r.addEvents([msg('m51', 60), msg('m52', 61)], true); // the newest events, from a limited sync
  r.start = 'b$m51';
  const stored = [state('create', 'm.room.create', 1), state('member', 'm.room.member', 2)];

  // The home org is down: the stored state events, no start, marked incomplete.
  assert.equal(r.addHistoryPage('b$m51', { events: stored, incomplete: true }), false);
  assert.equal(r.start, 'b$m51', 'the token is kept for a retry');
  assert.equal(r.historyComplete, false, 'the failure is not the beginning of the room');
  assert.equal(r.olderFailed, true);
  assert.equal(order(r), 'm51 m52');
  // Down still: an empty page is no beginning either.
  assert.equal(r.addHistoryPage('b$m51', { events: [], incomplete: true }), false);
  assert.equal(r.start, 'b$m51');

  // It is back: the same token brings the home org's events before the join (no stream_pos)
  // with the stored copies of those this org has.
  assert.equal(r.addHistoryPage('b$m51', { events: [...stored, msg('m1'), msg('m2')] }), true);
  assert.equal(r.start, null);
  assert.equal(r.historyComplete, true, 'this time it is the beginning');
  assert.equal(r.olderFailed, false);
  assert.equal(order(r), 'create member m1 m2 m51 m52');

  // Repeats of a page (a retry racing an answer) add nothing.
  r.addHistoryPage('b$m51', { events: [...stored, msg('m1'), msg('m2')] });
  assert.equal(order(r), 'create member m1 m2 m51 m52');
  assert.equal(new Set(r.events.map((e) => e.event_id)).size, r.events.length);
});

// The room's real first page, through the home org, may hold only state events this org stores
// (they come back with their stream_pos): it is the beginning, not a failure (a review found
// the client taking it for one, and offering "Try again" for good).
test('a backfilled first page of stored state events only is the beginning of the room', () => {
  const r = new Room('!r:b.test');
  r.addEvents([msg('m5', 60)], true);
  r.start = 'b$m5';
  const stored = [state('create', 'm.room.create', 1), state('member', 'm.room.member', 2), state('power', 'm.room.power_levels', 3)];
  assert.equal(r.addHistoryPage('b$m5', { events: stored }), true);
  assert.equal(r.historyComplete, true);
  assert.equal(r.olderFailed, false);
  assert.equal(order(r), 'create member power m5');
});

test('a page of stored events (p token) that ends is the beginning of the room', () => {
  const r = new Room('!r:a.test');
  r.addEvents([msg('c', 3), msg('d', 4)], true);
  r.start = 'p3';
  assert.equal(r.addHistoryPage('p3', { events: [state('create', 'm.room.create', 1), msg('b', 2)] }), true);
  assert.equal(r.historyComplete, true);
  assert.equal(r.start, null);
  assert.equal(order(r), 'create b c d');
});

// A history answer is read at one moment; a redaction of one of its events committed right
// after is pushed, and its push can come before that answer (paging back, or the first page of a
// room just joined). The page then holds the target with its content: it shows as deleted all
// the same, and a redacted reaction counts for nothing.
test('a redaction that comes before its target (a history page read before it) still applies', () => {
  const r = new Room('!r:a.test');
  r.addEvents([msg('m60', 60)], true);
  r.start = 'p60';
  const react = { event_id: 'rx', type: 'm.reaction', sender: '@b:a.test', stream_pos: 11, content: { 'm.relates_to': { rel_type: 'm.annotation', event_id: 'm60', key: '👍' } } };
  r.addEvents([
    { event_id: 'red1', type: 'm.room.redaction', redacts: 'm10', stream_pos: 61, content: {} },
    { event_id: 'red2', type: 'm.room.redaction', redacts: 'rx', stream_pos: 62, content: {} },
  ], true);
  assert.equal(r.addHistoryPage('p60', { events: [msg('m10', 10), react, msg('m12', 12)], start: 'p10' }), true);
  assert.deepEqual(r.byId.get('m10').content, {}, 'the message shows as deleted');
  assert.equal(r.byId.get('m10').unsigned.redacted_because, 'red1');
  assert.deepEqual(r.reactionsFor('m60', '@a:a.test'), [], 'the redacted reaction counts for nothing');
  assert.equal(r.byId.get('m12').content.body, 'm12');
});
