package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/eclipse/paho.golang/paho/session/state"
)

// subscriber counts what ferry delivers: a paho client on a plain
// net.Conn, QoS qos, with a persistent session (Clean Start false, Session
// Expiry 1 h) that reconnects and resumes after a broker restart.
type subscriber struct {
	addr, topic, id string
	qos             byte
	sess            *state.State
	cancel          context.CancelFunc
	done            chan struct{}
	connects        atomic.Int64

	mu         sync.Mutex
	msgs       int64 // telemetry messages (with seq), repeats included
	readings   int64
	bad        int64
	bytes      int64
	other      int64 // status messages and the like
	parseErrs  int64
	seqs       seqTracker
	lastMsg    time.Time
	recordLat  bool
	lat        []float64 // ms, sample ts to receipt (per message)
	wantTags   int       // count distinct tag names until this many are seen
	tags       map[string]struct{}
	allTagsAt  time.Time
	afterMark  bool      // set by markRestart: track replay progress from here
	markAt     time.Time // when marked
	firstAfter time.Time // first telemetry message after the mark
	replayMsgs int64     // replay=true messages after the mark
	replayRds  int64
	lastReplay time.Time
	liveAfter  bool // a non-replay message arrived after a replay one (after the mark)
	sampledIn  [2]time.Time
	sampledRds int64  // readings with sample ts inside sampledIn (outage window)
	sample     []byte // the first telemetry payload (for the baseline)
}

func startSubscriber(addr, topic string, qos byte) (*subscriber, error) {
	ctx, cancel := context.WithCancel(context.Background())
	s := &subscriber{
		addr: addr, topic: topic, qos: qos,
		id:     fmt.Sprintf("ferry-bench-sub-%d", time.Now().UnixNano()),
		sess:   state.NewInMemory(),
		cancel: cancel,
		done:   make(chan struct{}),
	}
	ready := make(chan struct{})
	go s.run(ctx, ready)
	select {
	case <-ready:
		return s, nil
	case <-time.After(15 * time.Second):
		s.close()
		return nil, fmt.Errorf("subscriber: not subscribed to %s within 15s", addr)
	}
}

func (s *subscriber) close() {
	s.cancel()
	<-s.done
}

func (s *subscriber) run(ctx context.Context, ready chan struct{}) {
	defer close(s.done)
	for ctx.Err() == nil {
		cli, err := s.connect(ctx)
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		s.connects.Add(1)
		if ready != nil {
			close(ready)
			ready = nil
		}
		select {
		case <-cli.Done():
		case <-ctx.Done():
			_ = cli.Disconnect(&paho.Disconnect{ReasonCode: 0})
			<-cli.Done()
		}
	}
}

func (s *subscriber) connect(ctx context.Context) (*paho.Client, error) {
	conn, err := (&net.Dialer{Timeout: 5 * time.Second}).DialContext(ctx, "tcp", s.addr)
	if err != nil {
		return nil, err
	}
	cli := paho.NewClient(paho.ClientConfig{
		ClientID:          s.id,
		Conn:              conn,
		Session:           s.sess,
		PacketTimeout:     10 * time.Second,
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){s.received},
	})
	expiry := uint32(3600)
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	ca, err := cli.Connect(cctx, &paho.Connect{
		ClientID:   s.id,
		KeepAlive:  30,
		CleanStart: false, // mosquitto persists only sessions created with Clean Start = 0; the id is fresh anyway
		Properties: &paho.ConnectProperties{SessionExpiryInterval: &expiry},
	})
	if err != nil {
		return nil, err
	}
	if ca.SessionPresent && s.connects.Load() > 0 {
		return cli, nil // the broker kept the subscription
	}
	sa, err := cli.Subscribe(cctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: s.topic, QoS: s.qos}}})
	if err == nil && len(sa.Reasons) == 1 && sa.Reasons[0] >= 0x80 {
		err = fmt.Errorf("SUBACK reason code %#02x", sa.Reasons[0])
	}
	if err != nil {
		_ = cli.Disconnect(&paho.Disconnect{})
		<-cli.Done()
		return nil, err
	}
	return cli, nil
}

func (s *subscriber) received(pr paho.PublishReceived) (bool, error) {
	now := time.Now()
	pk := pr.Packet
	if strings.HasSuffix(pk.Topic, "/status") {
		s.mu.Lock()
		s.other++
		s.mu.Unlock()
		return true, nil
	}
	s.mu.Lock()
	withTags := s.wantTags > 0 && s.allTagsAt.IsZero()
	s.mu.Unlock()
	p, device, err := parsePayload(pk.Payload, withTags)
	replay := pk.Properties != nil && pk.Properties.User.Get("replay") == "true"

	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.parseErrs++
		return true, nil
	}
	s.lastMsg = now
	if s.sample == nil && p.tsAt[1] > 0 {
		s.sample = bytes.Clone(pk.Payload)
	}
	s.msgs++
	s.bytes += int64(len(pk.Payload))
	if s.seqs.add(p.Seq) {
		return true, nil // a redelivery: count readings once
	}
	s.readings += int64(p.Readings)
	s.bad += int64(p.Bad)
	if s.recordLat && !p.TS.IsZero() {
		s.lat = append(s.lat, float64(now.Sub(p.TS).Microseconds())/1000)
	}
	if withTags && s.tags != nil {
		if device {
			for _, t := range p.Tags {
				s.tags[t] = struct{}{}
			}
		} else {
			s.tags[pk.Topic] = struct{}{}
		}
		if len(s.tags) >= s.wantTags {
			s.allTagsAt = now
		}
	}
	if !s.sampledIn[0].IsZero() && !p.TS.Before(s.sampledIn[0]) && p.TS.Before(s.sampledIn[1]) {
		s.sampledRds += int64(p.Readings)
	}
	if s.afterMark {
		if s.firstAfter.IsZero() {
			s.firstAfter = now
		}
		if replay {
			s.replayMsgs++
			s.replayRds += int64(p.Readings)
			s.lastReplay = now
		} else if s.replayMsgs > 0 {
			s.liveAfter = true
		}
	}
	return true, nil
}

// counters is a snapshot of the running totals.
type counters struct {
	at       time.Time
	msgs     int64
	readings int64
	bytes    int64
}

func (s *subscriber) snapshot() counters {
	s.mu.Lock()
	defer s.mu.Unlock()
	return counters{at: time.Now(), msgs: s.msgs, readings: s.readings, bytes: s.bytes}
}

func (s *subscriber) setRecordLatency(on bool) {
	s.mu.Lock()
	s.recordLat = on
	s.mu.Unlock()
}

func (s *subscriber) latencies() []float64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]float64(nil), s.lat...)
}

// waitFor polls cond (under the lock) every 20 ms until it holds or
// timeout passes.
func (s *subscriber) waitFor(timeout time.Duration, cond func(s *subscriber) bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		s.mu.Lock()
		ok := cond(s)
		s.mu.Unlock()
		if ok {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// quiesce waits until nothing has arrived for idle (at most max).
func (s *subscriber) quiesce(idle, max time.Duration) {
	deadline := time.Now().Add(max)
	for time.Now().Before(deadline) {
		s.mu.Lock()
		last := s.lastMsg
		s.mu.Unlock()
		if time.Since(last) >= idle {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}
