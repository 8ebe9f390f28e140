// Package opcua is ferry's OPC UA adapter. A Client connects to one
// [[opcua]] device (any of the four supported security policies, anonymous,
// username or X.509 login, the server certificate pinned by thumbprint or a
// trusted-certificates directory), then either subscribes to every tag
// (monitored items created in batches, split across subscriptions when the
// server limits them) or reads them all every interval, and hands the
// readings to an adapters.Sink.
//
// Healing is the Client's own: gopcua's reconnect is switched off (it does
// not retry a failed first connect, cannot reuse a closed client and races
// with Close). On any loss (a channel error, a subscription error, a server
// that stops answering the liveness probe) the Client closes the
// connection, reports the device down, and after a jittered exponential
// backoff connects a new one: endpoints and the server certificate are
// checked again, nsu= node ids are resolved again through the namespace
// array (indexes can change when a server restarts), and every
// subscription and monitored item is created again.
package opcua

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/config"
	"github.com/gopcua/opcua"
	"github.com/gopcua/opcua/id"
	"github.com/gopcua/opcua/ua"
)

// Reconnect backoff: from minBackoff doubling to maxBackoff, ±20% jitter.
const (
	minBackoff = 250 * time.Millisecond
	maxBackoff = 10 * time.Second
)

// Modes of a device.
const (
	ModeSubscribe = "subscribe"
	ModePoll      = "poll"
)

// Client reads one OPC UA device. Create it with NewClient and drive it
// with Run.
type Client struct {
	dev       config.OPCUADevice
	sink      adapters.Sink
	log       *slog.Logger
	policyURI string
	mode      ua.MessageSecurityMode
	trust     trustPolicy
	identity  *clientIdentity // application instance certificate; nil with policy None
	userCert  *clientIdentity // X.509 user login; nil otherwise
	tags      []tag

	minBackoff, maxBackoff time.Duration
	running                atomic.Bool

	mu    sync.Mutex
	state int8 // -1 unknown, 0 down, 1 up: as last reported to the sink

	st stats

	liveMu sync.Mutex
	cur    *live         // the connection of Run, for writes (write.go)
	kick   chan struct{} // a write asks poll mode for an immediate read
}

// tag is one configured tag with its node id parsed once.
type tag struct {
	cfg    config.OPCUATag
	static *ua.NodeID // nil when the node id names its namespace by URI
	nsu    string     // namespace URI of an nsu= node id
	idPart string     // "s=...", "i=..." of an nsu= node id
}

// NewClient prepares a client for dev (no network I/O). The client
// certificate is loaded from dev.CertFile/KeyFile, or generated on first
// use into stateDir/pki, when the security policy is not None. sink and
// logger may be nil.
func NewClient(dev config.OPCUADevice, stateDir string, sink adapters.Sink, logger *slog.Logger) (*Client, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if sink == nil {
		sink = nopSink{}
	}
	c := &Client{
		dev: dev, sink: sink, log: logger.With("device", dev.Name),
		state: -1, minBackoff: minBackoff, maxBackoff: maxBackoff,
		kick: make(chan struct{}, 1),
	}
	c.dev.Endpoint = strings.TrimSpace(dev.Endpoint)
	// Credentials in the endpoint are refused (as the config does), so
	// that no message or log below can show them.
	if u, err := url.Parse(c.dev.Endpoint); err != nil || u.User != nil {
		return nil, fmt.Errorf("opcua[%s]: endpoint %q: invalid, or holds credentials (use username and password)", dev.Name, config.RedactURL(c.dev.Endpoint))
	}
	if c.dev.SecurityPolicy == "" {
		c.dev.SecurityPolicy = "None"
	}
	if c.dev.SecurityMode == "" {
		c.dev.SecurityMode = "None"
		if c.dev.SecurityPolicy != "None" {
			c.dev.SecurityMode = "SignAndEncrypt"
		}
	}
	var ok bool
	if c.policyURI, ok = policyURIs[c.dev.SecurityPolicy]; !ok {
		return nil, fmt.Errorf("opcua[%s]: unknown security_policy %q", dev.Name, dev.SecurityPolicy)
	}
	if c.mode, ok = securityModes[c.dev.SecurityMode]; !ok {
		return nil, fmt.Errorf("opcua[%s]: unknown security_mode %q", dev.Name, dev.SecurityMode)
	}
	if (c.policyURI == ua.SecurityPolicyURINone) != (c.mode == ua.MessageSecurityModeNone) {
		return nil, fmt.Errorf("opcua[%s]: security_policy %q does not go with security_mode %q", dev.Name, c.dev.SecurityPolicy, c.dev.SecurityMode)
	}
	c.dev = withDefaults(c.dev)
	if c.dev.Mode != ModeSubscribe && c.dev.Mode != ModePoll {
		return nil, fmt.Errorf("opcua[%s]: unknown mode %q", dev.Name, dev.Mode)
	}
	c.trust = trustPolicy{
		pinned:     NormalizeThumbprint(dev.ServerThumbprint),
		trustedDir: dev.TrustedCertsDir,
	}
	if stateDir != "" {
		c.trust.rejectDir = stateDir + "/pki/rejected"
	}
	if c.policyURI != ua.SecurityPolicyURINone {
		id, err := loadIdentity(dev.CertFile, dev.KeyFile, stateDir)
		if err != nil {
			return nil, fmt.Errorf("opcua[%s]: %w", dev.Name, err)
		}
		c.identity = id
	}
	for _, t := range dev.Tags {
		tg, err := parseTag(t)
		if err != nil {
			return nil, fmt.Errorf("opcua[%s]: tag %q: %w", dev.Name, t.Name, err)
		}
		c.tags = append(c.tags, tg)
	}
	if dev.UserCertFile != "" {
		if err := c.UseCertificateLogin(dev.UserCertFile, dev.UserKeyFile); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// UseCertificateLogin makes the client log in with an X.509 user
// certificate (PEM or DER) and its RSA key instead of anonymously or by
// username. Call it before Run.
func (c *Client) UseCertificateLogin(certFile, keyFile string) error {
	id, err := readIdentity(certFile, keyFile)
	if err != nil {
		return fmt.Errorf("opcua[%s]: user certificate: %w", c.dev.Name, err)
	}
	c.userCert = id
	return nil
}

func parseTag(t config.OPCUATag) (tag, error) {
	tg := tag{cfg: t}
	node := strings.TrimSpace(t.Node)
	if rest, ok := strings.CutPrefix(node, "nsu="); ok {
		i := strings.IndexByte(rest, ';')
		if i <= 0 {
			return tg, fmt.Errorf("invalid node id %q: missing namespace URI or ';'", node)
		}
		tg.nsu, tg.idPart = rest[:i], rest[i+1:]
		if _, err := ua.ParseNodeID("ns=1;" + tg.idPart); err != nil {
			return tg, fmt.Errorf("invalid node id %q: %v", node, err)
		}
		return tg, nil
	}
	n, err := ua.ParseNodeID(node)
	if err != nil {
		return tg, fmt.Errorf("invalid node id %q: %v", node, err)
	}
	tg.static = n
	return tg, nil
}

// resolve returns the node id of every tag for the server's current
// namespace array; a tag whose namespace URI is not in it gets a nil id
// and an error.
func (c *Client) resolve(namespaces []string) ([]*ua.NodeID, []error) {
	ids := make([]*ua.NodeID, len(c.tags))
	errs := make([]error, len(c.tags))
	for i, t := range c.tags {
		if t.static != nil {
			ids[i] = t.static
			continue
		}
		idx := -1
		for j, u := range namespaces {
			if u == t.nsu {
				idx = j
				break
			}
		}
		if idx < 0 {
			errs[i] = fmt.Errorf("namespace URI %q is not in the server's namespace array", t.nsu)
			continue
		}
		n, err := ua.ParseNodeID(fmt.Sprintf("ns=%d;%s", idx, t.idPart))
		if err != nil {
			errs[i] = err
			continue
		}
		ids[i] = n
	}
	return ids, errs
}

// Stats are the client's counters since NewClient.
type Stats struct {
	Up               bool
	Connects         uint64 // sessions established
	ConnectFailures  uint64 // connection attempts that failed
	Disconnects      uint64 // established sessions lost
	Notifications    uint64 // data change notifications received (subscribe)
	Reads            uint64 // Read requests sent (poll)
	Readings         uint64 // readings delivered to the sink
	Probes           uint64 // liveness probes sent while no data arrived
	Subscriptions    int64  // subscriptions of the current session
	MonitoredItems   int64  // monitored items of the current session
	FailedItems      int64  // tags that could not be monitored or resolved in the current session
	LastConnectTime  time.Duration
	LastFirstDataLag time.Duration // from connect start to the first notification
	Writes           uint64        // write requests sent (WriteTag)
	WriteErrors      uint64        // writes that failed (refused, transport, verify)
}

type stats struct {
	connects, connectFailures, disconnects  atomic.Uint64
	notifications, reads, readings, probes  atomic.Uint64
	subscriptions, monitoredItems, failedIt atomic.Int64
	lastConnectTime, lastFirstDataLag       atomic.Int64
	writes, writeErrors                     atomic.Uint64
}

// Stats returns a snapshot of the counters.
func (c *Client) Stats() Stats {
	c.mu.Lock()
	up := c.state == 1
	c.mu.Unlock()
	return Stats{
		Up:               up,
		Connects:         c.st.connects.Load(),
		ConnectFailures:  c.st.connectFailures.Load(),
		Disconnects:      c.st.disconnects.Load(),
		Notifications:    c.st.notifications.Load(),
		Reads:            c.st.reads.Load(),
		Readings:         c.st.readings.Load(),
		Probes:           c.st.probes.Load(),
		Subscriptions:    c.st.subscriptions.Load(),
		MonitoredItems:   c.st.monitoredItems.Load(),
		FailedItems:      c.st.failedIt.Load(),
		LastConnectTime:  time.Duration(c.st.lastConnectTime.Load()),
		LastFirstDataLag: time.Duration(c.st.lastFirstDataLag.Load()),
		Writes:           c.st.writes.Load(),
		WriteErrors:      c.st.writeErrors.Load(),
	}
}

// Run connects, subscribes or polls, and heals the connection until ctx is
// cancelled; then it closes the session and returns nil. The device is
// reported up once its subscriptions are created (subscribe) or a read was
// answered (poll), and down with the reason when the connection fails or
// is lost; every tag is then delivered once as Bad with that reason.
func (c *Client) Run(ctx context.Context) error {
	if !c.running.CompareAndSwap(false, true) {
		return errors.New("opcua: Run already running")
	}
	defer c.running.Store(false)
	backoff := c.minBackoff
	for {
		up, err := c.session(ctx)
		if ctx.Err() != nil {
			return nil
		}
		if up {
			backoff = c.minBackoff
			c.st.disconnects.Add(1)
		} else {
			c.st.connectFailures.Add(1)
		}
		if err == nil {
			err = errors.New("session ended")
		}
		c.st.subscriptions.Store(0)
		c.st.monitoredItems.Store(0)
		if c.setState(false, err) {
			c.deliverAllBad(err.Error())
		} else {
			c.log.Debug("opcua connect failed", "err", err, "retry_in", backoff)
		}
		d := time.Duration(float64(backoff) * (0.8 + 0.4*rand.Float64()))
		t := time.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		backoff = min(2*backoff, c.maxBackoff)
	}
}

// setState reports a state change to the sink; it returns whether the
// state changed.
func (c *Client) setState(up bool, err error) bool {
	s := int8(0)
	if up {
		s = 1
	}
	c.mu.Lock()
	if s == c.state {
		c.mu.Unlock()
		return false
	}
	c.state = s
	c.mu.Unlock()
	if up {
		c.log.Info("opcua device up", "endpoint", c.dev.Endpoint)
	} else {
		c.log.Warn("opcua device down", "endpoint", c.dev.Endpoint, "err", err)
	}
	c.sink.DeviceState(c.dev.Name, up, err)
	return true
}

func (c *Client) deliver(rs []adapters.Reading) {
	if len(rs) == 0 {
		return
	}
	c.st.readings.Add(uint64(len(rs)))
	c.sink.Readings(rs)
}

func (c *Client) deliverAllBad(msg string) {
	now := time.Now()
	rs := make([]adapters.Reading, len(c.tags))
	for i, t := range c.tags {
		rs[i] = adapters.Reading{Device: c.dev.Name, Tag: t.cfg.Name, Quality: adapters.Bad, Time: now, Err: msg}
	}
	c.deliver(rs)
}

// conn is one connected gopcua client with its loss signal.
type conn struct {
	cl    *opcua.Client
	dead  chan struct{} // closed when gopcua reports the channel lost
	stop  chan struct{}
	wg    sync.WaitGroup
	start time.Time
}

func (cn *conn) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = cn.cl.Close(ctx)
	close(cn.stop)
	cn.wg.Wait()
}

// session runs one connection until it fails or ctx is cancelled. up
// reports whether the session got as far as reporting the device up.
func (c *Client) session(ctx context.Context) (up bool, err error) {
	cn, err := c.connect(ctx)
	if err != nil {
		return false, err
	}
	defer cn.close()
	c.st.connects.Add(1)
	ns := cn.cl.Namespaces()
	ids, errs := c.resolve(ns)
	c.setLive(&live{cn: cn, ids: ids, namespaces: len(ns), types: map[int]uint32{}})
	defer c.setLive(nil)
	if c.dev.Mode == ModePoll {
		return c.poll(ctx, cn, ids, errs)
	}
	return c.subscribe(ctx, cn, ids, errs)
}

// connect fetches the endpoints, checks the server certificate, and opens
// a session.
func (c *Client) connect(ctx context.Context) (*conn, error) {
	start := time.Now()
	dctx, cancel := context.WithTimeout(ctx, c.dev.Timeout)
	defer cancel()
	eps, err := opcua.GetEndpoints(dctx, c.dev.Endpoint, opcua.DialTimeout(c.dev.Timeout), opcua.RequestTimeout(c.dev.Timeout), opcua.AutoReconnect(false))
	if err != nil {
		return nil, fmt.Errorf("get endpoints of %s: %w", c.dev.Endpoint, err)
	}
	ep, err := selectEndpoint(eps, c.policyURI, c.mode)
	if err != nil {
		return nil, err
	}
	if c.policyURI != ua.SecurityPolicyURINone || c.trust.pinned != "" || c.trust.trustedDir != "" {
		if err := c.trust.verify(c.dev.Name, c.dev.Endpoint, ep.ServerCertificate); err != nil {
			return nil, err
		}
	}
	opts, err := c.clientOptions(ep)
	if err != nil {
		return nil, err
	}
	states := make(chan opcua.ConnState, 16)
	opts = append(opts, opcua.StateChangedCh(states))
	cl, err := opcua.NewClient(c.dev.Endpoint, opts...)
	if err != nil {
		return nil, fmt.Errorf("opcua client: %w", err)
	}
	cn := &conn{cl: cl, dead: make(chan struct{}), stop: make(chan struct{}), start: start}
	cn.wg.Add(1)
	go func() {
		defer cn.wg.Done()
		connected := false
		for {
			select {
			case <-cn.stop:
				return
			case s := <-states:
				switch s {
				case opcua.Connected:
					connected = true
				case opcua.Disconnected, opcua.Closed:
					if connected {
						connected = false
						close(cn.dead)
					}
				}
			}
		}
	}()
	if err := cl.Connect(dctx); err != nil {
		close(cn.stop)
		cn.wg.Wait()
		return nil, c.explainConnectError(err)
	}
	c.st.lastConnectTime.Store(int64(time.Since(start)))
	return cn, nil
}

func (c *Client) clientOptions(ep *ua.EndpointDescription) ([]opcua.Option, error) {
	opts := []opcua.Option{
		opcua.AutoReconnect(false),
		opcua.DialTimeout(c.dev.Timeout),
		opcua.RequestTimeout(c.dev.Timeout),
		opcua.ApplicationName("ferry"),
		opcua.ProductURI("urn:ferry-gateway:ferry"),
		opcua.SessionName("ferry " + c.dev.Name),
		opcua.SessionTimeout(time.Minute),
	}
	if c.identity != nil {
		opts = append(opts, opcua.Certificate(c.identity.certDER), opcua.PrivateKey(c.identity.key))
		if c.identity.appURI != "" {
			opts = append(opts, opcua.ApplicationURI(c.identity.appURI))
		}
	} else {
		opts = append(opts, opcua.ApplicationURI(ApplicationURI()))
	}
	tokenType := ua.UserTokenTypeAnonymous
	switch {
	case c.userCert != nil:
		tokenType = ua.UserTokenTypeCertificate
		opts = append(opts, opcua.AuthCertificate(c.userCert.certDER), opcua.AuthPrivateKey(c.userCert.key))
	case c.dev.Username != "":
		tokenType = ua.UserTokenTypeUserName
		opts = append(opts, opcua.AuthUsername(c.dev.Username, c.dev.Password))
	default:
		opts = append(opts, opcua.AuthAnonymous())
	}
	if _, err := userTokenPolicy(ep, tokenType); err != nil {
		return nil, err
	}
	opts = append(opts, opcua.SecurityFromEndpoint(ep, tokenType))
	return opts, nil
}

// explainConnectError turns the status codes a user can act on into a
// sentence that says what to do.
func (c *Client) explainConnectError(err error) error {
	var code ua.StatusCode
	if !errors.As(err, &code) {
		return fmt.Errorf("connect %s: %w", c.dev.Endpoint, err)
	}
	switch code {
	case ua.StatusBadUserAccessDenied, ua.StatusBadIdentityTokenRejected, ua.StatusBadIdentityTokenInvalid,
		ua.StatusBadUserSignatureInvalid:
		if c.userCert != nil {
			return fmt.Errorf("login with the user certificate %s (SHA-256 %s) refused by %s (%s): the server must trust this user certificate (add it to its trusted user certificates)",
				c.dev.UserCertFile, Thumbprint(c.userCert.certDER), c.dev.Endpoint, StatusName(code))
		}
		if c.dev.Username != "" {
			return fmt.Errorf("login as %q refused by %s (%s): check username and password (or password_file)", c.dev.Username, c.dev.Endpoint, StatusName(code))
		}
		return fmt.Errorf("anonymous login refused by %s (%s): set username and password, or user_cert_file and user_key_file", c.dev.Endpoint, StatusName(code))
	case ua.StatusBadCertificateUntrusted, ua.StatusBadSecurityChecksFailed, ua.StatusBadCertificateInvalid,
		ua.StatusBadCertificateURIInvalid, ua.StatusBadCertificateUseNotAllowed:
		msg := fmt.Sprintf("the server %s refused the connection (%s)", c.dev.Endpoint, StatusName(code))
		if c.identity != nil {
			msg += fmt.Sprintf(": it may not trust ferry's client certificate (SHA-256 %s); add it to the server's trusted certificates", Thumbprint(c.identity.certDER))
		}
		return fmt.Errorf("%s: %w", msg, err)
	}
	return fmt.Errorf("connect %s: %s: %w", c.dev.Endpoint, StatusName(code), err)
}

// readLimits reads the operation limits that shape batching; a limit the
// server does not publish is 0.
func (c *Client) readLimits(ctx context.Context, cl *opcua.Client) Limits {
	ids := []uint32{
		id.Server_ServerCapabilities_OperationLimits_MaxNodesPerRead,
		id.Server_ServerCapabilities_OperationLimits_MaxMonitoredItemsPerCall,
		id.Server_ServerCapabilities_MaxMonitoredItemsPerSubscription,
	}
	req := &ua.ReadRequest{TimestampsToReturn: ua.TimestampsToReturnNeither}
	for _, n := range ids {
		req.NodesToRead = append(req.NodesToRead, &ua.ReadValueID{NodeID: ua.NewNumericNodeID(0, n), AttributeID: ua.AttributeIDValue})
	}
	var lim Limits
	res, err := cl.Read(ctx, req)
	if err != nil || res == nil || len(res.Results) != len(ids) {
		return lim
	}
	get := func(i int) uint32 {
		dv := res.Results[i]
		if dv == nil || dv.Value == nil || Quality(dv.Status) != adapters.Good {
			return 0
		}
		switch v := dv.Value.Value().(type) {
		case uint32:
			return v
		case uint16:
			return uint32(v)
		case int32:
			if v > 0 {
				return uint32(v)
			}
		}
		return 0
	}
	lim.NodesPerRead, lim.ItemsPerCall, lim.ItemsPerSubscription = get(0), get(1), get(2)
	return lim
}

// probe checks that the server still answers: it reads the server state.
func (c *Client) probe(ctx context.Context, cl *opcua.Client) error {
	c.st.probes.Add(1)
	pctx, cancel := context.WithTimeout(ctx, c.dev.Timeout)
	defer cancel()
	res, err := cl.Read(pctx, &ua.ReadRequest{
		NodesToRead:        []*ua.ReadValueID{{NodeID: ua.NewNumericNodeID(0, id.Server_ServerStatus_State), AttributeID: ua.AttributeIDValue}},
		TimestampsToReturn: ua.TimestampsToReturnNeither,
	})
	if err != nil {
		return err
	}
	if len(res.Results) == 1 && res.Results[0] != nil && res.Results[0].Value != nil {
		if s, ok := res.Results[0].Value.Value().(int32); ok && ua.ServerState(s) != ua.ServerStateRunning {
			return fmt.Errorf("server state is %v", ua.ServerState(s))
		}
	}
	return nil
}

type nopSink struct{}

func (nopSink) Readings([]adapters.Reading)     {}
func (nopSink) DeviceState(string, bool, error) {}
