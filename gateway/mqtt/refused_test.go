package mqtt

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/gateway/record"
	"github.com/ferry-gateway/ferry/internal/mosquittotest"
)

// notice is a P/deadletter message.
type notice struct {
	Topic      string      `json:"topic"`
	ReasonCode string      `json:"reason_code"`
	Reason     string      `json:"reason"`
	Seqs       [][2]uint64 `json:"seqs"`
	Count      int         `json:"count"`
	TS         string      `json:"ts"`
}

// TestRefusedTopicHeld: one topic that the broker's ACL denies, interleaved
// with a healthy stream, with a retry schedule far longer than the test
// (RetryMin 1h). The refused records must not wait for that schedule: the
// whole log is acked (the cursor never stays on a refused record), the
// denied topic is sent only until its first refusal and then held (its
// other records dead-lettered unsent, so the broker does not close the
// connection at the tag's rate), every dead letter is announced on
// P/deadletter with its seq, and the refusals are logged a few times, not
// once per record.
func TestRefusedTopicHeld(t *testing.T) {
	t.Parallel()
	b := mosquittotest.Start(t, mosquittotest.WithACL("topic readwrite #\ntopic deny "+prefix+"/denied/#\n"),
		mosquittotest.WithLogTypes("error", "warning"))
	sub := mosquittotest.Subscribe(t, b.URL(), prefix+"/#", 1)
	l := newMemLog(1)
	logger, logs := captureLogger(t)
	cfg := testConfig(t, b.URL())
	cfg.Logger = logger
	cfg.DeadLetterFile = filepath.Join(t.TempDir(), "dead.jsonl")
	cfg.DeadLetterTopic = prefix + "/deadletter"
	cfg.RetryMin, cfg.RetryMax = time.Hour, time.Hour
	p, err := New(cfg, l)
	if err != nil {
		t.Fatal(err)
	}
	const rounds, healthy = 100, 20
	denied := map[uint64]bool{}
	for i := range rounds {
		appendReadings(t, l, i*healthy, healthy)
		s, err := l.Append(record.AppendReading(nil, prefix+"/denied/x", false,
			adapters.Reading{Value: adapters.IntValue(int64(i)), Quality: adapters.Good, Time: ts0}))
		if err != nil {
			t.Fatal(err)
		}
		denied[s] = true
	}
	last := uint64(rounds * (healthy + 1))
	running(t, p)
	l.waitAllAcked(t, long)

	st := p.Stats()
	if st.DeadLettered != rounds {
		t.Errorf("dead-lettered %d, want %d", st.DeadLettered, rounds)
	}
	// Before the hold, only what was in flight with the first denied
	// record can have reached the broker.
	if n := st.ReasonCodes[0x87]; n < 1 || n > uint64(cfg.MaxInflight/healthy+2) {
		t.Errorf("%d refusals (0x87) for %d denied records, want the topic held after the first", n, rounds)
	}
	// Every healthy record arrived.
	var seen map[uint64]int
	if !eventually(long, func() bool {
		seen = seqsOf(t, filterTelemetry(sub.Messages()))
		for s := uint64(1); s <= last; s++ {
			if !denied[s] && seen[s] == 0 {
				return false
			}
		}
		return true
	}) {
		t.Fatalf("healthy records missing: %d of %d seen", len(seen), last-rounds)
	}
	for s := range denied {
		if seen[s] != 0 {
			t.Errorf("denied seq %d reached the subscriber", s)
		}
	}
	// Every dead letter is announced, with the topic and reason.
	announced := map[uint64]bool{}
	if !eventually(long, func() bool {
		clear(announced)
		for _, m := range sub.Messages() {
			if m.Topic != cfg.DeadLetterTopic {
				continue
			}
			var n notice
			if err := json.Unmarshal(m.Payload, &n); err != nil {
				t.Errorf("notice %s: %v", m.Payload, err)
				continue
			}
			if n.Topic != prefix+"/denied/x" || n.ReasonCode != "0x87" || n.Reason == "" || n.TS == "" || m.Retain {
				t.Errorf("notice %s (retain %v)", m.Payload, m.Retain)
			}
			c := 0
			for _, r := range n.Seqs {
				for s := r[0]; s <= r[1]; s++ {
					announced[s] = true
					c++
				}
			}
			if c != n.Count {
				t.Errorf("notice %s: count %d, ranges hold %d", m.Payload, n.Count, c)
			}
		}
		return len(announced) >= len(denied)
	}) {
		t.Fatalf("dead letters announced: %d of %d", len(announced), len(denied))
	}
	for s := range announced {
		if !denied[s] {
			t.Errorf("seq %d announced as dead-lettered but was not refused", s)
		}
	}
	// The dead-letter file has them all, most of them held (never sent).
	f, err := os.Open(cfg.DeadLetterFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	lines, held := 0, 0
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var d struct {
			Seq      uint64 `json:"seq"`
			Held     bool   `json:"held"`
			Attempts int    `json:"attempts"`
		}
		if err := json.Unmarshal(sc.Bytes(), &d); err != nil || !denied[d.Seq] {
			t.Errorf("dead-letter line %s: %v", sc.Bytes(), err)
		}
		lines++
		if d.Held {
			held++
		}
	}
	if lines != rounds || held < rounds/2 {
		t.Errorf("%d dead-letter lines (%d held), want %d (most held)", lines, held, rounds)
	}
	// Logged per topic at most every logEvery, with a count of the rest.
	text := logs.String()
	if n := strings.Count(text, "broker refused publish") + strings.Count(text, "record moved to the dead-letter file"); n > 4 {
		t.Errorf("%d refusal/dead-letter log lines for one denied topic, want them rate-limited", n)
	}
}

// filterTelemetry drops the status and dead-letter notices.
func filterTelemetry(msgs []mosquittotest.Message) []mosquittotest.Message {
	var out []mosquittotest.Message
	for _, m := range msgs {
		if !strings.HasSuffix(m.Topic, "/status") && !strings.HasSuffix(m.Topic, "/deadletter") {
			out = append(out, m)
		}
	}
	return out
}

// eventually polls cond until it holds or timeout passes.
func eventually(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

// TestRefusalPolicy: which refusals dead-letter at once and hold their
// topic, and which are retried (no broker: the publisher's bookkeeping).
func TestRefusalPolicy(t *testing.T) {
	cases := []struct {
		name     string
		rc       byte
		attempts int // refusals before this one
		dead     bool
		hold     bool
	}{
		{"not authorized", 0x87, 0, true, true},
		{"topic name invalid", 0x90, 0, true, true},
		{"payload format invalid", 0x99, 0, true, true},
		{"invalid packet (paho)", 0, 0, true, true},
		{"quota exceeded", 0x97, 0, false, false},
		{"unspecified", 0x80, 0, false, false},
		{"implementation specific, last attempt", 0x83, 4, true, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			cfg := testConfig(t, "mqtt://127.0.0.1:1")
			cfg.DeadLetterFile = filepath.Join(t.TempDir(), "dead.jsonl")
			cfg.DeadLetterAttempts = 5
			cfg.RetryMin, cfg.RetryMax = time.Hour, time.Hour
			p, err := New(cfg, newMemLog(1))
			if err != nil {
				t.Fatal(err)
			}
			defer p.store.Close()
			topic := prefix + "/d/t"
			j, err := p.newJob(1, record.AppendReading(nil, topic, false, adapters.Reading{Value: adapters.IntValue(1), Time: ts0}), false)
			if err != nil {
				t.Fatal(err)
			}
			j.attempts = c.attempts
			p.fail(j, c.rc, "")
			p.jmu.Lock()
			dead, retried, hold := len(p.dead) == 1, len(p.retry) == 1, p.holds[topic] != nil
			p.jmu.Unlock()
			if dead != c.dead || retried == c.dead || hold != c.hold {
				t.Fatalf("dead %v retried %v hold %v, want dead %v hold %v", dead, retried, hold, c.dead, c.hold)
			}
			next, _ := p.newJob(2, record.AppendReading(nil, topic, false, adapters.Reading{Value: adapters.IntValue(2), Time: ts0}), false)
			if p.held(next) != c.hold {
				t.Fatalf("the topic's next record held = %v, want %v", !c.hold, c.hold)
			}
			if c.hold && (next.rc != c.rc || !next.held) {
				t.Fatalf("held record carries rc %#02x held %v", next.rc, next.held)
			}
			// A success on the topic ends the hold.
			p.jmu.Lock()
			p.pending[3] = &job{seq: 3, pub: next.pub}
			p.jmu.Unlock()
			p.complete(3, 0, "")
			other, _ := p.newJob(4, record.AppendReading(nil, topic, false, adapters.Reading{Value: adapters.IntValue(4), Time: ts0}), false)
			if p.held(other) {
				t.Fatal("the topic is still held after a success")
			}
		})
	}
}

// TestLogLimiter: one line per key per interval, with the count of those
// suppressed in between.
func TestLogLimiter(t *testing.T) {
	l := newLogLimiter(10 * time.Second)
	now := time.Unix(1000, 0)
	l.now = func() time.Time { return now }
	type step struct {
		key        string
		advance    time.Duration
		ok         bool
		suppressed int
	}
	for i, s := range []step{
		{"a", 0, true, 0},
		{"a", time.Second, false, 0},
		{"b", 0, true, 0},
		{"a", time.Second, false, 0},
		{"a", 8 * time.Second, true, 2},
		{"a", time.Second, false, 0},
		{"b", 0, true, 0},
	} {
		now = now.Add(s.advance)
		ok, n := l.allow(s.key)
		if ok != s.ok || n != s.suppressed {
			t.Fatalf("step %d (%s): allow = %v, %d; want %v, %d", i, s.key, ok, n, s.ok, s.suppressed)
		}
	}
}

// TestReadAheadUnblocked: a record refused with a code worth retrying
// (0x97 quota exceeded) whose retry is far away sits at the log's commit
// cursor while the read-ahead fills up: rather than stall every other
// topic until the retry, it is dead-lettered and the stream goes on.
func TestReadAheadUnblocked(t *testing.T) {
	t.Parallel()
	b := mosquittotest.Start(t)
	l := newMemLog(1)
	cfg := testConfig(t, b.URL())
	cfg.DeadLetterFile = filepath.Join(t.TempDir(), "dead.jsonl")
	p, err := New(cfg, l)
	if err != nil {
		t.Fatal(err)
	}
	p.ahead = 50 // a read is up to 256 records: the reader stops after the first
	appendReadings(t, l, 0, 1000)
	// Seq 1 was refused once with 0x97 before this start; its retry is in
	// an hour (as the sender would have queued it).
	j, err := p.newJob(1, record.AppendReading(nil, topicOf(0), false, adapters.Reading{Value: adapters.IntValue(0), Time: ts0}), false)
	if err != nil {
		t.Fatal(err)
	}
	j.attempts, j.rc, j.due = 1, 0x97, time.Now().Add(time.Hour)
	p.retry = []*job{j}
	p.skip[1], p.skipTo = true, 2
	running(t, p)
	l.waitAllAcked(t, long)
	if st := p.Stats(); st.DeadLettered != 1 || st.Acked != 999 {
		t.Errorf("stats %+v, want seq 1 dead-lettered and the other 999 acked", st)
	}
	data, err := os.ReadFile(cfg.DeadLetterFile)
	if err != nil || !strings.Contains(string(data), `"seq":1,`) || !strings.Contains(string(data), `"reason_code":"0x97"`) {
		t.Errorf("dead-letter file %q, %v", data, err)
	}
}

// TestHeldProbesSpaced: when the holds of several refused topics end
// together, one of them is probed and the others wait RetryMin more, so
// the probes (each a reconnect with mosquitto) do not pile up.
func TestHeldProbesSpaced(t *testing.T) {
	cfg := testConfig(t, "mqtt://127.0.0.1:1")
	cfg.DeadLetterFile = filepath.Join(t.TempDir(), "dead.jsonl")
	cfg.RetryMin, cfg.RetryMax = time.Hour, time.Hour
	p, err := New(cfg, newMemLog(1))
	if err != nil {
		t.Fatal(err)
	}
	past := time.Now().Add(-time.Second)
	var jobs []*job
	for i := range 3 {
		topic := fmt.Sprintf("%s/d/t%d", prefix, i)
		p.holds[topic] = &topicHold{until: past, refusals: 1, rc: 0x87}
		j, err := p.newJob(uint64(i+1), record.AppendReading(nil, topic, false, adapters.Reading{Value: adapters.IntValue(1), Time: ts0}), false)
		if err != nil {
			t.Fatal(err)
		}
		jobs = append(jobs, j)
	}
	probes := 0
	for _, j := range jobs {
		if !p.held(j) {
			probes++
		}
	}
	if probes != 1 {
		t.Fatalf("%d of 3 expired holds probed at once, want 1", probes)
	}
	for topic, h := range p.holds {
		if h.until.Before(time.Now().Add(30*time.Minute)) && topic != jobs[0].pub.Topic {
			t.Errorf("hold of %s extended only to %v", topic, h.until)
		}
	}
}
