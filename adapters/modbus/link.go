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

	refs int // guarded by linksMu
}

var (
	linksMu sync.Mutex
	links   = map[string]*link{}
)

// acquireLink returns the shared link of dev.URL, creating it on first use,
// and registers p with its timeout. The serial settings of the first device
// win (the config refuses devices on one url with different settings).
func acquireLink(dev config.ModbusDevice, p *Poller, logger *slog.Logger) (*link, error) {
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
			return nil, fmt.Errorf("modbus[%s]: unknown parity %q", dev.Name, dev.Parity)
		}
	}
	// Validate the URL now, without I/O. Credentials in it are refused
	// (as the config does) so that no message or log can show them.
	if u, err := url.Parse(dev.URL); err != nil || u.User != nil {
		return nil, fmt.Errorf("modbus[%s]: url %q: invalid, or holds credentials", dev.Name, config.RedactURL(dev.URL))
	}
	probe := cc
	probe.Timeout = time.Second
	if _, err := mb.NewClient(&probe); err != nil {
		return nil, fmt.Errorf("modbus[%s]: url %q: %w", dev.Name, dev.URL, err)
	}
	linksMu.Lock()
	l := links[dev.URL]
	if l == nil {
		l = &link{key: dev.URL, cfg: cc, timeouts: map[*Poller]time.Duration{}}
		links[dev.URL] = l
	}
	l.refs++
	linksMu.Unlock()
	l.mu.Lock()
	l.timeouts[p] = dev.Timeout
	l.mu.Unlock()
	return l, nil
}

// release unregisters p; the last user closes the connection.
func (l *link) release(p *Poller) {
	linksMu.Lock()
	l.refs--
	last := l.refs == 0
	if last {
		delete(links, l.key)
	}
	linksMu.Unlock()
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
