package consensus

import (
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
