package consensus

import (
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/hashicorp/raft"
	"github.com/parley-chat/parley/consensus/state"
)

// fsm applies committed log entries to the state store, then hands what changed to the
// observer (the node's fan-out) and wakes anyone waiting for that index.
type fsm struct {
	store    *state.Store
	log      *slog.Logger
	observer func(*state.Applied)
	applied  *indexWaiter
	onBatch  func(entries, commands int)
	// heldAtStart is the last index of the entries this node's log held when it started: the
	// state is rebuilt at every start, so those are applied again, but they are no new commits
	// (the observer hears them as state.Applied.Replayed). The log store lowers it when it writes
	// entries at or below it: a new leader replaced an uncommitted tail.
	heldAtStart atomic.Uint64
}

var _ raft.BatchingFSM = (*fsm)(nil)

func (f *fsm) Apply(l *raft.Log) any {
	return f.ApplyBatch([]*raft.Log{l})[0]
}

func (f *fsm) ApplyBatch(logs []*raft.Log) []any {
	held := f.heldAtStart.Load()
	var (
		out      []any
		commands int
	)
	if first, last := logs[0].Index, logs[len(logs)-1].Index; first <= held && held < last {
		// The one batch after a restart that holds both replayed and new entries is applied in
		// two parts (the state's outcome does not depend on how entries are grouped).
		split := 1
		for logs[split].Index <= held {
			split++
		}
		out, commands = f.apply(logs[:split], true)
		more, n := f.apply(logs[split:], false)
		out, commands = append(out, more...), commands+n
	} else {
		out, commands = f.apply(logs, last <= held)
	}
	if f.onBatch != nil {
		f.onBatch(len(logs), commands)
	}
	return out
}

// apply applies consecutive entries, all of them held by the log at start (replayed) or none.
func (f *fsm) apply(logs []*raft.Log, replayed bool) (out []any, commands int) {
	entries := make([]state.Entry, len(logs))
	for i, l := range logs {
		entries[i].Index = l.Index
		if l.Type != raft.LogCommand {
			continue
		}
		b, err := state.DecodeBatch(l.Data)
		if err != nil {
			// Only this node's own proposer writes entries, so this is corruption, not input.
			f.log.Error("undecodable raft entry skipped", "index", l.Index, "err", err)
			continue
		}
		entries[i].Batch = b
		commands += len(b.Commands)
	}
	results, applied, err := f.store.ApplyEntries(entries)
	if err != nil {
		// A node that cannot write its state must stop rather than diverge from its peers.
		panic(fmt.Sprintf("consensus: apply entries %d..%d: %v", logs[0].Index, logs[len(logs)-1].Index, err))
	}
	if f.observer != nil && (len(applied.Events) > 0 || len(applied.Receipts) > 0 || len(applied.RevokedTokens) > 0) {
		applied.Replayed = replayed
		f.observer(applied)
	}
	f.applied.advance(logs[len(logs)-1].Index)
	out = make([]any, len(logs))
	for i := range logs {
		out[i] = results[i]
	}
	return out, commands
}

func (f *fsm) Snapshot() (raft.FSMSnapshot, error) {
	v, err := f.store.BeginSnapshot()
	if err != nil {
		return nil, err
	}
	return &fsmSnapshot{view: v}, nil
}

func (f *fsm) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	if err := f.store.Restore(rc); err != nil {
		return fmt.Errorf("consensus: restore snapshot: %w", err)
	}
	f.applied.advance(f.store.AppliedIndex())
	if f.observer != nil {
		f.observer(&state.Applied{Restored: true})
	}
	return nil
}

type fsmSnapshot struct{ view *state.SnapshotView }

func (s *fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if _, err := s.view.WriteTo(sink); err != nil {
		_ = sink.Cancel()
		return fmt.Errorf("consensus: write snapshot: %w", err)
	}
	return sink.Close()
}

func (s *fsmSnapshot) Release() { s.view.Close() }

// indexWaiter lets goroutines wait until the FSM has applied a given index.
type indexWaiter struct {
	mu      sync.Mutex
	index   uint64
	changed chan struct{}
}

func newIndexWaiter(start uint64) *indexWaiter {
	return &indexWaiter{index: start, changed: make(chan struct{})}
}

func (w *indexWaiter) advance(idx uint64) {
	w.mu.Lock()
	if idx > w.index {
		w.index = idx
		close(w.changed)
		w.changed = make(chan struct{})
	}
	w.mu.Unlock()
}

func (w *indexWaiter) current() (uint64, <-chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.index, w.changed
}
