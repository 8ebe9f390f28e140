package mqtt

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/gateway/record"
	"github.com/ferry-gateway/ferry/internal/mosquittotest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const (
	prefix  = "ferry/test"
	long    = 20 * time.Second // generous upper bound, never a performance assertion
	version = "1.2.3-test"
)

var ts0 = time.Date(2026, 11, 25, 21, 0, 0, 123_000_000, time.UTC)

func testLogger(t *testing.T) *slog.Logger {
	var w io.Writer = tWriter{t}
	lvl := slog.LevelInfo
	if os.Getenv("FERRY_TEST_DEBUG") != "" {
		lvl = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: lvl}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}

func testConfig(t *testing.T, url string) Config {
	return Config{
		URL:           url,
		ClientID:      "ferry-" + strings.ReplaceAll(t.Name(), "/", "-"),
		QoS:           1,
		MaxInflight:   64,
		ReconnectMin:  20 * time.Millisecond,
		ReconnectMax:  200 * time.Millisecond,
		RetryMin:      50 * time.Millisecond,
		RetryMax:      200 * time.Millisecond,
		StatusTopic:   prefix + "/status",
		Version:       version,
		ShutdownGrace: 2 * time.Second,
		Logger:        testLogger(t),
	}
}

// running starts p.Run and returns a stop function (also run at cleanup)
// that cancels it and checks it returns nil.
func running(t *testing.T, p *Publisher) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run = %v", err)
				}
			case <-time.After(long):
				t.Errorf("Run did not return within %v of cancel", long)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func topicOf(i int) string { return fmt.Sprintf("%s/dev%d/tag%d", prefix, i%3, i%4) }

// appendReadings appends n readings numbered from i0 and returns their first seq.
func appendReadings(t testing.TB, l *memLog, i0, n int) uint64 {
	recs := make([][]byte, n)
	for k := range n {
		i := i0 + k
		recs[k] = record.AppendReading(nil, topicOf(i), false, adapters.Reading{
			Value: adapters.IntValue(int64(i)), Quality: adapters.Good, Time: ts0.Add(time.Duration(i) * time.Millisecond)})
	}
	first, err := l.Append(recs...)
	if err != nil {
		t.Fatal(err)
	}
	return first
}

type telemetry struct {
	Value   json.RawMessage `json:"value"`
	Quality string          `json:"quality"`
	TS      string          `json:"ts"`
	Seq     uint64          `json:"seq"`
}

// seqsOf parses the telemetry messages and returns how often each seq was seen.
func seqsOf(t *testing.T, msgs []mosquittotest.Message) map[uint64]int {
	t.Helper()
	seen := map[uint64]int{}
	for _, m := range msgs {
		if strings.HasSuffix(m.Topic, "/status") {
			continue
		}
		var v telemetry
		if err := json.Unmarshal(m.Payload, &v); err != nil {
			t.Fatalf("payload %q on %s: %v", m.Payload, m.Topic, err)
		}
		seen[v.Seq]++
	}
	return seen
}

// waitSeqs waits until the subscriber has seen every seq in [from, to).
func waitSeqs(t *testing.T, sub *mosquittotest.Subscription, from, to uint64) map[uint64]int {
	t.Helper()
	deadline := time.Now().Add(long)
	for {
		seen := seqsOf(t, sub.Messages())
		missing := 0
		for s := from; s < to; s++ {
			if seen[s] == 0 {
				missing++
			}
		}
		if missing == 0 {
			return seen
		}
		if time.Now().After(deadline) {
			t.Fatalf("subscriber misses %d of seqs [%d,%d)", missing, from, to)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func statusMatch(online bool) func(mosquittotest.Message) bool {
	return func(m mosquittotest.Message) bool {
		if m.Topic != prefix+"/status" {
			return false
		}
		var s struct {
			Online  *bool  `json:"online"`
			TS      string `json:"ts"`
			Version string `json:"version"`
		}
		return json.Unmarshal(m.Payload, &s) == nil && s.Online != nil && *s.Online == online &&
			s.Version == version && len(s.TS) == len("2006-01-02T15:04:05.000Z") && m.Retain
	}
}

func TestPublishAckAndStatus(t *testing.T) {
	b := mosquittotest.Start(t)
	sub := mosquittotest.Subscribe(t, b.URL(), prefix+"/#", 1)
	l := newMemLog(1000)
	first := appendReadings(t, l, 0, 200) // backlog before Run

	p, err := New(testConfig(t, b.URL()), l)
	if err != nil {
		t.Fatal(err)
	}
	stop := running(t, p)
	l.waitAllAcked(t, long)
	if _, err := sub.WaitFor(long, statusMatch(true)); err != nil {
		t.Fatal(err)
	}
	if !p.Connected() {
		t.Error("Connected() = false after publishing")
	}
	seen := waitSeqs(t, sub, first, first+200)

	// Live records after catching up.
	live := appendReadings(t, l, 200, 50)
	l.waitAllAcked(t, long)
	seen = waitSeqs(t, sub, first, live+50)

	// Every acked record reached the broker: topics and payloads exact.
	byseq := map[uint64]mosquittotest.Message{}
	for _, m := range sub.Messages() {
		if strings.HasSuffix(m.Topic, "/status") {
			continue
		}
		var v telemetry
		_ = json.Unmarshal(m.Payload, &v)
		byseq[v.Seq] = m
	}
	for i := range 250 {
		seq := first + uint64(i)
		m := byseq[seq]
		rec := record.AppendReading(nil, topicOf(i), false, adapters.Reading{
			Value: adapters.IntValue(int64(i)), Quality: adapters.Good, Time: ts0.Add(time.Duration(i) * time.Millisecond)})
		dm, _ := record.Decode(rec)
		want := string(dm.AppendPayload(nil, seq))
		if m.Topic != topicOf(i) || string(m.Payload) != want || m.Retain {
			t.Fatalf("seq %d: got %s %s retain=%v, want %s %s", seq, m.Topic, m.Payload, m.Retain, topicOf(i), want)
		}
		if replay := m.User["replay"] == "true"; replay != (i < 200) {
			t.Errorf("seq %d: replay property %v, want %v", seq, replay, i < 200)
		}
	}
	for s, n := range seen {
		if n > 1 {
			t.Errorf("seq %d delivered %d times without any outage", s, n)
		}
	}
	st := p.Stats()
	if st.Acked != 250 || st.InFlight != 0 || st.Failed != 0 {
		t.Errorf("Stats = %+v", st)
	}

	stop()
	if _, err := sub.WaitFor(long, statusMatch(false)); err != nil {
		t.Fatalf("offline status on clean shutdown: %v", err)
	}
	if p.Connected() {
		t.Error("Connected() after Run returned")
	}
}

func TestBrokerDownAtStart(t *testing.T) {
	b := mosquittotest.Start(t, mosquittotest.WithPersistence())
	sub := mosquittotest.Subscribe(t, b.URL(), prefix+"/#", 1) // its session is kept across the restart
	b.Stop()

	l := newMemLog(1)
	p, err := New(testConfig(t, b.URL()), l)
	if err != nil {
		t.Fatal(err)
	}
	running(t, p)
	first := appendReadings(t, l, 0, 100)
	time.Sleep(300 * time.Millisecond) // a few connection attempts
	if n := l.ackedCount(); n != 0 || p.Connected() {
		t.Fatalf("%d records acked while the broker is down (connected %v)", n, p.Connected())
	}
	appendReadings(t, l, 100, 100) // the buffer keeps filling
	b.Restart()
	l.waitAllAcked(t, long)
	waitSeqs(t, sub, first, first+200)
}

// TestBrokerRestart stops and restarts the broker in the middle of a stream:
// every record is eventually delivered and acked, duplicates only at QoS 1.
func TestBrokerRestart(t *testing.T) {
	for _, qos := range []byte{1, 2} {
		t.Run(fmt.Sprintf("qos%d", qos), func(t *testing.T) {
			b := mosquittotest.Start(t, mosquittotest.WithPersistence())
			sub := mosquittotest.Subscribe(t, b.URL(), prefix+"/#", qos)
			l := newMemLog(1)
			cfg := testConfig(t, b.URL())
			cfg.QoS = qos
			p, err := New(cfg, l)
			if err != nil {
				t.Fatal(err)
			}
			running(t, p)
			const total, batch = 3000, 50
			produced := make(chan struct{})
			go func() { // ~60 batches over >= 600ms: the outage happens mid-stream
				defer close(produced)
				for i := 0; i < total; i += batch {
					appendReadings(t, l, i, batch)
					time.Sleep(10 * time.Millisecond)
				}
			}()
			l.waitCount(t, long, 300)
			b.Stop()
			if n := l.ackedCount(); n >= total {
				t.Fatalf("all %d records acked before the outage; the test proves nothing", n)
			}
			time.Sleep(200 * time.Millisecond)
			b.Restart()
			<-produced
			l.waitAllAcked(t, long)
			seen := waitSeqs(t, sub, 1, total+1)
			dups := 0
			for _, n := range seen {
				if n > 1 {
					dups++
				}
			}
			st := p.Stats()
			t.Logf("qos %d: %d duplicates at the subscriber; stats %+v", qos, dups, st)
			if st.Reconnects == 0 {
				t.Error("no reconnect counted")
			}
			if st.Acked != total || st.InFlight != 0 {
				t.Errorf("stats %+v", st)
			}
		})
	}
}

// TestConnectionDrop kills the TCP connection under the publisher: the
// broker publishes the Will, the publisher reconnects with its session
// (paho re-sends what was in flight), republishes the online status and the
// state messages, and every record is delivered.
func TestConnectionDrop(t *testing.T) {
	b := mosquittotest.Start(t)
	sub := mosquittotest.Subscribe(t, b.URL(), prefix+"/#", 1)
	l := newMemLog(1)
	p, err := New(testConfig(t, b.URL()), l)
	if err != nil {
		t.Fatal(err)
	}
	p.PublishState(prefix+"/plc1/status", []byte(`{"state":"up"}`))
	running(t, p)
	if _, err := sub.WaitFor(long, statusMatch(true)); err != nil {
		t.Fatal(err)
	}
	if _, err := sub.WaitFor(long, func(m mosquittotest.Message) bool {
		return m.Topic == prefix+"/plc1/status" && string(m.Payload) == `{"state":"up"}` && m.Retain
	}); err != nil {
		t.Fatal(err)
	}
	first := appendReadings(t, l, 0, 1000)
	l.waitCount(t, long, 100)
	p.dropConnection()
	p.PublishState(prefix+"/plc1/status", []byte(`{"state":"down"}`))
	if _, err := sub.WaitFor(long, statusMatch(false)); err != nil {
		t.Fatalf("Will not delivered: %v", err)
	}
	l.waitAllAcked(t, long)
	waitSeqs(t, sub, first, first+1000)
	if _, err := sub.WaitFor(long, func(m mosquittotest.Message) bool {
		return m.Topic == prefix+"/plc1/status" && string(m.Payload) == `{"state":"down"}`
	}); err != nil {
		t.Fatal(err)
	}
	// Online again after the Will.
	msgs := sub.Messages()
	lastStatus := ""
	for _, m := range msgs {
		if m.Topic == prefix+"/status" {
			lastStatus = string(m.Payload)
		}
	}
	if !strings.Contains(lastStatus, `"online":true`) {
		t.Errorf("last status %s, want online after reconnect", lastStatus)
	}
	if st := p.Stats(); st.Reconnects != 1 || st.SessionLost != 0 {
		t.Errorf("stats %+v, want 1 reconnect with the session kept", st)
	}
}

func TestQoS2(t *testing.T) {
	b := mosquittotest.Start(t)
	sub := mosquittotest.Subscribe(t, b.URL(), prefix+"/#", 2)
	l := newMemLog(1)
	cfg := testConfig(t, b.URL())
	cfg.QoS = 2
	p, err := New(cfg, l)
	if err != nil {
		t.Fatal(err)
	}
	running(t, p)
	first := appendReadings(t, l, 0, 300)
	l.waitAllAcked(t, long)
	seen := waitSeqs(t, sub, first, first+300)
	for s, n := range seen {
		if n != 1 {
			t.Errorf("seq %d delivered %d times at QoS 2", s, n)
		}
	}
	for _, m := range sub.Messages() {
		if !strings.HasSuffix(m.Topic, "/status") && m.QoS != 2 {
			t.Fatalf("delivered at QoS %d", m.QoS)
		}
	}
}

func TestQoS0(t *testing.T) {
	b := mosquittotest.Start(t)
	sub := mosquittotest.Subscribe(t, b.URL(), prefix+"/#", 1)
	l := newMemLog(1)
	cfg := testConfig(t, b.URL())
	cfg.QoS = 0
	p, err := New(cfg, l)
	if err != nil {
		t.Fatal(err)
	}
	running(t, p)
	first := appendReadings(t, l, 0, 100)
	l.waitAllAcked(t, long)
	waitSeqs(t, sub, first, first+100) // no loss expected on a quiet loopback
}

// TestRefusedPublish: the broker denies one topic (PUBACK 0x87): that record
// is counted as failed and never acked, and the other topics keep flowing.
func TestRefusedPublish(t *testing.T) {
	b := mosquittotest.Start(t, mosquittotest.WithACL("topic readwrite #\ntopic deny "+prefix+"/denied/#\n"))
	sub := mosquittotest.Subscribe(t, b.URL(), prefix+"/#", 1)
	l := newMemLog(1)
	p, err := New(testConfig(t, b.URL()), l)
	if err != nil {
		t.Fatal(err)
	}
	first := appendReadings(t, l, 0, 20)
	denied, _ := l.Append(record.AppendReading(nil, prefix+"/denied/x", false, adapters.Reading{Value: adapters.IntValue(1), Time: ts0}))
	appendReadings(t, l, 20, 20)
	running(t, p)
	l.waitAcked(t, long, func(seq uint64) bool { return seq != denied })
	appendReadings(t, l, 40, 20) // still flowing while the denied record is retried
	l.waitAcked(t, long, func(seq uint64) bool { return seq != denied })
	waitSeqs(t, sub, first, denied)
	deadline := time.Now().Add(long)
	for p.Stats().Failed < 2 { // refused, retried, refused again
		if time.Now().After(deadline) {
			t.Fatalf("stats %+v, want Failed >= 2", p.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}
	if l.isAcked(denied) {
		t.Fatal("denied record acked")
	}
	if l.Acked() != denied {
		t.Errorf("log cursor %d, want it held at the denied seq %d", l.Acked(), denied)
	}
}

func TestNewValidates(t *testing.T) {
	l := newMemLog(1)
	bad := []Config{
		{URL: "mqtt://127.0.0.1:1", ClientID: ""},
		{URL: "http://127.0.0.1:1", ClientID: "x"},
		{URL: "mqtt://:1", ClientID: "x"},
		{URL: "mqtt://127.0.0.1:1", ClientID: "x", QoS: 3},
		{URL: "mqtt://127.0.0.1:1", ClientID: "x", StatusTopic: "a/#"},
	}
	for _, c := range bad {
		if _, err := New(c, l); err == nil {
			t.Errorf("New(%+v) succeeded", c)
		}
	}
	p, err := New(Config{URL: "mqtts://example.com", ClientID: "x"}, l)
	if err != nil {
		t.Fatal(err)
	}
	if p.ep.addr != "example.com:8883" || !p.ep.tls || p.cfg.MaxInflight != 256 {
		t.Errorf("defaults: %+v %+v", p.ep, p.cfg)
	}
}

func TestBackoff(t *testing.T) {
	for n := 1; n < 40; n++ {
		d := backoff(n, 100*time.Millisecond, 30*time.Second)
		if d < 50*time.Millisecond || d > 30*time.Second {
			t.Fatalf("backoff(%d) = %v", n, d)
		}
	}
	if d := backoff(30, time.Second, 4*time.Second); d < 2*time.Second {
		t.Fatalf("capped backoff %v below max/2", d)
	}
}
