package mqtt

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/paho"
	"github.com/eclipse/paho.golang/paho/session/state"
	"github.com/eclipse/paho.golang/paho/store/memory"

	"github.com/ferry-gateway/ferry/gateway/mqtt/session"
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
	// ConnectedSince is when the last successful CONNACK arrived (zero
	// before the first), and SessionPresent its Session Present flag.
	// Both describe the current connection while Connected.
	ConnectedSince time.Time
	SessionPresent bool

	SessionWriteErrors uint64 // failed or short writes of the session store file
	SessionCorrupt     int    // damaged regions of the session store skipped at start (bytes kept in corrupt/)
}

// Publisher drains a Log to an MQTT broker. Create it with New and run it
// with Run; the other methods may be called from any goroutine.
type Publisher struct {
	cfg      Config
	ep       endpoint
	log      Log
	logger   *slog.Logger
	store    *session.Store
	sess     *state.State // shared by all connections
	running  atomic.Bool
	backlog  atomic.Bool   // records read now are history (after an outage or at start): user property replay=true
	states   *stateSet     // see state.go
	wake     chan struct{} // wakes the sender: an ack, a failure, a connection
	ahead    int           // maxAhead (smaller in tests)
	dl       *deadLetter
	deadCh   chan *job   // to deadWriter; nil without dl
	payloads sync.Pool   // *[]byte: payload buffers of delivered jobs
	refusals *logLimiter // refusal and dead-letter log lines, per topic

	mu      sync.Mutex
	cli     *paho.Client  // nil while down
	link    *link         // the connection cli belongs to; nil while down
	conn    net.Conn      // the current connection, for tests
	connUp  chan struct{} // closed while connected; replaced when down
	epoch   uint64        // incremented before every connection attempt
	connSeq uint64        // number of successful connections
	// connectedAt and sessionPresent are of the last successful CONNACK
	// (guarded by mu).
	connectedAt    time.Time
	sessionPresent bool
	epochMu        sync.RWMutex // write-held while switching connections; see sessionGate
	discMu         sync.Mutex
	discs          map[string]uint64
	rcodes         map[byte]uint64

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
		cfg:      cfg,
		ep:       ep,
		log:      log,
		logger:   logger,
		store:    st,
		sess:     state.New(st, memory.New()),
		states:   newStateSet(),
		wake:     make(chan struct{}, 1),
		connUp:   make(chan struct{}),
		discs:    map[string]uint64{},
		rcodes:   map[byte]uint64{},
		pending:  map[uint64]*job{},
		window:   cfg.MaxInflight,
		skip:     map[uint64]bool{},
		holds:    map[string]*topicHold{},
		ahead:    maxAhead,
		refusals: newLogLimiter(logEvery),
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
	p.mu.Lock()
	connected, since, present := p.cli != nil, p.connectedAt, p.sessionPresent
	p.mu.Unlock()
	s := Stats{
		Connected:      connected,
		ConnectedSince: since,
		SessionPresent: present,
		Connects:       p.stats.connects.Load(),
		Reconnects:     p.stats.reconnects.Load(),
		ConnectFails:   p.stats.connectFails.Load(),
		Acked:          p.stats.acked.Load(),
		Failed:         p.stats.failed.Load(),
		Replayed:       p.stats.replayed.Load(),
		BytesOut:       p.stats.bytesOut.Load(),
		DeadLettered:   p.stats.deadLettered.Load(),
		Skipped:        p.stats.skipped.Load(),
		SessionLost:    p.stats.sessionLost.Load(),
		Resent:         p.stats.resent.Load(),
		Restored:       p.stats.restored.Load(),
		Resumed:        p.stats.resumed.Load(),
		Received:       p.stats.received.Load(),
		Responses:      p.stats.responses.Load(),
		Subscribes:     p.stats.subscribes.Load(),
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
