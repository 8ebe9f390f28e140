package mosquittotest

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/eclipse/paho.golang/paho/session/state"
)

// Message is one PUBLISH received by a Subscription.
type Message struct {
	Topic   string
	Payload []byte
	Retain  bool // as published (the subscription uses Retain As Published)
	QoS     byte
	User    map[string]string // MQTT 5 user properties
}

// Subscription is a test subscriber. It keeps its session across broker
// restarts (Session Expiry 300 s; Clean Start only on its first connection)
// and reconnects and resubscribes by itself until the test ends.
type Subscription struct {
	t      testing.TB
	topic  string
	qos    byte
	addr   string
	id     string
	sess   *state.State
	cancel context.CancelFunc
	done   chan struct{}

	mu     sync.Mutex
	msgs   []Message
	next   int           // Next's cursor
	notify chan struct{} // closed and replaced on every message
}

var subSeq atomic.Uint64

// Subscribe connects to url (mqtt://host:port), subscribes to topic at qos
// and returns once the subscription is acknowledged. It is closed when the
// test ends.
func Subscribe(t testing.TB, rawURL, topic string, qos byte) *Subscription {
	t.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		t.Fatalf("subscribe: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Subscription{
		t: t, topic: topic, qos: qos, addr: u.Host,
		id:     fmt.Sprintf("mosquittotest-sub-%d-%d", time.Now().UnixNano()%1e6, subSeq.Add(1)),
		sess:   state.NewInMemory(),
		cancel: cancel,
		done:   make(chan struct{}),
		notify: make(chan struct{}),
	}
	ready := make(chan error, 1)
	go s.run(ctx, ready)
	t.Cleanup(s.Close)
	select {
	case err := <-ready:
		if err != nil {
			t.Fatalf("subscribe %q: %v", topic, err)
		}
	case <-time.After(StartTimeout):
		t.Fatalf("subscribe %q: not subscribed within %v", topic, StartTimeout)
	}
	return s
}

// Close disconnects the subscriber. Received messages stay readable.
func (s *Subscription) Close() {
	s.cancel()
	<-s.done
}

func (s *Subscription) run(ctx context.Context, ready chan<- error) {
	defer close(s.done)
	first := true
	for ctx.Err() == nil {
		cli, err := s.connect(ctx, first)
		if err != nil {
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		first = false
		if ready != nil {
			ready <- nil
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

func (s *Subscription) connect(ctx context.Context, _ bool) (*paho.Client, error) {
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
	expiry := uint32(300)
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := cli.Connect(cctx, &paho.Connect{
		ClientID:   s.id,
		KeepAlive:  30,
		CleanStart: false, // mosquitto persists only sessions whose connection had Clean Start = 0; the client id is fresh anyway
		Properties: &paho.ConnectProperties{SessionExpiryInterval: &expiry},
	}); err != nil {
		return nil, err
	}
	sa, err := cli.Subscribe(cctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{
		{Topic: s.topic, QoS: s.qos, RetainAsPublished: true},
	}})
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

func (s *Subscription) received(pr paho.PublishReceived) (bool, error) {
	p := pr.Packet
	m := Message{Topic: p.Topic, Payload: append([]byte(nil), p.Payload...), Retain: p.Retain, QoS: p.QoS}
	if p.Properties != nil && len(p.Properties.User) > 0 {
		m.User = make(map[string]string, len(p.Properties.User))
		for _, up := range p.Properties.User {
			m.User[up.Key] = up.Value
		}
	}
	s.mu.Lock()
	s.msgs = append(s.msgs, m)
	close(s.notify)
	s.notify = make(chan struct{})
	s.mu.Unlock()
	return true, nil
}

// Messages returns a copy of everything received so far.
func (s *Subscription) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.msgs...)
}

// Next returns the next message not yet returned by Next, waiting up to
// timeout for it.
func (s *Subscription) Next(timeout time.Duration) (Message, bool) {
	deadline := time.After(timeout)
	for {
		s.mu.Lock()
		if s.next < len(s.msgs) {
			m := s.msgs[s.next]
			s.next++
			s.mu.Unlock()
			return m, true
		}
		ch := s.notify
		s.mu.Unlock()
		select {
		case <-ch:
		case <-deadline:
			return Message{}, false
		}
	}
}

// WaitN waits up to timeout until at least n messages have been received in
// total and returns all of them; the error says how many arrived otherwise.
func (s *Subscription) WaitN(n int, timeout time.Duration) ([]Message, error) {
	var got int
	_, err := s.wait(timeout, func(msgs []Message) bool { got = len(msgs); return got >= n })
	if err != nil {
		return s.Messages(), fmt.Errorf("received %d of %d messages on %q within %v", got, n, s.topic, timeout)
	}
	return s.Messages(), nil
}

// WaitFor waits up to timeout for a received message (any, from the first)
// satisfying match and returns the first such.
func (s *Subscription) WaitFor(timeout time.Duration, match func(Message) bool) (Message, error) {
	var found Message
	from := 0
	_, err := s.wait(timeout, func(msgs []Message) bool {
		for ; from < len(msgs); from++ {
			if match(msgs[from]) {
				found = msgs[from]
				return true
			}
		}
		return false
	})
	if err != nil {
		return Message{}, fmt.Errorf("no matching message on %q within %v (%d received)", s.topic, timeout, from)
	}
	return found, nil
}

func (s *Subscription) wait(timeout time.Duration, done func([]Message) bool) (bool, error) {
	deadline := time.After(timeout)
	for {
		s.mu.Lock()
		ok := done(s.msgs)
		ch := s.notify
		s.mu.Unlock()
		if ok {
			return true, nil
		}
		select {
		case <-ch:
		case <-deadline:
			return false, fmt.Errorf("timeout")
		}
	}
}
