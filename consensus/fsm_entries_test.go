package consensus

import (
	"fmt"
	"slices"
	"testing"

	"github.com/hashicorp/raft"
	"github.com/parley-chat/parley/consensus/state"
)

// An entry whose command list holds a null (the JSON log format, or a JSON command of the
// binary one) is applied like any entry with a malformed command: refused, the rest of the
// entry and the entries after it applied. The FSM panicked on it, and since every node applies
// every entry, at every restart too, the whole cluster stopped applying for good.
func TestTheFSMRefusesANullCommand(t *testing.T) {
	entries := fuzzEntries(t)
	f := fuzzFSM(t, entries, 4) // alice and her room (each entry twice: binary, then JSON)
	register := `{"k":"register","register":{"user_id":"@carol:t.test","token_hash":"tok-carol"}}`
	var out []any
	func() {
		defer func() {
			if p := recover(); p != nil {
				t.Fatalf("the FSM panicked (every node stops at this entry): %v", p)
			}
		}()
		out = f.ApplyBatch([]*raft.Log{
			{Index: 5, Type: raft.LogCommand, Data: []byte(`{"c":[null,` + register + `]}`)},
			{Index: 6, Type: raft.LogCommand, Data: entries[4]}, // bob registers and joins
		})
	}()
	first, ok := out[0].([]state.Result)
	if !ok || len(first) != 2 || first[0].Code != state.CodeInvalid || !first[1].OK() {
		t.Fatalf("the entry with a null command answered %#v", out[0])
	}
	if _, ok := f.store.Account("@carol:t.test"); !ok {
		t.Fatal("the command after the null one was not applied")
	}
	if second, ok := out[1].([]state.Result); !ok || len(second) != 2 || !second[0].OK() || !second[1].OK() {
		t.Fatalf("the entry after answered %#v", out[1])
	}
	if got, _ := f.applied.current(); got != 6 || f.store.AppliedIndex() != 6 {
		t.Fatalf("applied index %d (store %d), want 6", got, f.store.AppliedIndex())
	}
}

// The entries a node's log held when it started are applied again (the state is rebuilt at
// every start) but were committed before: the observer hears them as Replayed, apart from the
// new ones in the same batch. An entry a new leader wrote in place of an uncommitted one the log
// held is new, though its index is not.
func TestTheFSMTellsReplayedEntriesFromNewOnes(t *testing.T) {
	entries := fuzzEntries(t)
	logDB, err := openLogStore(t.TempDir(), discardLogger(), 32<<10)
	if err != nil {
		t.Fatal(err)
	}
	defer logDB.Close()
	var held []*raft.Log // alice registers, creates a room, bob registers and joins, they talk
	for i := range 4 {
		held = append(held, &raft.Log{Index: uint64(i + 1), Term: 1, Type: raft.LogCommand, Data: entries[2*i]})
	}
	if err := logDB.StoreLogs(held); err != nil {
		t.Fatal(err)
	}
	var heard []string
	f := &fsm{store: state.Open(), log: discardLogger(), applied: newIndexWaiter(0), observer: func(a *state.Applied) {
		heard = append(heard, fmt.Sprintf("%d events, replayed %v", len(a.Events), a.Replayed))
	}}
	last, err := logDB.LastIndex()
	if err != nil {
		t.Fatal(err)
	}
	f.heldAtStart.Store(last) // as Cluster.start does
	logDB.heldAtStart = &f.heldAtStart
	// The last entry was never committed: a new leader has raft truncate it and write its own.
	if err := logDB.DeleteRange(4, 4); err != nil {
		t.Fatal(err)
	}
	replaced := &raft.Log{Index: 4, Term: 2, Type: raft.LogCommand, Data: entries[6]}
	if err := logDB.StoreLogs([]*raft.Log{replaced}); err != nil {
		t.Fatal(err)
	}
	next := &raft.Log{Index: 5, Term: 2, Type: raft.LogCommand, Data: entries[7]} // the talk again (JSON): answered idempotently
	out := f.ApplyBatch([]*raft.Log{held[0], held[1], held[2], replaced, next})
	if len(out) != 5 {
		t.Fatalf("%d results for 5 entries", len(out))
	}
	// The room's 2 events and bob's join, replayed; the 3 messages, new.
	want := []string{"3 events, replayed true", "3 events, replayed false"}
	if !slices.Equal(heard, want) {
		t.Fatalf("the observer heard %q, want %q", heard, want)
	}
	if got, _ := f.applied.current(); got != 5 {
		t.Fatalf("applied index %d, want 5", got)
	}
}
