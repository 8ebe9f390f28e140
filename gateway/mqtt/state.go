package mqtt

import (
	"context"
	"fmt"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/gateway/record"
)

type stateEntry struct {
	payload     []byte
	version     uint64
	sentVersion uint64
	sentConn    uint64 // connSeq it was last published on
}

// PublishState sets the retained state message of topic (QoS 1, not
// buffered). The latest payload per topic is published now if connected and
// again after every reconnect. It may be called before Run.
func (p *Publisher) PublishState(topic string, payload []byte) {
	p.setState(topic, payload)
}

func (p *Publisher) setState(topic string, payload []byte) {
	p.mu.Lock()
	e := p.states[topic]
	if e == nil {
		e = &stateEntry{}
		p.states[topic] = e
		p.stateKeys = append(p.stateKeys, topic)
	}
	e.payload = append([]byte(nil), payload...)
	e.version++
	p.mu.Unlock()
	ring(p.stateBell)
}

// stateLoop publishes the state messages (status and PublishState) that are
// new or not yet published on the current connection.
func (p *Publisher) stateLoop(ctx context.Context) {
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	for {
		select {
		case <-p.stateBell:
		case <-retry.C:
		case <-ctx.Done():
			return
		}
		for ctx.Err() == nil {
			p.mu.Lock()
			cli, conn := p.cli, p.connSeq
			var (
				topic   string
				payload []byte
				version uint64
			)
			if cli != nil {
				for _, k := range p.stateKeys {
					e := p.states[k]
					if e.sentConn != conn || e.sentVersion != e.version {
						topic, payload, version = k, e.payload, e.version
						break
					}
				}
			}
			p.mu.Unlock()
			if topic == "" {
				if cli != nil {
					nctx, cancel := context.WithTimeout(ctx, 10*time.Second)
					if !p.publishNotices(nctx, cli) {
						retry.Reset(time.Second)
					}
					cancel()
				}
				break
			}
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			resp, err := cli.Publish(pctx, &paho.Publish{Topic: topic, QoS: 1, Retain: true, Payload: payload})
			cancel()
			if resp != nil && resp.ReasonCode >= 0x80 {
				p.logger.Warn("broker refused state message", "topic", topic, "reason_code", fmt.Sprintf("%#02x", resp.ReasonCode))
				err = nil // do not retry on this connection
			}
			if err != nil {
				p.logger.Debug("state message not published; retrying", "topic", topic, "err", err)
				retry.Reset(time.Second)
				break
			}
			p.mu.Lock()
			if e := p.states[topic]; e != nil {
				e.sentVersion, e.sentConn = version, conn
			}
			p.mu.Unlock()
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
	type msg struct {
		topic   string
		payload []byte
	}
	var msgs []msg
	for _, k := range p.stateKeys {
		if e := p.states[k]; e.sentConn != conn || e.sentVersion != e.version {
			msgs = append(msgs, msg{k, e.payload})
		}
	}
	p.mu.Unlock()
	if cli == nil {
		return
	}
	if p.cfg.StatusTopic != "" {
		msgs = append(msgs, msg{p.cfg.StatusTopic, p.statusPayload(false, time.Now())})
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
