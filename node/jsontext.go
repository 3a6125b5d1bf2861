package node

import (
	"bytes"
	"unicode/utf8"
)

// LosslessJSON reports whether encoding/json reads data without replacing anything by U+FFFD:
// data is UTF-8, and every \u escape of a UTF-16 surrogate is half of a pair. Otherwise two
// strings that differ only there decode equal: two txn_ids taken for one (the second send
// answered with the first's event, its message dropped), two passwords for one. Malformed
// escapes are left to the decoder, which refuses them.
func LosslessJSON(data []byte) bool {
	if !utf8.Valid(data) {
		return false
	}
	// A backslash is an escape inside a string; outside one the decoder refuses it anyway.
	for i := bytes.IndexByte(data, '\\'); i >= 0; {
		n := 2 // \" \\ \/ \b \f \n \r \t
		if i+1 < len(data) && data[i+1] == 'u' {
			r, ok := hex4(data, i+2)
			switch {
			case !ok:
			case r >= 0xDC00 && r <= 0xDFFF: // a low half alone
				return false
			case r >= 0xD800 && r <= 0xDBFF: // a high half: a low one must follow
				lo, ok := rune(0), false
				if i+7 < len(data) && data[i+6] == '\\' && data[i+7] == 'u' {
					lo, ok = hex4(data, i+8)
				}
				if !ok || lo < 0xDC00 || lo > 0xDFFF {
					return false
				}
				n = 12
			default:
				n = 6
			}
		}
		if i += n; i >= len(data) {
			break
		}
		j := bytes.IndexByte(data[i:], '\\')
		if j < 0 {
			break
		}
		i += j
	}
	return true
}

// hex4 reads the four hex digits at data[i:], as a \u escape has them.
func hex4(data []byte, i int) (rune, bool) {
	if i+4 > len(data) {
		return 0, false
	}
	var r rune
	for _, c := range data[i : i+4] {
		switch {
		case '0' <= c && c <= '9':
			r = r<<4 | rune(c-'0')
		case 'a' <= c && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case 'A' <= c && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return r, true
}
