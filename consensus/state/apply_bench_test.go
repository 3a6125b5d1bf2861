package state

import (
	"fmt"
	"testing"

	"github.com/parley-chat/parley/consensus/event"
)

// BenchmarkApplyEntries measures the FSM's cost per event, which every node of a cluster pays
// for every event: 64 rooms (federating, as rooms are by default: each event records the orgs
// it goes to), 64 senders with txn ids, on a store that already holds events.
//   - pipelined: entries of 32 commands applied 4 at a time (as Raft hands them over under
//     load), 20,000 events stored before;
//   - one-at-a-time: the cluster row with one send in flight per sender, entries of 10 commands
//     applied 2 at a time, 100,000 events stored before (a bench run's worth), with the load
//     tool's user ids and txn ids (long shared prefixes, which B-tree comparisons must read past).
func BenchmarkApplyEntries(b *testing.B) {
	b.Run("pipelined", func(b *testing.B) {
		benchmarkApply(b, 32, 4, 20000, "@user%d:acme.test", "!room%d:acme.test", "t%d")
	})
	b.Run("one-at-a-time", func(b *testing.B) {
		benchmarkApply(b, 10, 2, 100000, "@bench1796510515-c%d:bench.test", "!Zk%02dqRtw8Lx1:bench.test", "r1796510515-%d")
	})
}

func benchmarkApply(b *testing.B, perEntry, entriesPerApply, prefill int, userFormat, roomFormat, txnFormat string) {
	const rooms = 64
	s := Open()
	defer s.Close()
	f := &fsmT{t: b, s: s}
	chains := make([]*chain, rooms)
	senders := make([]string, rooms)
	for i := range chains {
		senders[i] = fmt.Sprintf(userFormat, i)
		chains[i] = &chain{t: b, room: fmt.Sprintf(roomFormat, i)}
		c := chains[i]
		create := []*event.Event{
			c.next(senders[i], "m.room.create", sk(""), CreateContent{Creator: senders[i], Visibility: "public", Federate: true}),
			c.next(senders[i], "m.room.member", sk(senders[i]), map[string]string{"membership": Join}),
		}
		f.apply(&Command{Kind: KindCreateRoom, CreateRoom: &CreateRoom{RoomID: c.room, Events: create}})
	}
	txn := 0
	message := func() *Command {
		txn++
		i := txn % rooms
		e := chains[i].next(senders[i], "m.room.message", nil, map[string]string{"msgtype": "m.text",
			"body": fmt.Sprintf("message %d from the benchmark, about as long as a chat line", txn)})
		return &Command{Kind: KindEvent, Event: &EventCommand{Event: e, TxnID: fmt.Sprintf(txnFormat, txn)}}
	}
	batch := func() []Entry {
		entries := make([]Entry, entriesPerApply)
		for j := range entries {
			cmds := make([]*Command, perEntry)
			for k := range cmds {
				cmds[k] = message()
			}
			f.index++
			entries[j] = Entry{Index: f.index, Batch: &Batch{Commands: cmds}}
		}
		return entries
	}
	for range prefill / (perEntry * entriesPerApply) {
		if _, _, err := s.ApplyEntries(batch()); err != nil {
			b.Fatal(err)
		}
	}
	n := (b.N + perEntry*entriesPerApply - 1) / (perEntry * entriesPerApply)
	work := make([][]Entry, n)
	for i := range work {
		work[i] = batch()
	}
	b.ResetTimer()
	for _, entries := range work {
		res, _, err := s.ApplyEntries(entries)
		if err != nil {
			b.Fatal(err)
		}
		if !res[0][0].OK() {
			b.Fatalf("refused: %+v", res[0][0])
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(n*perEntry*entriesPerApply), "µs/event")
}
