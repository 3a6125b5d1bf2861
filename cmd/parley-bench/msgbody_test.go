package main

import (
	"math/rand/v2"
	"strconv"
	"testing"
)

// parseDec must agree with strconv.ParseInt(s, 10, 64), which parseBody used before.
func TestParseDec(t *testing.T) {
	cases := []string{"", "+", "-", "0", "-0", "+0", "007", "-007", "1", "42", "1764700000000000000",
		"9223372036854775807", "9223372036854775808", "-9223372036854775808", "-9223372036854775809",
		"18446744073709551615", "18446744073709551616", "99999999999999999999", "000000000000000000000000001",
		"1_000", "0x10", "1e3", "1.5", " 1", "1 ", "--1", "+-1", "١"}
	rng := rand.New(rand.NewPCG(5, 6))
	for range 20000 {
		n := rng.Int64() >> rng.IntN(64)
		if rng.IntN(2) == 0 {
			n = -n
		}
		u := strconv.FormatUint(rng.Uint64(), 10)
		cases = append(cases, strconv.FormatInt(n, 10), u, "-"+u, "+"+u)
	}
	for _, c := range cases {
		want, err := strconv.ParseInt(c, 10, 64)
		if got, ok := parseDec(c); ok != (err == nil) || got != want && ok {
			t.Errorf("parseDec(%q) = %d, %v; strconv says %d, %v", c, got, ok, want, err)
		}
	}
}

func BenchmarkParseBody(b *testing.B) {
	body := encodeBody(123456, 1764700000000000000, 0)
	for b.Loop() {
		parseBody(body)
	}
}
