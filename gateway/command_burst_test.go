package gateway

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/ferry-gateway/ferry/adapters/modbus/modbustest"
	"github.com/ferry-gateway/ferry/internal/mosquittotest"
)

// checkOneAnswerEach checks that every correlation id in want got exactly
// one answer and returns the number of ok answers.
func checkOneAnswerEach(t *testing.T, c *commander, want []string) (ok int) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	for k := range c.got {
		if strings.HasSuffix(k, "#dup") {
			t.Errorf("second answer to %s", strings.TrimSuffix(k, "#dup"))
		}
	}
	for _, corr := range want {
		r, found := c.got[corr]
		if !found {
			t.Errorf("no answer to %s", corr)
			continue
		}
		if parseResult(t, r.payload).OK {
			ok++
		}
	}
	return ok
}

// waitAnswers waits until c holds n answers or timeout passes.
func waitAnswers(c *commander, n int, timeout time.Duration) int {
	deadline := time.Now().Add(timeout)
	for {
		c.mu.Lock()
		got := len(c.got)
		c.mu.Unlock()
		if got >= n || time.Now().After(deadline) {
			return got
		}
		select {
		case <-c.ch:
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// 5,000 commands in a burst through mosquitto (issue 21): every one is
// answered exactly once, and the device was written exactly as often as
// the answers say ok. A command refused for load is refused before any
// device I/O (rate_limited).
func TestCommandBurstEveryCommandAnswered(t *testing.T) {
	broker := mosquittotest.Start(t, mosquittotest.WithConfig("set_tcp_nodelay true"), mosquittotest.WithLogTypes("error"))
	sim := modbustest.New(t)
	cfg := commandConfig(t, sim.URL(), "", "")
	writers := func() (map[string]TagWriter, []func(context.Context) error) {
		return map[string]TagWriter{"plc": startModbus(t, cfg)}, nil
	}
	e := startE2E(t, broker.URL(), t.TempDir(), writers, func() *commandRouterConfig { return &commandRouterConfig{cfg} })
	c := newCommander(t, broker.Addr())
	const n, senders = 5000, 16
	corrs := make([]string, n)
	for i := range corrs {
		corrs[i] = fmt.Sprint("b", i)
	}
	t0 := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, senders)
	for s := range senders {
		wg.Go(func() {
			for i := s; i < n; i += senders {
				ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				_, err := c.cli.Publish(ctx, &paho.Publish{Topic: "ferry/gw/plc/sp/set", QoS: 1, Payload: []byte(fmt.Sprint(i % 1000)),
					Properties: &paho.PublishProperties{ResponseTopic: "reply/" + corrs[i], CorrelationData: []byte(corrs[i])}})
				cancel()
				if err != nil {
					errs <- err
					return
				}
			}
		})
	}
	wg.Wait()
	sent := time.Since(t0)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	got := waitAnswers(c, n, 2*time.Minute)
	t.Logf("%d commands sent in %v; %d answers after %v", n, sent.Round(time.Millisecond), got, time.Since(t0).Round(time.Millisecond))
	ok := checkOneAnswerEach(t, c, corrs)
	if w := len(sim.Writes()); w != ok {
		t.Errorf("%d device writes, %d ok answers: every write is answered ok and nothing else is written", w, ok)
	}
	st := e.router.Stats()
	if st.Dropped != 0 || st.Failed != 0 {
		t.Errorf("stats: %d answers dropped, %d failed", st.Dropped, st.Failed)
	}
	t.Logf("results: %v", st.Results)
}

// gatedMQ is a fakeMQ whose Respond waits until open is closed: answers
// back up as they do when the broker is slow.
type gatedMQ struct {
	*fakeMQ
	open chan struct{}
}

func (g *gatedMQ) Respond(ctx context.Context, topic string, payload, corr []byte) error {
	select {
	case <-g.open:
	case <-ctx.Done():
		return ctx.Err()
	}
	return g.fakeMQ.Respond(ctx, topic, payload, corr)
}

// More commands than the result queue holds while no answer can be
// published: none is dropped. The router refuses for load before device
// I/O and holds the sender back (MQTT flow control) instead of dropping;
// every accepted command is answered, and writes equal ok answers.
func TestCommandResultQueueFullNoneDropped(t *testing.T) {
	sim := modbustest.New(t)
	cfg := commandConfig(t, sim.URL(), "", "")
	mq := &gatedMQ{fakeMQ: newFakeMQ(), open: make(chan struct{})}
	r := newCommandRouter(cfg, mq, map[string]TagWriter{"plc": startModbus(t, cfg)}, nil)
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	n := resultQueueLen + 500
	sent := make(chan struct{})
	go func() {
		defer close(sent)
		for i := range n {
			m := msg("ferry/gw/plc/sp/set", fmt.Sprint(i%1000))
			m.CorrelationData = []byte(fmt.Sprint(i))
			mq.h(m)
		}
	}()
	// Hold the answers back until the sender is done or every result
	// slot is taken (the sender then waits for one).
	for full := false; !full; {
		select {
		case <-sent:
			full = true
		case <-time.After(10 * time.Millisecond):
			full = len(r.slots) == cap(r.slots)
		}
	}
	close(mq.open)
	<-sent
	res := mq.waitN(t, n, time.Minute)
	seen := map[string]int{}
	ok := 0
	notOK := map[string]string{} // an answer of each code other than ok, for the failure message
	for _, fr := range res {
		seen[string(fr.correlation)]++
		if r := parseResult(t, fr.payload); r.OK {
			ok++
		} else {
			notOK[r.Error] = string(fr.payload)
		}
	}
	if len(res) != n || len(seen) != n {
		t.Errorf("%d answers for %d distinct commands, want %d each once", len(res), len(seen), n)
	}
	if w := len(sim.Writes()); w != ok {
		t.Errorf("%d device writes, %d ok answers; other answers: %v", w, ok, notOK)
	}
	if st := r.Stats(); st.Dropped != 0 {
		t.Errorf("%d answers dropped", st.Dropped)
	}
}
