package gateway

import (
	"context"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/ferry-gateway/ferry/adapters/modbus/modbustest"
	"github.com/ferry-gateway/ferry/internal/mosquittotest"
)

// A command published with the retain flag (issue 14): ferry refuses it
// with expired, never writes the device, and deletes the retained message
// so that no later subscriber acts on it.
func TestCommandRetainedRefusedAndCleared(t *testing.T) {
	broker := mosquittotest.Start(t)
	sim := modbustest.New(t)
	cfg := commandConfig(t, sim.URL(), "", "")
	writers := func() (map[string]TagWriter, []func(context.Context) error) {
		return map[string]TagWriter{"plc": startModbus(t, cfg)}, nil
	}
	e := startE2E(t, broker.URL(), t.TempDir(), writers, func() *commandRouterConfig { return &commandRouterConfig{cfg} })
	c := newCommander(t, broker.Addr())
	const topic = "ferry/gw/plc/sp/set"
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := c.cli.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Retain: true, Payload: []byte("100"),
		Properties: &paho.PublishProperties{ResponseTopic: "reply/ret", CorrelationData: []byte("ret"),
			User: paho.UserProperties{{Key: "operator", Value: "test"}}}}); err != nil {
		t.Fatal(err)
	}
	got := parseResult(t, c.wait(t, "ret", 10*time.Second).payload)
	if got.OK || got.Error != CodeExpired {
		t.Fatalf("retained command answered %+v, want expired", got)
	}
	// A live command afterwards is carried out: the refusal is about the
	// retain flag, not the topic.
	c.send(t, topic, "7", "live", 0)
	if got := parseResult(t, c.wait(t, "live", 10*time.Second).payload); !got.OK {
		t.Fatalf("live command after the retained one: %+v", got)
	}
	if ws := sim.Writes(); len(ws) != 1 || ws[0].Regs[0] != 7 {
		t.Fatalf("device writes %+v: the retained command must never reach the device", ws)
	}
	// The answer went out after the deletion: a new subscriber gets no
	// retained message. A marker published after its SUBACK comes after
	// any retained message the broker would send on subscribing.
	sub := mosquittotest.Subscribe(t, broker.URL(), topic, 1)
	pctx, pcancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer pcancel()
	if _, err := c.cli.Publish(pctx, &paho.Publish{Topic: topic, QoS: 1, Payload: []byte(`"marker"`)}); err != nil {
		t.Fatal(err)
	}
	if _, err := sub.WaitFor(10*time.Second, func(m mosquittotest.Message) bool { return string(m.Payload) == `"marker"` }); err != nil {
		t.Fatal(err)
	}
	for _, m := range sub.Messages() {
		if m.Retain {
			t.Errorf("a new subscriber received the retained command %q", m.Payload)
		}
	}
	st := e.router.Stats()
	if st.Retained != 1 || st.ClearFailed != 0 {
		t.Errorf("stats: retained %d, clear failed %d; want 1, 0", st.Retained, st.ClearFailed)
	}
}

// The router refuses every retained message and asks for its deletion
// (an empty retained message is already a deletion: nothing to clear).
func TestCommandRetainedUnit(t *testing.T) {
	sim := modbustest.New(t)
	cfg := commandConfig(t, sim.URL(), "", "")
	mq := newFakeMQ()
	r := newCommandRouter(cfg, mq, map[string]TagWriter{"plc": startModbus(t, cfg)}, nil)
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	for _, p := range []string{"5", `{"value":5}`, ""} {
		m := msg("ferry/gw/plc/sp/set", p)
		m.Retain = true
		mq.h(m)
	}
	res := mq.waitN(t, 3, 10*time.Second)
	for _, fr := range res {
		if got := parseResult(t, fr.payload); got.Error != CodeExpired {
			t.Errorf("retained command answered %+v", got)
		}
	}
	mq.mu.Lock()
	cleared := append([]string(nil), mq.cleared...)
	mq.mu.Unlock()
	if len(cleared) != 2 || cleared[0] != "ferry/gw/plc/sp/set" {
		t.Errorf("cleared %q, want the topic twice", cleared)
	}
	if n := len(sim.Writes()); n != 0 {
		t.Errorf("%d device writes", n)
	}
}
