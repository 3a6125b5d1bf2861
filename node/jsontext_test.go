package node

import (
	"encoding/json"
	"testing"
)

func TestLosslessJSON(t *testing.T) {
	for _, c := range []struct {
		json string
		want bool
	}{
		{`{"txn_id":"plain"}`, true},
		{`{"txn_id":"caf\u00e9 \"q\" \\u d800"}`, true}, // an escaped backslash before u is no escape
		{`{"txn_id":"\ud83d\ude00"}`, true},             // a pair: one emoji
		{`{"txn_id":"\uD83D\uDE00"}`, true},
		{`{"txn_id":"é😀"}`, true},
		{`{"txn_id":"a\ud800"}`, false}, // a high half alone
		{`{"txn_id":"a\udbff"}`, false},
		{`{"txn_id":"a\udc00"}`, false},             // a low half alone
		{`{"txn_id":"a\ud800\u0041"}`, false},       // a high half, then no low one
		{`{"txn_id":"a\ud800\ud800\udc00"}`, false}, // two highs, one low
		{`{"txn_id":"a\ud800`, false},               // cut short after a high half
		{"{\"txn_id\":\"t\xff\"}", false},           // not UTF-8
		{`{"txn_id":"\u12"}`, true},                 // malformed: the decoder's to refuse
		{`\`, true},
	} {
		if got := LosslessJSON([]byte(c.json)); got != c.want {
			t.Errorf("LosslessJSON(%s) = %v, want %v", c.json, got, c.want)
		}
	}
	// What it guards against: these decode equal.
	var a, b struct{ T string }
	_ = json.Unmarshal([]byte(`{"t":"a\ud800"}`), &a)
	_ = json.Unmarshal([]byte(`{"t":"a\udbff"}`), &b)
	if a.T != b.T {
		t.Fatalf("encoding/json keeps lone surrogates apart now (%q, %q): LosslessJSON may be dropped", a.T, b.T)
	}
}
