package mqtt

import (
	"fmt"
	"slices"
	"time"

	"github.com/eclipse/paho.golang/packets"
)

// fail schedules a refused record for a retry or the dead-letter file.
//
// A refusal for good (refusedForGood: not authorized, a bad topic name or
// payload) dead-letters the record at once and holds its topic: until the
// hold ends (8 × RetryMin, doubling up to RetryMax while the topic keeps
// being refused, with jitter; cleared by a success), the topic's records
// are dead-lettered without being sent (see send). The record sent after
// a hold probes whether the broker accepts the topic again. A refused record thus never keeps the
// buffer's commit cursor, and with it the read-ahead of every other topic,
// for longer than one round trip, and the broker (mosquitto closes the
// connection after a denied publish) is not provoked at the tag's rate.
// Other refusals (quota exceeded, unspecified) are retried with backoff
// and dead-lettered after DeadLetterAttempts. Without a dead-letter file
// every refused record is retried forever.
func (p *Publisher) fail(j *job, rc byte, reason string) {
	p.failWith(j, rc, reason, refusedForGood(rc))
}

// failWith is fail with the refusal's kind given: forGood dead-letters at
// once and holds the topic.
func (p *Publisher) failWith(j *job, rc byte, reason string, forGood bool) {
	j.attempts++
	j.rc, j.reason = rc, reason
	topic := ""
	if j.pub != nil {
		topic = j.pub.Topic
	}
	forGood = forGood && p.dl != nil
	dead := forGood || p.dl != nil && j.attempts >= p.cfg.DeadLetterAttempts
	if ok, suppressed := p.refusals.allow("refused " + topic); ok {
		p.logger.Warn("broker refused publish", "topic", topic, "seq", j.seq,
			"reason_code", fmt.Sprintf("%#02x", rc), "reason", reasonText(rc, reason), "attempt", j.attempts, "dead_letter", dead,
			"suppressed", suppressed)
	}
	var purge []uint64
	p.jmu.Lock()
	if forGood && topic != "" && !j.purged {
		h := p.holds[topic]
		if h == nil {
			h = &topicHold{}
			p.holds[topic] = h
		}
		h.refusals++
		h.rc, h.reason = rc, reason
		h.until = time.Now().Add(backoff(h.refusals+holdSteps, p.cfg.RetryMin, p.cfg.RetryMax))
		// The topic's other records in flight would be refused too, each
		// costing a reconnect with mosquitto 2.0.11 (which may lose the
		// PUBACK of the refusal and so be sent the record again on every
		// connection): end them here.
		for seq, o := range p.pending {
			if o.pub != nil && o.pub.Topic == topic && !o.purged {
				o.purged = true
				purge = append(purge, seq)
			}
		}
	}
	if dead {
		p.dead = append(p.dead, j)
	} else {
		p.retryLocked(j)
	}
	p.jmu.Unlock()
	slices.Sort(purge)
	for _, seq := range purge {
		p.refuseLocally(seq, rc, "not sent again: the broker refused an earlier record of the topic")
	}
	ring(p.wake)
}

// refuseLocally ends the exchange of the record seq in the session as if
// the broker had answered it with a PUBACK carrying rc: paho forgets the
// packet (it is not sent again on the next connection) and the publisher
// handles the refusal (fail). False if seq has no packet in the session,
// or is past its PUBREC (the broker has it).
func (p *Publisher) refuseLocally(seq uint64, rc byte, reason string) bool {
	id, ok := p.store.IDOf(seq)
	if !ok {
		return false
	}
	pk := &packets.ControlPacket{
		FixedHeader: packets.FixedHeader{Type: packets.PUBACK},
		Content:     &packets.Puback{PacketID: id, ReasonCode: rc, Properties: &packets.Properties{ReasonString: reason}},
	}
	g := &sessionGate{SessionManager: p.sess, p: p, local: true}
	if err := g.PacketReceived(pk, nil); err != nil {
		p.logger.Debug("local refusal", "seq", seq, "err", err)
	}
	return true
}

// unblockCursor dead-letters the record at the log's commit cursor when it
// waits for a retry: the read-ahead is exhausted, and waiting for the
// retry's time would stall every other topic (a refusal that is not for
// good, such as quota exceeded, at a high rate). Without a dead-letter
// file the record keeps its retry schedule.
func (p *Publisher) unblockCursor() {
	if p.dl == nil {
		return
	}
	cur := p.log.Acked()
	p.jmu.Lock()
	i := slices.IndexFunc(p.retry, func(j *job) bool { return j.seq == cur })
	var j *job
	if i >= 0 {
		j = p.retry[i]
		p.retry = slices.Delete(p.retry, i, i+1)
		p.dead = append(p.dead, j)
	}
	p.jmu.Unlock()
	if j != nil {
		if ok, suppressed := p.refusals.allow("unblock"); ok {
			p.logger.Warn("refused record dead-lettered before its retry: it held the stream", "seq", j.seq,
				"reason_code", fmt.Sprintf("%#02x", j.rc), "attempts", j.attempts, "suppressed", suppressed)
		}
		ring(p.wake)
	}
}

// holdSteps makes a hold start at 8 × RetryMin (8 s by default): each
// probe of a denied topic costs a reconnect with mosquitto, which closes
// the connection after a denied publish.
const holdSteps = 3

// retryLocked queues j for a retry after its backoff; p.jmu held.
func (p *Publisher) retryLocked(j *job) {
	j.due = time.Now().Add(backoff(max(j.attempts, 1), p.cfg.RetryMin, p.cfg.RetryMax))
	i, _ := slices.BinarySearchFunc(p.retry, j.due, func(a *job, t time.Time) int { return a.due.Compare(t) })
	p.retry = slices.Insert(p.retry, i, j)
}

// held reports whether j's topic is held (see fail); if so, j takes the
// refusal of the hold.
func (p *Publisher) held(j *job) bool {
	if p.dl == nil || j.pub == nil {
		return false
	}
	p.jmu.Lock()
	defer p.jmu.Unlock()
	h := p.holds[j.pub.Topic]
	if h == nil {
		return false
	}
	now := time.Now()
	if now.After(h.until) {
		// The hold is over: this record is sent and probes the broker,
		// unless another held topic was probed just now (each probe of a
		// denied topic costs a reconnect with mosquitto: many held topics
		// must not add up to a reconnect every few hundred ms).
		if now.Sub(p.lastProbe) >= p.cfg.RetryMin {
			p.lastProbe = now
			return false
		}
		h.until = p.lastProbe.Add(p.cfg.RetryMin + time.Duration(randInt63n(int64(p.cfg.RetryMin)+1)))
	}
	j.rc, j.reason, j.held = h.rc, h.reason, true
	return true
}

// refusedForGood reports whether a refusal with reason code rc will not
// change by retrying: 0x87 not authorized, 0x90 topic name invalid, 0x99
// payload format invalid, or 0 (paho refused the packet as invalid).
func refusedForGood(rc byte) bool {
	switch rc {
	case 0, 0x87, 0x90, 0x99:
		return true
	}
	return false
}

// deadLetter hands j to the dead-letter writer (see deadWriter); called by
// the sender only, which alone reads the log (load).
func (p *Publisher) deadLetter(j *job) {
	if !p.load(j) {
		return
	}
	p.deadCh <- j
}

// reasonText is reason when set, else the standard meaning of rc.
func reasonText(rc byte, reason string) string {
	if reason != "" || rc == 0 {
		return reason
	}
	return (&packets.Puback{ReasonCode: rc}).Reason()
}

// poisonStrikes is the number of connections in a row that may end, soon
// after their CONNACK and without a single acknowledgement, with the same
// oldest record in flight before that record is taken as refused (see
// checkPoison).
const poisonStrikes = 3

// checkPoison runs after a connection was lost (short: soon after its
// CONNACK). mosquitto 2.0.11 closes the connection right after queueing
// the PUBACK 0x87 of a denied publish, often before that PUBACK is
// written: the refusal never arrives, paho re-sends the packet first on
// the next connection, and the broker closes that one too, for ever.
// When poisonStrikes short connections in a row acknowledged nothing
// while the same record was the oldest in flight, that record is removed
// from the session (paho will not send it again) and treated as refused
// for good (dead-lettered, its topic held). A broker that keeps dropping
// healthy connections that fast would acknowledge nothing either; the
// record then goes to the dead-letter file, not lost.
func (p *Publisher) checkPoison(short bool) {
	acks := p.connAcks.Swap(0)
	if acks > 0 || !short {
		p.poisonSeq, p.poisonCount = 0, 0
		return
	}
	p.jmu.Lock()
	var first uint64
	for seq := range p.pending {
		if first == 0 || seq < first {
			first = seq
		}
	}
	p.jmu.Unlock()
	if first == 0 {
		p.poisonSeq, p.poisonCount = 0, 0
		return
	}
	if first != p.poisonSeq {
		p.poisonSeq, p.poisonCount = first, 0
	}
	if p.poisonCount++; p.poisonCount < poisonStrikes {
		return
	}
	p.poisonSeq, p.poisonCount = 0, 0
	const reason = "the broker closed the connection each time this record was sent, without acknowledging anything"
	p.logger.Warn("record taken as refused (not authorized): "+reason, "seq", first, "connections", poisonStrikes)
	p.refuseLocally(first, 0x87, reason)
}
