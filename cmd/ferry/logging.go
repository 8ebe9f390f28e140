package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
)

// Log formats of -log-format.
const (
	logAuto = "auto" // text; under journald without timestamps and with priorities
	logText = "text"
	logJSON = "json"
)

// newLogger builds the process logger. format is auto, text or json;
// level is debug, info, warn or error ("" keeps info). Under journald
// (JOURNAL_STREAM set) auto writes logfmt lines without a timestamp
// (journald adds its own) and with a <N> syslog priority prefix, so
// `journalctl -p warning` works.
func newLogger(w io.Writer, format, level string) (*slog.Logger, error) {
	var l slog.Level
	if level != "" {
		if err := l.UnmarshalText([]byte(level)); err != nil {
			return nil, fmt.Errorf("log level %q: want debug, info, warn or error", level)
		}
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case logJSON:
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	case logText:
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case logAuto, "":
		if os.Getenv("JOURNAL_STREAM") == "" {
			return slog.New(slog.NewTextHandler(w, opts)), nil
		}
		return slog.New(newJournalHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("log format %q: want auto, text or json", format)
}

// journalHandler prefixes every logfmt line with its syslog priority.
type journalHandler struct {
	inner slog.Handler
	out   *priorityWriter
}

type priorityWriter struct {
	mu     sync.Mutex
	w      io.Writer
	prefix string
}

func (p *priorityWriter) Write(b []byte) (int, error) {
	if _, err := io.WriteString(p.w, p.prefix); err != nil {
		return 0, err
	}
	return p.w.Write(b)
}

func newJournalHandler(w io.Writer, opts *slog.HandlerOptions) *journalHandler {
	out := &priorityWriter{w: w}
	o := *opts
	o.ReplaceAttr = func(groups []string, a slog.Attr) slog.Attr {
		if len(groups) == 0 && a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}
	return &journalHandler{inner: slog.NewTextHandler(out, &o), out: out}
}

func (h *journalHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

func (h *journalHandler) Handle(ctx context.Context, r slog.Record) error {
	h.out.mu.Lock()
	defer h.out.mu.Unlock()
	h.out.prefix = syslogPriority(r.Level)
	return h.inner.Handle(ctx, r)
}

func (h *journalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	return &journalHandler{inner: h.inner.WithAttrs(as), out: h.out}
}

func (h *journalHandler) WithGroup(name string) slog.Handler {
	return &journalHandler{inner: h.inner.WithGroup(name), out: h.out}
}

func syslogPriority(l slog.Level) string {
	switch {
	case l >= slog.LevelError:
		return "<3>"
	case l >= slog.LevelWarn:
		return "<4>"
	case l >= slog.LevelInfo:
		return "<6>"
	default:
		return "<7>"
	}
}
