package mqtt

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync/atomic"
	"time"

	"github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	pahosession "github.com/eclipse/paho.golang/paho/session"

	"github.com/ferry-gateway/ferry/gateway/mqtt/session"
)

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
	p.connectedAt, p.sessionPresent = time.Now(), ca.SessionPresent
	p.cli, p.link = l.cli, l
	close(p.connUp)
	p.mu.Unlock()
	p.resubscribe(l.cli)
	ring(p.wake)
	p.logger.Info("connected", "url", p.cfg.URL, "session_present", ca.SessionPresent, "receive_maximum", rm)
	if p.cfg.StatusTopic != "" {
		p.setState(p.cfg.StatusTopic, p.statusPayload(true, time.Now()))
	} else {
		ring(p.states.bell)
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

type pahoLogger struct{ l *slog.Logger }

func (l pahoLogger) Println(v ...any) { l.l.Debug("paho: " + fmt.Sprint(v...)) }

func (l pahoLogger) Printf(format string, v ...any) { l.l.Debug("paho: " + fmt.Sprintf(format, v...)) }
