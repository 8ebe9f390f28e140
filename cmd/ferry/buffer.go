package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"time"

	"github.com/ferry-gateway/ferry/buffer"
	"github.com/ferry-gateway/ferry/gateway/record"
)

func init() {
	register(command{"buffer", "inspect a buffer offline: stats | dump", cmdBuffer})
}

const defaultStateDir = "/var/lib/ferry"

// cmdBuffer inspects <state-dir>/buffer with buffer.Inspect: read-only, no
// lock taken, nothing repaired, so it is safe while ferry runs (the output
// then says "live" and is a snapshot) and on a read-only copy of the state
// directory.
func cmdBuffer(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	const synopsis = "buffer stats|dump [-state-dir DIR | -config PATH] [flags]"
	if len(args) == 0 || args[0] == "-h" || args[0] == "-help" || args[0] == "--help" {
		fmt.Fprintf(stderr, "Usage: ferry %s\n\n", synopsis)
		fmt.Fprintln(stderr, "  stats  depth, bytes, seqs, oldest/newest record time, corrupt records (-json for one JSON object)")
		fmt.Fprintln(stderr, "  dump   every record as a JSON line: seq, acked, bytes, time, topic, retain, data")
		fmt.Fprintln(stderr, "\nBoth read <state-dir>/buffer without locking or repairing it; safe while ferry runs.")
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	switch args[0] {
	case "stats":
		return bufferStats(ctx, args[1:], stdout, stderr)
	case "dump":
		return bufferDump(ctx, args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "ferry buffer: unknown subcommand %q (want stats or dump)\n", args[0])
	return exitUsage
}

// stateDirFlags are -state-dir and -config of the buffer subcommands: the
// state directory given, or the gateway.state_dir of the config file.
type stateDirFlags struct {
	fs       *flag.FlagSet
	stateDir *string
	config   *string
}

func addStateDirFlags(fs *flag.FlagSet) stateDirFlags {
	return stateDirFlags{
		fs:       fs,
		stateDir: fs.String("state-dir", defaultStateDir, "gateway.state_dir; the buffer is its buffer/ subdirectory"),
		config:   fs.String("config", "", "take the state directory from this config file's gateway.state_dir"),
	}
}

// dir returns the state directory, or an exit code >= 0.
func (f stateDirFlags) dir(stderr io.Writer) (string, int) {
	if *f.config == "" {
		return *f.stateDir, -1
	}
	set := false
	f.fs.Visit(func(fl *flag.Flag) { set = set || fl.Name == "state-dir" })
	if set {
		fmt.Fprintf(stderr, "%s: give -config or -state-dir, not both\n", f.fs.Name())
		return "", exitUsage
	}
	cfg, code := loadConfig(*f.config, stderr)
	if cfg == nil {
		return "", code
	}
	return cfg.Gateway.StateDir, -1
}

func bufferStats(_ context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("buffer stats", "buffer stats [-state-dir DIR | -config PATH] [-json]", stderr)
	sdf := addStateDirFlags(fs)
	asJSON := fs.Bool("json", false, "print one JSON object")
	if code := parseFlags(fs, args, 0); code >= 0 {
		return code
	}
	stateDir, code := sdf.dir(stderr)
	if code >= 0 {
		return code
	}
	sum, err := buffer.Inspect(filepath.Join(stateDir, "buffer"), nil)
	if err != nil {
		fmt.Fprintf(stderr, "ferry buffer stats: %v\n", err)
		return exitFailure
	}
	if *asJSON {
		b, _ := json.Marshal(statsJSON(sum))
		fmt.Fprintf(stdout, "%s\n", b)
		return exitOK
	}
	w := bufio.NewWriter(stdout)
	defer w.Flush()
	live := "no"
	if sum.Live {
		live = "yes: ferry is running, this is a snapshot"
	}
	fmt.Fprintf(w, "dir              %s\n", sum.Dir)
	fmt.Fprintf(w, "live             %s\n", live)
	fmt.Fprintf(w, "depth            %d records, %d bytes (unacknowledged)\n", sum.Unacked, sum.UnackedBytes)
	fmt.Fprintf(w, "segments         %d files, %d bytes, %d records\n", sum.Segments, sum.Bytes, sum.Records)
	cursor := fmt.Sprint(sum.AckedSeq)
	if sum.CursorErr != "" {
		cursor += " (" + sum.CursorErr + ")"
	}
	fmt.Fprintf(w, "next_seq_to_ack  %s (the first seq the broker has not acknowledged; all below it are delivered)\n", cursor)
	fmt.Fprintf(w, "oldest_seq       %d (the oldest record still on disk)\n", sum.OldestSeq)
	fmt.Fprintf(w, "next_seq         %d (the seq the next reading will get)\n", sum.NextSeq)
	fmt.Fprintf(w, "oldest_unacked   %s\n", fmtTime(sum.OldestTime, true))
	fmt.Fprintf(w, "newest           %s\n", fmtTime(sum.NewestTime, true))
	fmt.Fprintf(w, "corrupt          %d records unreadable in the segments; %d recorded in corrupt/ (%d files)\n",
		sum.Corrupt, sum.CorruptRecorded, sum.CorruptFiles)
	fmt.Fprintf(w, "torn_tail        %d bytes\n", sum.TornBytes)
	return exitOK
}

type bufferStatsJSON struct {
	Dir             string  `json:"dir"`
	Live            bool    `json:"live"`
	Depth           uint64  `json:"depth"`
	DepthBytes      int64   `json:"depth_bytes"`
	Segments        int     `json:"segments"`
	Bytes           int64   `json:"bytes"`
	Records         uint64  `json:"records"`
	NextSeqToAck    uint64  `json:"next_seq_to_ack"` // the first seq not acknowledged, not a count
	CursorError     string  `json:"cursor_error,omitempty"`
	OldestSeq       uint64  `json:"oldest_seq"`
	NextSeq         uint64  `json:"next_seq"`
	OldestUnacked   *string `json:"oldest_unacked_time"`
	Newest          *string `json:"newest_time"`
	Corrupt         uint64  `json:"corrupt"`
	CorruptRecorded uint64  `json:"corrupt_recorded"`
	TornBytes       int64   `json:"torn_bytes"`
}

func statsJSON(s buffer.Summary) bufferStatsJSON {
	return bufferStatsJSON{
		Dir: s.Dir, Live: s.Live, Depth: s.Unacked, DepthBytes: s.UnackedBytes,
		Segments: s.Segments, Bytes: s.Bytes, Records: s.Records,
		NextSeqToAck: s.AckedSeq, CursorError: s.CursorErr, OldestSeq: s.OldestSeq, NextSeq: s.NextSeq,
		OldestUnacked: jsonTime(s.OldestTime), Newest: jsonTime(s.NewestTime),
		Corrupt: s.Corrupt, CorruptRecorded: s.CorruptRecorded, TornBytes: s.TornBytes,
	}
}

func jsonTime(t time.Time) *string {
	if t.IsZero() {
		return nil
	}
	s := t.UTC().Format(record.TimeLayout)
	return &s
}

func fmtTime(t time.Time, age bool) string {
	if t.IsZero() {
		return "-"
	}
	s := t.UTC().Format(record.TimeLayout)
	if age {
		s += fmt.Sprintf(" (%s ago)", time.Since(t).Round(time.Millisecond))
	}
	return s
}

// dumpLine is one line of `ferry buffer dump`. Data is the MQTT payload the
// publisher would send (a JSON value) when the record decodes; otherwise the
// record's bytes in base64 with Encoding "base64" and the decode error.
type dumpLine struct {
	Seq      uint64          `json:"seq"`
	Acked    bool            `json:"acked"`
	Bytes    int             `json:"bytes"`
	Time     *string         `json:"time,omitempty"`
	Topic    string          `json:"topic,omitempty"`
	Retain   bool            `json:"retain,omitempty"`
	Data     json.RawMessage `json:"data"`
	Encoding string          `json:"encoding,omitempty"`
	Error    string          `json:"error,omitempty"`
}

var errStopDump = errors.New("stop")

func bufferDump(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("buffer dump", "buffer dump [-state-dir DIR | -config PATH] [-from SEQ] [-unacked] [-n N] [-raw]", stderr)
	sdf := addStateDirFlags(fs)
	from := fs.Uint64("from", 0, "first seq to print")
	unacked := fs.Bool("unacked", false, "print only records not yet acknowledged by the broker")
	limit := fs.Int("n", 0, "print at most N records (0: all)")
	raw := fs.Bool("raw", false, "print data as base64, without decoding gateway records")
	if code := parseFlags(fs, args, 0); code >= 0 {
		return code
	}
	stateDir, code := sdf.dir(stderr)
	if code >= 0 {
		return code
	}
	w := bufio.NewWriter(stdout)
	n := 0
	var line []byte
	sum, err := buffer.Inspect(filepath.Join(stateDir, "buffer"), func(r buffer.Record) error {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if r.Seq < *from || (*unacked && r.Acked) {
			return nil
		}
		if *limit > 0 && n >= *limit {
			return errStopDump
		}
		n++
		d := dumpLine{Seq: r.Seq, Acked: r.Acked, Bytes: len(r.Data), Time: jsonTime(r.Time)}
		var derr error
		if !*raw {
			var m record.Message
			if m, derr = record.Decode(r.Data); derr == nil {
				payload := m.AppendPayload(nil, r.Seq)
				if json.Valid(payload) {
					d.Topic, d.Retain, d.Data = m.Topic, m.Retain, payload
				} else {
					derr = errors.New("payload is not valid JSON")
				}
			}
		}
		if d.Data == nil {
			d.Data, _ = json.Marshal(base64.StdEncoding.EncodeToString(r.Data))
			d.Encoding = "base64"
			if derr != nil {
				d.Error = derr.Error()
			}
		}
		b, err := json.Marshal(d)
		if err != nil {
			return err
		}
		line = append(line[:0], b...)
		line = append(line, '\n')
		_, err = w.Write(line)
		return err
	})
	if ferr := w.Flush(); err == nil || errors.Is(err, errStopDump) {
		err = ferr
	}
	if err != nil && !errors.Is(err, errStopDump) {
		fmt.Fprintf(stderr, "ferry buffer dump: %v\n", err)
		return exitFailure
	}
	if sum.Live {
		fmt.Fprintln(stderr, "ferry buffer dump: note: ferry is running; this is a snapshot")
	}
	if sum.Corrupt > 0 || sum.TornBytes > 0 {
		fmt.Fprintf(stderr, "ferry buffer dump: skipped %d corrupt records and a torn tail of %d bytes\n", sum.Corrupt, sum.TornBytes)
	}
	return exitOK
}
