package mqtt

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/buffer"
	"github.com/ferry-gateway/ferry/gateway/record"
	"github.com/ferry-gateway/ferry/internal/mosquittotest"
)

const (
	benchN      = 20000
	benchWindow = 256
)

// BenchmarkVsPaho publishes benchN readings through the real disk buffer
// and the publisher (persistent session store) to mosquitto, and in the
// same run benchN messages of the same size, topic and QoS with a plain
// paho client (in-memory session) using benchWindow goroutines each
// calling the blocking Publish: the usual way to keep a window in flight.
// It reports both rates and ferry's share of the plain client's rate, for
// a tag-mode-sized message and one the size of a 100-tag device message
// (a backlog drain in device mode).
//
//	go test -run '^$' -bench VsPaho -benchtime 3x ./gateway/mqtt
func BenchmarkVsPaho(b *testing.B) {
	for _, qos := range []byte{1, 2} {
		for _, size := range []int{200, 7000} {
			b.Run(fmt.Sprintf("qos%d/%dB", qos, size), func(b *testing.B) {
				benchVsPaho(b, qos, size)
			})
		}
	}
}

func benchVsPaho(b *testing.B, qos byte, size int) {
	// Receive Maximum = the window for both clients.
	br := mosquittotest.Start(b, mosquittotest.WithConfig(fmt.Sprintf("max_inflight_messages %d", benchWindow)))
	topic, rec, payload := benchMessage(size)
	var ferryT, pahoT time.Duration
	for b.Loop() {
		ferryT += benchFerry(b, br.URL(), qos, rec)
		pahoT += benchPaho(b, br.Addr(), qos, topic, payload)
	}
	n := float64(benchN * b.N)
	f, p := n/ferryT.Seconds(), n/pahoT.Seconds()
	b.ReportMetric(f, "ferry_msgs/s")
	b.ReportMetric(p, "paho_msgs/s")
	b.ReportMetric(f/p, "ratio")
	b.ReportMetric(0, "ns/op")
}

// benchMessage returns a reading's topic, its buffer record and the
// payload the publisher makes of it (about size bytes).
func benchMessage(size int) (string, []byte, []byte) {
	topic := prefix + "/plc1/temperature"
	r := adapters.Reading{Value: adapters.StringValue(strings.Repeat("x", max(0, size-80))), Quality: adapters.Good, Time: ts0}
	rec := record.AppendReading(nil, topic, false, r)
	m, _ := record.Decode(rec)
	return topic, rec, m.AppendPayload(nil, 1234567)
}

func benchFerry(b *testing.B, url string, qos byte, rec []byte) time.Duration {
	l, err := buffer.Open(b.TempDir(), buffer.Options{Sync: buffer.SyncBatch})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	p, err := New(Config{
		URL: url, ClientID: fmt.Sprintf("bench-ferry-%d", time.Now().UnixNano()), QoS: qos, MaxInflight: benchWindow,
		SessionDir: b.TempDir(), Logger: slog.New(slog.DiscardHandler),
	}, l)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	for !p.Connected() {
		time.Sleep(time.Millisecond)
	}
	recs := make([][]byte, 100)
	for i := range recs {
		recs[i] = rec
	}
	start := time.Now()
	for i := 0; i < benchN; i += len(recs) {
		if _, err := l.Append(recs...); err != nil {
			b.Fatal(err)
		}
	}
	for l.Acked() < l.NextSeq() {
		time.Sleep(200 * time.Microsecond)
	}
	d := time.Since(start)
	cancel()
	if err := <-done; err != nil {
		b.Fatal(err)
	}
	return d
}

func benchPaho(b *testing.B, addr string, qos byte, topic string, payload []byte) time.Duration {
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		b.Fatal(err)
	}
	cli := paho.NewClient(paho.ClientConfig{Conn: conn})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := cli.Connect(ctx, &paho.Connect{ClientID: fmt.Sprintf("bench-paho-%d", time.Now().UnixNano()), CleanStart: true, KeepAlive: 30}); err != nil {
		b.Fatal(err)
	}
	var left atomic.Int64
	left.Store(benchN)
	var wg sync.WaitGroup
	start := time.Now()
	for range benchWindow {
		wg.Go(func() {
			for left.Add(-1) >= 0 {
				if _, err := cli.Publish(ctx, &paho.Publish{Topic: topic, QoS: qos, Payload: payload}); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	d := time.Since(start)
	_ = cli.Disconnect(&paho.Disconnect{})
	<-cli.Done()
	return d
}
