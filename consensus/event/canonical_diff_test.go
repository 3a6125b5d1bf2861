package event

import (
	"bytes"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math"
	"strings"
	"testing"
)

// canonicalSeeds are inputs for the hand-written parser's edge cases, beyond
// the vectors in testdata/canonical_vectors.json.
func canonicalSeeds() []string {
	deep := func(open, close string, n int, inner string) string {
		return strings.Repeat(open, n) + inner + strings.Repeat(close, n)
	}
	return []string{
		// Escapes, including keys whose escaped spelling sorts differently
		// from their unescaped bytes.
		`"\u00e9\n\t\\\"\/\b\f\r"`, `"\u0041\u00DF\u6771\uFFFD\uffff\u0000\u001f\u007f\u0080"`,
		`{"\u0000":1,"\u001f":2," ":3,"\"":4,"#":5,"\\":6,"]":7}`, `{"\"":1,"#":2}`, `{"#":1,"\"":2}`,
		`{"\\":1,"]":2}`, `{"]":1,"\\":2}`, `{"\n":1,"\t":2,"\u000b":3}`, `["\x"]`, `"\u12"`, `"\u12G4"`, `"\`, `"\u`,
		// Surrogates.
		`"\ud83d\ude00"`, `"\uD83D\uDE00"`, `"\ud800\udbff"`, `"\udbff\udfff"`, `"\ud800\udc00"`, `"\ud800"`,
		`"\ud800\\"`, `"\ud800\u"`, `"\ud800\u12"`, `"\ud800\ud800\udc00"`, `"\udc00\udfff"`, `"\ud800\uZZZZ"`, `{"\ud83d\ude00":1,"\uffff":2}`,
		// Integers at and past the limits, -0 and leading zeros.
		`9007199254740991`, `-9007199254740991`, `9007199254740992`, `-9007199254740992`, `18446744073709551616`,
		`99999999999999999`, `1000000000000000`, `0000000000000001`, `[0,-0,-1,1]`, `00`, `-00`, `01`, `-01`, `-`,
		`-a`, `1-`, `+1`, `[-]`, `{"a":-}`, `-9223372036854775808`, `9223372036854775807`,
		// Non-integers.
		`1.0`, `1.5`, `-0.0`, `1e3`, `1E+3`, `1e-3`, `0e0`, `-0E0`, `1.`, `.5`, `1.e3`, `[1e]`, `99999999999999999.5`,
		// Duplicates, also after unescaping and out of order.
		`{"a":1,"\u0061":2}`, `{"b":1,"a":2,"b":3}`, `{"a":{"x":1},"a":{"x":1}}`, `{"\u0062":1,"a":2,"b":3}`,
		`{"a":{"y":1,"x":2,"y":3}}`, `{"\u0062":{"\u0079":1,"\u0078":2},"\u0061":1}`, `{"\u0061":{"\u0079":1},"\u0061":1}`,
		// Unsorted objects inside unsorted objects.
		`{"b":{"d":1,"c":[{"f":1,"e":2}]},"a":[{"z":0,"y":{"q":1,"p":2}}]}`,
		`[{"b":0,"a":{"b":0,"a":{"b":0,"a":"x"}}},{"d":[{"f":1,"e":2}],"c":3}]`,
		deep(`{"b":0,"a":`, `}`, 20, `"deep"`),
		// Invalid and valid UTF-8, in and outside strings.
		"\xff", "\"\xff\"", "[\"\xc0\x80\"]", "{\"a\":\"\xed\xa0\x80\"}", "\"\xef\xbf\xbd\"", "\"\xf4\x90\x80\x80\"",
		"\"\xf0\x9f\x98\x80\"", "{\"\xe6\x97\xa5\":1}", "\xef\xbb\xbf{}", "[\"a\"]\xff", "\xe6\x97\xa5",
		// Trailing data.
		`{}x`, `{} {}`, `1 2`, `[1]]`, `"a""b"`, "{}\x00", `{},`, `[1,]`, `{"a":1,}`, `{"a"}`, `{"a":}`, `{,}`, `[,1]`,
		`{"a" 1}`, `{"a":1 "b":2}`, `[1 2]`, `{1:2}`, `{"a":1]`, `[1}`,
		// Whitespace: only space, \t, \n and \r.
		" \t\n\r1 \t\n\r", "\f1", "\v1", "\u00a01", "1\u2028", "[ ]", "{ }", "[\n1\n,\n2\n]", "{\r\"a\"\t:\n1\r}",
		// Empty and truncated input, literals.
		``, ` `, `tru`, `nul`, `falsey`, `[true,false,null]`, `t`, `nulll`, `True`, `[`, `{`, `{"a"`, `{"a":`, `"`,
	}
}

func FuzzCanonicalMatchesReference(f *testing.F) {
	for _, v := range loadCanonicalVectors(f) {
		f.Add([]byte(v.Input))
	}
	for _, s := range canonicalSeeds() {
		f.Add([]byte(s))
	}
	f.Fuzz(checkCanonicalMatchesReference)
}

// Nesting at and past the limit. These inputs are too big to be fuzzing
// seeds: mutating and minimizing them would stall the fuzzer.
func TestCanonicalDepthMatchesReference(t *testing.T) {
	deep := func(open, close string, n int, inner string) []byte {
		return []byte(strings.Repeat(open, n) + inner + strings.Repeat(close, n))
	}
	for _, n := range []int{maxDepth - 2, maxDepth - 1, maxDepth, maxDepth + 1} {
		checkCanonicalMatchesReference(t, deep("[", "]", n, ""))
		checkCanonicalMatchesReference(t, deep("[", "]", n-1, "{}"))
		checkCanonicalMatchesReference(t, deep(`{"a":`, "}", n-1, "{}"))
		checkCanonicalMatchesReference(t, deep(`{"b":0,"a":`, "}", n-1, `{"d":[],"c":[1]}`))
		checkCanonicalMatchesReference(t, deep(" [ ", " ] ", n, "1"))
	}
}

func checkCanonicalMatchesReference(t *testing.T, in []byte) {
	t.Helper()
	want, wantErr := canonicalReference(in)
	got, gotErr := Canonical(in)
	if (gotErr == nil) != (wantErr == nil) {
		t.Fatalf("Canonical(%.300q) = %.300q, %v; reference %.300q, %v", in, got, gotErr, want, wantErr)
	}
	if gotErr != nil {
		if !errors.Is(gotErr, ErrNotCanonicalizable) {
			t.Fatalf("Canonical(%.300q) error %v does not wrap ErrNotCanonicalizable", in, gotErr)
		}
		return
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("Canonical(%.300q) = %.300q; reference %.300q", in, got, want)
	}
	// The event forms append content after a prefix, one level down.
	out, _, err := appendCanonical([]byte(`{"content":`), in, maxDepth)
	if err != nil || string(out) != `{"content":`+string(want) {
		t.Fatalf("appendCanonical after a prefix = %.300q, %v; want the prefix and %.300q", out, err, want)
	}
	_, wrappedErr := canonicalReference([]byte("[" + string(in) + "]"))
	if _, _, err := appendCanonical(nil, in, maxDepth-1); (err == nil) != (wrappedErr == nil) {
		t.Fatalf("appendCanonical(%.300q) one level down: %v; reference wrapped in an array: %v", in, err, wrappedErr)
	}
}

// formEvent builds an event from fuzzer values; flags switch the optional
// parts so that nil and empty variants are all reached.
func formEvent(roomID, sender, typ, stateKey, prev, hash string, content []byte, depth, ts int64, flags uint8) *Event {
	e := &Event{
		EventID: "$" + hash, RoomID: roomID, Sender: sender, Origin: stateKey + roomID, OriginTS: ts, Type: typ,
		Content: content, Depth: depth, Hashes: Hashes{SHA256: hash}, PrevEvents: strings.Split(prev, ","),
	}
	switch flags & 3 {
	case 1:
		e.Type = "m.room.member"
	case 2:
		e.Type = "m.room.power_levels"
	}
	if flags&4 != 0 {
		e.StateKey = &stateKey
	}
	if flags&8 != 0 {
		e.Redacts = sender + hash
	}
	switch flags >> 4 & 3 {
	case 1:
		e.PrevEvents = nil
	case 2:
		e.PrevEvents = []string{}
	}
	if flags&64 != 0 {
		e.Content = nil
	}
	return e
}

func FuzzFormMatchesReference(f *testing.F) {
	f.Add("!r1:a.example", "@alice:a.example", "m.room.message", "", "$p1,$p2", "AH0rEcdH7VVvlS0k16JJFe9kh33mTJuE17ike3SjkEQ",
		[]byte(`{"msgtype":"m.text","body":"hello <world> & 日本"}`), int64(5), int64(1700000000000), uint8(0))
	f.Add("!r\xff:a", "@b\xe6\x97:x", "m.room.member", "@b\xc0\x80:x", "$\xff,\xed\xa0\x80", "h\x01\"\\",
		[]byte(` { "membership" : "join" , "displayname" : "B\u2028" } `), int64(maxSafeInt), int64(-maxSafeInt), uint8(1|4|8))
	f.Add("", "", "", "", "", "", []byte(`{"users":{"@a:x":100},"ban":50,"notifications":{"room":50},"m\u0065mbership":1}`),
		int64(0), int64(0), uint8(2|16))
	f.Add("r", "s", "t", "k", "p", "h", []byte(`{"m\u0065mbership":"join"}`), int64(1), int64(2), uint8(1|32))
	f.Add("r", "s", "t", "k", "p", "h", []byte(`{}`), int64(maxSafeInt+1), int64(0), uint8(0))
	f.Add("r", "s", "t", "k", "p", "h", []byte(`{}`), int64(0), int64(math.MinInt64), uint8(0))
	f.Add("r", "s", "t", "k", "p", "h", []byte(`{}`), int64(-maxSafeInt-1), int64(math.MaxInt64), uint8(0))
	f.Add("r", "s", "t", "k", "p", "h", []byte(nil), int64(1), int64(1), uint8(64))
	f.Add("r", "s", "t", "k", "p", "h", []byte{}, int64(1), int64(1), uint8(0))
	f.Add("r", "s", "t", "k", "p", "h", []byte(`[1]`), int64(1), int64(1), uint8(0))
	f.Add("r", "s", "t", "k", "p", "h", []byte(`"x"`), int64(1), int64(1), uint8(1))
	f.Add("r", "s", "t", "k", "p", "h", []byte(`null`), int64(1), int64(1), uint8(2))
	f.Add("r", "s", "t", "k", "p", "h", []byte(`{"a":1,"a":2}`), int64(1), int64(1), uint8(0))
	f.Add("r", "s", "t", "k", "p", "h", []byte(`{"b":1.5}`), int64(1), int64(1), uint8(1))
	f.Add("r", "s", "t", "k", "p", "h", []byte("{\"a\":\"\xff\"}"), int64(1), int64(1), uint8(0))
	f.Add("r", "s", "t", "k", "p", "h", []byte(`{"membership":"leave","ban":1}x`), int64(1), int64(1), uint8(1))
	f.Add("<>&", "\u2028\u2029", "\x7f", "\t\n", "\"", "\\", []byte(`{"kick":{"b":[{"d":1,"c":2}],"a":0},"ban":-0}`),
		int64(-1), int64(1), uint8(2|4|8|32))
	f.Fuzz(func(t *testing.T, roomID, sender, typ, stateKey, prev, hash string, content []byte, depth, ts int64, flags uint8) {
		e := formEvent(roomID, sender, typ, stateKey, prev, hash, content, depth, ts, flags)
		checkFormsMatchReference(t, e)
	})
}

// checkFormsMatchReference compares every form of e, and what is computed
// from them, with the previous implementation.
func checkFormsMatchReference(t *testing.T, e *Event) {
	t.Helper()
	same := func(what string, got []byte, gotErr error, want []byte, wantErr error) {
		t.Helper()
		if (gotErr == nil) != (wantErr == nil) || !bytes.Equal(got, want) {
			t.Fatalf("%s = %q, %v; reference %q, %v", what, got, gotErr, want, wantErr)
		}
	}
	wantHashForm, wantHashErr := contentHashFormReference(e)
	gotHashForm, err := CanonicalValue(newForm(e, e.Content))
	same("CanonicalValue(content hash form)", gotHashForm, err, wantHashForm, wantHashErr)
	withHashes := newForm(e, e.Content)
	withHashes.Hashes = &e.Hashes
	want, wantErr := canonicalValueReference(withHashes)
	got, err := CanonicalValue(withHashes)
	same("CanonicalValue(form with hashes)", got, err, want, wantErr)
	pc := parseContent(e.Content)
	gotHashForm, err = appendContentHashForm(nil, e, &pc)
	pc.release()
	same("appendContentHashForm", gotHashForm, err, wantHashForm, wantHashErr)

	wantHash := ""
	if wantHashErr == nil {
		sum := sha256.Sum256(wantHashForm)
		wantHash = base64.RawStdEncoding.EncodeToString(sum[:])
	}
	if h, err := ContentHash(e); (err == nil) != (wantHashErr == nil) || h != wantHash {
		t.Fatalf("ContentHash = %q, %v; reference %q, %v", h, err, wantHash, wantHashErr)
	}

	wantStripped, wantStrippedErr := strippedContentReference(e)
	gotStripped, err := strippedContent(e)
	same("strippedContent", gotStripped, err, wantStripped, wantStrippedErr)

	wantRedacted, wantRedactedErr := redactedFormReference(e)
	gotRedacted, err := RedactedForm(e)
	same("RedactedForm", gotRedacted, err, wantRedacted, wantRedactedErr)
	wantID := ""
	if wantRedactedErr == nil {
		sum := sha256.Sum256(wantRedacted)
		wantID = "$" + base64.RawURLEncoding.EncodeToString(sum[:])
	}
	if id, err := ReferenceID(e); (err == nil) != (wantRedactedErr == nil) || id != wantID {
		t.Fatalf("ReferenceID = %q, %v; reference %q, %v", id, err, wantID, wantRedactedErr)
	}

	if got, want := IsRedactedContent(e), isRedactedContentReference(e); got != want {
		t.Fatalf("IsRedactedContent = %v; reference %v", got, want)
	}

	// Seal: the content hash, then the reference id over it.
	sealed := e.Clone()
	err = Seal(sealed)
	wantSealed := e.Clone()
	wantSealErr := wantHashErr
	if wantSealErr == nil {
		wantSealed.Hashes.SHA256 = wantHash
		var rf []byte
		if rf, wantSealErr = redactedFormReference(wantSealed); wantSealErr == nil {
			sum := sha256.Sum256(rf)
			wantSealed.EventID = "$" + base64.RawURLEncoding.EncodeToString(sum[:])
		}
	}
	if wantSealErr != nil {
		wantSealed = e
	}
	if (err == nil) != (wantSealErr == nil) || sealed.EventID != wantSealed.EventID || sealed.Hashes != wantSealed.Hashes {
		t.Fatalf("Seal = %v giving %q %q; reference %v giving %q %q",
			err, sealed.EventID, sealed.Hashes.SHA256, wantSealErr, wantSealed.EventID, wantSealed.Hashes.SHA256)
	}
	if err == nil {
		if err := Check(sealed); err != nil {
			t.Fatalf("Check(Seal(e)) = %v", err)
		}
	}
}

// The content of an event sits one level below the form's braces, so the
// nesting limit bites one level earlier there; kept power levels keys sit two
// levels below in the redacted form.
func TestFormDepthMatchesReference(t *testing.T) {
	nested := func(n int) string { return strings.Repeat("[", n) + strings.Repeat("]", n) }
	for _, d := range []int{maxDepth - 3, maxDepth - 2, maxDepth - 1, maxDepth, maxDepth + 1} {
		for _, c := range []struct{ typ, content string }{
			{"m.room.message", `{"x":` + nested(d-1) + `}`},
			{"m.room.power_levels", `{"x":` + nested(d-1) + `}`},
			{"m.room.power_levels", `{"events":` + nested(d-1) + `}`},
			{"m.room.power_levels", `{"a":1,"events":` + nested(d-1) + `,"x":` + nested(d-1) + `}`},
			{"m.room.member", `{"membership":` + nested(d-1) + `}`},
			{"m.room.message", nested(d)},
		} {
			e := &Event{Type: c.typ, Content: json.RawMessage(c.content), PrevEvents: []string{}}
			checkFormsMatchReference(t, e)
		}
	}
}

func TestCanonicalReordersNestedObjects(t *testing.T) {
	// Unsorted objects nested in unsorted objects, with siblings on both
	// sides, so that members move across levels.
	var b strings.Builder
	var build func(depth int)
	build = func(depth int) {
		if depth == 0 {
			b.WriteString(`"leaf"`)
			return
		}
		b.WriteString(`{"z":[1,{"y":2,"x":3}],"m":`)
		build(depth - 1)
		b.WriteString(`,"\u0061":{"c":`)
		build(depth - 1)
		b.WriteString(`,"b":true},"n":null}`)
	}
	build(6)
	in := []byte(b.String())
	want, err := canonicalReference(in)
	if err != nil {
		t.Fatal(err)
	}
	got, err := Canonical(in)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("Canonical = %s, %v;\nreference %s", got, err, want)
	}
}

// A pooled parser must not carry anything from a failed document into the
// next one.
func TestCanonicalAfterError(t *testing.T) {
	for _, bad := range []string{`{"b":{"d":1,"c":2},"a":1,"a":2}`, `{"b":1,"a":{"y":1,"x":[1.5]}}`, `{"\u0062":1,"\u0061":`} {
		if _, err := Canonical([]byte(bad)); err == nil {
			t.Fatalf("Canonical(%s) succeeded", bad)
		}
		if got, err := Canonical([]byte(`{"b":1,"a":2}`)); err != nil || string(got) != `{"a":2,"b":1}` {
			t.Fatalf("Canonical after %s = %s, %v", bad, got, err)
		}
	}
}
