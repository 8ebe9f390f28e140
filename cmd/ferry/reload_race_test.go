package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/ferry-gateway/ferry/adapters/modbus/modbustest"
	"github.com/ferry-gateway/ferry/internal/mosquittotest"
)

// TestReloadUnderCommands is issue 21's reload crash through the binary:
// commands at 200/s to a writable tag while SIGHUP reloads the config
// every 0.3 s. ferry used to die with "panic: send on closed channel"
// after about two reloads. Now it keeps running, and every command gets
// exactly one answer, ok (the reloaded file is the same, so the device
// is kept and its queued commands survive). A few seconds in the ordinary
// suite; FERRY_RELOAD_SOAK=1 runs the minute.
func TestReloadUnderCommands(t *testing.T) {
	soak := 6 * time.Second
	if os.Getenv("FERRY_RELOAD_SOAK") == "1" {
		soak = time.Minute
	}
	broker := mosquittotest.Start(t, mosquittotest.WithConfig("set_tcp_nodelay true"), mosquittotest.WithLogTypes("error"))
	sim := modbustest.New(t)
	path := writeConfig(t, opsConfig(t.TempDir(), broker.URL(), sim.URL(), "", "ro=1")+`
  [[modbus.tag]]
  name = "sp"
  table = "holding"
  address = 0
  type = "uint16"
  writable = true
`)
	p := startFerry(t, "run", "-config", path)
	waitFor(t, "ferry's command subscription", 30*time.Second, func() bool {
		out := p.stderr.String()
		return strings.Contains(out, "accepting commands") && strings.Contains(out, "msg=subscribed")
	})

	var mu sync.Mutex
	answers := map[string][]string{} // correlation -> result payloads
	conn, err := net.Dial("tcp", broker.Addr())
	if err != nil {
		t.Fatal(err)
	}
	cli := paho.NewClient(paho.ClientConfig{Conn: conn, OnPublishReceived: []func(paho.PublishReceived) (bool, error){
		func(pr paho.PublishReceived) (bool, error) {
			if pr.Packet.Properties != nil {
				mu.Lock()
				k := string(pr.Packet.Properties.CorrelationData)
				answers[k] = append(answers[k], string(pr.Packet.Payload))
				mu.Unlock()
			}
			return true, nil
		}}})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Connect(ctx, &paho.Connect{ClientID: "reload-race", CleanStart: true, KeepAlive: 30}); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cli.Disconnect(&paho.Disconnect{}); <-cli.Done() }()
	if _, err := cli.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: "replies/#", QoS: 1}}}); err != nil {
		t.Fatal(err)
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	hups := 0
	wg.Go(func() {
		tick := time.NewTicker(300 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			if p.cmd.Process.Signal(syscall.SIGHUP) != nil {
				return
			}
			hups++
		}
	})
	var corrs []string
	tick := time.NewTicker(5 * time.Millisecond)
	end := time.Now().Add(soak)
	for i := 0; time.Now().Before(end); i++ {
		<-tick.C
		corr := fmt.Sprint("r", i)
		corrs = append(corrs, corr)
		pctx, pcancel := context.WithTimeout(context.Background(), 10*time.Second)
		_, err := cli.Publish(pctx, &paho.Publish{Topic: "plant/ops/plc1/sp/set", QoS: 1, Payload: []byte(fmt.Sprint(i % 1000)),
			Properties: &paho.PublishProperties{ResponseTopic: "replies/" + corr, CorrelationData: []byte(corr)}})
		pcancel()
		if err != nil {
			t.Fatalf("command %d: %v", i, err)
		}
	}
	tick.Stop()
	close(stop)
	wg.Wait()
	exited := func() error {
		select {
		case err := <-p.done:
			p.done <- err // for stop and the cleanup
			return fmt.Errorf("ferry ended: %v", err)
		default:
			return nil
		}
	}
	waitFor(t, "an answer to every command", time.Minute, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(answers) >= len(corrs) || exited() != nil
	})
	if err := exited(); err != nil {
		t.Fatalf("during the reloads: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	bad := 0
	for _, corr := range corrs {
		a := answers[corr]
		var r struct{ OK bool }
		if len(a) != 1 || json.Unmarshal([]byte(a[0]), &r) != nil || !r.OK {
			if bad++; bad <= 5 {
				t.Errorf("command %s: answers %q, want one ok", corr, a)
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d of %d commands without exactly one ok answer", bad, len(corrs))
	}
	if w := len(sim.Writes()); w != len(corrs) {
		t.Errorf("%d device writes for %d commands", w, len(corrs))
	}
	t.Logf("%d commands, %d SIGHUPs, %d reloads logged", len(corrs), hups, strings.Count(p.stderr.String(), "reload: config applied"))
	if code := p.stop(t); code != 0 {
		t.Errorf("exit %d", code)
	}
}
