package event

import (
	"encoding/json"
	"errors"
	"os"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

type canonicalVector struct {
	Name   string `json:"name"`
	Input  string `json:"input"`
	Output string `json:"output"`
	Error  bool   `json:"error"`
}

func loadCanonicalVectors(tb testing.TB) []canonicalVector {
	tb.Helper()
	raw, err := os.ReadFile("testdata/canonical_vectors.json")
	if err != nil {
		tb.Fatal(err)
	}
	var vs []canonicalVector
	if err := json.Unmarshal(raw, &vs); err != nil {
		tb.Fatalf("decode canonical vectors: %v", err)
	}
	return vs
}

// testdata/canonical_vectors.json holds hand-written expectations, including
// the examples from the Matrix specification's canonical JSON section. The
// spec's {"b": 1e10} example is deliberately absent: Parley refuses
// exponents instead of normalizing them.
func TestCanonicalVectors(t *testing.T) {
	for _, v := range loadCanonicalVectors(t) {
		t.Run(v.Name, func(t *testing.T) {
			out, err := Canonical([]byte(v.Input))
			if v.Error {
				if !errors.Is(err, ErrNotCanonicalizable) {
					t.Fatalf("Canonical(%q) = %q, %v; want ErrNotCanonicalizable", v.Input, out, err)
				}
				return
			}
			if err != nil || string(out) != v.Output {
				t.Fatalf("Canonical(%q) = %q, %v; want %q", v.Input, out, err, v.Output)
			}
		})
	}
}

// Cases that cannot be stored in a JSON vector file or check error detail.
func TestCanonicalErrors(t *testing.T) {
	tests := []struct {
		name, in, detail string
	}{
		{"invalid utf-8 in string", "\"\xff\"", "invalid UTF-8"},
		{"truncated utf-8", "\"\xe6\x97\"", "invalid UTF-8"},
		{"utf-8 encoded surrogate", "\"\xed\xa0\x80\"", "invalid UTF-8"},
		{"float", `{"a":1.0}`, "non-integer number 1.0"},
		{"exponent", `1e3`, "non-integer number 1e3"},
		{"range", `[9007199254740992]`, "integer 9007199254740992 out of range"},
		{"duplicate", `{"k":1,"k":2}`, `duplicate key "k"`},
		{"lone surrogate", `"\uD800"`, `lone surrogate \ud800`},
		{"syntax", `{"a" 1}`, "invalid character"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Canonical([]byte(tt.in))
			if !errors.Is(err, ErrNotCanonicalizable) || !strings.Contains(err.Error(), tt.detail) {
				t.Fatalf("Canonical(%q) error = %v; want ErrNotCanonicalizable with %q", tt.in, err, tt.detail)
			}
		})
	}
}

func TestCanonicalValue(t *testing.T) {
	tests := []struct {
		name string
		in   any
		want string
	}{
		// encoding/json escapes these; canonical JSON must not.
		{"html and line separators", map[string]string{"s": "<a>&\u2028\u2029"}, "{\"s\":\"<a>&\u2028\u2029\"}"},
		{"struct fields sorted", struct {
			Z int    `json:"z"`
			A string `json:"a"`
		}{1, "x"}, `{"a":"x","z":1}`},
		{"raw message", json.RawMessage(`{ "b" : [1, 2], "a" : {} }`), `{"a":{},"b":[1,2]}`},
		{"nil slice", []string(nil), `null`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := CanonicalValue(tt.in)
			if err != nil || string(got) != tt.want {
				t.Fatalf("CanonicalValue = %q, %v; want %q", got, err, tt.want)
			}
		})
	}
	if _, err := CanonicalValue(1.5); !errors.Is(err, ErrNotCanonicalizable) {
		t.Errorf("CanonicalValue(1.5) error = %v; want ErrNotCanonicalizable", err)
	}
	if _, err := CanonicalValue(make(chan int)); err == nil {
		t.Error("CanonicalValue(chan) succeeded")
	}
}

func FuzzCanonical(f *testing.F) {
	for _, v := range loadCanonicalVectors(f) {
		f.Add([]byte(v.Input))
	}
	for _, s := range []string{"\"\xff\"", `{"a":[{"b":"\ud83d\ude00"}],"a\u0000":-0}`, `[[[[[]]]]]`, `"\ud800\"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		out, err := Canonical(in)
		if err != nil {
			if !errors.Is(err, ErrNotCanonicalizable) {
				t.Fatalf("error %v does not wrap ErrNotCanonicalizable", err)
			}
			return
		}
		if !json.Valid(out) || !utf8.Valid(out) {
			t.Fatalf("Canonical(%q) = %q: not valid JSON", in, out)
		}
		again, err := Canonical(out)
		if err != nil || string(again) != string(out) {
			t.Fatalf("Canonical(%q) = %q, %v; want fixed point %q", out, again, err, out)
		}
		// Canonicalization must not change meaning. float64 is exact here
		// because integers are limited to ±(2^53-1).
		var a, b any
		if json.Unmarshal(in, &a) != nil || json.Unmarshal(out, &b) != nil || !reflect.DeepEqual(a, b) {
			t.Fatalf("Canonical(%q) = %q changes the value", in, out)
		}
	})
}
