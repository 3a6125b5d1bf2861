package client

import "bytes"

// scanOKFrame decodes the one reply shape that is hot, a send's answer, exactly as the node
// writes it: {"op":"ok","id":"…","event_id":"…"} with no spaces and both strings plain (ASCII,
// no escapes). Any other frame (an error, other fields, escapes, spacing) returns false and
// is left to encoding/json; where this accepts, the two decode alike (FuzzScanOKFrame). One
// such frame comes back per message sent, and json.Unmarshal was 7.6% of the tool's CPU in
// the cluster row.
func scanOKFrame(data []byte, f *frameIn) bool {
	const head, mid = `{"op":"ok","id":`, `,"event_id":`
	if !bytes.HasPrefix(data, []byte(head)) {
		return false
	}
	i := len(head)
	if at(data, i) != '"' {
		return false
	}
	idStart, idEnd, plain := str(data, i)
	if !plain || idEnd < 0 || !bytes.HasPrefix(data[idEnd+1:], []byte(mid)) {
		return false
	}
	i = idEnd + 1 + len(mid)
	if at(data, i) != '"' {
		return false
	}
	evStart, evEnd, plain := str(data, i)
	if !plain || evEnd < 0 || evEnd+2 != len(data) || data[evEnd+1] != '}' {
		return false
	}
	*f = frameIn{Op: "ok", ID: string(data[idStart:idEnd]), EventID: string(data[evStart:evEnd])}
	return true
}
