package mqtt

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/paho"
)

// Message is a PUBLISH the broker delivered on a subscription (Subscribe),
// with its MQTT 5 properties.
type Message struct {
	Topic   string
	Payload []byte
	QoS     byte
	// Retain is the sender's retain flag (subscriptions are made with
	// Retain As Published).
	Retain    bool
	Duplicate bool
	Received  time.Time // when it was read from the connection
	// Queued is set when the broker matched the message to ferry's
	// subscription before this connection subscribed again: it waited
	// in ferry's session while ferry was not connected (or is the
	// redelivery of one ferry did not acknowledge). See connSubs.
	Queued bool

	ResponseTopic   string // MQTT 5 Response Topic; "" when absent
	CorrelationData []byte // MQTT 5 Correlation Data; nil when absent
	ContentType     string
	// MessageExpiry is the MQTT 5 Message Expiry Interval the broker
	// forwarded: the whole seconds the message had left when the broker
	// sent it (the broker subtracts the time it held the message). Nil
	// when the publisher set none.
	MessageExpiry *uint32
	// User are the MQTT 5 user properties, in order. The publisher's client
	// id is not part of MQTT; brokers or clients that want it known put it
	// here (for example "client_id").
	User []UserProperty
}

// UserProperty is one MQTT 5 user property.
type UserProperty struct{ Key, Value string }

// Expired reports whether the message's MQTT 5 Message Expiry has passed at
// now (a message forwarded with 0 seconds left has expired).
func (m Message) Expired(now time.Time) bool {
	if m.MessageExpiry == nil {
		return false
	}
	return !now.Before(m.Received.Add(time.Duration(*m.MessageExpiry) * time.Second))
}

type subscription struct {
	filter  string
	qos     byte
	handler func(Message)
}

// Subscribe subscribes to filter with at most qos and calls h for every
// message that matches it. It may be called before or after Run; the
// subscription is made on every connection (and at once if connected), so
// it survives reconnects and broker restarts. Retained messages are not
// sent on subscribing (Retain Handling 2): a stale retained command must
// never be acted on because ferry reconnected. Retain As Published is
// set, so a message's Retain is the sender's flag and a retained command
// can be refused. No Local is set, so ferry does not get its own messages
// back.
//
// h is called from the connection's reader goroutine, one message at a
// time: it must not block (hand the message to a queue). A message is
// acknowledged (PUBACK, or PUBREC at QoS 2) when h returns, so delivery
// to h is at most once across a crash of ferry and, for QoS 2 senders,
// exactly once while ferry runs.
func (p *Publisher) Subscribe(filter string, qos byte, h func(Message)) error {
	if filter == "" || qos > 2 || h == nil {
		return fmt.Errorf("mqtt: subscribe %q: invalid arguments", filter)
	}
	p.subMu.Lock()
	p.subs = append(p.subs, subscription{filter: filter, qos: qos, handler: h})
	p.subMu.Unlock()
	p.mu.Lock()
	cli := p.cli
	p.mu.Unlock()
	if cli != nil {
		p.subWG.Go(func() { p.subscribeOn(cli, []subscription{{filter: filter, qos: qos}}) })
	}
	return nil
}

func (p *Publisher) subscriptions() []subscription {
	p.subMu.Lock()
	defer p.subMu.Unlock()
	return append([]subscription(nil), p.subs...)
}

// resubscribe makes every subscription on the new connection cli.
func (p *Publisher) resubscribe(cli *paho.Client) {
	subs := p.subscriptions()
	if len(subs) == 0 {
		return
	}
	p.subWG.Go(func() { p.subscribeOn(cli, subs) })
}

// connSubs holds the Subscription Identifier of each connection
// (*paho.Client -> *connSub) while it is up.
//
// A message that waited in ferry's session at the broker while ferry was
// not connected cannot be told from a live one by its content. It can by
// its Subscription Identifier: every connection subscribes again with an
// identifier of its own (random, so a restarted ferry does not reuse the
// one of the process before). The broker tags a message with the
// identifier of the subscription it matched when the message was
// published; what it held for the session carries an older identifier (or
// none), what was published after this connection's SUBSCRIBE carries the
// new one. The verdict is the broker's, so it does not depend on when
// paho hands messages and the SUBACK to ferry. Messages published in the
// round trip between CONNACK and the broker reading the new SUBSCRIBE
// also carry the old identifier: they count as queued (the safe side).
var connSubs sync.Map

type connSub struct {
	id        int  // 1 .. 268,435,455
	supported bool // false: the broker has no identifiers; nothing is marked queued after the SUBSCRIBE; guarded by Publisher.subMu
}

// connSubOf returns the identifier of cli's subscriptions, creating it on
// first use (the first message may arrive before the SUBSCRIBE is sent).
func connSubOf(cli *paho.Client) *connSub {
	if v, ok := connSubs.Load(cli); ok {
		return v.(*connSub)
	}
	cs := &connSub{id: 1 + rand.IntN(268435455), supported: true}
	v, loaded := connSubs.LoadOrStore(cli, cs)
	if !loaded {
		go func() {
			<-cli.Done()
			connSubs.Delete(cli)
		}()
	}
	return v.(*connSub)
}

// subscribeOn sends one SUBSCRIBE for subs on cli, retrying while cli is
// connected. The SUBSCRIBE carries cli's Subscription Identifier (see
// connSubs) unless the broker does not support them.
func (p *Publisher) subscribeOn(cli *paho.Client, subs []subscription) {
	s := &paho.Subscribe{}
	for _, sb := range subs {
		s.Subscriptions = append(s.Subscriptions, paho.SubscribeOptions{
			Topic: sb.filter, QoS: sb.qos, NoLocal: true, RetainAsPublished: true, RetainHandling: 2,
		})
	}
	cs := connSubOf(cli)
	p.subMu.Lock()
	if cs.supported {
		id := cs.id
		s.Properties = &paho.SubscribeProperties{SubscriptionIdentifier: &id}
	}
	p.subMu.Unlock()
	for attempt := 1; ; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		go func() {
			select {
			case <-cli.Done():
				cancel()
			case <-ctx.Done():
			}
		}()
		sa, err := cli.Subscribe(ctx, s)
		cancel()
		if err == nil {
			p.stats.subscribes.Add(1)
			p.logger.Info("subscribed", "filters", len(subs), "first", subs[0].filter)
			return
		}
		reasons := ""
		if sa != nil {
			reasons = fmt.Sprintf("%#02x", sa.Reasons)
		}
		p.logger.Error("subscribe failed; retrying", "filter", subs[0].filter, "reason_codes", reasons, "err", err, "attempt", attempt)
		if errors.Is(err, paho.ErrInvalidArguments) && s.Properties != nil {
			// The broker's CONNACK said it has no Subscription Identifiers.
			p.logger.Warn("the broker does not support subscription identifiers: commands it held for ferry's session while ferry was away cannot be told from live ones", "filter", subs[0].filter)
			p.subMu.Lock()
			cs.supported = false
			p.subMu.Unlock()
			s.Properties = nil
			continue
		}
		if errors.Is(err, paho.ErrInvalidArguments) {
			return
		}
		t := time.NewTimer(backoff(attempt, time.Second, 30*time.Second))
		select {
		case <-cli.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// received dispatches a delivered PUBLISH to the handlers of the matching
// subscriptions.
func (p *Publisher) received(pr paho.PublishReceived) (bool, error) {
	pk := pr.Packet
	m := Message{
		Topic: pk.Topic, Payload: pk.Payload, QoS: pk.QoS, Retain: pk.Retain, Duplicate: pk.Duplicate(),
		Received: time.Now(),
	}
	if pr.Client != nil {
		cs := connSubOf(pr.Client)
		p.subMu.Lock()
		supported := cs.supported
		p.subMu.Unlock()
		id := 0
		if pk.Properties != nil && pk.Properties.SubscriptionIdentifier != nil {
			id = *pk.Properties.SubscriptionIdentifier
		}
		m.Queued = supported && id != cs.id
	}
	if pp := pk.Properties; pp != nil {
		m.ResponseTopic, m.CorrelationData, m.ContentType = pp.ResponseTopic, pp.CorrelationData, pp.ContentType
		if pp.MessageExpiry != nil {
			e := *pp.MessageExpiry
			m.MessageExpiry = &e
		}
		for _, u := range pp.User {
			m.User = append(m.User, UserProperty{Key: u.Key, Value: u.Value})
		}
	}
	p.stats.received.Add(1)
	handled := false
	for _, s := range p.subscriptions() {
		if TopicMatch(s.filter, m.Topic) {
			s.handler(m)
			handled = true
			break // one handler per message, even if filters overlap
		}
	}
	if !handled {
		p.logger.Debug("message on no subscription of ours ignored", "topic", m.Topic)
	}
	return handled, nil
}

// TopicMatch reports whether topic name matches filter (MQTT wildcards +
// and #). Topics starting with '$' match no filter starting with a
// wildcard.
func TopicMatch(filter, topic string) bool {
	if strings.HasPrefix(topic, "$") && (strings.HasPrefix(filter, "+") || strings.HasPrefix(filter, "#")) {
		return false
	}
	for {
		f, frest, fmore := strings.Cut(filter, "/")
		if f == "#" {
			return true
		}
		t, trest, tmore := strings.Cut(topic, "/")
		if f != "+" && f != t {
			return false
		}
		if !fmore || !tmore {
			if !fmore && !tmore {
				return true
			}
			// "a/#" matches "a" too.
			return !tmore && fmore && frest == "#"
		}
		filter, topic = frest, trest
	}
}

type storedKey struct{}

// Respond publishes payload to topic at QoS 1, not retained and not
// through the buffer (command results), with correlation as the MQTT 5
// Correlation Data when not nil. It waits for a connection until ctx is
// done. Once the PUBLISH is in the session it is delivered even across a
// reconnect (the session re-sends it), so Respond then returns nil without
// waiting for a PUBACK that a dropped connection will never bring; it
// returns an error when the broker refuses it (reason code >= 0x80) or ctx
// ends before the PUBLISH was handed over.
func (p *Publisher) Respond(ctx context.Context, topic string, payload, correlation []byte) error {
	pub := &paho.Publish{Topic: topic, QoS: 1, Payload: payload,
		Properties: &paho.PublishProperties{ContentType: "application/json"}}
	if correlation != nil {
		pub.Properties.CorrelationData = correlation
	}
	if err := p.publishDirect(ctx, pub, "response"); err != nil {
		return err
	}
	p.stats.responses.Add(1)
	return nil
}

// ClearRetained deletes the retained message on topic at the broker: an
// empty retained PUBLISH at QoS 1, delivered like Respond's.
func (p *Publisher) ClearRetained(ctx context.Context, topic string) error {
	return p.publishDirect(ctx, &paho.Publish{Topic: topic, QoS: 1, Retain: true, Payload: []byte{}}, "deletion of the retained message")
}

// publishDirect publishes pub outside the buffer (see Respond).
func (p *Publisher) publishDirect(ctx context.Context, pub *paho.Publish, what string) error {
	topic := pub.Topic
	for attempt := 1; ; attempt++ {
		cli := p.awaitConnection(ctx)
		if cli == nil {
			return fmt.Errorf("mqtt: %s to %s not published: %w", what, topic, context.Cause(ctx))
		}
		stored := new(atomic.Bool)
		pctx, cancel := context.WithTimeout(context.WithValue(ctx, storedKey{}, stored), 30*time.Second)
		resp, err := cli.Publish(pctx, pub)
		cancel()
		if resp != nil && resp.ReasonCode >= 0x80 {
			p.countReason(resp.ReasonCode)
			return fmt.Errorf("mqtt: broker refused the %s to %s: reason code %#02x", what, topic, resp.ReasonCode)
		}
		if err == nil || stored.Load() {
			return nil
		}
		if errors.Is(err, paho.ErrInvalidArguments) {
			return fmt.Errorf("mqtt: %s to %s: %w", what, topic, err)
		}
		t := time.NewTimer(backoff(attempt, 20*time.Millisecond, time.Second))
		select {
		case <-cli.Done():
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
	}
}
