package consensus

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"strings"
	"sync/atomic"

	"github.com/hashicorp/go-hclog"
)

// raftLogger hands the log lines of hashicorp/raft, its transport, snapshot store and raft-wal
// (all hclog) to the node's slog logger, so they come out in the node's format, honour its
// log.level, and carry a component attribute ("raft", "raft-net", ...). Raft's Trace and Debug
// lines map to slog's Debug; its Info lines (elections, snapshots, membership) stay Info, and so
// do the warnings that are an election's normal course (electionCourse).
type raftLogger struct {
	base    *slog.Logger // the node's logger
	log     *slog.Logger // base with the component and implied arguments
	name    string
	implied []any // With's arguments, for ImpliedArgs
	// closing, when set and true, turns warnings and errors into debug lines: see
	// newTransportLogger.
	closing *atomic.Bool
}

var _ hclog.Logger = (*raftLogger)(nil)

func newRaftLogger(log *slog.Logger, name string) hclog.Logger {
	return newRaftLoggerWith(log, name, nil, nil)
}

// newTransportLogger is the logger of Raft's network transport ("raft-net"). Once closing is
// true (the node is shutting down and closes the transport's connections under it), the
// transport's warnings and errors are logged at debug: every clean shutdown made it report
// "failed to decode incoming command: use of closed network connection" at error.
func newTransportLogger(log *slog.Logger, closing *atomic.Bool) hclog.Logger {
	return newRaftLoggerWith(log, "raft-net", nil, closing)
}

func newRaftLoggerWith(base *slog.Logger, name string, implied []any, closing *atomic.Bool) *raftLogger {
	return &raftLogger{base: base, log: base.With(append([]any{"component", name}, slogArgs(implied)...)...),
		name: name, implied: implied, closing: closing}
}

// slogArgs turns hclog's formatted values (hclog.Fmt) into the strings they stand for; args
// itself is left as it is.
func slogArgs(args []any) []any {
	var out []any
	for i, a := range args {
		f, ok := a.(hclog.Format)
		if !ok || len(f) == 0 {
			continue
		}
		if out == nil {
			out = append([]any(nil), args...)
		}
		format, _ := f[0].(string)
		out[i] = fmt.Sprintf(format, f[1:]...)
	}
	if out == nil {
		return args
	}
	return out
}

func slogLevel(level hclog.Level) slog.Level {
	switch level {
	case hclog.Trace, hclog.Debug:
		return slog.LevelDebug
	case hclog.Info, hclog.NoLevel, hclog.DefaultLevel:
		return slog.LevelInfo
	case hclog.Warn:
		return slog.LevelWarn
	default:
		return slog.LevelError
	}
}

// electionCourse reports whether a line hashicorp/raft logs at warn is the normal course of
// an election, which Parley logs at info with the election's other lines so that a healthy start
// shows no warning: the first heartbeat timeout of a node that has had no leader (every start
// has one), and the votes peers refuse a node that starts after a leader was elected. A heartbeat
// timeout after a leader (last-leader-id or last-leader-addr set: the follower lost it) and an
// election restarted for want of a quorum stay warnings.
func electionCourse(msg string, args []any) bool {
	switch msg {
	case "rejecting pre-vote request since we have a leader", "rejecting vote request since we have a leader":
		return true
	case "heartbeat timeout reached, starting election":
		id, idOK := argValue(args, "last-leader-id")
		addr, addrOK := argValue(args, "last-leader-addr")
		return idOK && addrOK && id == "" && addr == ""
	}
	return false
}

// argValue is the value of key in hclog's key-value args, as text.
func argValue(args []any, key string) (string, bool) {
	for i := 0; i+1 < len(args); i += 2 {
		if k, ok := args[i].(string); ok && k == key {
			return fmt.Sprint(args[i+1]), true
		}
	}
	return "", false
}

func (l *raftLogger) Log(level hclog.Level, msg string, args ...any) {
	if level == hclog.Off {
		return
	}
	if level == hclog.Warn && electionCourse(msg, args) {
		level = hclog.Info
	}
	if level > hclog.Info && l.closing != nil && l.closing.Load() {
		level = hclog.Debug
	}
	l.log.Log(context.Background(), slogLevel(level), msg, slogArgs(args)...)
}

func (l *raftLogger) Trace(msg string, args ...any) { l.Log(hclog.Trace, msg, args...) }
func (l *raftLogger) Debug(msg string, args ...any) { l.Log(hclog.Debug, msg, args...) }
func (l *raftLogger) Info(msg string, args ...any)  { l.Log(hclog.Info, msg, args...) }
func (l *raftLogger) Warn(msg string, args ...any)  { l.Log(hclog.Warn, msg, args...) }
func (l *raftLogger) Error(msg string, args ...any) { l.Log(hclog.Error, msg, args...) }

func (l *raftLogger) enabled(level hclog.Level) bool {
	return l.log.Enabled(context.Background(), slogLevel(level))
}

func (l *raftLogger) IsTrace() bool { return l.enabled(hclog.Trace) }
func (l *raftLogger) IsDebug() bool { return l.enabled(hclog.Debug) }
func (l *raftLogger) IsInfo() bool  { return l.enabled(hclog.Info) }
func (l *raftLogger) IsWarn() bool  { return l.enabled(hclog.Warn) }
func (l *raftLogger) IsError() bool { return l.enabled(hclog.Error) }

func (l *raftLogger) ImpliedArgs() []any { return l.implied }

func (l *raftLogger) With(args ...any) hclog.Logger {
	return newRaftLoggerWith(l.base, l.name, append(l.implied[:len(l.implied):len(l.implied)], args...), l.closing)
}

func (l *raftLogger) Name() string { return l.name }

func (l *raftLogger) Named(name string) hclog.Logger {
	if l.name != "" {
		name = l.name + "." + name
	}
	return l.ResetNamed(name)
}

func (l *raftLogger) ResetNamed(name string) hclog.Logger {
	return newRaftLoggerWith(l.base, name, l.implied, l.closing)
}

// SetLevel is ignored: the node's log.level decides.
func (l *raftLogger) SetLevel(hclog.Level) {}

func (l *raftLogger) GetLevel() hclog.Level {
	for _, level := range []hclog.Level{hclog.Debug, hclog.Info, hclog.Warn} {
		if l.enabled(level) {
			return level
		}
	}
	return hclog.Error
}

func (l *raftLogger) StandardLogger(opts *hclog.StandardLoggerOptions) *log.Logger {
	return log.New(l.StandardWriter(opts), "", 0)
}

func (l *raftLogger) StandardWriter(opts *hclog.StandardLoggerOptions) io.Writer {
	level := hclog.Info
	if opts != nil && opts.ForceLevel != hclog.NoLevel {
		level = opts.ForceLevel
	}
	return &raftLogWriter{l: l, level: level}
}

// raftLogWriter logs each line written by a standard library logger.
type raftLogWriter struct {
	l     *raftLogger
	level hclog.Level
}

func (w *raftLogWriter) Write(p []byte) (int, error) {
	w.l.Log(w.level, strings.TrimSpace(string(p)))
	return len(p), nil
}
