package mqtt

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/gateway/record"
)

// stateSet holds the retained state messages (status and PublishState):
// the latest payload per topic and what was published on which
// connection. It has its own lock, never held across I/O; stateLoop and
// publishOffline do the publishing.
type stateSet struct {
	mu      sync.Mutex
	entries map[string]*stateEntry
	keys    []string      // insertion order; status first
	bell    chan struct{} // rung on every change (capacity 1)
}

type stateEntry struct {
	payload     []byte
	version     uint64
	sentVersion uint64
	sentConn    uint64 // connSeq it was last published on
}

// stateMsg is a state message to publish: version of topic's payload.
type stateMsg struct {
	topic   string
	payload []byte
	version uint64
}

func newStateSet() *stateSet {
	return &stateSet{entries: map[string]*stateEntry{}, bell: make(chan struct{}, 1)}
}

// set makes payload the state of topic and rings the bell.
func (s *stateSet) set(topic string, payload []byte) {
	s.mu.Lock()
	e := s.entries[topic]
	if e == nil {
		e = &stateEntry{}
		s.entries[topic] = e
		s.keys = append(s.keys, topic)
	}
	e.payload = append([]byte(nil), payload...)
	e.version++
	s.mu.Unlock()
	ring(s.bell)
}

// unsent returns the state messages not yet published (in their latest
// version) on connection conn, in insertion order; at most limit (0: all).
func (s *stateSet) unsent(conn uint64, limit int) []stateMsg {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []stateMsg
	for _, k := range s.keys {
		if e := s.entries[k]; e.sentConn != conn || e.sentVersion != e.version {
			out = append(out, stateMsg{k, e.payload, e.version})
			if len(out) == limit {
				break
			}
		}
	}
	return out
}

// sent records that version of topic was published on connection conn.
func (s *stateSet) sent(m stateMsg, conn uint64) {
	s.mu.Lock()
	if e := s.entries[m.topic]; e != nil {
		e.sentVersion, e.sentConn = m.version, conn
	}
	s.mu.Unlock()
}

// PublishState sets the retained state message of topic (QoS 1, not
// buffered). The latest payload per topic is published now if connected and
// again after every reconnect. It may be called before Run.
func (p *Publisher) PublishState(topic string, payload []byte) {
	p.setState(topic, payload)
}

func (p *Publisher) setState(topic string, payload []byte) {
	p.states.set(topic, payload)
}

// stateLoop publishes the state messages (status and PublishState) that are
// new or not yet published on the current connection.
func (p *Publisher) stateLoop(ctx context.Context) {
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	for {
		select {
		case <-p.states.bell:
		case <-retry.C:
		case <-ctx.Done():
			return
		}
		for ctx.Err() == nil {
			p.mu.Lock()
			cli, conn := p.cli, p.connSeq
			p.mu.Unlock()
			var next []stateMsg
			if cli != nil {
				next = p.states.unsent(conn, 1)
			}
			if len(next) == 0 {
				if cli != nil {
					nctx, cancel := context.WithTimeout(ctx, 10*time.Second)
					if !p.publishNotices(nctx, cli) {
						retry.Reset(time.Second)
					}
					cancel()
				}
				break
			}
			m := next[0]
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			resp, err := cli.Publish(pctx, &paho.Publish{Topic: m.topic, QoS: 1, Retain: true, Payload: m.payload})
			cancel()
			if resp != nil && resp.ReasonCode >= 0x80 {
				p.logger.Warn("broker refused state message", "topic", m.topic, "reason_code", fmt.Sprintf("%#02x", resp.ReasonCode))
				err = nil // do not retry on this connection
			}
			if err != nil {
				p.logger.Debug("state message not published; retrying", "topic", m.topic, "err", err)
				retry.Reset(time.Second)
				break
			}
			p.states.sent(m, conn)
		}
	}
}

// publishOffline is the last word of a clean shutdown, after stateLoop
// has ended: the state messages not yet published on this connection
// (such as the devices' "stopped" status the gateway sets just before
// stopping the publisher), then the offline status, each QoS 1 and
// retained, within ShutdownGrace.
func (p *Publisher) publishOffline() {
	p.mu.Lock()
	cli, conn := p.cli, p.connSeq
	p.mu.Unlock()
	if cli == nil {
		return
	}
	msgs := p.states.unsent(conn, 0)
	if p.cfg.StatusTopic != "" {
		msgs = append(msgs, stateMsg{topic: p.cfg.StatusTopic, payload: p.statusPayload(false, time.Now())})
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.ShutdownGrace)
	defer cancel()
	p.publishNotices(ctx, cli)
	for _, m := range msgs {
		if _, err := cli.Publish(ctx, &paho.Publish{Topic: m.topic, QoS: 1, Retain: true, Payload: m.payload}); err != nil {
			p.logger.Warn("state message not published at shutdown", "topic", m.topic, "err", err)
			if ctx.Err() != nil {
				return
			}
		}
	}
}

// statusPayload is {"online":B,"ts":"...","version":"..."}. In the Will, ts is
// the time of the connection the Will belongs to.
func (p *Publisher) statusPayload(online bool, ts time.Time) []byte {
	b := make([]byte, 0, 80+len(p.cfg.Version))
	b = append(b, `{"online":`...)
	if online {
		b = append(b, "true"...)
	} else {
		b = append(b, "false"...)
	}
	b = append(b, `,"ts":"`...)
	b = record.AppendTime(b, ts)
	b = append(b, `","version":`...)
	b = adapters.AppendJSONString(b, p.cfg.Version)
	return append(b, '}')
}
