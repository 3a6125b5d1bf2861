package state

import (
	"bytes"
	"crypto/ed25519"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"testing"

	"github.com/parley-chat/parley/consensus/event"
)

// jsonEncodeBatch and jsonDecodeBatch are the log's codec before the binary format: what is on
// disk already, and the reference the binary format must agree with.
func jsonEncodeBatch(cmds []*Command) ([]byte, error) {
	return json.Marshal(Batch{Commands: cmds})
}

func jsonDecodeBatch(data []byte) (*Batch, error) {
	var b Batch
	err := json.Unmarshal(data, &b)
	return &b, err
}

func jsonRoundTrip(t testing.TB, cmds []*Command) *Batch {
	t.Helper()
	j, err := jsonEncodeBatch(cmds)
	if err != nil {
		t.Fatal(err)
	}
	b, err := jsonDecodeBatch(j)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// sameBatch fails unless got and want hold equal commands whose events also write the same
// JSON for the store.
func sameBatch(t *testing.T, got, want *Batch) {
	t.Helper()
	if !reflect.DeepEqual(got, want) {
		g, _ := json.Marshal(got)
		w, _ := json.Marshal(want)
		t.Fatalf("batches differ:\ngot  %s\nwant %s\n%#v\n%#v", g, w, got.Commands, want.Commands)
	}
	for i, c := range got.Commands {
		if c == nil || c.Event == nil {
			continue
		}
		g, gErr := c.Event.Event.AppendJSON(nil)
		w, wErr := want.Commands[i].Event.Event.AppendJSON(nil)
		if !bytes.Equal(g, w) || (gErr == nil) != (wErr == nil) {
			t.Fatalf("command %d: AppendJSON differs:\ngot  %s %v\nwant %s %v", i, g, gErr, w, wErr)
		}
	}
}

// typicalCommand is an event command as a client's send proposes it.
func typicalCommand(tb testing.TB, i int) *Command {
	tb.Helper()
	e := &event.Event{
		RoomID: "!r1:acme.test", Sender: "@alice:acme.test", Origin: "acme.test",
		OriginTS: 1700000000000 + int64(i), Type: "m.room.message",
		Content:    json.RawMessage(`{"body":"hello world, a typical chat line","msgtype":"m.text"}`),
		PrevEvents: []string{"$ITRfeccKC3r14udID-moqh4T2T-mtomz7y7-Jw_0Ao8"}, Depth: 42 + int64(i),
	}
	priv := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))
	if err := event.Seal(e); err != nil {
		tb.Fatal(err)
	}
	if err := event.Sign(e, "acme.test", "ed25519:1", priv); err != nil {
		tb.Fatal(err)
	}
	return &Command{Kind: KindEvent, Event: &EventCommand{Event: e, TxnID: fmt.Sprintf("m1700000000.%d", i)}}
}

func typicalBatch(tb testing.TB) []*Command {
	cmds := make([]*Command, 32)
	for i := range cmds {
		cmds[i] = typicalCommand(tb, i)
	}
	return cmds
}

// fuzzBatch builds a batch around one event command whose fields come from s1, s2 and
// content, with flags switching the optional parts and the other commands mixed in, so that
// nil and empty variants and the JSON fallback are all reached.
func fuzzBatch(s1, s2 string, content []byte, n int64, flags uint32) []*Command {
	e := &event.Event{EventID: s1, RoomID: s2, Sender: s1 + s2, Origin: s2, OriginTS: n, Type: s1,
		Content: content, PrevEvents: []string{s1, s2}, Depth: -n, Hashes: event.Hashes{SHA256: s2}}
	ec := &EventCommand{Event: e}
	c := &Command{Kind: KindEvent, Event: ec}
	bit := func(i uint) bool { return flags&(1<<i) != 0 }
	if bit(0) {
		e.StateKey = &s2
	}
	if bit(1) {
		e.Redacts = s1
	}
	if bit(2) {
		e.PrevEvents = nil
	} else if bit(3) {
		e.PrevEvents = []string{}
	}
	switch {
	case bit(4):
		e.Signatures = map[string]map[string]string{s2: {s1: s2, "ed25519:k": s1}, "b": nil}
	case bit(5):
		e.Signatures = map[string]map[string]string{}
	case bit(6):
		e.Signatures = map[string]map[string]string{s1: {}}
	case bit(7):
		e.Signatures = map[string]map[string]string{s1: {s2: s1}, s2: {s1: s2}}
	}
	if bit(8) {
		e.StreamPos = n
	}
	if bit(9) {
		e.Unsigned = &event.Unsigned{TxnID: s1}
	}
	if bit(10) {
		ec.InviteRoom = true
	}
	if bit(11) {
		ec.TxnID = s1
	}
	if bit(12) {
		e.Content = nil
	}
	if bit(13) {
		c.Receipt = &Receipt{RoomID: s2} // a second payload: only JSON keeps it
	}
	if bit(14) {
		c.Kind = KindReceipt
	}
	cmds := []*Command{c}
	if bit(15) {
		cmds = append([]*Command{{Kind: KindRegister, Register: &Register{UserID: s1, PasswordHash: content, CreatedTS: n}}}, cmds...)
	}
	if bit(16) {
		cmds = append(cmds, &Command{Kind: KindReceipt, Receipt: &Receipt{RoomID: s2, UserID: s1, EventID: s1}})
	}
	if bit(17) {
		cmds = append(cmds, nil, &Command{Kind: KindEvent}, &Command{Kind: KindEvent, Event: &EventCommand{TxnID: s2}})
	}
	if bit(18) {
		cmds = append(cmds, &Command{Kind: KindEvent, Event: &EventCommand{Event: e.Clone(), TxnID: s2}})
	}
	if bit(19) {
		cmds = append(cmds, &Command{Kind: KindCreateRoom, CreateRoom: &CreateRoom{RoomID: s2, Events: []*event.Event{e.Clone()}}})
	}
	if bit(20) {
		cmds = nil
	} else if bit(21) {
		cmds = []*Command{}
	}
	return cmds
}

func addFuzzBatchSeeds(f *testing.F) {
	f.Add("$ev", "!room:acme.test", []byte(`{"msgtype":"m.text","body":"hi"}`), int64(1700000000000), uint32(0))
	f.Add("$ev", "!room:acme.test", []byte(`{"msgtype":"m.text","body":"hi"}`), int64(7), uint32(1|2|16|1024|2048|32768|65536))
	f.Add("a<b>&c", "\u2028\u2029", []byte(` { "b" : "<x>&\u2028" , "a" : [ 1 , 2 ] } `), int64(-5), uint32(1|4|16|2048))
	f.Add("\xff\xfe bad", "ctl\x01\x1f\b\f\n\r\t\"\\", []byte(`"s\"<"`), int64(0), uint32(1|4|16|64))
	f.Add("ok", "ok", []byte(`{}`), int64(1), uint32(2048))
	f.Add("ok", "\xff", []byte(`{}`), int64(1), uint32(16))
	f.Add("\xfe", "\xff", []byte(`{}`), int64(1), uint32(128)) // keys that JSON merges into one
	f.Add("", "", []byte(nil), int64(1<<62), uint32(2|8|32))
	f.Add("", "", []byte(nil), int64(-1<<63), uint32(4096|64))
	f.Add("x", "y", []byte(`{}`), int64(3), uint32(256))
	f.Add("x", "y", []byte(`{}`), int64(3), uint32(512))
	f.Add("x", "y", []byte(`{}`), int64(3), uint32(8192))
	f.Add("x", "y", []byte(`{}`), int64(3), uint32(16384))
	f.Add("x", "y", []byte(`{}`), int64(3), uint32(1<<17|1<<18|1<<19))
	f.Add("x", "y", []byte(`{}`), int64(3), uint32(1<<20))
	f.Add("x", "y", []byte(`{}`), int64(3), uint32(1<<21))
	f.Add("x", "y", []byte{}, int64(3), uint32(0))
	f.Add("x", "y", []byte(`{"a":`), int64(3), uint32(0))
	f.Add("x", "y", []byte("\"\xe2\x80\xa8\xe2\x80\xa9\\u2028\""), int64(3), uint32(0))
	f.Add("x", "y", []byte("[\"\xff\"]"), int64(3), uint32(0))
	f.Add("x", "y", []byte("\t\"a\\\"<\" \n"), int64(3), uint32(0))
	f.Add("x", "y", []byte("null"), int64(3), uint32(1<<18))
}

// FuzzBatchCodecMatchesJSON: a batch decoded from the binary format is exactly the batch its
// old JSON round trip gives, and both fail on the same batches.
func FuzzBatchCodecMatchesJSON(f *testing.F) {
	addFuzzBatchSeeds(f)
	f.Fuzz(func(t *testing.T, s1, s2 string, content []byte, n int64, flags uint32) {
		cmds := fuzzBatch(s1, s2, content, n, flags)
		j, jErr := jsonEncodeBatch(cmds)
		b, bErr := EncodeBatch(cmds)
		if (jErr == nil) != (bErr == nil) {
			t.Fatalf("errors differ: json %v, binary %v", jErr, bErr)
		}
		if jErr != nil {
			return
		}
		want, err := jsonDecodeBatch(j)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeBatch(b)
		if err != nil {
			t.Fatalf("%v\n%q", err, b)
		}
		sameBatch(t, got, want)
	})
}

// FuzzDecodeBatch: no input panics the decoder, and whatever decodes re-encodes to the same
// batch.
func FuzzDecodeBatch(f *testing.F) {
	typical, err := EncodeBatch(typicalBatch(f)[:3])
	if err != nil {
		f.Fatal(err)
	}
	seeds := [][]byte{typical, {}, {batchVersion}, {batchVersion, 0}, {batchVersion, 1}, {0xff}, []byte(`{"c":null}`), []byte(" {\"c\":[]}"), []byte(`null`)}
	for i := 0; i < len(typical); i += 7 {
		seeds = append(seeds, typical[:i])
	}
	for _, flags := range []uint32{0, 1 | 2 | 16 | 1024 | 2048 | 1<<15 | 1<<16, 4 | 64 | 1<<17 | 1<<19, 8 | 32 | 512 | 4096 | 1<<18} {
		cmds := fuzzBatch("$e<>", "!r:a", []byte(`{"a":[1,"\u2028"]}`), 5, flags)
		for _, enc := range []func([]*Command) ([]byte, error){EncodeBatch, jsonEncodeBatch} {
			b, err := enc(cmds)
			if err != nil {
				f.Fatal(err)
			}
			seeds = append(seeds, b)
		}
	}
	for _, s := range seeds {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		first, err := DecodeBatch(data)
		if err != nil {
			return
		}
		b, err := EncodeBatch(first.Commands)
		if err != nil {
			t.Fatalf("decoded batch does not encode: %v", err)
		}
		again, err := DecodeBatch(b)
		if err != nil {
			t.Fatalf("re-encoded batch does not decode: %v\n%q", err, b)
		}
		want := jsonRoundTrip(t, first.Commands)
		if data[0] == batchVersion {
			// The binary format is read strictly: what decodes is what re-encoding writes.
			// (JSON keeps event content as written, so re-encoding compacts it, as before.)
			sameBatch(t, want, first)
		}
		sameBatch(t, again, want)
	})
}

// Logs already on disk hold JSON batches; they decode exactly as the JSON decoder did.
func TestDecodeBatchReadsJSON(t *testing.T) {
	inputs := [][]byte{[]byte(`{"c":null}`), []byte(`{"c":[]}`), []byte(" \n{\"c\":[null]}"), []byte(`{}`)}
	for _, flags := range []uint32{0, 1 | 2 | 16 | 1024 | 2048 | 1<<15 | 1<<16, 4 | 64 | 512 | 1<<17 | 1<<19, 8 | 32 | 4096, 1 << 20, 1 << 21} {
		j, err := jsonEncodeBatch(fuzzBatch("$e<>", "!r:a", []byte(` {"a" : [1,"\u2028"]}`), 5, flags))
		if err != nil {
			t.Fatal(err)
		}
		inputs = append(inputs, j)
	}
	j, err := jsonEncodeBatch(typicalBatch(t))
	if err != nil {
		t.Fatal(err)
	}
	inputs = append(inputs, j, []byte(`{"c":[{"k":"event","event":{"event":{"content": { "a" : "<" } }}}]}`))
	for _, in := range inputs {
		want, err := jsonDecodeBatch(in)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeBatch(in)
		if err != nil {
			t.Fatalf("%s: %v", in, err)
		}
		sameBatch(t, got, want)
	}
	if _, err := DecodeBatch([]byte(`{"c":`)); err == nil {
		t.Fatal("truncated JSON decoded")
	}
}

// The binary form is what typical event commands get, and JSON what it cannot reproduce.
func TestEncodeBatchChoosesForm(t *testing.T) {
	typical := typicalCommand(t, 0)
	unsigned := typicalCommand(t, 1)
	unsigned.Event.Event.Unsigned = &event.Unsigned{TxnID: "x"}
	badUTF8 := typicalCommand(t, 2)
	badUTF8.Event.TxnID = "\xff"
	for _, tc := range []struct {
		c   *Command
		tag byte
	}{{typical, tagEvent}, {unsigned, tagJSON}, {badUTF8, tagJSON}, {&Command{Kind: KindLogout, Logout: &Logout{}}, tagJSON}} {
		b, err := EncodeBatch([]*Command{tc.c})
		if err != nil {
			t.Fatal(err)
		}
		if b[0] != batchVersion || b[1] != 2 || b[2] != tc.tag {
			t.Fatalf("%+v encoded as % x, want tag %d", tc.c, b[:3], tc.tag)
		}
	}
	// One encoding per batch, whatever the map order.
	a, _ := EncodeBatch(fuzzBatch("a", "b", []byte(`{}`), 1, 128))
	for range 20 {
		if b, _ := EncodeBatch(fuzzBatch("a", "b", []byte(`{}`), 1, 128)); !bytes.Equal(a, b) {
			t.Fatalf("encodings differ:\n%q\n%q", a, b)
		}
	}
}

// The binary decoder refuses anything EncodeBatch would not write.
func TestDecodeBatchRejectsMalformed(t *testing.T) {
	valid := func() []byte {
		c := typicalCommand(t, 0)
		c.Event.Event.EventID = "$AAAA"
		c.Event.Event.Content = json.RawMessage(`{"a":"x"}`)
		c.Event.Event.Signatures = map[string]map[string]string{"a.test": {"k1": "s", "k2": "s"}, "b.test": {"k3": "s"}}
		b, err := EncodeBatch([]*Command{c})
		if err != nil {
			t.Fatal(err)
		}
		if b[2] != tagEvent {
			t.Fatal("not binary")
		}
		return b
	}
	replace := func(old, new string) []byte {
		b := valid()
		if !bytes.Contains(b, []byte(old)) || len(old) != len(new) {
			t.Fatalf("cannot replace %q", old)
		}
		return bytes.Replace(b, []byte(old), []byte(new), 1)
	}
	withFlags := valid()
	withFlags[3] = 0x80
	jsonCommand := func(j string) []byte {
		return append(binary.AppendUvarint([]byte{batchVersion, 2, tagJSON}, uint64(len(j))), j...)
	}
	if _, err := DecodeBatch(jsonCommand(`{"k":"receipt"}`)); err != nil {
		t.Fatal(err)
	}
	// An event with empty strings and null content, up to its prev_events count.
	prefix := []byte{batchVersion, 2, tagEvent, 0, 0, 0, 0, 0, 0, 0, 4, 'n', 'u', 'l', 'l', 0}
	cases := map[string][]byte{
		"trailing byte":          append(valid(), 0),
		"invalid UTF-8":          replace("$AAAA", "$\xff\xffAA"),
		"uncompacted content":    replace(`{"a":"x"}`, `{"a": 12}`),
		"content not escaped":    replace(`{"a":"x"}`, `{"a":"<"}`),
		"invalid content":        replace(`{"a":"x"}`, `{"a" "x"}`),
		"unsorted origins":       replace("a.test", "c.test"),
		"duplicate origins":      replace("b.test", "a.test"),
		"duplicate key ids":      replace("k2", "k1"),
		"unknown flags":          withFlags,
		"unknown tag":            {batchVersion, 2, 7},
		"huge command count":     binary.AppendUvarint([]byte{batchVersion}, 1<<40),
		"huge prev_events count": binary.AppendUvarint(prefix, 1<<62),
		"overlong varint":        append([]byte{batchVersion}, bytes.Repeat([]byte{0xff}, 11)...),
		"uncompacted JSON":       jsonCommand(`{"k":"receipt" }`),
		"JSON not escaped":       jsonCommand(`{"k":"<"}`),
		"JSON of another type":   jsonCommand(`[]`),
		"truncated JSON":         jsonCommand(`{"k":"receipt"`),
		"only the version byte":  {batchVersion},
	}
	if _, err := DecodeBatch(append(binary.AppendUvarint(prefix, 1), 0, 0, 0, 0)); err != nil {
		t.Fatalf("the prev_events prefix is not what it claims: %v", err)
	}
	b := valid()
	for i := range b {
		cases[fmt.Sprintf("truncated to %d bytes", i)] = b[:i]
	}
	for _, name := range slices.Sorted(maps.Keys(cases)) {
		data := cases[name]
		if got, err := DecodeBatch(data); err == nil {
			t.Errorf("%s: decoded %+v", name, got)
		} else if testing.Verbose() {
			t.Logf("%s: %v", name, err)
		}
	}
}

func BenchmarkDecodeBatch(b *testing.B) {
	cmds := typicalBatch(b)
	for _, codec := range []struct {
		name   string
		encode func([]*Command) ([]byte, error)
		decode func([]byte) (*Batch, error)
	}{{"json", jsonEncodeBatch, jsonDecodeBatch}, {"binary", EncodeBatch, DecodeBatch}} {
		data, err := codec.encode(cmds)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(codec.name, func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := codec.decode(data); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkEncodeBatch(b *testing.B) {
	cmds := typicalBatch(b)
	for _, codec := range []struct {
		name   string
		encode func([]*Command) ([]byte, error)
	}{{"json", jsonEncodeBatch}, {"binary", EncodeBatch}} {
		b.Run(codec.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := codec.encode(cmds); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
