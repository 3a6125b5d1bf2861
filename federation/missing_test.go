package federation

import (
	"testing"
	"time"
)

// TestGapOutages: an org that does not answer get_missing_events holds its transactions back
// for one window from its first silence, shared by all of them, and is asked at most every
// few seconds meanwhile (rarely after); an answer ends the outage, a transaction that needed
// no request does not.
func TestGapOutages(t *testing.T) {
	var g gapOutages
	t0 := time.Unix(1_000_000, 0)
	at := func(d time.Duration) time.Time { return t0.Add(d) }

	if !g.ask("b.test", t0) {
		t.Fatal("an org never silent is not asked")
	}
	if g.record("b.test", false, false, t0) {
		t.Fatal("a transaction without a gap waits")
	}
	if !g.record("b.test", true, true, t0) {
		t.Fatal("the first silence does not hold the transaction back")
	}
	if g.ask("b.test", at(time.Second)) {
		t.Fatal("asked again 1 s after it did not answer")
	}
	// The transactions behind it: not asked, held back, within the same window.
	if !g.record("b.test", false, true, at(2*time.Second)) {
		t.Fatal("a later transaction with a gap is not held back")
	}
	if g.record("b.test", false, false, at(3*time.Second)); !g.record("b.test", false, true, at(4*time.Second)) {
		t.Fatal("a transaction that needed no request ended the outage")
	}
	if !g.ask("b.test", at(gapProbeEvery)) {
		t.Fatal("not asked again after gapProbeEvery")
	}
	if !g.record("b.test", true, true, at(gapProbeEvery)) {
		t.Fatal("a second silence within the window does not hold back")
	}
	// Past the window: applied with the gap, and asked only every gapProbeAfterWindow.
	past := gapRepairWindow + time.Second
	if g.record("b.test", false, true, at(past)) {
		t.Fatal("still held back after the window")
	}
	if g.ask("b.test", at(past)) {
		t.Fatal("asked every gapProbeEvery after the window")
	}
	probe := gapProbeEvery + gapProbeAfterWindow // since the last request
	if !g.ask("b.test", at(probe)) || g.record("b.test", true, true, at(probe)) {
		t.Fatal("after the window: not asked after gapProbeAfterWindow, or held back")
	}
	// Other orgs are not affected; an answer ends the outage and a new silence opens a new window.
	if !g.ask("c.test", at(past)) || g.record("c.test", true, false, at(past)) {
		t.Fatal("another org is affected")
	}
	g.record("b.test", true, false, at(2*past))
	if !g.ask("b.test", at(2*past)) || !g.record("b.test", true, true, at(2*past)) {
		t.Fatal("after an answer, a new silence does not open a new window")
	}
}
