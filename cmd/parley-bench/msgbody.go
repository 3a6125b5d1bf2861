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
	seq, err1 := strconv.ParseInt(s, 10, 64)
	sentNanos, err2 := strconv.ParseInt(t, 10, 64)
	if err1 != nil || err2 != nil || seq < 0 {
		return 0, 0, false
	}
	return seq, sentNanos, true
}

func warmupBody(n int) string { return warmupPrefix + strconv.Itoa(n) }

func isWarmup(body string) bool { return strings.HasPrefix(body, warmupPrefix) }
