package mqtt

import (
	"cmp"
	"context"
	"errors"
	"slices"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/ferry-gateway/ferry/gateway/record"
)

// maxAhead bounds how far past the log's commit cursor the publisher reads:
// the buffer accepts out-of-order acks only within its AckWindow (65536).
const maxAhead = 60000

type job struct {
	seq      uint64
	pub      *paho.Publish // nil for a record restored from the session store until needed
	replay   bool
	attempts int
	due      time.Time
	rc       byte
	reason   string
	held     bool // dead-lettered unsent: its topic was held (see fail)
	purged   bool // refused locally with its topic's refusal (see failWith)
}

// resume applies the session store to the log at start: records marked
// done are acked, records in flight are left to paho and skipped by the
// sender.
func (p *Publisher) resume() {
	live, done := p.store.StartState()
	start := p.log.Acked()
	var ds []uint64
	for q := range done {
		if q >= start {
			ds = append(ds, q)
		}
	}
	slices.Sort(ds)
	for _, q := range ds {
		if err := p.log.Ack(q); err != nil {
			p.logger.Error("ack record already delivered before the restart", "seq", q, "err", err)
			continue
		}
		p.skip[q] = true
		p.skipTo = max(p.skipTo, q+1)
		p.stats.resumed.Add(1)
	}
	p.jmu.Lock()
	for _, q := range live {
		if q < start || p.skip[q] {
			continue // acked already: paho completes it, the ack is a no-op
		}
		p.pending[q] = &job{seq: q, replay: true}
		p.skip[q] = true
		p.skipTo = max(p.skipTo, q+1)
		p.stats.restored.Add(1)
	}
	p.jmu.Unlock()
	if len(ds) > 0 || p.stats.restored.Load() > 0 {
		p.logger.Info("resuming the MQTT session from disk", "in_flight", p.stats.restored.Load(), "already_delivered", len(ds))
	}
}

// sender reads the log in order and hands every record to the session,
// until ctx is done.
func (p *Publisher) sender(ctx context.Context) {
	next := p.log.Acked()
	var ahead []*job // read from the log, not yet sent
	notify := p.log.Notify()
	fails := 0
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for ctx.Err() == nil {
		j, wait := p.takeQueued()
		if j == nil && len(ahead) > 0 {
			j, ahead = ahead[0], ahead[1:]
		}
		if j == nil && next >= p.log.Acked()+uint64(p.ahead) {
			p.unblockCursor()
		}
		if j == nil && next < p.log.Acked()+uint64(p.ahead) {
			// Read more.
			replay := p.backlog.Load()
			connected := p.Connected()
			var visited int
			var err error
			ahead, next, visited, err = p.readAhead(next, ahead, replay)
			if err != nil {
				fails++
				p.logger.Error("read buffer", "from", next, "err", err)
				if visited == 0 && !sleep(ctx, backoff(fails, 100*time.Millisecond, 5*time.Second)) {
					return
				}
				continue
			}
			fails = 0
			if visited > 0 {
				continue
			}
			if connected {
				p.backlog.Store(false) // caught up: what comes next is live
			}
		}
		if j != nil {
			if !p.send(ctx, j) {
				return
			}
			continue
		}
		// Nothing to do now: wait for an append, an ack, a connection, a
		// retry's time.
		if wait <= 0 {
			wait = time.Hour
		}
		timer.Reset(wait)
		select {
		case <-notify:
		case <-p.wake:
		case <-timer.C:
		case <-ctx.Done():
		}
		timer.Stop()
	}
}

// readAhead reads up to 256 records from next on and appends them to
// ahead, but for the seqs handled at start (resume) and undecodable
// records, which are acked and counted. It returns the seq after the last
// record visited (next when none was) and how many were visited.
func (p *Publisher) readAhead(next uint64, ahead []*job, replay bool) ([]*job, uint64, int, error) {
	var skipped []uint64
	visited := 0
	nxt, err := p.log.Scan(next, 256, func(seq uint64, data []byte) error {
		visited++
		if seq < p.skipTo && p.skip[seq] {
			return nil
		}
		j, err := p.newJob(seq, data, replay)
		if err != nil {
			p.logger.Error("undecodable buffer record skipped", "seq", seq, "err", err)
			skipped = append(skipped, seq)
			return nil
		}
		ahead = append(ahead, j)
		return nil
	})
	for _, seq := range skipped {
		p.stats.skipped.Add(1)
		if err := p.log.Ack(seq); err != nil {
			p.logger.Error("ack skipped record", "seq", seq, "err", err)
		}
	}
	if visited > 0 {
		next = nxt
	}
	return ahead, next, visited, err
}

// takeQueued returns the next job to send again (session lost, then retries
// that are due; dead letters are written on the way), or how long until the
// first retry is due (0: none).
func (p *Publisher) takeQueued() (*job, time.Duration) {
	for {
		p.jmu.Lock()
		if len(p.dead) > 0 {
			j := p.dead[0]
			p.dead = p.dead[1:]
			p.jmu.Unlock()
			p.deadLetter(j)
			continue
		}
		var j *job
		var wait time.Duration
		switch {
		case len(p.resend) > 0:
			j, p.resend = p.resend[0], p.resend[1:]
		case len(p.retry) > 0:
			if wait = time.Until(p.retry[0].due); wait <= 0 {
				j, p.retry, wait = p.retry[0], p.retry[1:], 0
			}
		}
		p.jmu.Unlock()
		return j, wait
	}
}

func (p *Publisher) newJob(seq uint64, data []byte, replay bool) (*job, error) {
	m, err := record.Decode(data)
	if err != nil {
		return nil, err
	}
	j := &job{seq: seq, replay: replay}
	j.pub = &paho.Publish{
		QoS:     p.cfg.QoS,
		Retain:  m.Retain,
		Topic:   m.Topic,
		Payload: m.AppendPayload(p.payloadBuf(len(m.Body)+28), seq),
	}
	var props paho.PublishProperties
	if replay {
		props.User = paho.UserProperties{{Key: "replay", Value: "true"}}
	}
	if p.cfg.MessageExpiry > 0 {
		e := uint32(p.cfg.MessageExpiry / time.Second)
		props.MessageExpiry = &e
	}
	if props.User != nil || props.MessageExpiry != nil {
		j.pub.Properties = &props
	}
	return j, nil
}

// payloadBuf returns an empty buffer of at least n bytes for a payload.
func (p *Publisher) payloadBuf(n int) []byte {
	if b, ok := p.payloads.Get().(*[]byte); ok && cap(*b) >= n {
		return (*b)[:0]
	}
	return make([]byte, 0, n)
}

// releasePayload recycles the payload of a delivered job. paho is done
// with it: the packet was copied into the session store and onto the
// connection before its acknowledgement could arrive, and a re-send after
// a reconnect comes from the store.
func (p *Publisher) releasePayload(j *job) {
	if j.pub == nil || cap(j.pub.Payload) > 1<<20 {
		return
	}
	b := j.pub.Payload[:0]
	j.pub.Payload = nil
	p.payloads.Put(&b)
}

// load builds the PUBLISH of a job restored from the session store. False
// if the record is no longer in the log (dropped by the size cap).
func (p *Publisher) load(j *job) bool {
	if j.pub != nil {
		return true
	}
	var err error
	_, serr := p.log.Scan(j.seq, 1, func(seq uint64, data []byte) error {
		if seq == j.seq {
			var nj *job
			nj, err = p.newJob(seq, data, true)
			if err == nil {
				j.pub = nj.pub
			}
		}
		return nil
	})
	if serr != nil || err != nil || j.pub == nil {
		p.logger.Error("record to publish again is not readable from the buffer", "seq", j.seq, "err", errors.Join(serr, err))
		return false
	}
	return true
}

// send hands j to the session (at QoS 0: writes it and acks it). It
// returns false when ctx is done before (j stays in the log).
func (p *Publisher) send(ctx context.Context, j *job) bool {
	if !p.load(j) {
		return true
	}
	if p.held(j) {
		p.deadLetter(j)
		return true
	}
	for errs := 1; ; errs++ {
		if !p.waitSlot(ctx) {
			return false
		}
		l := p.awaitLink(ctx)
		if l == nil {
			return false
		}
		if p.queueBehindResend(j) {
			return true
		}
		if !p.pace(ctx, j) {
			return false
		}
		done, err := p.publish(ctx, l, j)
		if done {
			return true
		}
		// Not in the session: the connection is going down, or we are
		// stopping. Wait for this connection to end (or a moment, in case
		// it did not) before trying again.
		p.logger.Debug("publish interrupted", "topic", j.pub.Topic, "seq", j.seq, "err", err)
		t := time.NewTimer(backoff(errs, 20*time.Millisecond, time.Second))
		select {
		case <-l.cli.Done():
		case <-t.C:
		case <-ctx.Done():
		}
		t.Stop()
		if ctx.Err() != nil {
			return false
		}
	}
}

// waitSlot waits for a slot in the window of records in flight (at QoS 1
// and 2); false when ctx is done first.
func (p *Publisher) waitSlot(ctx context.Context) bool {
	p.jmu.Lock()
	defer p.jmu.Unlock()
	for len(p.pending) >= p.window && p.cfg.QoS > 0 {
		p.jmu.Unlock()
		select {
		case <-p.wake:
		case <-ctx.Done():
			p.jmu.Lock()
			return false
		}
		p.jmu.Lock()
	}
	return true
}

// queueBehindResend reports whether j was queued among the records to
// publish again: the session was lost while j waited, and what was in
// flight goes first, j taking its place in seq order among it.
func (p *Publisher) queueBehindResend(j *job) bool {
	p.jmu.Lock()
	defer p.jmu.Unlock()
	if len(p.resend) == 0 || p.resend[0].seq >= j.seq {
		return false
	}
	i, _ := slices.BinarySearchFunc(p.resend, j.seq, func(a *job, s uint64) int { return cmp.Compare(a.seq, s) })
	p.resend = slices.Insert(p.resend, i, j)
	return true
}

// pace waits until a replayed record may go (MaxReplayRate); false when
// ctx is done first.
func (p *Publisher) pace(ctx context.Context, j *job) bool {
	if !j.replay || p.cfg.MaxReplayRate <= 0 {
		return true
	}
	now := time.Now()
	if p.nextRate.Before(now) {
		p.nextRate = now
	}
	if d := p.nextRate.Sub(now); d > 0 && !sleep(ctx, d) {
		return false
	}
	p.nextRate = p.nextRate.Add(time.Duration(float64(time.Second) / p.cfg.MaxReplayRate))
	return true
}

// publish hands j to the session on l. done: j is in the session (it
// belongs to the completion side from then on), acked (QoS 0), or failed
// for good; otherwise err says why it must be tried again.
func (p *Publisher) publish(ctx context.Context, l *link, j *job) (done bool, err error) {
	if p.cfg.QoS > 0 {
		p.jmu.Lock()
		p.pending[j.seq] = j
		p.jmu.Unlock()
	}
	qos, nbytes, replay := j.pub.QoS, uint64(len(j.pub.Topic)+len(j.pub.Payload)), j.replay
	err = l.publishRecord(ctx, j.seq, j.pub)
	if err == nil || errors.Is(err, paho.ErrNetworkErrorAfterStored) {
		p.stats.published[qos].Add(1)
		p.stats.bytesOut.Add(nbytes)
		if replay {
			p.stats.replayed.Add(1)
		}
		if qos > 0 {
			return true, nil
		}
		if err == nil {
			p.ackRecord(j.seq)
			return true, nil
		}
		// QoS 0 not written: try again on the next connection.
	}
	if p.cfg.QoS > 0 {
		p.jmu.Lock()
		delete(p.pending, j.seq)
		p.jmu.Unlock()
	}
	if errors.Is(err, paho.ErrInvalidArguments) {
		p.stats.failed.Add(1)
		p.fail(j, 0, err.Error())
		return true, nil
	}
	return false, err
}

func (p *Publisher) ackRecord(seq uint64) {
	p.stats.acked.Add(1)
	if err := p.log.Ack(seq); err != nil {
		p.logger.Error("ack buffer record", "seq", seq, "err", err)
	}
}

// complete is called by the session when the exchange of the record seq is
// over: rc < 0x80 delivered, else refused.
func (p *Publisher) complete(seq uint64, rc byte, reason string) {
	p.jmu.Lock()
	j := p.pending[seq]
	if j == nil {
		p.jmu.Unlock()
		return
	}
	delete(p.pending, seq)
	if rc < 0x80 && len(p.holds) > 0 && j.pub != nil {
		delete(p.holds, j.pub.Topic) // the topic is accepted again
	}
	p.jmu.Unlock()
	if rc < 0x80 {
		p.ackRecord(seq)
		ring(p.wake)
		p.releasePayload(j)
		return
	}
	p.stats.failed.Add(1)
	p.countReason(rc)
	p.fail(j, rc, reason)
}
