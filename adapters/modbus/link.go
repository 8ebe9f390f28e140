package modbus

import (
	"fmt"
	"log"
	"log/slog"
	"math/rand/v2"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/ferry-gateway/ferry/config"
	mb "github.com/simonvetter/modbus"
)

// A link is one connection to a transport URL (a TCP device or gateway, a
// serial line, an RTU-over-TCP converter). Devices configured with the same
// url share one link: several unit ids behind one RS-485 line or one
// Modbus TCP gateway. A link carries one request at a time (its mutex is
// held for each request, and the unit id is set per request), opens lazily,
// and after a transport failure is closed once and re-opened once, after a
// backoff, by whichever of its devices polls first: one failure never
// causes one reconnect per unit.
type link struct {
	key string // the URL
	cfg mb.ClientConfiguration

	mu          sync.Mutex // one request at a time; guards everything below
	client      *mb.ModbusClient
	connected   bool
	lock        *portLock // of the serial device while connected (rtu:// only)
	gen         uint64    // incremented on every successful open
	opened      bool      // opened at least once (a later open is a reconnect)
	lastErr     error
	backoff     time.Duration
	nextDial    time.Time
	timeouts    map[*Poller]time.Duration
	consecTmout int // consecutive unanswered requests, any unit; reset by any answer

	reg  *registry
	refs int // guarded by reg.mu
}

// registry holds the links of a process by URL. Pollers and ReadRaw get
// theirs through acquireLink and give it back with link.release; nothing
// outside this file sees the map.
type registry struct {
	mu    sync.Mutex
	links map[string]*link
}

// shared is the registry of this process: devices configured with the
// same url share one link whichever gateway, reload or probe built them.
var shared = &registry{links: map[string]*link{}}

// lookup returns the link of url, if any, its number of users and the
// number of links (tests).
func (r *registry) lookup(url string) (l *link, refs, n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	l = r.links[url]
	if l != nil {
		refs = l.refs
	}
	return l, refs, len(r.links)
}

// acquireLink returns the shared link of dev.URL, creating it on first use,
// and registers p with its timeout. The serial settings of the first device
// win (the config refuses devices on one url with different settings).
func acquireLink(dev config.ModbusDevice, p *Poller, logger *slog.Logger) (*link, error) {
	cc, err := clientConfig(dev, logger)
	if err != nil {
		return nil, err
	}
	return shared.acquire(dev, cc, p), nil
}

// clientConfig is the client configuration of dev's url, validated
// without I/O.
func clientConfig(dev config.ModbusDevice, logger *slog.Logger) (mb.ClientConfiguration, error) {
	cc := mb.ClientConfiguration{
		URL:    dev.URL,
		Logger: log.New(slogWriter{logger}, "", 0),
	}
	if strings.HasPrefix(dev.URL, "rtu") {
		cc.Speed = uint(max(dev.Speed, 0))
		cc.DataBits = uint(max(dev.DataBits, 0))
		cc.StopBits = uint(max(dev.StopBits, 0))
		switch strings.ToLower(dev.Parity) {
		case "", "none":
			cc.Parity = mb.PARITY_NONE
		case "even":
			cc.Parity = mb.PARITY_EVEN
		case "odd":
			cc.Parity = mb.PARITY_ODD
		default:
			return cc, fmt.Errorf("modbus[%s]: unknown parity %q", dev.Name, dev.Parity)
		}
	}
	// Validate the URL now, without I/O. Credentials in it are refused
	// (as the config does) so that no message or log can show them.
	if u, err := url.Parse(dev.URL); err != nil || u.User != nil {
		return cc, fmt.Errorf("modbus[%s]: url %q: invalid, or holds credentials", dev.Name, config.RedactURL(dev.URL))
	}
	probe := cc
	probe.Timeout = time.Second
	if _, err := mb.NewClient(&probe); err != nil {
		return cc, fmt.Errorf("modbus[%s]: url %q: %w", dev.Name, dev.URL, err)
	}
	return cc, nil
}

func (r *registry) acquire(dev config.ModbusDevice, cc mb.ClientConfiguration, p *Poller) *link {
	r.mu.Lock()
	l := r.links[dev.URL]
	if l == nil {
		l = &link{key: dev.URL, cfg: cc, timeouts: map[*Poller]time.Duration{}, reg: r}
		r.links[dev.URL] = l
	}
	l.refs++
	r.mu.Unlock()
	l.mu.Lock()
	l.timeouts[p] = dev.Timeout
	l.mu.Unlock()
	return l
}

// release unregisters p; the last user closes the connection.
func (l *link) release(p *Poller) {
	r := l.reg
	r.mu.Lock()
	l.refs--
	last := l.refs == 0
	if last {
		delete(r.links, l.key)
	}
	r.mu.Unlock()
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.timeouts, p)
	if last && l.connected {
		l.connected = false
		_ = l.client.Close()
		l.lock.release()
		l.lock = nil
	}
}

// held is a link while its holder has it to itself (hold): the only way
// to send requests on it. Its methods must not be used after unhold.
type held struct{ l *link }

// hold waits for the link and holds it for one request or a sequence of
// them (a write and its read-back).
func (l *link) hold() held {
	l.mu.Lock()
	return held{l}
}

// unhold lets the next holder have the link.
func (h held) unhold() { h.l.mu.Unlock() }

// connected reports whether the link is open.
func (h held) connected() bool { return h.l.connected }

// lastErr is why the link is not connected (nil when it never failed).
func (h held) lastErr() error { return h.l.lastErr }

// ensure opens the link if it is closed (see link.ensure).
func (h held) ensure(force bool, minB, maxB time.Duration) (bool, error) {
	return h.l.ensure(force, minB, maxB)
}

// read performs one read request for unit (see link.read).
func (h held) read(unit uint8, table string, start, count uint16) ([]uint16, []bool, error) {
	return h.l.read(unit, table, start, count)
}

// writeCoil performs FC5 for unit.
func (h held) writeCoil(unit uint8, addr uint16, on bool) error {
	_ = h.l.client.SetUnitId(unit)
	return h.l.client.WriteCoil(addr, on)
}

// writeRegisters performs FC6 for one register, FC16 for several.
func (h held) writeRegisters(unit uint8, addr uint16, words []uint16) error {
	_ = h.l.client.SetUnitId(unit)
	if len(words) == 1 {
		return h.l.client.WriteRegister(addr, words[0])
	}
	return h.l.client.WriteRegisters(addr, words)
}

// answered records that a device answered (data or exception).
func (h held) answered(minB time.Duration) { h.l.answered(minB) }

// fail closes the link after err (see link.fail).
func (h held) fail(err error, minB, maxB time.Duration) { h.l.fail(err, minB, maxB) }

// timedOut records a request that was not answered in time; when no
// device on the link answers any more, the link is closed after err.
func (h held) timedOut(err error, minB, maxB time.Duration) {
	l := h.l
	l.consecTmout++
	if l.consecTmout >= l.users() {
		l.fail(err, minB, maxB)
	}
}

// connect opens the link if it is closed and the backoff has passed (or
// force); see link.ensure.
func (l *link) connect(force bool, minB, maxB time.Duration) (reconnected bool, err error) {
	h := l.hold()
	defer h.unhold()
	return h.ensure(force, minB, maxB)
}

// isOpen reports whether the link is connected.
func (l *link) isOpen() bool {
	h := l.hold()
	defer h.unhold()
	return h.connected()
}

// users is the number of devices on the link. Caller holds mu.
func (l *link) users() int { return len(l.timeouts) }

// timeout is the request timeout of the link: the longest of its devices'
// (the client library has one timeout per connection). Caller holds mu.
func (l *link) timeout() time.Duration {
	var d time.Duration
	for _, t := range l.timeouts {
		d = max(d, t)
	}
	if d <= 0 {
		d = time.Second
	}
	return d
}

// ensure opens the connection if it is closed and the backoff has passed
// (or force). It returns nil when connected, else the last error. Caller
// holds mu. It reports whether it opened the connection again after a
// failure (a reconnect).
func (l *link) ensure(force bool, minB, maxB time.Duration) (reconnected bool, err error) {
	if l.connected {
		return false, nil
	}
	if !force && time.Now().Before(l.nextDial) {
		if l.lastErr == nil {
			return false, fmt.Errorf("not connected to %s", l.key)
		}
		return false, l.lastErr
	}
	if path := serialPath(l.key); path != "" {
		lock, err := lockPort(path)
		if err != nil {
			l.fail(fmt.Errorf("connect %s: %w", l.key, err), minB, maxB)
			return false, l.lastErr
		}
		l.lock = lock
	}
	cc := l.cfg
	cc.Timeout = l.timeout()
	c, err := mb.NewClient(&cc)
	if err == nil {
		err = c.Open()
	}
	if err != nil {
		l.lock.release()
		l.lock = nil
		l.fail(fmt.Errorf("connect %s: %w", l.key, err), minB, maxB)
		return false, l.lastErr
	}
	l.client, l.connected = c, true
	l.gen++
	reconnected = l.opened
	l.opened = true
	return reconnected, nil
}

// fail closes the connection after err and schedules the next open after
// the backoff (doubling from minB to maxB, ±20% jitter). Caller holds mu.
func (l *link) fail(err error, minB, maxB time.Duration) {
	if l.connected {
		_ = l.client.Close()
		l.connected = false
	}
	l.lock.release()
	l.lock = nil
	l.consecTmout = 0
	l.lastErr = err
	b := min(max(l.backoff, minB), maxB)
	l.nextDial = time.Now().Add(time.Duration(float64(b) * (0.8 + 0.4*rand.Float64())))
	l.backoff = min(2*b, maxB)
}

// answered records that a device answered (data or exception).
func (l *link) answered(minB time.Duration) {
	l.consecTmout = 0
	l.backoff = minB
}

// read performs one read request for unit; caller holds mu and the link is
// connected.
func (l *link) read(unit uint8, table string, start, count uint16) (words []uint16, bits []bool, err error) {
	_ = l.client.SetUnitId(unit)
	switch table {
	case config.TableHolding:
		words, err = l.client.ReadRegisters(start, count, mb.HOLDING_REGISTER)
	case config.TableInput:
		words, err = l.client.ReadRegisters(start, count, mb.INPUT_REGISTER)
	case config.TableCoil:
		bits, err = l.client.ReadCoils(start, count)
	case config.TableDiscrete:
		bits, err = l.client.ReadDiscreteInputs(start, count)
	default:
		err = fmt.Errorf("unknown table %q", table)
	}
	if err == nil && len(words) < int(count) && len(bits) < int(count) {
		err = mb.ErrProtocolError
	}
	return words, bits, err
}

// slogWriter forwards the modbus library's log lines to slog at debug level.
type slogWriter struct{ l *slog.Logger }

func (w slogWriter) Write(b []byte) (int, error) {
	w.l.Debug(strings.TrimSpace(string(b)))
	return len(b), nil
}
