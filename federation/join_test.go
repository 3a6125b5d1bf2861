package federation

import (
	"io"
	"log/slog"
	"strings"
	"testing"

	"github.com/parley-chat/parley/consensus/event"
)

// TestJoinAnswerDropsForgedEvents: the events a home org sends in its send_join answer are
// checked one by one as a backfill answer's are. Nothing unsigned, signed by the wrong key,
// from an org that is not listed, or with a sender of another org is stored, not even when it
// claims to come from the joining org itself; the rest of the room is kept. A room whose
// m.room.create does not verify is refused.
func TestJoinAnswerDropsForgedEvents(t *testing.T) {
	a, b, c, evil := newFuzzPeer(t), newFuzzPeer(t), newFuzzPeer(t), newFuzzPeer(t)
	s := &Service{opts: Options{Org: "b.test", Keys: &Keys{file: b.key},
		Peers: map[string]PeerKey{"a.test": a.peer, "c.test": c.peer}},
		log: slog.New(slog.NewTextHandler(io.Discard, nil))}

	create := backfillEvent(t, a, "a.test", "m.room.create", "@alice:a.test", `{"creator":"@alice:a.test"}`)
	aliceJoin := backfillEvent(t, a, "a.test", "m.room.member", "@alice:a.test", `{"membership":"join"}`, create.EventID)
	aliceJoin.StateKey = strp("@alice:a.test")
	reseal(t, aliceJoin, a, "a.test")
	third := backfillEvent(t, c, "c.test", "m.room.message", "@carol:c.test", msg("from a third org"), aliceJoin.EventID)
	ownJoin := backfillEvent(t, b, "b.test", "m.room.member", "@bob:b.test", `{"membership":"join"}`, third.EventID)
	ownJoin.StateKey = strp("@bob:b.test")
	reseal(t, ownJoin, b, "b.test")

	// The auditor's case: unsigned events in the name of the joining org and of a stranger.
	asUs := backfillEvent(t, b, "b.test", "m.room.message", "@bob:b.test", msg("words put in bob's mouth"), create.EventID)
	asUs.Signatures = nil
	stranger := backfillEvent(t, evil, "evil.test", "m.room.message", "@carol:b.test", msg("unsigned stranger"), create.EventID)
	stranger.Signatures = nil
	signedStranger := backfillEvent(t, evil, "evil.test", "m.room.message", "@mallory:evil.test", msg("signed stranger"), create.EventID)
	spoofed := backfillEvent(t, a, "a.test", "m.room.message", "@bob:b.test", msg("a.test speaking for bob"), create.EventID)
	wrongKey := backfillEvent(t, evil, "c.test", "m.room.message", "@carol:c.test", msg("c.test's name, evil's key"), create.EventID)
	bigReason := backfillEvent(t, a, "a.test", "m.room.member", "@alice:a.test",
		`{"membership":"leave","reason":"`+strings.Repeat("x", 2000)+`"}`, create.EventID)
	bigReason.StateKey = strp("@alice:a.test")
	reseal(t, bigReason, a, "a.test")

	got, err := s.checkRoomEvents("a.test", "!r:a.test", []*event.Event{
		create, aliceJoin, asUs, stranger, signedStranger, spoofed, wrongKey, bigReason, nil, third, ownJoin,
	})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, e := range got {
		ids = append(ids, e.EventID)
	}
	want := []string{create.EventID, aliceJoin.EventID, third.EventID, ownJoin.EventID}
	if strings.Join(ids, ",") != strings.Join(want, ",") {
		t.Fatalf("kept %v, want %v (create, alice's join, the third org's message, our own join)", ids, want)
	}

	forgedCreate := backfillEvent(t, evil, "a.test", "m.room.create", "@alice:a.test", `{"creator":"@alice:a.test"}`)
	for name, events := range map[string][]*event.Event{
		"forged create":         {forgedCreate, aliceJoin},
		"no create":             {aliceJoin},
		"nothing":               nil,
		"null first":            {nil, create},
		"create of a third org": {backfillEvent(t, c, "c.test", "m.room.create", "@carol:c.test", `{"creator":"@carol:c.test"}`)},
	} {
		if got, err := s.checkRoomEvents("a.test", "!r:a.test", events); err == nil {
			t.Errorf("%s: the room was accepted with %d events", name, len(got))
		}
	}
}

// reseal seals e again after a change and signs it as origin.
func reseal(tb testing.TB, e *event.Event, p fuzzPeer, origin string) {
	tb.Helper()
	e.Signatures = nil
	if err := event.Seal(e); err != nil {
		tb.Fatal(err)
	}
	if err := event.Sign(e, origin, signatureKey(p.key.KeyID), p.key.Private); err != nil {
		tb.Fatal(err)
	}
}

// TestRemoteMemberAndRedactionContent: the content of another org's member and redaction events
// is held to what a client may send: the membership, and a reason of at most 1024 bytes without
// NUL; nothing else.
func TestRemoteMemberAndRedactionContent(t *testing.T) {
	sk := strp("@bob:a.test")
	for _, c := range []struct {
		typ, content string
		ok           bool
	}{
		{"m.room.member", `{"membership":"join"}`, true},
		{"m.room.member", `{"membership":"leave","reason":"spam"}`, true},
		{"m.room.member", `{"membership":"ban","reason":"` + strings.Repeat("é", 512) + `"}`, true},
		{"m.room.member", `{"membership":"ban","reason":"` + strings.Repeat("x", 1025) + `"}`, false},
		{"m.room.member", `{"membership":"leave","reason":"a\u0000b"}`, false},
		{"m.room.member", `{"membership":"leave","reason":7}`, false},
		{"m.room.member", `{"membership":"join","displayname":"anything"}`, false},
		{"m.room.member", `{"membership":"join","extra":{"nested":[1,2,3]}}`, false},
		{"m.room.member", `{"membership":"knock"}`, false},
		{"m.room.member", `{}`, false},
		{"m.room.redaction", `{}`, true},
		{"m.room.redaction", `{"reason":"oops"}`, true},
		{"m.room.redaction", `{"reason":"` + strings.Repeat("x", 200000) + `"}`, false},
		{"m.room.redaction", `{"reason":"a\u0000"}`, false},
		{"m.room.redaction", `{"reason":"x","extra":1}`, false},
	} {
		e := &event.Event{Type: c.typ, Content: []byte(c.content)}
		if c.typ == "m.room.member" {
			e.StateKey = sk
		} else {
			e.Redacts = "$target"
		}
		if err := checkContent(e); (err == nil) != c.ok {
			t.Errorf("%s %.60s: %v, want ok=%v", c.typ, c.content, err, c.ok)
		}
	}
}

// TestJoinAnswerAlias: a send_join answer names the room only by an alias of its home org; one
// of this org (or a third) is dropped, so a peer cannot take over #ops:b.test here.
func TestJoinAnswerAlias(t *testing.T) {
	s := &Service{opts: Options{Org: "b.test"}, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	for _, tc := range []struct{ alias, want string }{
		{"#general:a.test", "#general:a.test"},
		{"", ""},
		{"#ops:b.test", ""},
		{"#ops:c.test", ""},
		{"#ops:x.a.test", ""},
		{"!r:a.test", ""},
		{"general:a.test", ""},
	} {
		if got := s.answerAlias("a.test", "!r:a.test", tc.alias); got != tc.want {
			t.Errorf("answerAlias(%q) = %q, want %q", tc.alias, got, tc.want)
		}
	}
}
