package event

import (
	"crypto/ed25519"
	"encoding/json"
	"os"
	"testing"
)

// benchMessage is a typical m.room.message as a chat client sends it.
func benchMessage() *Event {
	return &Event{
		RoomID: "!r1:a.example", Sender: "@alice:a.example", Origin: "a.example",
		OriginTS: 1700000000000, Type: "m.room.message",
		Content:    json.RawMessage(`{"msgtype":"m.text","body":"hello world, this is a typical chat message"}`),
		PrevEvents: []string{"$ITRfeccKC3r14udID-moqh4T2T-mtomz7y7-Jw_0Ao8"}, Depth: 42,
	}
}

func BenchmarkCanonical(b *testing.B) {
	wire, err := os.ReadFile("testdata/event_vectors.json")
	if err != nil {
		b.Fatal(err)
	}
	var vs []eventVector
	if err := json.Unmarshal(wire, &vs); err != nil {
		b.Fatal(err)
	}
	inputs := []struct {
		name string
		raw  []byte
	}{
		{"content", benchMessage().Content},
		{"event", vs[0].Event},
		{"vectors", wire},
	}
	for _, in := range inputs {
		b.Run(in.name, func(b *testing.B) {
			b.SetBytes(int64(len(in.raw)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Canonical(in.raw); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkSealSign measures what a server does per event it creates.
func BenchmarkSealSign(b *testing.B) {
	priv := ed25519.NewKeyFromSeed(make([]byte, ed25519.SeedSize))
	b.ReportAllocs()
	for b.Loop() {
		e := benchMessage()
		if err := Seal(e); err != nil {
			b.Fatal(err)
		}
		if err := Sign(e, "a.example", "ed25519:1", priv); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkForms measures the hashing steps apart from ed25519.
func BenchmarkForms(b *testing.B) {
	sealed := benchMessage()
	if err := Seal(sealed); err != nil {
		b.Fatal(err)
	}
	b.Run("Seal", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := Seal(benchMessage()); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Check", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := Check(sealed); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("RedactedForm", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := RedactedForm(sealed); err != nil {
				b.Fatal(err)
			}
		}
	})
}
