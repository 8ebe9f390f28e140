// Package mqtt is ferry's MQTT 5 side: it drains the disk buffer to the
// broker and removes a record from the buffer only once the broker has
// acknowledged it (PUBACK at QoS 1, PUBCOMP at QoS 2; written at QoS 0).
//
// It drives paho.golang's paho.Client directly with its own small
// connection loop (rather than autopaho): that keeps golang.org/x/net out of
// the build, gives a plain *net.TCPConn to paho (one writev per packet) and,
// above all, lets the publisher see each CONNACK before any publish is
// attempted on the new connection, which is what makes the session handling
// below exact.
//
// Delivery: every record is published by its own goroutine (at most
// MaxInflight at once) through the blocking Publish, which is the only way
// paho reports the broker's reason code. The paho session state is shared by
// all connections, so a publish in flight when the link drops is re-sent by
// paho with DUP=1 after the reconnect and its Publish call returns the real
// outcome then. When the broker reports no session (Session Present = 0),
// paho silently forgets what was in flight; the publisher then cancels those
// calls and publishes the records again (duplicates only for what was in
// flight). A reason code >= 0x80 is a failure: the record is not acked, it is
// logged, counted and retried with backoff.
package mqtt

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	"github.com/eclipse/paho.golang/paho/session"
	"github.com/eclipse/paho.golang/paho/session/state"

	"github.com/ferry-gateway/ferry/adapters"
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

// Stats are the publisher's counters.
type Stats struct {
	Published   uint64 // PUBLISH attempts for buffered records that reached the session, retries included
	Acked       uint64 // records acknowledged by the broker and acked in the log
	Failed      uint64 // publishes answered with a reason code >= 0x80 (or refused by paho as invalid)
	Skipped     uint64 // undecodable records acked without publishing
	Reconnects  uint64 // successful connections after the first
	SessionLost uint64 // reconnections where the broker had no session (in-flight records re-sent)
	InFlight    int    // records taken from the log and not yet acknowledged
}

// Publisher drains a Log to an MQTT broker. Create it with New and run it
// with Run; the other methods may be called from any goroutine.
type Publisher struct {
	cfg       Config
	ep        endpoint
	log       Log
	logger    *slog.Logger
	sess      *state.State // shared by all connections (in memory for now)
	slots     chan struct{}
	running   atomic.Bool
	backlog   atomic.Bool // records dispatched now are history (after an outage or at start): user property replay=true
	stateBell chan struct{}

	mu        sync.Mutex
	cli       *paho.Client    // nil while down
	conn      net.Conn        // the current connection, for tests
	connUp    chan struct{}   // closed while connected; replaced when down
	epoch     uint64          // incremented before every connection attempt
	connSeq   uint64          // number of successful connections
	hard      context.Context // ends the publishes still in flight after the shutdown grace
	sessCtx   context.Context // child of hard; cancelled when the broker loses our session
	sessStop  context.CancelFunc
	states    map[string]*stateEntry
	stateKeys []string     // insertion order; status first
	epochMu   sync.RWMutex // write-held while switching connections; see sessionGate

	stats struct {
		published, acked, failed, skipped, reconnects, sessionLost atomic.Uint64
		inflight                                                   atomic.Int64
	}
}

type stateEntry struct {
	payload     []byte
	version     uint64
	sentVersion uint64
	sentConn    uint64 // connSeq it was last published on
}

// New validates cfg and returns a Publisher for log.
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
	p := &Publisher{
		cfg:       cfg,
		ep:        ep,
		log:       log,
		logger:    cfg.Logger.With("component", "mqtt"),
		sess:      state.NewInMemory(),
		slots:     make(chan struct{}, cfg.MaxInflight),
		stateBell: make(chan struct{}, 1),
		connUp:    make(chan struct{}),
		states:    make(map[string]*stateEntry),
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
	return Stats{
		Published:   p.stats.published.Load(),
		Acked:       p.stats.acked.Load(),
		Failed:      p.stats.failed.Load(),
		Skipped:     p.stats.skipped.Load(),
		Reconnects:  p.stats.reconnects.Load(),
		SessionLost: p.stats.sessionLost.Load(),
		InFlight:    int(p.stats.inflight.Load()),
	}
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
	p.ringState()
}

func (p *Publisher) ringState() {
	select {
	case p.stateBell <- struct{}{}:
	default:
	}
}

// Run connects (retrying until ctx is done; a broker that is down is normal)
// and publishes the log from log.Acked() on. When ctx is done it stops taking
// records, waits up to ShutdownGrace for the publishes in flight, publishes
// the offline status, disconnects and returns nil. Run may be called once.
func (p *Publisher) Run(ctx context.Context) error {
	if !p.running.CompareAndSwap(false, true) {
		return errors.New("mqtt: Run called twice")
	}
	// hard ends the publishes still in flight after the grace period.
	hard, hardStop := context.WithCancel(context.WithoutCancel(ctx))
	defer hardStop()
	p.mu.Lock()
	p.hard = hard
	p.sessCtx, p.sessStop = context.WithCancel(hard)
	p.mu.Unlock()

	// The connection and the state messages outlive ctx: the offline status
	// is published after it is done.
	connCtx, connStop := context.WithCancel(context.WithoutCancel(ctx))
	defer connStop()
	stateCtx, stateStop := context.WithCancel(connCtx)
	defer stateStop()

	var bg sync.WaitGroup
	bg.Go(func() { p.connectionLoop(connCtx) })
	bg.Go(func() { p.stateLoop(stateCtx) })

	var workers sync.WaitGroup
	p.dispatch(ctx, &workers) // returns when ctx is done

	// Shutdown: workers not publishing have returned or are returning;
	// the ones waiting for an acknowledgement get the grace period.
	idle := make(chan struct{})
	go func() { workers.Wait(); close(idle) }()
	grace := time.NewTimer(p.cfg.ShutdownGrace)
	select {
	case <-idle:
	case <-grace.C:
		p.logger.Warn("shutdown grace over; publishes still in flight stay in the buffer", "inflight", p.stats.inflight.Load())
	}
	grace.Stop()
	hardStop()
	<-idle

	stateStop()
	p.publishOffline()
	connStop()
	bg.Wait()
	return nil
}

// dispatch reads the log and starts a delivery goroutine per record, at most
// MaxInflight at once, until ctx is done. It then waits for nothing: the
// caller handles the shutdown of workers.
func (p *Publisher) dispatch(ctx context.Context, workers *sync.WaitGroup) {
	next := p.log.Acked()
	var (
		jobs    []*job
		skipped []uint64
		fails   int
	)
	notify := p.log.Notify()
	for {
		// At least one free slot, then as many as are free (max 256).
		select {
		case p.slots <- struct{}{}:
		case <-ctx.Done():
			return
		}
		n := 1
	more:
		for n < 256 {
			select {
			case p.slots <- struct{}{}:
				n++
			default:
				break more
			}
		}
		replay := p.backlog.Load()
		connected := p.Connected()
		jobs, skipped = jobs[:0], skipped[:0]
		visited := 0
		nxt, err := p.log.Scan(next, n, func(seq uint64, data []byte) error {
			visited++
			j, err := p.newJob(seq, data, replay)
			if err != nil {
				p.logger.Error("undecodable buffer record skipped", "seq", seq, "err", err)
				skipped = append(skipped, seq)
				return nil
			}
			jobs = append(jobs, j)
			return nil
		})
		for range n - len(jobs) {
			<-p.slots
		}
		for _, j := range jobs {
			p.stats.inflight.Add(1)
			workers.Go(func() { p.deliver(ctx, j) })
		}
		for _, seq := range skipped {
			p.stats.skipped.Add(1)
			if err := p.log.Ack(seq); err != nil {
				p.logger.Error("ack skipped record", "seq", seq, "err", err)
			}
		}
		if err != nil {
			fails++
			p.logger.Error("read buffer", "from", next, "err", err)
			if visited == 0 && !sleep(ctx, backoff(fails, 100*time.Millisecond, 5*time.Second)) {
				return
			}
		} else {
			fails = 0
		}
		if visited > 0 {
			next = nxt
			continue
		}
		if err == nil && connected {
			p.backlog.Store(false) // caught up: what comes next is live
		}
		select {
		case <-notify:
		case <-ctx.Done():
			return
		}
	}
}

type job struct {
	seq uint64
	pub paho.Publish
}

func (p *Publisher) newJob(seq uint64, data []byte, replay bool) (*job, error) {
	m, err := record.Decode(data)
	if err != nil {
		return nil, err
	}
	j := &job{seq: seq}
	j.pub = paho.Publish{
		QoS:     p.cfg.QoS,
		Retain:  m.Retain,
		Topic:   m.Topic,
		Payload: m.AppendPayload(make([]byte, 0, len(m.Body)+28), seq),
	}
	if replay {
		j.pub.Properties = &paho.PublishProperties{User: paho.UserProperties{{Key: "replay", Value: "true"}}}
	}
	return j, nil
}

// deliver publishes j until the broker acknowledges it or the publisher
// stops; only then is the record acked in the log.
func (p *Publisher) deliver(ctx context.Context, j *job) {
	defer func() {
		p.stats.inflight.Add(-1)
		<-p.slots
	}()
	refused, errs := 0, 0
	for {
		cli, sctx := p.awaitConnection(ctx)
		if cli == nil {
			return // stopping; the record stays in the buffer
		}
		resp, err := cli.Publish(sctx, &j.pub)
		if !errors.Is(err, session.ErrNoConnection) {
			p.stats.published.Add(1) // it was sent (or at least handed to the session)
		}
		switch {
		case resp != nil && resp.ReasonCode >= 0x80:
			// QoS 1: paho returns an error too; QoS 2 PUBREC >= 0x80: paho
			// returns (resp, nil) (paho bug), hence the explicit check.
			refused++
			p.stats.failed.Add(1)
			reason := ""
			if resp.Properties != nil {
				reason = resp.Properties.ReasonString
			}
			p.logger.Warn("broker refused publish; will retry", "topic", j.pub.Topic, "seq", j.seq,
				"reason_code", fmt.Sprintf("%#02x", resp.ReasonCode), "reason", reason, "attempt", refused)
			if !sleep(ctx, backoff(refused, p.cfg.RetryMin, p.cfg.RetryMax)) {
				return
			}
		case err == nil:
			p.stats.acked.Add(1)
			if err := p.log.Ack(j.seq); err != nil {
				p.logger.Error("ack buffer record", "seq", j.seq, "err", err)
			}
			return
		case errors.Is(err, paho.ErrInvalidArguments):
			refused++
			p.stats.failed.Add(1)
			p.logger.Warn("publish refused by client; will retry", "topic", j.pub.Topic, "seq", j.seq, "err", err, "attempt", refused)
			if !sleep(ctx, backoff(refused, p.cfg.RetryMin, p.cfg.RetryMax)) {
				return
			}
		default:
			// The connection went down, the session was lost, or we are
			// stopping. Wait for this connection to end (or a moment, in
			// case it did not) before trying again.
			errs++
			p.logger.Debug("publish interrupted", "topic", j.pub.Topic, "seq", j.seq, "err", err)
			t := time.NewTimer(backoff(errs, 20*time.Millisecond, time.Second))
			select {
			case <-cli.Done():
			case <-t.C:
			case <-ctx.Done():
			}
			t.Stop()
		}
	}
}

// awaitConnection returns the current client and the context for publishes
// on its session, waiting until connected; nil when ctx is done.
func (p *Publisher) awaitConnection(ctx context.Context) (*paho.Client, context.Context) {
	for {
		p.mu.Lock()
		cli, sctx, up := p.cli, p.sessCtx, p.connUp
		p.mu.Unlock()
		if ctx.Err() != nil {
			return nil, nil
		}
		if cli != nil {
			return cli, sctx
		}
		select {
		case <-up:
		case <-ctx.Done():
			return nil, nil
		}
	}
}

// connectionLoop keeps a connection up until ctx is done, then disconnects.
func (p *Publisher) connectionLoop(ctx context.Context) {
	attempt := 0
	first := true
	for {
		if attempt > 0 && !sleep(ctx, backoff(attempt, p.cfg.ReconnectMin, p.cfg.ReconnectMax)) {
			return
		}
		if ctx.Err() != nil {
			return
		}
		attempt++
		cli, ca, err := p.connect(ctx, first)
		if err != nil {
			lvl := slog.LevelDebug
			if attempt == 1 {
				lvl = slog.LevelWarn
			}
			p.logger.Log(ctx, lvl, "connect failed; retrying", "url", p.cfg.URL, "attempt", attempt, "err", err)
			continue
		}
		first = false
		attempt = 0
		p.up(cli, ca)
		select {
		case <-cli.Done():
			p.down()
			p.logger.Warn("connection lost; reconnecting", "url", p.cfg.URL)
		case <-ctx.Done():
			if err := cli.Disconnect(&paho.Disconnect{ReasonCode: 0}); err != nil {
				p.logger.Debug("disconnect", "err", err)
			}
			<-cli.Done()
			p.down()
			return
		}
	}
}

func (p *Publisher) connect(ctx context.Context, first bool) (*paho.Client, *paho.Connack, error) {
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
		return nil, nil, err
	}
	cli := paho.NewClient(paho.ClientConfig{
		ClientID: p.cfg.ClientID,
		Conn:     conn,
		Session:  &sessionGate{SessionManager: p.sess, p: p, epoch: epoch},
		// Publish waits for the acknowledgement across reconnects: the
		// shared session re-sends it. Session loss and shutdown cancel it
		// through sessCtx instead of a timeout.
		PacketTimeout: 365 * 24 * time.Hour,
		OnClientError: func(err error) { p.logger.Debug("connection error", "err", err) },
		OnServerDisconnect: func(d *paho.Disconnect) {
			reason := ""
			if d.Properties != nil {
				reason = d.Properties.ReasonString
			}
			p.logger.Warn("broker disconnected us", "reason_code", fmt.Sprintf("%#02x", d.ReasonCode), "reason", reason)
		},
	})
	cli.SetErrorLogger(pahoLogger{p.logger})
	p.mu.Lock()
	p.conn = conn
	p.mu.Unlock()
	ca, err := cli.Connect(cctx, p.connectPacket(first))
	if err != nil {
		if ca != nil {
			return nil, nil, fmt.Errorf("CONNACK reason code %#02x: %w", ca.ReasonCode, err)
		}
		return nil, nil, err
	}
	return cli, ca, nil
}

func (p *Publisher) dial(ctx context.Context) (net.Conn, error) {
	d := net.Dialer{KeepAlive: -1} // MQTT keep alive does the job
	if !p.ep.tls {
		// A plain *net.TCPConn: paho writes each packet with one writev,
		// which is atomic on it, so no locking wrapper is needed.
		return d.DialContext(ctx, "tcp", p.ep.addr)
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
		return nil, err
	}
	return packets.NewThreadSafeConn(conn), nil
}

func (p *Publisher) connectPacket(first bool) *paho.Connect {
	expiry := uint32(min(p.cfg.SessionExpiry/time.Second, 0xFFFFFFFF))
	cp := &paho.Connect{
		ClientID:  p.cfg.ClientID,
		KeepAlive: uint16(p.cfg.KeepAlive / time.Second),
		// The session store is in memory, so a new process has nothing to
		// resume: start clean, or a QoS 2 packet id still awaiting PUBREL
		// at the broker could swallow a new message. Later connections
		// resume. (With the file session store this becomes false.)
		CleanStart: first,
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

// up publishes a new connection to the workers, after the session check.
func (p *Publisher) up(cli *paho.Client, ca *paho.Connack) {
	p.mu.Lock()
	p.connSeq++
	if p.connSeq > 1 {
		p.stats.reconnects.Add(1)
		if !ca.SessionPresent {
			// paho has dropped its in-flight state without telling the
			// waiting Publish calls: end them so their records are sent
			// again on this connection.
			p.stats.sessionLost.Add(1)
			p.sessStop()
			p.sessCtx, p.sessStop = context.WithCancel(p.hard)
			p.logger.Warn("broker had no session; re-sending what was in flight", "inflight", p.stats.inflight.Load())
		}
	}
	p.cli = cli
	close(p.connUp)
	p.mu.Unlock()
	p.logger.Info("connected", "url", p.cfg.URL, "session_present", ca.SessionPresent)
	if p.cfg.StatusTopic != "" {
		p.setState(p.cfg.StatusTopic, p.statusPayload(true, time.Now()))
	} else {
		p.ringState()
	}
}

func (p *Publisher) down() {
	p.backlog.Store(true)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cli == nil {
		return
	}
	p.cli = nil
	p.connUp = make(chan struct{})
}

// sessionGate keeps an old client from adding a publish to the shared
// session once a newer connection is being set up: such a packet would be
// written to the dead connection after the new connection re-sent the
// session, and wait for an acknowledgement until the next reconnect.
type sessionGate struct {
	session.SessionManager
	p     *Publisher
	epoch uint64
}

func (g *sessionGate) AddToSession(ctx context.Context, pk session.Packet, resp chan<- packets.ControlPacket) error {
	g.p.epochMu.RLock()
	defer g.p.epochMu.RUnlock()
	if g.p.epoch != g.epoch {
		return session.ErrNoConnection
	}
	return g.SessionManager.AddToSession(ctx, pk, resp)
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

// publishOffline publishes the offline status on a clean shutdown.
func (p *Publisher) publishOffline() {
	if p.cfg.StatusTopic == "" {
		return
	}
	p.mu.Lock()
	cli := p.cli
	p.mu.Unlock()
	if cli == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), p.cfg.ShutdownGrace)
	defer cancel()
	_, err := cli.Publish(ctx, &paho.Publish{Topic: p.cfg.StatusTopic, QoS: 1, Retain: true, Payload: p.statusPayload(false, time.Now())})
	if err != nil {
		p.logger.Warn("offline status not published", "err", err)
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
