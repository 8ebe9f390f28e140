package mosquittotest

import (
	"context"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// Publish sends one message at QoS 1 from a fresh client and waits for
// the PUBACK. props may be nil.
func Publish(t testing.TB, rawURL, topic string, payload []byte, props *paho.PublishProperties) {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatalf("mosquittotest: publish: %v", err)
	}
	conn, err := net.DialTimeout("tcp", u.Host, 10*time.Second)
	if err != nil {
		t.Fatalf("mosquittotest: publish: %v", err)
	}
	cli := paho.NewClient(paho.ClientConfig{ClientID: "mosquittotest-pub-" + time.Now().Format("150405.000000000"), Conn: conn})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Connect(ctx, &paho.Connect{KeepAlive: 30, CleanStart: true}); err != nil {
		t.Fatalf("mosquittotest: publish: connect: %v", err)
	}
	defer func() { _ = cli.Disconnect(&paho.Disconnect{}) }()
	if _, err := cli.Publish(ctx, &paho.Publish{Topic: topic, QoS: 1, Payload: payload, Properties: props}); err != nil {
		t.Fatalf("mosquittotest: publish %s: %v", topic, err)
	}
}
