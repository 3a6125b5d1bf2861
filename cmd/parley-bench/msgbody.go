package main

import (
	"strconv"
	"strings"
)

// Message bodies carry what a receiver needs to measure latency without
// any state shared with the sender:
//
//	"pb1 <seq> <send unix nanos>[ <padding>]"   a measured message
//	"pbw <n>"                                     a warm-up message
const (
	bodyPrefix   = "pb1 "
	warmupPrefix = "pbw "
)

// encodeBody builds a measured message body, padded with 'x' up to size
// bytes when size is larger than the header.
func encodeBody(seq, sentNanos int64, size int) string {
	var b strings.Builder
	b.Grow(max(size, 40))
	b.WriteString(bodyPrefix)
	b.WriteString(strconv.FormatInt(seq, 10))
	b.WriteByte(' ')
	b.WriteString(strconv.FormatInt(sentNanos, 10))
	if pad := size - b.Len() - 1; pad > 0 {
		b.WriteByte(' ')
		b.WriteString(strings.Repeat("x", pad))
	}
	return b.String()
}

// parseBody extracts seq and send time from a measured message body.
func parseBody(body string) (seq, sentNanos int64, ok bool) {
	rest, found := strings.CutPrefix(body, bodyPrefix)
	if !found {
		return 0, 0, false
	}
	s, rest, found := strings.Cut(rest, " ")
	if !found {
		return 0, 0, false
	}
	t, _, _ := strings.Cut(rest, " ")
	seq, ok1 := parseDec(s)
	sentNanos, ok2 := parseDec(t)
	if !ok1 || !ok2 || seq < 0 {
		return 0, 0, false
	}
	return seq, sentNanos, true
}

// parseDec is strconv.ParseInt(s, 10, 64) without building an error: every received
// message is parsed, on a CPU the node under test shares.
func parseDec(s string) (int64, bool) {
	neg := false
	if s != "" && (s[0] == '+' || s[0] == '-') {
		neg, s = s[0] == '-', s[1:]
	}
	if s == "" {
		return 0, false
	}
	var n uint64
	for i := 0; i < len(s); i++ {
		d := s[i] - '0'
		if d > 9 || n > (1<<63)/10 {
			return 0, false
		}
		n = n*10 + uint64(d) // at most 1<<63 + 9: no wrap-around
	}
	if n > 1<<63-1 && !(neg && n == 1<<63) {
		return 0, false
	}
	v := int64(n) // 1<<63 becomes math.MinInt64, which negation leaves as it is
	if neg {
		v = -v
	}
	return v, true
}

func warmupBody(n int) string { return warmupPrefix + strconv.Itoa(n) }

func isWarmup(body string) bool { return strings.HasPrefix(body, warmupPrefix) }
