package main

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/eclipse/paho.golang/paho/session/state"
)

// baselineWorkers is how many goroutines publish at once, as ferry's
// default max_inflight (256); the broker's Receive Maximum (20 for
// mosquitto's default) bounds the window of both clients.
const baselineWorkers = 256

// baseline publishes size-byte messages at the bench QoS from one plain
// paho client (on a *net.TCPConn) straight into a fresh broker of the
// compared row's config, and counts them at the same kind of subscriber as
// the ferry rows.
func (b *bench) baseline(spec baselineSpec) (r result) {
	size := spec.size
	r = result{Scenario: fmt.Sprintf("baseline-%dB", size), Source: "paho", QoS: b.opts.QoS}
	how := "padded tag-mode payloads"
	if spec.sample != nil {
		how = "payloads copied from ferry's"
	}
	r.Notes = how
	b.logf("%s: plain paho client, %d-byte messages (%s), QoS %d", r.Scenario, size, how, b.opts.QoS)
	payload := func(seq uint64, ts time.Time) []byte { return baselinePayload(seq, ts, size) }
	if spec.sample != nil {
		payload = samplePayloads(spec.sample)
	}
	dir := b.dir(r.Scenario)
	br, err := startBroker(filepath.Join(dir, "broker"), spec.persistence)
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer br.Close()
	sub, err := startSubscriber(br.Addr(), "base/#", byte(b.opts.QoS))
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer sub.close()
	conn, err := net.Dial("tcp", br.Addr())
	if err != nil {
		r.Error = err.Error()
		return r
	}
	cli := paho.NewClient(paho.ClientConfig{ClientID: "ferry-bench-baseline", Conn: conn, Session: state.NewInMemory(), PacketTimeout: 30 * time.Second})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := cli.Connect(ctx, &paho.Connect{ClientID: "ferry-bench-baseline", KeepAlive: 30, CleanStart: true}); err != nil {
		r.Error = "baseline connect: " + err.Error()
		return r
	}
	defer func() { _ = cli.Disconnect(&paho.Disconnect{}); <-cli.Done() }()

	var seq atomic.Uint64
	var pubErrs atomic.Int64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range baselineWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			topic := fmt.Sprintf("base/dev%02d/t%03d", w%20, w)
			for {
				select {
				case <-stop:
					return
				default:
				}
				s := seq.Add(1)
				_, err := cli.Publish(ctx, &paho.Publish{Topic: topic, QoS: byte(b.opts.QoS), Payload: payload(s, time.Now())})
				if err != nil {
					pubErrs.Add(1)
					if ctx.Err() != nil {
						return
					}
				}
			}
		}()
	}
	time.Sleep(b.pick(time.Second, 500*time.Millisecond)) // ramp up
	window := b.pick(10*time.Second, 2*time.Second)
	c0 := sub.snapshot()
	sub.setRecordLatency(true)
	time.Sleep(window)
	c1 := sub.snapshot()
	sub.setRecordLatency(false)
	close(stop)
	wg.Wait()
	sub.quiesce(b.quiet(), 15*time.Second)
	w := c1.at.Sub(c0.at).Seconds()
	r.WindowS = w
	r.MsgsPerS = float64(c1.msgs-c0.msgs) / w
	r.ReadingsPerS = float64(c1.readings-c0.readings) / w
	if c1.msgs > c0.msgs {
		r.AvgMsgBytes = float64(c1.bytes-c0.bytes) / float64(c1.msgs-c0.msgs)
	}
	r.Latency = summarize(sub.latencies())
	sub.mu.Lock()
	r.Messages, r.Lost, r.Dups = sub.seqs.distinct, int64(seq.Load())-sub.seqs.distinct, sub.seqs.dups
	sub.mu.Unlock()
	if n := pubErrs.Load(); n > 0 {
		r.Notes += fmt.Sprintf("; %d publish errors", n)
		r.Lost -= n // never acknowledged, so not owed
	}
	return r
}

// samplePayloads returns a generator of payloads like sample (one ferry
// delivered) with a fresh ts and seq; for a sample without a ts before its
// seq, padded tag-mode payloads of its size.
func samplePayloads(sample []byte) func(seq uint64, ts time.Time) []byte {
	p, _, err := parsePayload(sample, false)
	if err != nil || p.tsAt[1] == 0 || p.seqAt[0] < p.tsAt[1] {
		return func(seq uint64, ts time.Time) []byte { return baselinePayload(seq, ts, len(sample)) }
	}
	head, mid, tail := sample[:p.tsAt[0]], sample[p.tsAt[1]:p.seqAt[0]], sample[p.seqAt[1]:]
	return func(seq uint64, ts time.Time) []byte {
		out := make([]byte, 0, len(sample)+8)
		out = append(out, head...)
		out = append(out, '"')
		out = ts.UTC().AppendFormat(out, "2006-01-02T15:04:05.000Z")
		out = append(out, '"')
		out = append(out, mid...)
		out = strconv.AppendUint(out, seq, 10)
		return append(out, tail...)
	}
}

// baselinePayload is a tag-mode-like payload padded to size bytes.
func baselinePayload(seq uint64, ts time.Time, size int) []byte {
	body := fmt.Sprintf(`{"value":%d,"quality":"good","ts":%q,"seq":%d`, seq, ts.UTC().Format("2006-01-02T15:04:05.000Z"), seq)
	const padKey = `,"pad":""}`
	if size < len(body)+len(padKey) {
		return []byte(body + "}")
	}
	return []byte(body + `,"pad":"` + strings.Repeat("x", size-len(body)-len(padKey)) + `"}`)
}
