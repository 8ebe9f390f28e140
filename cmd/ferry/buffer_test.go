package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/ferry-gateway/ferry/buffer"
	"github.com/ferry-gateway/ferry/gateway/record"
)

// bufferStateDir makes a state directory whose buffer holds three gateway
// records (the first acknowledged) and one undecodable record.
func bufferStateDir(t *testing.T) (stateDir string, l *buffer.Log) {
	t.Helper()
	stateDir = t.TempDir()
	l, err := buffer.Open(filepath.Join(stateDir, "buffer"), buffer.Options{Sync: buffer.SyncNone})
	if err != nil {
		t.Fatal(err)
	}
	rec := func(topic, body string) []byte {
		return append(record.AppendHeader(nil, topic, topic == "p/d/retained"), body...)
	}
	if _, err := l.Append(
		rec("p/d/t1", `{"value":1,"quality":"good","ts":"2026-11-25T21:00:00.000Z"`),
		rec("p/d/t2", `{"value":"x","quality":"good","ts":"2026-11-25T21:00:00.000Z"`),
		rec("p/d/retained", `{"value":true,"quality":"good","ts":"2026-11-25T21:00:00.000Z"`),
		[]byte("\x07not a record"),
	); err != nil {
		t.Fatal(err)
	}
	if err := l.Ack(1); err != nil {
		t.Fatal(err)
	}
	if err := l.Sync(); err != nil {
		t.Fatal(err)
	}
	return stateDir, l
}

func TestBufferDump(t *testing.T) {
	stateDir, l := bufferStateDir(t)
	l.Close()
	code, stdout, stderr := run(t, "buffer", "dump", "-state-dir", stateDir)
	if code != exitOK || stderr != "" {
		t.Fatalf("exit %d, stderr %q", code, stderr)
	}
	lines := strings.Split(strings.TrimSuffix(stdout, "\n"), "\n")
	if len(lines) != 4 {
		t.Fatalf("%d lines:\n%s", len(lines), stdout)
	}
	type line struct {
		Seq      uint64          `json:"seq"`
		Acked    bool            `json:"acked"`
		Bytes    int             `json:"bytes"`
		Time     string          `json:"time"`
		Topic    string          `json:"topic"`
		Retain   bool            `json:"retain"`
		Data     json.RawMessage `json:"data"`
		Encoding string          `json:"encoding"`
	}
	var got []line
	for _, s := range lines {
		var ln line
		if err := json.Unmarshal([]byte(s), &ln); err != nil {
			t.Fatalf("line %q: %v", s, err)
		}
		got = append(got, ln)
	}
	if g := got[0]; g.Seq != 1 || !g.Acked || g.Topic != "p/d/t1" || g.Time == "" ||
		string(g.Data) != `{"value":1,"quality":"good","ts":"2026-11-25T21:00:00.000Z","seq":1}` {
		t.Errorf("line 1 = %+v (%s)", g, g.Data)
	}
	if g := got[2]; g.Seq != 3 || g.Acked || !g.Retain || g.Topic != "p/d/retained" {
		t.Errorf("line 3 = %+v", g)
	}
	if g := got[3]; g.Seq != 4 || g.Encoding != "base64" || string(g.Data) != `"B25vdCBhIHJlY29yZA=="` || g.Bytes != 13 {
		t.Errorf("line 4 = %+v (%s)", g, g.Data)
	}

	code, stdout, _ = run(t, "buffer", "dump", "-state-dir", stateDir, "-unacked", "-n", "1")
	if code != exitOK || strings.Count(stdout, "\n") != 1 || !strings.Contains(stdout, `"seq":2,`) {
		t.Errorf("dump -unacked -n 1: exit %d, %q", code, stdout)
	}
}

func TestBufferStats(t *testing.T) {
	stateDir, l := bufferStateDir(t)
	// While the log is open (ferry running): works, says live.
	code, stdout, stderr := run(t, "buffer", "stats", "-state-dir", stateDir)
	if code != exitOK || !strings.Contains(stdout, "live             yes") ||
		!strings.Contains(stdout, "depth            3 records") {
		t.Fatalf("stats while open: exit %d\n%s%s", code, stdout, stderr)
	}
	l.Close()
	code, stdout, stderr = run(t, "buffer", "stats", "-state-dir", stateDir, "-json")
	if code != exitOK {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	var st map[string]any
	if err := json.Unmarshal([]byte(stdout), &st); err != nil {
		t.Fatalf("%q: %v", stdout, err)
	}
	if st["live"] != false || st["depth"] != 3.0 || st["next_seq_to_ack"] != 2.0 || st["next_seq"] != 5.0 ||
		st["corrupt"] != 0.0 || st["oldest_unacked_time"] == nil || st["newest_time"] == nil {
		t.Fatalf("stats -json = %s", stdout)
	}
	// The text names what each seq is: acked_seq was read as a count.
	code, stdout, _ = run(t, "buffer", "stats", "-state-dir", stateDir)
	for _, want := range []string{
		"next_seq_to_ack  2 (the first seq the broker has not acknowledged; all below it are delivered)\n",
		"next_seq         5 (the seq the next reading will get)\n",
	} {
		if code != exitOK || !strings.Contains(stdout, want) {
			t.Errorf("stats lacks %q:\n%s", want, stdout)
		}
	}
	// -config takes gateway.state_dir from the config file.
	cfg := writeConfig(t, "[gateway]\nid = \"t\"\nstate_dir = \""+stateDir+"\"\n")
	code, stdout, stderr = run(t, "buffer", "stats", "-config", cfg, "-json")
	if code != exitOK || !strings.Contains(stdout, `"next_seq_to_ack":2`) || !strings.Contains(stdout, `"dir":"`+filepath.Join(stateDir, "buffer")) {
		t.Errorf("stats -config: exit %d\n%s%s", code, stdout, stderr)
	}
	code, stdout, stderr = run(t, "buffer", "dump", "-config", cfg)
	if code != exitOK || strings.Count(stdout, "\n") != 4 {
		t.Errorf("dump -config: exit %d\n%s%s", code, stdout, stderr)
	}
	if code, _, stderr := run(t, "buffer", "dump", "-config", cfg, "-state-dir", stateDir); code != exitUsage ||
		stderr != "ferry buffer dump: give -config or -state-dir, not both\n" {
		t.Errorf("both: exit %d, %q", code, stderr)
	}
	// Inspecting changes nothing and does not lock: the log opens at once.
	l2, err := buffer.Open(filepath.Join(stateDir, "buffer"), buffer.Options{})
	if err != nil {
		t.Fatal(err)
	}
	l2.Close()
}

func TestBufferUsage(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "none")
	tests := []struct {
		args []string
		code int
		out  string
	}{
		{[]string{"buffer"}, exitUsage, "Usage: ferry buffer stats|dump"},
		{[]string{"buffer", "-h"}, exitOK, "Usage: ferry buffer stats|dump"},
		{[]string{"buffer", "frob"}, exitUsage, `unknown subcommand "frob"`},
		{[]string{"buffer", "stats", "-h"}, exitOK, "-state-dir"},
		{[]string{"buffer", "dump", "-nope"}, exitUsage, "flag provided but not defined"},
		{[]string{"buffer", "stats", "-state-dir", missing}, exitFailure, "no such file or directory"},
		{[]string{"buffer", "dump", "-state-dir", missing}, exitFailure, "no such file or directory"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, "_"), func(t *testing.T) {
			code, stdout, stderr := run(t, tt.args...)
			if code != tt.code || !strings.Contains(stdout+stderr, tt.out) {
				t.Errorf("exit %d, output %q; want %d and %q", code, stdout+stderr, tt.code, tt.out)
			}
		})
	}
	if _, err := os.Stat(missing); err == nil {
		t.Error("ferry buffer created the state directory")
	}
}
