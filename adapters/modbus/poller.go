// Package modbus is ferry's Modbus adapter: it compiles a [[modbus]] device
// into an immutable read Plan, polls it on the cadence of each scan class
// and hands the decoded readings to an adapters.Sink.
package modbus

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log"
	"log/slog"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/config"
	mb "github.com/simonvetter/modbus"
)

// Reconnect backoff: from minBackoff doubling to maxBackoff, ±20% jitter.
const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 10 * time.Second
)

// Poller polls one Modbus device. Run drives the polling; ReadOnce may be
// called concurrently with it. All traffic to the device goes through one
// mutex, so requests never interleave (as a serial line requires).
type Poller struct {
	dev  config.ModbusDevice
	plan *Plan
	sink adapters.Sink
	log  *slog.Logger

	running atomic.Bool

	mu         sync.Mutex // guards everything below and all use of client
	client     *mb.ModbusClient
	connected  bool
	state      int8 // -1 unknown, 0 down, 1 up: as last reported to the sink
	lastErr    error
	backoff    time.Duration
	nextDial   time.Time
	minBackoff time.Duration
	maxBackoff time.Duration
	reqErr     map[*request]string // last error of each request, to log changes only
}

// NewPoller compiles dev's plan and prepares its client (no I/O). sink may
// be nil (ReadOnce only); logger may be nil.
func NewPoller(dev config.ModbusDevice, sink adapters.Sink, logger *slog.Logger) (*Poller, error) {
	plan, err := Compile(dev)
	if err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("device", dev.Name)
	if sink == nil {
		sink = nopSink{}
	}
	cc := &mb.ClientConfiguration{
		URL:     dev.URL,
		Timeout: dev.Timeout,
		Logger:  log.New(slogWriter{logger}, "", 0),
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
	client, err := mb.NewClient(cc)
	if err != nil {
		return nil, fmt.Errorf("modbus[%s]: url %q: %w", dev.Name, dev.URL, err)
	}
	return &Poller{
		dev: dev, plan: plan, sink: sink, log: logger, client: client,
		state: -1, minBackoff: minBackoff, maxBackoff: maxBackoff, backoff: minBackoff,
		reqErr: map[*request]string{},
	}, nil
}

// Plan returns the poller's read plan.
func (p *Poller) Plan() *Plan { return p.plan }

// Run polls every scan class on its own cadence until ctx is cancelled,
// then closes the connection and returns nil. Ticks are computed from the
// start time (start + k*interval), so the cadence does not drift; a tick
// missed because a cycle ran long is skipped, never made up in a burst.
//
// Each cycle delivers one sink.Readings call with every tag of its class.
// A request answered with a Modbus exception marks only its own tags Bad and
// keeps the connection. A transport error (EOF, refused, timeout, ...)
// marks the tags of the failed and remaining requests Bad, reports the
// device down, closes the connection and re-opens it on a later cycle after
// an exponential backoff; meanwhile every cycle still delivers its tags as
// Bad with the last error. The device is reported up when a request is
// answered again.
func (p *Poller) Run(ctx context.Context) error {
	if !p.running.CompareAndSwap(false, true) {
		return errors.New("modbus: Run already running")
	}
	defer p.running.Store(false)
	defer p.Close()

	classes := p.plan.classes
	start := time.Now()
	next := make([]time.Time, len(classes))
	bufs := make([][]adapters.Reading, len(classes))
	for i, c := range classes {
		next[i] = start
		bufs[i] = make([]adapters.Reading, len(c.names))
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		due := next[0]
		for _, t := range next[1:] {
			if t.Before(due) {
				due = t
			}
		}
		timer.Reset(time.Until(due))
		select {
		case <-ctx.Done():
			return nil
		case <-timer.C:
		}
		for i, c := range classes {
			if time.Now().Before(next[i]) {
				continue
			}
			if !p.cycle(ctx, c, bufs[i], false) {
				return nil
			}
			p.sink.Readings(bufs[i])
			next[i] = nextTick(start, time.Now(), c.interval)
		}
	}
}

// nextTick is the first tick start + k*interval strictly after now: ticks
// missed while a cycle ran are skipped, and the schedule never drifts.
func nextTick(start, now time.Time, interval time.Duration) time.Time {
	k := now.Sub(start)/interval + 1
	return start.Add(k * interval)
}

// ReadOnce reads every tag once, connecting first if needed (whatever the
// backoff), and returns the readings in config order, scan class by scan
// class. The error is the transport error if the device could not be read;
// the readings are returned either way. Without Run, call Close afterwards.
func (p *Poller) ReadOnce(ctx context.Context) ([]adapters.Reading, error) {
	var out []adapters.Reading
	for _, c := range p.plan.classes {
		buf := make([]adapters.Reading, len(c.names))
		if !p.cycle(ctx, c, buf, true) {
			return nil, ctx.Err()
		}
		out = append(out, buf...)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.connected {
		return out, p.lastErr
	}
	return out, nil
}

// Close closes the connection to the device. Run calls it on return.
func (p *Poller) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.connected {
		return nil
	}
	p.connected = false
	return p.client.Close()
}

// cycle reads the requests of c into out (indexed by tag slot). It returns
// false if ctx was cancelled before the cycle completed.
func (p *Poller) cycle(ctx context.Context, c *class, out []adapters.Reading, force bool) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if ctx.Err() != nil {
		return false
	}
	if !p.connected {
		if force || !time.Now().Before(p.nextDial) {
			p.dial()
		}
		if !p.connected {
			p.markBad(c.reqs, out, p.lastErr, time.Now())
			return true
		}
	}
	for i, r := range c.reqs {
		if ctx.Err() != nil {
			return false
		}
		err := p.read(r, out)
		if err == nil || isException(err) {
			p.backoff = p.minBackoff
			p.setState(true, nil)
			p.noteRequest(r, err)
			continue
		}
		p.markBad(c.reqs[i:], out, err, time.Now())
		p.disconnect(err)
		break
	}
	return true
}

// read performs request r and decodes its tags into out. On a failure the
// tags of r are marked Bad and the error is returned.
func (p *Poller) read(r *request, out []adapters.Reading) error {
	_ = p.client.SetUnitId(p.dev.Unit)
	var (
		words []uint16
		bits  []bool
		err   error
	)
	switch r.table {
	case config.TableHolding:
		words, err = p.client.ReadRegisters(r.start, r.count, mb.HOLDING_REGISTER)
	case config.TableInput:
		words, err = p.client.ReadRegisters(r.start, r.count, mb.INPUT_REGISTER)
	case config.TableCoil:
		bits, err = p.client.ReadCoils(r.start, r.count)
	case config.TableDiscrete:
		bits, err = p.client.ReadDiscreteInputs(r.start, r.count)
	}
	now := time.Now()
	if err == nil && len(words) < int(r.count) && len(bits) < int(r.count) {
		err = mb.ErrProtocolError
	}
	if err != nil {
		err = fmt.Errorf("read %s %d+%d: %w", r.table, r.start, r.count, err)
		p.markBad([]*request{r}, out, err, now)
		return err
	}
	for _, t := range r.tags {
		var v adapters.Value
		var q adapters.Quality
		if words != nil {
			v, q = t.dec.Registers(words[t.offset:])
		} else {
			v, q = t.dec.Bits(bits[t.offset:])
		}
		out[t.slot] = adapters.Reading{Device: p.dev.Name, Tag: t.name, Value: v, Quality: q, Time: now}
	}
	return nil
}

func (p *Poller) markBad(reqs []*request, out []adapters.Reading, err error, now time.Time) {
	msg := "not connected"
	if err != nil {
		msg = err.Error()
	}
	for _, r := range reqs {
		for _, t := range r.tags {
			out[t.slot] = adapters.Reading{Device: p.dev.Name, Tag: t.name, Quality: adapters.Bad, Time: now, Err: msg}
		}
	}
}

func (p *Poller) dial() {
	err := p.client.Open()
	if err != nil {
		p.disconnect(fmt.Errorf("connect %s: %w", p.dev.URL, err))
		return
	}
	p.connected = true
	p.log.Debug("modbus connected", "url", p.dev.URL)
}

// disconnect closes the connection after err, reports the device down and
// schedules the next dial after the backoff.
func (p *Poller) disconnect(err error) {
	if p.connected {
		_ = p.client.Close()
		p.connected = false
	}
	p.lastErr = err
	p.setState(false, err)
	d := time.Duration(float64(p.backoff) * (0.8 + 0.4*rand.Float64()))
	p.nextDial = time.Now().Add(d)
	p.backoff = min(2*p.backoff, p.maxBackoff)
}

func (p *Poller) setState(up bool, err error) {
	s := int8(0)
	if up {
		s = 1
	}
	if s == p.state {
		return
	}
	p.state = s
	if up {
		p.log.Info("modbus device up")
	} else {
		p.log.Warn("modbus device down", "err", err)
	}
	p.sink.DeviceState(p.dev.Name, up, err)
}

// noteRequest logs when the exception answer of a request starts or ends.
func (p *Poller) noteRequest(r *request, err error) {
	msg := ""
	if err != nil {
		msg = err.Error()
	}
	if p.reqErr[r] == msg {
		return
	}
	p.reqErr[r] = msg
	if msg != "" {
		p.log.Warn("modbus request failed", "table", r.table, "start", r.start, "count", r.count, "err", msg)
	} else {
		p.log.Info("modbus request ok again", "table", r.table, "start", r.start, "count", r.count)
	}
}

// isException reports whether err is a Modbus exception response: the
// device answered, the connection is fine.
func isException(err error) bool {
	switch {
	case errors.Is(err, mb.ErrIllegalFunction),
		errors.Is(err, mb.ErrIllegalDataAddress),
		errors.Is(err, mb.ErrIllegalDataValue),
		errors.Is(err, mb.ErrServerDeviceFailure),
		errors.Is(err, mb.ErrAcknowledge),
		errors.Is(err, mb.ErrServerDeviceBusy),
		errors.Is(err, mb.ErrMemoryParityError),
		errors.Is(err, mb.ErrGWPathUnavailable),
		errors.Is(err, mb.ErrGWTargetFailedToRespond):
		return true
	}
	return strings.HasPrefix(err.Error(), "unknown exception code")
}

type nopSink struct{}

func (nopSink) Readings([]adapters.Reading)     {}
func (nopSink) DeviceState(string, bool, error) {}

// slogWriter forwards the modbus library's log lines to slog at debug level.
type slogWriter struct{ l *slog.Logger }

func (w slogWriter) Write(b []byte) (int, error) {
	w.l.Debug(strings.TrimSpace(string(b)))
	return len(b), nil
}

var _ io.Writer = slogWriter{}
