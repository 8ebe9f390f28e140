package mqtt

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/gateway/record"
	"github.com/ferry-gateway/ferry/internal/mosquittotest"
)

// logCapture is a slog handler that keeps what is logged (and passes it to
// t.Log), so tests can check warnings.
type logCapture struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func captureLogger(t *testing.T) (*slog.Logger, *logCapture) {
	c := &logCapture{}
	h := slog.NewTextHandler(multiWriter{c, tWriter{t}}, &slog.HandlerOptions{Level: slog.LevelInfo})
	return slog.New(h), c
}

type multiWriter struct {
	c *logCapture
	w tWriter
}

func (m multiWriter) Write(p []byte) (int, error) {
	m.c.mu.Lock()
	m.c.buf.Write(p)
	m.c.mu.Unlock()
	return m.w.Write(p)
}

func (c *logCapture) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

func (c *logCapture) waitFor(t *testing.T, timeout time.Duration, substr string) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !strings.Contains(c.String(), substr) {
		if time.Now().After(deadline) {
			t.Fatalf("log never contained %q", substr)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// seqOrder returns the telemetry seqs in the order the subscriber got them
// and the replay property of each.
func seqOrder(t *testing.T, msgs []mosquittotest.Message) (order []uint64, replay map[uint64]bool) {
	t.Helper()
	replay = map[uint64]bool{}
	for _, m := range msgs {
		if strings.HasSuffix(m.Topic, "/status") {
			continue
		}
		var v telemetry
		if err := json.Unmarshal(m.Payload, &v); err != nil {
			t.Fatalf("payload %q: %v", m.Payload, err)
		}
		order = append(order, v.Seq)
		replay[v.Seq] = replay[v.Seq] || m.User["replay"] == "true"
	}
	return order, replay
}

// checkInOrder fails if the first deliveries of the seqs are not in
// increasing order (a redelivery of an earlier seq is not a reorder).
func checkInOrder(t *testing.T, order []uint64) {
	t.Helper()
	seen := map[uint64]bool{}
	var last uint64
	for i, s := range order {
		if seen[s] {
			continue
		}
		seen[s] = true
		if s < last {
			t.Fatalf("seq %d delivered after %d (position %d): out of order", s, last, i)
		}
		last = s
	}
}

// TestOutage stops the broker (with persistence) for a while as records
// keep coming: afterwards every seq arrives, in order, exactly once at
// QoS 2, those from the backlog marked replay.
func TestOutage(t *testing.T) {
	for _, qos := range []byte{1, 2} {
		t.Run(fmt.Sprintf("qos%d", qos), func(t *testing.T) {
			t.Parallel()
			b := mosquittotest.Start(t, mosquittotest.WithPersistence())
			sub := mosquittotest.Subscribe(t, b.URL(), prefix+"/#", qos)
			l := newMemLog(1)
			cfg := testConfig(t, b.URL())
			cfg.QoS = qos
			cfg.SessionDir = t.TempDir()
			p, err := New(cfg, l)
			if err != nil {
				t.Fatal(err)
			}
			running(t, p)
			// 10 ms ticks of 5 readings (500/s) for ~3 s, the broker down
			// for ~1.5 s of it.
			stopProd := make(chan struct{})
			produced := make(chan int)
			go func() {
				i := 0
				tick := time.NewTicker(10 * time.Millisecond)
				defer tick.Stop()
				for {
					select {
					case <-stopProd:
						produced <- i
						return
					case <-tick.C:
						appendReadings(t, l, i, 5)
						i += 5
					}
				}
			}()
			l.waitCount(t, long, 200)
			b.Stop()
			downAt := l.Acked()
			time.Sleep(1500 * time.Millisecond)
			b.Restart()
			time.Sleep(700 * time.Millisecond)
			close(stopProd)
			total := <-produced
			l.waitAllAcked(t, long)
			seen := waitSeqs(t, sub, 1, uint64(total)+1)
			order, replay := seqOrder(t, sub.Messages())
			checkInOrder(t, order)
			dups := 0
			for s, n := range seen {
				if n > 1 {
					dups++
					if qos == 2 {
						t.Errorf("seq %d delivered %d times at QoS 2", s, n)
					}
				}
			}
			// Records appended while the broker was down are history.
			marked := 0
			for s := downAt + 50; s < downAt+300 && s <= uint64(total); s++ {
				if replay[s] {
					marked++
				}
			}
			if marked == 0 {
				t.Errorf("no record published from the backlog after the outage carries replay=true")
			}
			st := p.Stats()
			t.Logf("qos %d: %d records, %d duplicates, stats %+v", qos, total, dups, st)
			if st.Reconnects == 0 || st.SessionLost != 0 || st.Acked != uint64(total) || st.Replayed == 0 {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

// TestBrokerRestartWithoutPersistence: the broker forgets the session; the
// publisher notices (Session Present = 0) and publishes again what was in
// flight: nothing is lost.
func TestBrokerRestartWithoutPersistence(t *testing.T) {
	t.Parallel()
	b := mosquittotest.Start(t)
	sub := mosquittotest.Subscribe(t, b.URL(), prefix+"/#", 2)
	l := newMemLog(1)
	cfg := testConfig(t, b.URL())
	cfg.QoS = 2
	cfg.SessionDir = t.TempDir()
	// The broker forgets the subscriber too: a new one subscribes right
	// after the restart, well before the publisher reconnects (what the
	// publisher sends before that subscription exists reaches nobody, a
	// loss of the test's, not ferry's). 3 s leaves room on a loaded machine.
	cfg.ReconnectMin = 3 * time.Second
	cfg.ReconnectMax = 3 * time.Second
	p, err := New(cfg, l)
	if err != nil {
		t.Fatal(err)
	}
	running(t, p)
	const total = 2000
	appendReadings(t, l, 0, total)
	l.waitCount(t, long, 100)
	b.Kill() // nothing saved
	// What the broker had acked may have died with it before reaching the
	// subscriber: that is the broker's loss. Everything else must arrive.
	// Acks already on the wire are processed until the publisher sees the
	// connection gone, so the snapshot waits for that.
	for deadline := time.Now().Add(long); p.Connected(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the publisher did not notice the broker's death")
		}
	}
	l.mu.Lock()
	ackedBefore := maps.Clone(l.acked)
	l.mu.Unlock()
	if len(ackedBefore) >= total {
		t.Fatal("everything acked before the restart; the test proves nothing")
	}
	b.Restart()
	sub2 := mosquittotest.Subscribe(t, b.URL(), prefix+"/#", 2)
	l.waitAllAcked(t, long)
	deadline := time.Now().Add(long)
	for {
		seen := seqsOf(t, append(sub.Messages(), sub2.Messages()...))
		missing := 0
		for s := uint64(1); s <= total; s++ {
			if !ackedBefore[s] && seen[s] == 0 {
				missing++
			}
		}
		if missing == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d records not acked before the broker died never arrived", missing)
		}
		time.Sleep(20 * time.Millisecond)
	}
	st := p.Stats()
	t.Logf("stats %+v", st)
	if st.SessionLost == 0 || st.Resent == 0 {
		t.Errorf("session loss not counted: %+v", st)
	}
}

// TestDeadLetter: the broker denies one topic (0x87, a refusal for good);
// its records are written to the dead-letter file at the first refusal
// (or unsent while the topic is held) and acked; the others flow.
func TestDeadLetter(t *testing.T) {
	t.Parallel()
	b := mosquittotest.Start(t, mosquittotest.WithACL("topic readwrite #\ntopic deny "+prefix+"/denied/#\n"))
	sub := mosquittotest.Subscribe(t, b.URL(), prefix+"/#", 1)
	l := newMemLog(1)
	cfg := testConfig(t, b.URL())
	cfg.DeadLetterFile = filepath.Join(t.TempDir(), "dead.jsonl")
	cfg.DeadLetterAttempts = 3
	cfg.RetryMin, cfg.RetryMax = 20*time.Millisecond, 50*time.Millisecond
	p, err := New(cfg, l)
	if err != nil {
		t.Fatal(err)
	}
	var denied []uint64
	for i := range 30 {
		appendReadings(t, l, i*10, 10)
		if i%10 == 0 {
			s, _ := l.Append(record.AppendReading(nil, prefix+"/denied/x", false, adapters.Reading{Value: adapters.IntValue(int64(i)), Quality: adapters.Good, Time: ts0}))
			denied = append(denied, s)
		}
	}
	running(t, p)
	l.waitAllAcked(t, long)
	st := p.Stats()
	if st.DeadLettered != uint64(len(denied)) || st.ReasonCodes[0x87] < 1 || st.ReasonCodes[0x87] > uint64(len(denied)) {
		t.Errorf("stats %+v, want %d dead-lettered after at most one refusal (0x87) each", st, len(denied))
	}
	f, err := os.Open(cfg.DeadLetterFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	got := map[uint64]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var d struct {
			Seq        uint64          `json:"seq"`
			Topic      string          `json:"topic"`
			ReasonCode string          `json:"reason_code"`
			Attempts   int             `json:"attempts"`
			Held       bool            `json:"held"`
			Payload    json.RawMessage `json:"payload"`
			Time       string          `json:"time"`
		}
		if err := json.Unmarshal(sc.Bytes(), &d); err != nil {
			t.Fatalf("dead-letter line %s: %v", sc.Bytes(), err)
		}
		if d.Topic != prefix+"/denied/x" || d.ReasonCode != "0x87" || d.Attempts != 1 && !(d.Held && d.Attempts == 0) || d.Time == "" ||
			!strings.Contains(string(d.Payload), fmt.Sprintf(`"seq":%d}`, d.Seq)) {
			t.Errorf("dead-letter line %s", sc.Bytes())
		}
		got[d.Seq] = true
	}
	for _, s := range denied {
		if !got[s] {
			t.Errorf("denied seq %d not in the dead-letter file", s)
		}
	}
	// Every other record reached the subscriber.
	seen := seqsOf(t, sub.Messages())
	deniedSet := map[uint64]bool{}
	for _, s := range denied {
		deniedSet[s] = true
	}
	for s := uint64(1); s < l.Acked(); s++ {
		if !deniedSet[s] && seen[s] == 0 {
			waitSeqs(t, sub, s, s+1)
		}
	}
}

// TestReplayRate: the backlog is drained no faster than MaxReplayRate.
func TestReplayRate(t *testing.T) {
	t.Parallel()
	b := mosquittotest.Start(t)
	l := newMemLog(1)
	cfg := testConfig(t, b.URL())
	cfg.MaxReplayRate = 200
	cfg.MessageExpiry = time.Minute
	p, err := New(cfg, l)
	if err != nil {
		t.Fatal(err)
	}
	sub := mosquittotest.Subscribe(t, b.URL(), prefix+"/#", 1)
	appendReadings(t, l, 0, 100) // backlog
	start := time.Now()
	running(t, p)
	l.waitAllAcked(t, long)
	if d := time.Since(start); d < 400*time.Millisecond {
		t.Errorf("100 backlog records at max 200/s took %v", d)
	}
	waitSeqs(t, sub, 1, 101)
}
