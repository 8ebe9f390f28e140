package mosquittotest

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// publish sends one QoS 1 message with a throwaway client.
func publish(t *testing.T, b *Broker, topic, payload string, retain bool) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", b.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	cli := paho.NewClient(paho.ClientConfig{ClientID: "pub", Conn: conn})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Connect(ctx, &paho.Connect{ClientID: "pub", CleanStart: true, KeepAlive: 30}); err != nil {
		t.Fatal(err)
	}
	if _, err := cli.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Retain: retain, Payload: []byte(payload),
		Properties: &paho.PublishProperties{User: paho.UserProperties{{Key: "k", Value: "v"}}}}); err != nil {
		t.Fatal(err)
	}
	_ = cli.Disconnect(&paho.Disconnect{})
	<-cli.Done()
}

func TestBrokerAndSubscriber(t *testing.T) {
	b := Start(t, WithPersistence())
	sub := Subscribe(t, b.URL(), "x/#", 1)
	publish(t, b, "x/1", "one", true)
	m, ok := sub.Next(10 * time.Second)
	if !ok {
		t.Fatal("no message")
	}
	if m.Topic != "x/1" || string(m.Payload) != "one" || !m.Retain || m.QoS != 1 || m.User["k"] != "v" {
		t.Fatalf("got %+v", m)
	}

	// The subscriber's session survives a restart of a persistent broker,
	// so a message published before it reconnects still arrives.
	b.Restart()
	publish(t, b, "x/2", "two", false)
	if _, err := sub.WaitFor(15*time.Second, func(m Message) bool { return m.Topic == "x/2" }); err != nil {
		t.Fatal(err)
	}

	b.Stop()
	b.Stop() // no-op
	if c, err := net.DialTimeout("tcp", b.Addr(), time.Second); err == nil {
		c.Close()
		t.Fatal("broker still accepting after Stop")
	}
	b.Restart()
	if _, err := sub.WaitN(2, time.Second); err != nil {
		t.Fatal(err)
	}
}

func TestACLDenies(t *testing.T) {
	b := Start(t, WithACL("topic readwrite #\ntopic deny denied/#\n"))
	conn, err := net.DialTimeout("tcp", b.Addr(), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	cli := paho.NewClient(paho.ClientConfig{ClientID: "acl", Conn: conn})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Connect(ctx, &paho.Connect{ClientID: "acl", CleanStart: true, KeepAlive: 30}); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cli.Disconnect(&paho.Disconnect{}); <-cli.Done() }()
	pr, err := cli.Publish(ctx, &paho.Publish{Topic: "denied/x", QoS: 1, Payload: []byte("no")})
	if pr == nil || pr.ReasonCode < 0x80 {
		t.Fatalf("denied publish: resp %+v err %v, want reason code >= 0x80", pr, err)
	}
	t.Logf("denied publish: reason %#02x, err %v", pr.ReasonCode, err)
	// mosquitto 2.0.11 closes the connection right after that PUBACK.
}
