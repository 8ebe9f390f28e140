package mosquittotest

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
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

// TestLaunch drives the TB-free broker the way cmd/ferry-bench does: a
// persistent broker logging only errors and warnings is stopped with
// SIGTERM and launched again on the same port, and a retained message
// survives the restart.
func TestLaunch(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "broker") // Launch creates it
	b, err := Launch(dir, WithPersistence(), WithLogTypes("error", "warning"))
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	conf, err := os.ReadFile(filepath.Join(dir, "mosquitto.conf"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"log_type error\nlog_type warning\n", "max_queued_messages 0\n",
		"persistence true\n", "persistence_location " + dir + "/\n", "autosave_interval 0\n"} {
		if !strings.Contains(string(conf), want) {
			t.Errorf("mosquitto.conf lacks %q:\n%s", want, conf)
		}
	}
	if strings.Contains(string(conf), "log_type all") {
		t.Errorf("mosquitto.conf logs all types:\n%s", conf)
	}
	if b.Port() == 1883 {
		t.Fatal("broker on the default MQTT port")
	}
	publish(t, b, "keep/1", "kept", true)

	if err := b.StopWith(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, "mosquitto.db")); err != nil {
		t.Fatalf("database not saved on SIGTERM: %v", err)
	}
	if c, err := net.DialTimeout("tcp", b.Addr(), time.Second); err == nil {
		c.Close()
		t.Fatal("broker still accepting after StopWith")
	}
	if err := b.StopWith(syscall.SIGTERM); err != nil { // stopped: no-op
		t.Fatal(err)
	}
	port := b.Port()
	if err := b.Relaunch(); err != nil {
		t.Fatal(err)
	}
	if b.Port() != port {
		t.Fatalf("port %d after Relaunch, was %d", b.Port(), port)
	}
	sub := Subscribe(t, b.URL(), "keep/#", 1)
	m, ok := sub.Next(10 * time.Second)
	if !ok || string(m.Payload) != "kept" || !m.Retain {
		t.Fatalf("retained message after relaunch: %+v, %v", m, ok)
	}
	sub.Close()
	if logs := b.Logs(); strings.Contains(logs, "New client connected") {
		t.Errorf("notices logged despite WithLogTypes:\n%s", logs)
	}

	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if c, err := net.DialTimeout("tcp", b.Addr(), time.Second); err == nil {
		c.Close()
		t.Fatal("broker still accepting after Close")
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := b.Relaunch(); err == nil {
		t.Fatal("Relaunch after Close succeeded")
	}
	if _, err := os.Stat(filepath.Join(dir, "mosquitto.db")); err != nil {
		t.Fatalf("Close removed the caller's dir: %v", err)
	}
}

func TestLaunchErrors(t *testing.T) {
	_, err := Launch(t.TempDir(), WithConfig("no_such_option 1"))
	if err == nil {
		t.Fatal("Launch with a bad config succeeded")
	}
	var exit *exec.ExitError
	if !errors.As(err, &exit) || !strings.Contains(err.Error(), "no_such_option") || !strings.Contains(err.Error(), "127.0.0.1:") {
		t.Fatalf("error does not wrap the exit, name the address and the bad line: %v", err)
	}
	t.Log(err)

	if _, err := Launch(t.TempDir(), WithPassword("u", "p")); err == nil || !strings.Contains(err.Error(), "WithTLS") {
		t.Fatalf("WithPassword without WithTLS: %v", err)
	}
}
