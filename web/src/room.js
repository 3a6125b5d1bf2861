// A room as the client knows it: metadata, the loaded part of its timeline (oldest first, by
// stream position), and indexes of the relations (edits, reactions) and receipts.

export class Room {
  constructor(id) {
    this.id = id;
    this.name = '';
    this.topic = '';
    this.alias = '';
    this.membership = 'join';
    this.memberCount = 0;
    this.events = [];
    this.byId = new Map();
    this.start = null; // history token for older events; null with historyComplete: nothing older
    this.historyComplete = false;
    this.loaded = false; // has a base timeline (from a full or limited sync, or history)
    this.loadingOlder = false;
    this.olderFailed = false; // the last page back failed: start is kept for trying again
    this.edits = new Map(); // target id -> [edit events]
    this.reactions = new Map(); // target id -> [reaction events]
    // target id -> redaction event id, kept across timeline resets: a redaction can come before
    // the copy of its target that a history answer read just before it (see addEvents).
    this.redacted = new Map();
    this.receipts = new Map(); // user id -> event id
    this.typing = [];
    this.members = null; // [{user_id, membership, power, presence}] once fetched
    this.version = 0; // bumped on every change that shows
  }

  get displayName() {
    return this.name || this.alias || this.id;
  }

  /** Forget the timeline (a gap: a limited sync) and keep the metadata. */
  resetTimeline() {
    this.events = [];
    this.byId.clear();
    this.edits.clear();
    this.reactions.clear();
    this.start = null;
    this.historyComplete = false;
    this.olderFailed = false;
    this.version++;
  }

  /**
   * Adds events (any order) that are not already there; returns those that were new.
   * `current` says they are the newest (sync, pushes), so that state events update the
   * room's metadata; history pages pass false.
   */
  addEvents(events, current) {
    const added = [];
    // A history page of a room of another org may reach back before this org joined: those
    // events have no stream_pos, and the page may mix them with events this org stores (the
    // room's first state events, with a stream_pos). The page is older than everything loaded,
    // so its events go first, in the page's order (oldest first); only an event newer than the
    // oldest loaded one (a page that crossed a reset of the timeline) goes by its position.
    const before = [];
    const oldest = this.events.find((e) => e.stream_pos != null);
    for (const ev of events) {
      if (!ev || !ev.event_id || this.byId.has(ev.event_id)) continue;
      // A history answer read before a redaction whose push came first still holds the
      // target's content: the redaction applies to it now.
      const because = this.redacted.get(ev.event_id);
      if (because) redactCopy(ev, because);
      if (!current && (ev.stream_pos == null || !oldest || ev.stream_pos < oldest.stream_pos)) {
        before.push(ev);
        this.byId.set(ev.event_id, ev);
      } else {
        this.insert(ev);
      }
      added.push(ev);
      this.index(ev);
      if (current) this.applyState(ev);
    }
    if (before.length) this.events.splice(0, 0, ...before);
    if (added.length) this.version++;
    return added;
  }

  /**
   * Applies the answer to `history` with before = token (paging back). Returns false, and
   * changes nothing, when the page is a failed backfill: a `b` token asks the room's home org
   * for the events before this org joined (docs/protocol.md, "History and sync tokens"); when
   * that org cannot be reached the node answers with what this org stores, marked
   * `incomplete`, and usually no `start`, which would look like the beginning of the room. Then
   * start stays token, to ask again (retried, the page comes whole: nothing shows twice). The
   * mark, not the events, tells: the room's real first page may hold only state events this
   * org stores, with their stream_pos, like a failed one.
   */
  addHistoryPage(token, res) {
    const events = (res && res.events) || [];
    if (res && res.incomplete === true) {
      this.olderFailed = true;
      return false;
    }
    this.addEvents(events, false);
    this.start = (res && res.start) || null;
    this.historyComplete = !this.start;
    this.olderFailed = false;
    this.version++;
    return true;
  }

  insert(ev) {
    const pos = ev.stream_pos ?? Number.MAX_SAFE_INTEGER;
    const list = this.events;
    let i = list.length;
    if (i && (list[i - 1].stream_pos ?? 0) > pos) {
      let lo = 0;
      let hi = list.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if ((list[mid].stream_pos ?? 0) < pos) lo = mid + 1;
        else hi = mid;
      }
      i = lo;
    }
    list.splice(i, 0, ev);
    this.byId.set(ev.event_id, ev);
  }

  index(ev) {
    const c = ev.content || {};
    const rel = c['m.relates_to'];
    if (ev.type === 'm.room.message' && rel && rel.rel_type === 'm.replace' && rel.event_id) {
      push(this.edits, rel.event_id, ev);
    } else if (ev.type === 'm.reaction' && rel && rel.event_id) {
      push(this.reactions, rel.event_id, ev);
    } else if (ev.type === 'm.room.redaction' && ev.redacts) {
      this.redacted.set(ev.redacts, ev.event_id);
      const target = this.byId.get(ev.redacts);
      if (target) redactCopy(target, ev.event_id);
    }
  }

  applyState(ev) {
    const c = ev.content || {};
    switch (ev.type) {
      case 'm.room.name':
        this.name = typeof c.name === 'string' ? c.name : '';
        break;
      case 'm.room.topic':
        this.topic = typeof c.topic === 'string' ? c.topic : '';
        break;
      case 'm.room.create':
        if (typeof c.alias === 'string' && c.alias) this.alias = c.alias;
        break;
      case 'm.room.member':
        if (this.members && ev.state_key) {
          const row = this.members.find((m) => m.user_id === ev.state_key);
          if (row) row.membership = c.membership;
          else this.members.push({ user_id: ev.state_key, membership: c.membership, power: 0 });
        }
        break;
      default:
    }
  }

  /** The newest edit by the original sender, if any (redacted edits do not count). */
  latestEdit(ev) {
    const edits = this.edits.get(ev.event_id);
    if (!edits) return null;
    let best = null;
    for (const e of edits) {
      const nc = e.content && e.content['m.new_content'];
      if (e.sender !== ev.sender || !nc || typeof nc.body !== 'string') continue;
      if (!best || (e.stream_pos || 0) > (best.stream_pos || 0)) best = e;
    }
    return best;
  }

  /**
   * Reactions on an event: [{key, count, senders, mine (my reaction's event id), mineIds (all of
   * my reactions with that key: two tabs may have made two)}].
   */
  reactionsFor(eventId, me) {
    const list = this.reactions.get(eventId);
    if (!list) return [];
    const byKey = new Map();
    for (const r of list) {
      const rel = r.content && r.content['m.relates_to'];
      if (!rel || typeof rel.key !== 'string') continue; // redacted
      let g = byKey.get(rel.key);
      if (!g) byKey.set(rel.key, (g = { key: rel.key, senders: new Set(), mine: null, mineIds: [] }));
      if (r.sender === me) g.mineIds.push(r.event_id);
      if (g.senders.has(r.sender)) continue;
      g.senders.add(r.sender);
      if (r.sender === me) g.mine = r.event_id;
    }
    return [...byKey.values()].map((g) => ({ ...g, count: g.senders.size }));
  }

  newestPos() {
    return this.events.length ? this.events[this.events.length - 1].stream_pos || 0 : 0;
  }
}

function redactCopy(target, because) {
  target.content = {};
  target.unsigned = { ...(target.unsigned || {}), redacted_because: because };
}

function push(map, key, v) {
  const list = map.get(key);
  if (list) list.push(v);
  else map.set(key, [v]);
}

/** Is this event shown as its own line in the timeline? */
export function isShown(ev) {
  switch (ev.type) {
    case 'm.room.message': {
      const rel = ev.content && ev.content['m.relates_to'];
      return !(rel && rel.rel_type === 'm.replace');
    }
    case 'm.room.create':
    case 'm.room.member':
    case 'm.room.name':
    case 'm.room.topic':
      return true;
    default:
      return false;
  }
}

/** A message that counts for unread badges. */
export function isCountable(ev, me) {
  return ev.type === 'm.room.message' && ev.sender !== me && isShown(ev) && ev.content && typeof ev.content.body === 'string';
}
