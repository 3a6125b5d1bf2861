// Unit tests of the timeline model (src/room.js), run with the browser tests.
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
