// Package mqtt is ferry's MQTT 5 side: it drains the disk buffer to the
// broker and removes a record from the buffer only once the broker has
// acknowledged it (PUBACK at QoS 1, PUBCOMP at QoS 2; written at QoS 0).
//
// # Why paho.Client and not autopaho
//
// It drives paho.golang's paho.Client directly with its own small
// connection loop. autopaho was considered and rejected for three reasons:
// its Publish waits forever for a message paho silently dropped when the
// broker answers Session Present = 0; an old client of autopaho can still
// add a publish to the shared session after the new connection re-sent it
// (the packet then waits a whole reconnect for its acknowledgement); and its
// queue removes a message once it is in the session store, not on PUBACK, so
// broker reason codes are lost. Owning the loop also lets the publisher
// choose the connection paho writes to (see below) and see each CONNACK
// before anything is published on the new connection.
//
// # The connection
//
// At QoS 1 and 2 paho gets a batchConn (conn.go): reads are buffered, and
// packets are appended to a buffer that one flusher goroutine writes with
// one write(2) per batch as soon as the socket takes it (no timer, so an
// idle link adds no latency). The session store's records of a batch are
// written just before it (one write(2) too), so a packet never reaches the
// socket before its record is in the store file. This roughly doubles the
// QoS 1 and 2 rate over a plain *net.TCPConn (one writev per packet and two
// or three reads per acknowledgement). At QoS 0, where a record is acked
// once written to the socket, paho writes straight to the socket.
//
// # Delivery
//
// One sender goroutine takes records from the buffer in seq order and hands
// each to paho's session without waiting for its acknowledgement (paho's
// async publish), so packets leave in buffer order while up to MaxInflight
// (and at most the broker's Receive Maximum) are awaiting acknowledgement.
// Acknowledgements are taken from the session itself (sessionGate wraps
// paho's session.State and sees every PUBACK, PUBREC and PUBCOMP with its
// reason code, including those of packets restored from disk after a
// restart). paho's own Publish result is not used, which also sidesteps its
// bug of returning a QoS 2 PUBREC >= 0x80 as success.
//
// A reason code >= 0x80 is a failure, counted and logged (at most once per
// topic per logEvery). A refusal for good (not authorized, bad topic name
// or payload) writes the record to the dead-letter file and acks it at
// once, and holds its topic for a while: its next records are
// dead-lettered without being sent (see fail). Other refusals are retried
// with backoff, and dead-lettered after DeadLetterAttempts. Either way a
// refused record never keeps the buffer's commit cursor (and so the
// read-ahead of every other topic) for long, and each dead letter is
// announced on DeadLetterTopic so consumers can tell its seq gap from a
// loss. Retries are out of order by nature; every other record keeps its
// place.
//
// # Exactly once across restarts (QoS 2)
//
// The session store (store.go) persists each packet in flight together
// with the buffer seq it carries, and a "done" mark for each completed seq.
// At start, seqs still in the store are in flight: they are not published
// again as new messages but resumed by paho (DUP=1 with the same packet id,
// or PUBREL) and acked when they complete; seqs marked done (the broker has
// them, but the buffer's cursor had not reached the disk) are acked without
// publishing. Clean Start is used only on the very first connection of a
// state directory. When the broker answers Session Present = 0 although a
// session was expected, paho forgets what was in flight; those records are
// then published again from the buffer (at-least-once, counted in
// Stats.SessionLost and Stats.Resent).
package mqtt

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	pahosession "github.com/eclipse/paho.golang/paho/session"
	"github.com/eclipse/paho.golang/paho/session/state"
	"github.com/eclipse/paho.golang/paho/store/memory"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/gateway/mqtt/session"
	"github.com/ferry-gateway/ferry/gateway/record"
)

// Log is the disk buffer as the publisher consumes it.
type Log interface {
	// Scan visits up to max records with seq >= from, in order; data is
	// valid only during fn. It returns the seq after the last visited
	// record (from when none was).
	Scan(from uint64, max int, fn func(seq uint64, data []byte) error) (next uint64, err error)
	// Ack marks seq as delivered; acks may come out of order.
	Ack(seq uint64) error
	// Acked returns the first unacknowledged seq: where draining starts.
	Acked() uint64
	// Notify receives after an Append (capacity 1).
	Notify() <-chan struct{}
}

// maxAhead bounds how far past the log's commit cursor the publisher reads:
// the buffer accepts out-of-order acks only within its AckWindow (65536).
const maxAhead = 60000

// Stats are the publisher's counters.
type Stats struct {
	Connected    bool
	Connects     uint64            // successful connections (CONNACK success), the first included
	Reconnects   uint64            // successful connections after the first
	ConnectFails uint64            // failed connection attempts
	Disconnects  map[string]uint64 // by reason: "network", "server_0x..", "shutdown"
	Published    [3]uint64         // PUBLISH of buffer records handed to the connection, by QoS (retries and re-sends included)
	Acked        uint64            // records acknowledged by the broker and acked in the log
	Failed       uint64            // publishes refused with a reason code >= 0x80 (or by paho as invalid)
	ReasonCodes  map[byte]uint64   // failure reason codes of PUBACK/PUBREC (and CONNACK)
	Replayed     uint64            // records published with replay=true
	BytesOut     uint64            // topic + payload bytes of the record PUBLISHes
	DeadLettered uint64            // records written to the dead-letter file and acked
	Skipped      uint64            // undecodable records acked without publishing
	SessionLost  uint64            // connections where the broker had lost the session we expected
	Resent       uint64            // records published again because their session was lost
	Restored     uint64            // records found in flight in the session store at start
	Resumed      uint64            // records found done in the session store at start (acked, not re-sent)
	InFlight     int               // records handed to the session and not yet acknowledged
	Received     uint64            // messages delivered on our subscriptions (commands)
	Responses    uint64            // Respond messages handed to the session
	Subscribes   uint64            // successful SUBSCRIBE exchanges

	SessionWriteErrors uint64 // failed or short writes of the session store file
	SessionCorrupt     int    // damaged regions of the session store skipped at start (bytes kept in corrupt/)
}

// Publisher drains a Log to an MQTT broker. Create it with New and run it
// with Run; the other methods may be called from any goroutine.
type Publisher struct {
	cfg       Config
	ep        endpoint
	log       Log
	logger    *slog.Logger
	store     *session.Store
	sess      *state.State // shared by all connections
	running   atomic.Bool
	backlog   atomic.Bool // records read now are history (after an outage or at start): user property replay=true
	stateBell chan struct{}
	wake      chan struct{} // wakes the sender: an ack, a failure, a connection
	ahead     int           // maxAhead (smaller in tests)
	dl        *deadLetter
	deadCh    chan *job   // to deadWriter; nil without dl
	payloads  sync.Pool   // *[]byte: payload buffers of delivered jobs
	refusals  *logLimiter // refusal and dead-letter log lines, per topic

	mu        sync.Mutex
	cli       *paho.Client  // nil while down
	link      *link         // the connection cli belongs to; nil while down
	conn      net.Conn      // the current connection, for tests
	connUp    chan struct{} // closed while connected; replaced when down
	epoch     uint64        // incremented before every connection attempt
	connSeq   uint64        // number of successful connections
	states    map[string]*stateEntry
	stateKeys []string     // insertion order; status first
	epochMu   sync.RWMutex // write-held while switching connections; see sessionGate
	discMu    sync.Mutex
	discs     map[string]uint64
	rcodes    map[byte]uint64

	// jmu guards the jobs in the session and the queues of jobs to send
	// again. Held briefly; never across I/O.
	jmu       sync.Mutex
	pending   map[uint64]*job       // in the session, awaiting completion
	window    int                   // max len(pending) on this connection
	resend    []*job                // session lost: publish again first, in seq order
	retry     []*job                // refused: publish again at due
	dead      []*job                // refused too often: dead-letter
	holds     map[string]*topicHold // topics refused for good: records dead-lettered unsent until the hold ends
	lastProbe time.Time             // when a held topic was last sent again

	connAcks    atomic.Uint64   // acknowledgements on the current connection (see checkPoison)
	poisonSeq   uint64          // connectionLoop only: the oldest record in flight at the last short, silent connections
	poisonCount int             // how many such connections in a row
	notices     []deadNotice    // dead letters not yet announced on DeadLetterTopic
	skip        map[uint64]bool // seqs handled at start (in flight or done)
	skipTo      uint64          // no seq >= skipTo is in skip
	nextRate    time.Time       // replay pacing

	subMu sync.Mutex
	subs  []subscription // see Subscribe (inbound.go)
	subWG sync.WaitGroup // subscribe goroutines

	stats struct {
		received, responses, subscribes              atomic.Uint64
		published                                    [3]atomic.Uint64
		acked, failed, skipped, reconnects, connects atomic.Uint64
		connectFails, sessionLost, resent, restored  atomic.Uint64
		resumed, replayed, bytesOut, deadLettered    atomic.Uint64
	}
}

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

type stateEntry struct {
	payload     []byte
	version     uint64
	sentVersion uint64
	sentConn    uint64 // connSeq it was last published on
}

// New validates cfg, opens the session store and returns a Publisher for
// log.
func New(cfg Config, log Log) (*Publisher, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	ep, err := parseURL(cfg.URL)
	if err != nil {
		return nil, err
	}
	if log == nil {
		return nil, errors.New("mqtt: nil log")
	}
	logger := cfg.Logger.With("component", "mqtt")
	st := session.NewMemory()
	if cfg.SessionDir != "" {
		if st, err = session.Open(cfg.SessionDir, logger); err != nil {
			return nil, err
		}
	}
	// At QoS 1 and 2 every connection is a batchConn, which writes the
	// store's pending records before each socket write.
	st.SetDeferPuts(cfg.QoS > 0)
	p := &Publisher{
		cfg:       cfg,
		ep:        ep,
		log:       log,
		logger:    logger,
		store:     st,
		sess:      state.New(st, memory.New()),
		stateBell: make(chan struct{}, 1),
		wake:      make(chan struct{}, 1),
		connUp:    make(chan struct{}),
		states:    make(map[string]*stateEntry),
		discs:     map[string]uint64{},
		rcodes:    map[byte]uint64{},
		pending:   map[uint64]*job{},
		window:    cfg.MaxInflight,
		skip:      map[uint64]bool{},
		holds:     map[string]*topicHold{},
		ahead:     maxAhead,
		refusals:  newLogLimiter(logEvery),
	}
	if cfg.DeadLetterFile != "" {
		p.dl = &deadLetter{path: cfg.DeadLetterFile}
		p.deadCh = make(chan *job, maxDeadBatch)
	}
	p.backlog.Store(true)
	return p, nil
}

// Connected reports whether a connection to the broker is up.
func (p *Publisher) Connected() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cli != nil
}

// Stats returns a snapshot of the counters.
func (p *Publisher) Stats() Stats {
	s := Stats{
		Connected:    p.Connected(),
		Connects:     p.stats.connects.Load(),
		Reconnects:   p.stats.reconnects.Load(),
		ConnectFails: p.stats.connectFails.Load(),
		Acked:        p.stats.acked.Load(),
		Failed:       p.stats.failed.Load(),
		Replayed:     p.stats.replayed.Load(),
		BytesOut:     p.stats.bytesOut.Load(),
		DeadLettered: p.stats.deadLettered.Load(),
		Skipped:      p.stats.skipped.Load(),
		SessionLost:  p.stats.sessionLost.Load(),
		Resent:       p.stats.resent.Load(),
		Restored:     p.stats.restored.Load(),
		Resumed:      p.stats.resumed.Load(),
		Received:     p.stats.received.Load(),
		Responses:    p.stats.responses.Load(),
		Subscribes:   p.stats.subscribes.Load(),
	}
	for i := range s.Published {
		s.Published[i] = p.stats.published[i].Load()
	}
	p.discMu.Lock()
	s.Disconnects = make(map[string]uint64, len(p.discs))
	for k, v := range p.discs {
		s.Disconnects[k] = v
	}
	s.ReasonCodes = make(map[byte]uint64, len(p.rcodes))
	for k, v := range p.rcodes {
		s.ReasonCodes[k] = v
	}
	p.discMu.Unlock()
	p.jmu.Lock()
	s.InFlight = len(p.pending)
	p.jmu.Unlock()
	s.SessionWriteErrors, s.SessionCorrupt = p.store.Health()
	return s
}

func (p *Publisher) countReason(rc byte) {
	p.discMu.Lock()
	p.rcodes[rc]++
	p.discMu.Unlock()
}

func (p *Publisher) countDisconnect(reason string) {
	p.discMu.Lock()
	p.discs[reason]++
	p.discMu.Unlock()
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

func ring(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// Run connects (retrying until ctx is done; a broker that is down is normal)
// and publishes the log from log.Acked() on. When ctx is done it stops taking
// records, waits up to ShutdownGrace for the publishes in flight (what is
// left stays in the session store and the buffer for the next start),
// publishes the offline status, disconnects and returns nil. Run may be
// called once.
func (p *Publisher) Run(ctx context.Context) error {
	if !p.running.CompareAndSwap(false, true) {
		return errors.New("mqtt: Run called twice")
	}
	defer func() {
		if err := p.store.Close(); err != nil {
			p.logger.Error("close session store", "err", err)
		}
	}()
	if p.ep.tls && p.cfg.TLS != nil && p.cfg.TLS.InsecureSkipVerify {
		p.logger.Warn("TLS certificate verification is disabled (insecure_skip_verify): the broker is not authenticated", "url", p.cfg.URL)
	}
	p.resume()

	// The connection and the state messages outlive ctx: the offline status
	// is published after it is done.
	connCtx, connStop := context.WithCancel(context.WithoutCancel(ctx))
	defer connStop()
	stateCtx, stateStop := context.WithCancel(connCtx)
	defer stateStop()

	var bg, stateWG sync.WaitGroup
	bg.Go(func() { p.connectionLoop(connCtx) })
	stateWG.Go(func() { p.stateLoop(stateCtx) })

	var dlWG sync.WaitGroup
	if p.dl != nil {
		dlWG.Go(p.deadWriter)
	}
	p.sender(ctx) // returns when ctx is done
	if p.dl != nil {
		close(p.deadCh) // the sender was the only one to send on it
		dlWG.Wait()
		p.dl.close()
	}

	// Shutdown: wait for the acknowledgements of what is in flight.
	deadline := time.Now().Add(p.cfg.ShutdownGrace)
	for {
		p.jmu.Lock()
		n := len(p.pending)
		p.jmu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) || !p.Connected() {
			p.logger.Warn("shutdown: publishes still in flight stay in the session store and the buffer", "inflight", n)
			break
		}
		time.Sleep(5 * time.Millisecond)
	}

	stateStop()
	stateWG.Wait()
	p.publishOffline()
	connStop()
	bg.Wait()
	p.subWG.Wait()
	return nil
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
	errs := 0
	for {
		// A slot in the window.
		p.jmu.Lock()
		for len(p.pending) >= p.window && p.cfg.QoS > 0 {
			p.jmu.Unlock()
			select {
			case <-p.wake:
			case <-ctx.Done():
				return false
			}
			p.jmu.Lock()
		}
		p.jmu.Unlock()
		l := p.awaitLink(ctx)
		if l == nil {
			return false
		}
		p.jmu.Lock()
		if len(p.resend) > 0 && p.resend[0].seq < j.seq {
			// The session was lost while j waited: what was in flight goes
			// first, j takes its place among it.
			i, _ := slices.BinarySearchFunc(p.resend, j.seq, func(a *job, s uint64) int { return cmp.Compare(a.seq, s) })
			p.resend = slices.Insert(p.resend, i, j)
			p.jmu.Unlock()
			return true
		}
		p.jmu.Unlock()
		if j.replay && p.cfg.MaxReplayRate > 0 {
			now := time.Now()
			if p.nextRate.Before(now) {
				p.nextRate = now
			}
			if d := p.nextRate.Sub(now); d > 0 && !sleep(ctx, d) {
				return false
			}
			p.nextRate = p.nextRate.Add(time.Duration(float64(time.Second) / p.cfg.MaxReplayRate))
		}
		if p.cfg.QoS > 0 {
			p.jmu.Lock()
			p.pending[j.seq] = j
			p.jmu.Unlock()
		}
		qos, nbytes, replay := j.pub.QoS, uint64(len(j.pub.Topic)+len(j.pub.Payload)), j.replay
		err := l.publishRecord(ctx, j.seq, j.pub)
		// From here on j belongs to the completion side if it is in the
		// session.
		if err == nil || errors.Is(err, paho.ErrNetworkErrorAfterStored) {
			p.stats.published[qos].Add(1)
			p.stats.bytesOut.Add(nbytes)
			if replay {
				p.stats.replayed.Add(1)
			}
			if qos == 0 {
				if err == nil {
					p.ackRecord(j.seq)
					return true
				}
				// QoS 0 not written: try again on the next connection.
			} else {
				return true
			}
		}
		if p.cfg.QoS > 0 {
			p.jmu.Lock()
			delete(p.pending, j.seq)
			p.jmu.Unlock()
		}
		if errors.Is(err, paho.ErrInvalidArguments) {
			p.stats.failed.Add(1)
			p.fail(j, 0, err.Error())
			return true
		}
		// Not in the session: the connection is going down, or we are
		// stopping. Wait for this connection to end (or a moment, in case
		// it did not) before trying again.
		errs++
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

// awaitConnection returns the current client, waiting until connected; nil
// when ctx is done.
func (p *Publisher) awaitConnection(ctx context.Context) *paho.Client {
	if l := p.awaitLink(ctx); l != nil {
		return l.cli
	}
	return nil
}

// awaitLink returns the current connection, waiting until connected; nil
// when ctx is done.
func (p *Publisher) awaitLink(ctx context.Context) *link {
	for {
		p.mu.Lock()
		l, up := p.link, p.connUp
		p.mu.Unlock()
		if ctx.Err() != nil {
			return nil
		}
		if l != nil {
			return l
		}
		select {
		case <-up:
		case <-ctx.Done():
			return nil
		}
	}
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

// stableAfter: a connection lost sooner than this after its CONNACK counts
// as a failed attempt for the backoff (see connectionLoop).
const stableAfter = time.Second

// connectionLoop keeps a connection up until ctx is done, then disconnects.
// The first reconnection after a loss is immediate; a connection that keeps
// dying right after its CONNACK (another client with our id taking the
// session over, a broker that drops us at once) is retried with the
// backoff instead of in a tight loop.
func (p *Publisher) connectionLoop(ctx context.Context) {
	attempt := 0
	flaps := 0
	lastErr := ""
	for {
		if attempt > 0 && !sleep(ctx, backoff(attempt, p.cfg.ReconnectMin, p.cfg.ReconnectMax)) {
			return
		}
		if ctx.Err() != nil {
			return
		}
		attempt++
		l, ca, reason, err := p.connect(ctx)
		if errors.Is(err, errFreshSession) {
			attempt = 0
			continue
		}
		if err != nil {
			p.stats.connectFails.Add(1)
			lvl := slog.LevelDebug
			if msg := err.Error(); msg != lastErr || attempt&(attempt-1) == 0 {
				lvl, lastErr = slog.LevelWarn, msg
			}
			p.logger.Log(ctx, lvl, "connect failed; retrying with backoff", "url", p.cfg.URL, "attempt", attempt, "err", err)
			continue
		}
		attempt, lastErr = 0, ""
		upAt := time.Now()
		p.up(l, ca)
		cli := l.cli
		select {
		case <-cli.Done():
			if time.Since(upAt) < stableAfter {
				flaps++
				attempt = flaps
			} else {
				flaps = 0
			}
			why := "network"
			if rc := reason.Load(); rc != 0 {
				why = fmt.Sprintf("server_%#02x", rc)
			}
			p.countDisconnect(why)
			p.down()
			p.logger.Warn("connection lost; reconnecting", "url", p.cfg.URL, "reason", why)
			p.checkPoison(time.Since(upAt) < stableAfter)
		case <-ctx.Done():
			if err := cli.Disconnect(&paho.Disconnect{ReasonCode: 0}); err != nil {
				p.logger.Debug("disconnect", "err", err)
			}
			<-cli.Done()
			p.countDisconnect("shutdown")
			p.down()
			return
		}
	}
}

// connect dials and sends CONNECT. reason receives the reason code of a
// DISCONNECT from the server (+1, so 0 means none).
func (p *Publisher) connect(ctx context.Context) (*link, *paho.Connack, *atomic.Int32, error) {
	// No publish may enter the shared session through an older client from
	// here on (see sessionGate).
	p.epochMu.Lock()
	p.epoch++
	epoch := p.epoch
	p.epochMu.Unlock()

	cctx, cancel := context.WithTimeout(ctx, p.cfg.ConnectTimeout)
	defer cancel()
	conn, err := p.dial(cctx)
	if err != nil {
		return nil, nil, nil, err
	}
	reason := new(atomic.Int32)
	gate := &sessionGate{SessionManager: p.sess, p: p, epoch: epoch}
	cli := paho.NewClient(paho.ClientConfig{
		ClientID: p.cfg.ClientID,
		Conn:     conn,
		Session:  gate,
		// Record publishes are asynchronous; state messages have their own
		// timeouts. Nothing should time out on paho's clock.
		PacketTimeout: 365 * 24 * time.Hour,
		// Messages on our subscriptions (commands); set before CONNECT, so
		// what the broker queued for our session is not missed.
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){p.received},
		OnClientError:     func(err error) { p.logger.Debug("connection error", "err", err) },
		OnServerDisconnect: func(d *paho.Disconnect) {
			reason.Store(int32(d.ReasonCode) + 1)
			rs := ""
			if d.Properties != nil {
				rs = d.Properties.ReasonString
			}
			p.logger.Warn("broker disconnected us", "reason_code", fmt.Sprintf("%#02x", d.ReasonCode), "reason", rs)
		},
	})
	cli.SetErrorLogger(pahoLogger{p.logger})
	p.mu.Lock()
	p.conn = conn
	p.mu.Unlock()
	cp := p.connectPacket()
	ca, err := cli.Connect(cctx, cp)
	if err != nil {
		if ca != nil && ca.ReasonCode >= 0x80 {
			p.countReason(ca.ReasonCode)
			why := (&packets.Connack{ReasonCode: ca.ReasonCode}).Reason()
			if ca.Properties != nil && ca.Properties.ReasonString != "" {
				why = ca.Properties.ReasonString
			}
			return nil, nil, nil, fmt.Errorf("broker refused the connection: CONNACK reason code %#02x: %s", ca.ReasonCode, why)
		}
		return nil, nil, nil, err
	}
	if cp.CleanStart {
		// A fresh session (any stale one at the broker is gone). mosquitto
		// persists only sessions whose connection had Clean Start = 0, so
		// leave (DISCONNECT 0x00: no Will, the session stays for
		// SessionExpiry) and resume it at once with Clean Start = 0.
		p.store.SetSession()
		_ = cli.Disconnect(&paho.Disconnect{ReasonCode: 0})
		<-cli.Done()
		return nil, nil, nil, errFreshSession
	}
	l := &link{cli: cli, gate: gate, conn: conn, maxQoS: 2, retain: true}
	if ca.Properties != nil {
		if ca.Properties.MaximumQoS != nil {
			l.maxQoS = *ca.Properties.MaximumQoS
		}
		l.retain = ca.Properties.RetainAvailable
	}
	return l, ca, reason, nil
}

// errFreshSession: connect started a new session and left; connect again.
var errFreshSession = errors.New("mqtt: new session started; resuming it")

func (p *Publisher) dial(ctx context.Context) (net.Conn, error) {
	d := net.Dialer{KeepAlive: -1} // MQTT keep alive does the job
	if !p.ep.tls {
		conn, err := d.DialContext(ctx, "tcp", p.ep.addr)
		if err != nil || p.cfg.QoS == 0 {
			// At QoS 0 a record is acked once written to the socket: a
			// plain *net.TCPConn, where paho writes each packet with one
			// writev (atomic on it, so no locking wrapper is needed).
			return conn, err
		}
		return newBatchConn(conn, p.store.Flush), nil
	}
	cfg := p.cfg.TLS
	if cfg == nil {
		cfg = &tls.Config{}
	}
	if cfg.ServerName == "" {
		cfg = cfg.Clone()
		cfg.ServerName = p.ep.host
	}
	conn, err := (&tls.Dialer{NetDialer: &d, Config: cfg}).DialContext(ctx, "tcp", p.ep.addr)
	if err != nil {
		return nil, fmt.Errorf("TLS connection to %s: %w", p.ep.addr, err)
	}
	if p.cfg.QoS == 0 {
		// A tls.Conn writes a multi-buffer packet in several Writes:
		// serialise. Each Write returns once the record is on the socket.
		return packets.NewThreadSafeConn(conn), nil
	}
	// One TLS write (and as few records as possible) per batch of packets.
	return newBatchConn(conn, p.store.Flush), nil
}

func (p *Publisher) connectPacket() *paho.Connect {
	expiry := uint32(min(p.cfg.SessionExpiry/time.Second, 0xFFFFFFFF))
	cp := &paho.Connect{
		ClientID:  p.cfg.ClientID,
		KeepAlive: uint16(p.cfg.KeepAlive / time.Second),
		// Clean Start only when we have no session to resume: a first
		// connection ever (persistent store) or of this process (memory
		// store). Otherwise a QoS 2 packet id still awaiting PUBREL at the
		// broker could swallow a new message.
		CleanStart: !p.store.HasSession(),
		Properties: &paho.ConnectProperties{SessionExpiryInterval: &expiry},
	}
	if p.cfg.Username != "" {
		cp.UsernameFlag, cp.Username = true, p.cfg.Username
	}
	if p.cfg.Password != "" {
		cp.PasswordFlag, cp.Password = true, []byte(p.cfg.Password)
	}
	if p.cfg.StatusTopic != "" {
		cp.WillMessage = &paho.WillMessage{
			Topic:   p.cfg.StatusTopic,
			QoS:     1,
			Retain:  true,
			Payload: p.statusPayload(false, time.Now()),
		}
		cp.WillProperties = &paho.WillProperties{}
	}
	return cp
}

// up publishes a new connection to the sender, after the session check.
func (p *Publisher) up(l *link, ca *paho.Connack) {
	expected := p.store.HasSession()
	p.store.SetSession()
	rm := 65535
	if ca.Properties != nil && ca.Properties.ReceiveMaximum != nil {
		rm = int(*ca.Properties.ReceiveMaximum)
	}
	p.jmu.Lock()
	// Keep a slot of the broker's Receive Maximum for the state messages
	// paho's send quota wraps when more are stored than the broker allows.
	p.window = max(1, min(p.cfg.MaxInflight, rm-1))
	var lost []*job
	if !ca.SessionPresent {
		for _, j := range p.pending {
			lost = append(lost, j)
		}
		clear(p.pending)
		if len(lost) > 0 {
			slices.SortFunc(lost, func(a, b *job) int { return cmp.Compare(a.seq, b.seq) })
			p.resend = append(lost, p.resend...)
		}
	}
	p.jmu.Unlock()
	if !ca.SessionPresent && (expected || len(lost) > 0) {
		p.stats.sessionLost.Add(1)
		p.stats.resent.Add(uint64(len(lost)))
		p.logger.Warn("broker had no session for us; publishing again what was in flight (duplicates possible)", "records", len(lost))
	}

	p.mu.Lock()
	p.connSeq++
	if p.connSeq > 1 {
		p.stats.reconnects.Add(1)
	}
	p.stats.connects.Add(1)
	p.cli, p.link = l.cli, l
	close(p.connUp)
	p.mu.Unlock()
	p.resubscribe(l.cli)
	ring(p.wake)
	p.logger.Info("connected", "url", p.cfg.URL, "session_present", ca.SessionPresent, "receive_maximum", rm)
	if p.cfg.StatusTopic != "" {
		p.setState(p.cfg.StatusTopic, p.statusPayload(true, time.Now()))
	} else {
		ring(p.stateBell)
	}
}

func (p *Publisher) down() {
	p.backlog.Store(true)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cli == nil {
		return
	}
	p.cli, p.link = nil, nil
	p.connUp = make(chan struct{})
}

// link is one connection: the paho client, its session gate and the
// connection paho writes to, with what its CONNACK allows.
type link struct {
	cli    *paho.Client
	gate   *sessionGate
	conn   net.Conn
	maxQoS byte // the broker's Maximum QoS
	retain bool // the broker's Retain Available
}

// publishRecord hands the PUBLISH of the buffer record seq to the session
// and writes it, without waiting for its acknowledgement (which the
// session reports: see sessionGate.PacketReceived). At QoS 1 and 2 it does
// what paho's asynchronous PublishWithOptions does, with the seq passed
// explicitly to the session store (paho's call has no room for it); at
// QoS 0 it is paho's call. It returns paho.ErrNetworkErrorAfterStored when
// the packet is in the session but could not be written (the session
// sends it again on the next connection), paho.ErrInvalidArguments when
// the broker does not allow the packet.
func (l *link) publishRecord(ctx context.Context, seq uint64, pub *paho.Publish) error {
	if pub.QoS == 0 {
		_, err := l.cli.PublishWithOptions(ctx, pub, paho.PublishOptions{Method: paho.PublishMethod_AsyncSend})
		return err
	}
	switch {
	case pub.QoS > l.maxQoS:
		return fmt.Errorf("%w: QoS %d above the broker's maximum %d", paho.ErrInvalidArguments, pub.QoS, l.maxQoS)
	case pub.Retain && !l.retain:
		return fmt.Errorf("%w: retained message, the broker supports none", paho.ErrInvalidArguments)
	case pub.Topic == "":
		return fmt.Errorf("%w: empty topic", paho.ErrInvalidArguments)
	}
	pb := pub.Packet()
	// The session answers on resp; as with paho's asynchronous publish
	// nobody reads it (it has room for the one answer).
	resp := make(chan packets.ControlPacket, 1)
	if err := l.gate.addRecord(ctx, seq, pb, resp); err != nil {
		return err
	}
	if _, err := pb.WriteTo(l.conn); err != nil {
		return paho.ErrNetworkErrorAfterStored
	}
	return nil
}

// sessionGate is the session of one connection. It keeps an old client
// from adding a publish to the shared session once a newer connection is
// being set up (such a packet would be written to the dead connection after
// the new connection re-sent the session, and wait for an acknowledgement
// until the next reconnect), hands the store the record each PUBLISH
// carries (addRecord), and reports the end of every record's exchange to the
// publisher.
type sessionGate struct {
	pahosession.SessionManager
	p     *Publisher
	epoch uint64
	local bool // see refuseLocally
}

func (g *sessionGate) AddToSession(ctx context.Context, pk pahosession.Packet, resp chan<- packets.ControlPacket) error {
	g.p.epochMu.RLock()
	defer g.p.epochMu.RUnlock()
	if g.p.epoch != g.epoch {
		return pahosession.ErrNoConnection
	}
	err := g.SessionManager.AddToSession(ctx, pk, resp)
	if stored, ok := ctx.Value(storedKey{}).(*atomic.Bool); ok && err == nil {
		stored.Store(true)
	}
	return err
}

func (g *sessionGate) PacketReceived(recv *packets.ControlPacket, pubs chan<- *packets.Publish) error {
	var (
		id     uint16
		rc     byte
		reason string
		final  bool
	)
	switch pk := recv.Content.(type) {
	case *packets.Puback:
		id, rc, final = pk.PacketID, pk.ReasonCode, true
		if pk.Properties != nil {
			reason = pk.Properties.ReasonString
		}
	case *packets.Pubrec:
		if pk.ReasonCode >= 0x80 { // the end of this QoS 2 exchange
			id, rc, final = pk.PacketID, pk.ReasonCode, true
			if pk.Properties != nil {
				reason = pk.Properties.ReasonString
			}
		}
	case *packets.Pubcomp:
		// 0x92 (packet id not found) after our PUBREL: the broker had the
		// message and forgot the id; delivered.
		id, final = pk.PacketID, true
	}
	if g.local {
		// a refusal made up by refuseLocally: not the broker's
	} else if pk, ok := recv.Content.(*packets.Pubrec); ok && g.p.store.SeqOf(pk.PacketID) != 0 || id != 0 && g.p.store.SeqOf(id) != 0 {
		g.p.connAcks.Add(1) // a record acknowledged (see checkPoison)
	}
	var seq uint64
	if final {
		seq = g.p.store.SeqOf(id)
		if seq != 0 && rc >= 0x80 {
			g.p.store.FailNext(id)
		}
	}
	err := g.SessionManager.PacketReceived(recv, pubs)
	if seq != 0 {
		g.p.complete(seq, rc, reason)
	}
	return err
}

// addRecord adds the PUBLISH pb of the buffer record seq to the session
// (see link.publishRecord): the seq travels with the packet, as a
// recordPacket, into the store's Put.
func (g *sessionGate) addRecord(ctx context.Context, seq uint64, pb *packets.Publish, resp chan<- packets.ControlPacket) error {
	return g.AddToSession(ctx, session.Record{Publish: pb, Seq: seq}, resp)
}

// Close is a no-op: the session outlives every client.
func (g *sessionGate) Close() error { return nil }

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

// dropConnection closes the network connection under paho, as a crash of the
// link would (no DISCONNECT: the broker publishes the Will). For tests.
func (p *Publisher) dropConnection() {
	p.mu.Lock()
	c := p.conn
	p.mu.Unlock()
	if c != nil {
		_ = c.Close()
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func randInt63n(n int64) int64 { return rand.Int64N(n) }

type pahoLogger struct{ l *slog.Logger }

func (l pahoLogger) Println(v ...any)               { l.l.Debug("paho: " + fmt.Sprint(v...)) }
func (l pahoLogger) Printf(format string, v ...any) { l.l.Debug("paho: " + fmt.Sprintf(format, v...)) }
