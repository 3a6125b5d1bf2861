package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// logKeyRE finds the keys of a slog text line: key=value, the value bare or quoted.
var logKeyRE = regexp.MustCompile(`(?:^| )([^ =]+)=(?:"(?:[^"\\]|\\.)*"|[^ ]*)`)

// TestLogLinesNameEachKeyOnce: every line of a node with federation and a bridge carries each
// key once. Before, the AMQP connections' lines carried component=federation component=amqp
// (and component=bridge component=amqp), of which log parsers keep one.
func TestLogLinesNameEachKeyOnce(t *testing.T) {
	vhostURL := freshVhost(t)
	p := &proc{t: t, id: "n1", http: freeAddr(t), raft: freeAddr(t), dir: t.TempDir()}
	cfg := fmt.Sprintf("amqp:\n  url: %q\nbridges:\n  - id: irc\n    amqp_user: guest\n    namespace: \"irc_.*\"\n    rooms: [\"#lobby:sys.test\"]\n", vhostURL)
	cfgFile := filepath.Join(t.TempDir(), "parley.yaml")
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	p.args = []string{"--config", cfgFile}
	p.env = nodeEnv(p, "")
	p.start()
	t.Cleanup(func() { p.stop() })
	waitLeader(t, p)
	// One "amqp connected" each for federation and the bridges.
	waitUntil(t, time.Now().Add(20*time.Second), "both AMQP connections", func() bool {
		return strings.Count(p.logs(), `msg="amqp connected"`) >= 2
	})
	for _, line := range strings.Split(p.logs(), "\n") {
		seen := map[string]bool{}
		for _, m := range logKeyRE.FindAllStringSubmatch(line, -1) {
			if seen[m[1]] {
				t.Errorf("key %s twice in %s", m[1], line)
			}
			seen[m[1]] = true
		}
	}
}
