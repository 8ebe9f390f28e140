// Package modbus is ferry's Modbus adapter: it compiles a [[modbus]] device
// into an immutable read Plan, polls it on the cadence of each scan class
// and hands the decoded readings to an adapters.Sink.
//
// Misbehaving devices:
//
//   - Timeouts: dev.Timeout per request; a timeout, "busy" (06),
//     "acknowledge" (05) or a gateway exception (0A, 0B) is sent again up to
//     dev.Retries times (busy after a 20 ms pause).
//   - Exceptions 02 (illegal address), 03 (illegal value), 04 (device
//     failure) and 08 split the request in two halves of its tags, read
//     separately, recursively, so only the tags on the offending registers
//     fail. The split is remembered: later cycles read the parts directly,
//     until dev.MergeRetry (default 10 min) has passed, when the whole request
//     is tried again.
//   - Quality: 05 and 06 make the tags Uncertain with their last good value
//     and its time (Bad if there is none); every other exception makes them
//     Bad, value null, with the exception as the error text. The device stays
//     up: it answered. A timeout or gateway exception after the retries
//     makes the device down.
//   - Devices with the same url share one link (connection), one request at
//     a time, the unit id set per request. A transport error (EOF, refused,
//     CRC, ...) closes the link once; every device on it reports down; the
//     first device to poll after the backoff re-opens it, once. A unit that
//     times out on a shared link goes down and is backed off alone; the link
//     is only reset when every device on it has stopped answering. The
//     link's timeout is the longest of its devices' at the time it opens.
//   - Report by exception: see Poller.filter.
package modbus

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/config"
	mb "github.com/simonvetter/modbus"
)

// Backoff of reconnects (and of re-tries of a unit that stopped answering
// on a shared link): from minBackoff doubling to maxBackoff, ±20% jitter.
const (
	minBackoff = 100 * time.Millisecond
	maxBackoff = 10 * time.Second
)

// busyPause is the pause before re-sending a request answered with
// "server device busy" or "acknowledge".
const busyPause = 20 * time.Millisecond

// Poller polls one Modbus device. Run drives the polling; ReadOnce may be
// called concurrently with it. Devices with the same url share one link
// (connection) and its requests never interleave (as a serial line
// requires); devices on different links never wait for each other.
type Poller struct {
	dev  config.ModbusDevice
	plan *Plan
	sink adapters.Sink
	log  *slog.Logger

	running atomic.Bool
	stats   counters

	linkMu sync.Mutex
	link   *link // nil after Close; acquired again on use

	mu         sync.Mutex // one cycle at a time; guards everything below
	state      int8       // -1 unknown, 0 down, 1 up: as last reported to the sink
	lastErr    error
	backoff    time.Duration // of re-tries of this unit while its link stays open
	nextTry    time.Time
	minBackoff time.Duration
	maxBackoff time.Duration
	reqErr     map[reqKey]string       // last error of each request, to log changes only
	splits     map[*request]*split     // requests split after an exception, remembered
	last       [][]tagMemory           // per class, per slot: report by exception (nil for a class without)
	good       [][]lastGood            // per class, per slot
	now        func() time.Time        // for tests of report by exception
	pub        [][]adapters.Reading    // per class: the readings delivered by Run
	onSplit    func(r *request, n int) // test hook

	kick   chan struct{} // a write asks Run for an immediate poll (write.go)
	kickMu sync.Mutex
	kicked map[int]bool // scan classes to poll at once
}

type reqKey struct {
	table        string
	start, count uint16
}

// split is what a request became after a Modbus exception: the leaves that
// were read (or failed) on their own. They are used instead of the request
// until the device's merge_retry has passed.
type split struct {
	leaves []*request
	since  time.Time
}

// tagMemory is what report by exception and stale values need of a tag.
type tagMemory struct {
	delivered bool
	value     adapters.Value // last delivered
	quality   adapters.Quality
	err       string
	at        time.Time // when last delivered
}

// lastGood is a tag's last Good value, for the Uncertain readings of a
// transient exception. Kept for every tag, so it is small: 40 bytes.
type lastGood struct {
	value adapters.Value
	at    int64 // Unix ns of its sample; 0: none yet
}

// NewPoller compiles dev's plan and registers it on the shared link of its
// url (no I/O). sink may be nil (ReadOnce only); logger may be nil.
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
	p := &Poller{
		dev: dev, plan: plan, sink: sink, log: logger,
		state: -1, minBackoff: minBackoff, maxBackoff: maxBackoff, backoff: minBackoff,
		reqErr: map[reqKey]string{}, splits: map[*request]*split{}, now: time.Now,
		kick: make(chan struct{}, 1),
	}
	for _, c := range plan.classes {
		var mem []tagMemory
		var pub []adapters.Reading
		if c.rbe != nil {
			mem = make([]tagMemory, len(c.names))
			pub = make([]adapters.Reading, 0, len(c.names))
		}
		p.last = append(p.last, mem)
		p.pub = append(p.pub, pub)
		p.good = append(p.good, make([]lastGood, len(c.names)))
	}
	l, err := acquireLink(dev, p, logger)
	if err != nil {
		return nil, err
	}
	p.link = l
	return p, nil
}

// Plan returns the poller's read plan.
func (p *Poller) Plan() *Plan { return p.plan }

// Stats returns a snapshot of the poller's counters.
func (p *Poller) Stats() Stats { return p.stats.snapshot() }

// Run polls every scan class on its own cadence until ctx is cancelled,
// then closes the connection and returns nil. Ticks are computed from the
// start time (start + k*interval), so the cadence does not drift; a tick
// missed because a cycle ran long is skipped, never made up in a burst.
// How late each cycle starts is Stats.PollJitter.
//
// Each cycle delivers one sink.Readings call with the tags of its class
// (only those due with publish = "change"; no call when none is). A
// request answered with a Modbus exception is split and retried in parts,
// so only the offending tags fail (see Poller.poll); the connection is
// kept. A transport error closes the link and re-opens it after an
// exponential backoff, and the device is reported down until a request is
// answered again; meanwhile every cycle delivers its tags as Bad with the
// error.
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
		case <-p.kick:
			// A write: poll its scan class now, so the new value is
			// published at once; the cadence stays on its grid.
			timer.Stop()
			now := time.Now()
			for ci := range p.takeKicked() {
				if ci < len(next) && next[ci].After(now) {
					next[ci] = now
				}
			}
		}
		for i, c := range classes {
			began := time.Now()
			if began.Before(next[i]) {
				continue
			}
			jitter := began.Sub(next[i])
			if !p.cycle(ctx, i, bufs[i], false) {
				return nil
			}
			pub := p.filter(i, bufs[i])
			if len(pub) > 0 {
				p.sink.Readings(pub)
			}
			took := time.Since(began)
			p.stats.add(func(s *Stats) {
				s.Cycles++
				s.CycleTime.observe(took)
				s.PollJitter.observe(jitter)
				s.Delivered += uint64(len(pub))
				s.Suppressed += uint64(len(bufs[i]) - len(pub))
			})
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
// the readings are returned either way. Report by exception does not apply.
// Without Run, call Close afterwards.
func (p *Poller) ReadOnce(ctx context.Context) ([]adapters.Reading, error) {
	var out []adapters.Reading
	for i, c := range p.plan.classes {
		buf := make([]adapters.Reading, len(c.names))
		if !p.cycle(ctx, i, buf, true) {
			return nil, ctx.Err()
		}
		out = append(out, buf...)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state != 1 {
		if p.lastErr == nil {
			return out, errors.New("not connected")
		}
		return out, p.lastErr
	}
	return out, nil
}

// Close releases the device's link; the last device on a link closes the
// connection. Run calls it on return. A later ReadOnce or Run opens it
// again.
func (p *Poller) Close() error {
	p.linkMu.Lock()
	l := p.link
	p.link = nil
	p.linkMu.Unlock()
	if l != nil {
		l.release(p)
	}
	return nil
}

func (p *Poller) acquire() (*link, error) {
	p.linkMu.Lock()
	defer p.linkMu.Unlock()
	if p.link == nil {
		l, err := acquireLink(p.dev, p, p.log)
		if err != nil {
			return nil, err
		}
		p.link = l
	}
	return p.link, nil
}

// cycle reads the requests of class ci into out (indexed by tag slot). It
// returns false if ctx was cancelled before the cycle completed.
func (p *Poller) cycle(ctx context.Context, ci int, out []adapters.Reading, force bool) bool {
	c := p.plan.classes[ci]
	p.mu.Lock()
	defer p.mu.Unlock()
	if ctx.Err() != nil {
		return false
	}
	l, err := p.acquire()
	if err != nil {
		p.markBad(ci, c.reqs, out, err, time.Now())
		return true
	}
	if !force && time.Now().Before(p.nextTry) {
		p.markBad(ci, c.reqs, out, p.lastErr, time.Now())
		return true
	}
	reconnected, err := l.connect(force, p.minBackoff, p.maxBackoff)
	if reconnected {
		p.stats.add(func(s *Stats) { s.Reconnects++ })
		p.log.Info("modbus reconnected", "url", p.dev.URL)
	}
	if err != nil {
		p.lastErr = err
		p.setState(false, err)
		p.markBad(ci, c.reqs, out, err, time.Now())
		return true
	}
	for i, r := range c.reqs {
		if ctx.Err() != nil {
			return false
		}
		if err := p.poll(ctx, l, ci, r, out); err != nil {
			p.markBad(ci, c.reqs[i+1:], out, err, time.Now())
			p.unitFailed(l, err)
			break
		}
	}
	return true
}

// unitFailed reports the device down after err. If its link stays open
// (another unit on it still answers), this unit alone backs off.
func (p *Poller) unitFailed(l *link, err error) {
	p.lastErr = err
	p.setState(false, err)
	if !l.isOpen() {
		return
	}
	d := time.Duration(float64(p.backoff) * (0.8 + 0.4*rand.Float64()))
	p.nextTry = time.Now().Add(d)
	p.backoff = min(2*p.backoff, p.maxBackoff)
}

// unitAnswered records that the device answered.
func (p *Poller) unitAnswered() {
	p.backoff = p.minBackoff
	p.nextTry = time.Time{}
	p.lastErr = nil
	p.setState(true, nil)
}

// poll reads one planned request into out. A request once split after an
// exception is read as its remembered parts until dev.MergeRetry has passed
// (then whole again, and split again if the exception persists). It returns
// only errors that concern the device or the link (transport errors,
// timeouts, gateway exceptions); exceptions about addresses are reported in
// the readings of the tags concerned.
func (p *Poller) poll(ctx context.Context, l *link, ci int, r *request, out []adapters.Reading) error {
	leaves := []*request{r}
	s := p.splits[r]
	if s != nil {
		if p.dev.MergeRetry > 0 && time.Since(s.since) >= p.dev.MergeRetry {
			p.log.Info("modbus: trying a split request whole again", "table", r.table, "start", r.start, "count", r.count)
			delete(p.splits, r)
			s = nil
		} else {
			leaves = s.leaves
		}
	}
	used := make([]*request, 0, len(leaves))
	for i, leaf := range leaves {
		var err error
		used, err = p.readTree(ctx, l, ci, leaf, out, used)
		if err != nil {
			p.markBad(ci, leaves[i+1:], out, err, time.Now())
			return err
		}
	}
	switch {
	case len(used) == 1 && used[0] == r:
	case s == nil:
		p.splits[r] = &split{leaves: used, since: time.Now()}
		p.log.Warn("modbus request split after an exception; the parts are read separately",
			"table", r.table, "start", r.start, "count", r.count, "parts", len(used), "merge_retry", p.dev.MergeRetry)
		if p.onSplit != nil {
			p.onSplit(r, len(used))
		}
	case len(used) != len(s.leaves):
		s.leaves = used
	}
	return nil
}

// readTree reads r; on an address exception it splits r in two and reads
// the halves, recursively, down to requests of one tag (or of tags that
// all cover the same registers). It appends the requests it finally read
// to used.
func (p *Poller) readTree(ctx context.Context, l *link, ci int, r *request, out []adapters.Reading, used []*request) ([]*request, error) {
	words, bits, err := p.send(ctx, l, r)
	now := time.Now()
	if err == nil {
		p.unitAnswered()
		p.decode(ci, r, words, bits, out, now)
		p.noteRequest(r, nil)
		return append(used, r), nil
	}
	if unitError(err) || !isException(err) {
		p.markBad(ci, []*request{r}, out, err, now)
		return used, err
	}
	p.unitAnswered()
	if splitOn(err) {
		if a, b, ok := splitRequest(r); ok {
			p.stats.add(func(s *Stats) { s.Splits++ })
			used, err = p.readTree(ctx, l, ci, a, out, used)
			if err != nil {
				return used, err
			}
			return p.readTree(ctx, l, ci, b, out, used)
		}
	}
	p.markException(ci, r, out, err, now)
	p.noteRequest(r, err)
	return append(used, r), nil
}

// send performs r on the link with the device's retries: a timeout, a busy
// or acknowledge exception or a gateway exception is tried again up to
// dev.Retries times. Other errors are final. A transport error closes the
// link; so does a timeout when every device on the link has stopped
// answering (a single device's silence on a shared line leaves the others
// alone).
func (p *Poller) send(ctx context.Context, l *link, r *request) ([]uint16, []bool, error) {
	for attempt := 0; ; attempt++ {
		h := l.hold()
		if !h.connected() {
			err := h.lastErr()
			h.unhold()
			if err == nil {
				err = errors.New("not connected")
			}
			return nil, nil, fmt.Errorf("read %s %d+%d: %w", r.table, r.start, r.count, err)
		}
		words, bits, err := h.read(p.dev.Unit, r.table, r.start, r.count)
		var werr error
		if err != nil {
			werr = fmt.Errorf("read %s %d+%d: %w", r.table, r.start, r.count, err)
		}
		retry := false
		switch {
		case err == nil:
			h.answered(p.minBackoff)
		case errors.Is(err, mb.ErrRequestTimedOut):
			retry = true
		case isException(err):
			h.answered(p.minBackoff)
			retry = transient(err) || unitError(err)
		default:
			h.fail(werr, p.minBackoff, p.maxBackoff)
		}
		final := err == nil || !retry || attempt >= p.dev.Retries || ctx.Err() != nil
		if final && errors.Is(err, mb.ErrRequestTimedOut) {
			h.timedOut(werr, p.minBackoff, p.maxBackoff)
		}
		h.unhold()
		p.stats.add(func(s *Stats) {
			s.Requests++
			if err != nil {
				if s.Errors == nil {
					s.Errors = map[string]uint64{}
				}
				s.Errors[errorKind(err)]++
			}
			if !final {
				s.Retries++
			}
		})
		if final {
			return words, bits, werr
		}
		if transient(err) {
			t := time.NewTimer(busyPause)
			select {
			case <-ctx.Done():
			case <-t.C:
			}
			t.Stop()
		}
	}
}

// splitRequest splits r into two requests covering the first and the
// second half of its tags (sorted by address). It reports false when r
// cannot be split usefully: one tag, or tags that all cover the same
// registers.
func splitRequest(r *request) (a, b *request, ok bool) {
	if len(r.tags) < 2 {
		return nil, nil, false
	}
	same := true
	for _, t := range r.tags[1:] {
		if t.offset != r.tags[0].offset || t.dec.Size() != r.tags[0].dec.Size() {
			same = false
			break
		}
	}
	if same {
		return nil, nil, false
	}
	mid := len(r.tags) / 2
	// keep the tags of one register range together
	for mid < len(r.tags) && r.tags[mid].offset == r.tags[mid-1].offset && r.tags[mid].dec.Size() == r.tags[mid-1].dec.Size() {
		mid++
	}
	if mid == len(r.tags) {
		mid = len(r.tags) / 2
		for mid > 1 && r.tags[mid].offset == r.tags[mid-1].offset && r.tags[mid].dec.Size() == r.tags[mid-1].dec.Size() {
			mid--
		}
	}
	return subRequest(r, r.tags[:mid]), subRequest(r, r.tags[mid:]), true
}

func subRequest(r *request, tags []boundTag) *request {
	lo, hi := math.MaxInt, 0
	for _, t := range tags {
		lo = min(lo, t.offset)
		hi = max(hi, t.offset+t.dec.Size())
	}
	s := &request{table: r.table, start: r.start + uint16(lo), count: uint16(hi - lo)}
	for _, t := range tags {
		t.offset -= lo
		s.tags = append(s.tags, t)
	}
	return s
}

// decode decodes the tags of r into out.
func (p *Poller) decode(ci int, r *request, words []uint16, bits []bool, out []adapters.Reading, now time.Time) {
	mem := p.good[ci]
	for _, t := range r.tags {
		var v adapters.Value
		var q adapters.Quality
		if words != nil {
			v, q = t.dec.Registers(words[t.offset:])
		} else {
			v, q = t.dec.Bits(bits[t.offset:])
		}
		out[t.slot] = adapters.Reading{Device: p.dev.Name, Tag: t.name, Value: v, Quality: q, Time: now}
		if q == adapters.Good {
			mem[t.slot] = lastGood{value: v, at: now.UnixNano()}
		}
	}
}

// markException reports the tags of r after the device answered with a
// Modbus exception: Uncertain with the last good value (and its time) for
// "busy" and "acknowledge" (the value exists, it is just not fresh), Bad
// otherwise.
func (p *Poller) markException(ci int, r *request, out []adapters.Reading, err error, now time.Time) {
	if !transient(err) {
		p.markBad(ci, []*request{r}, out, err, now)
		return
	}
	mem := p.good[ci]
	for _, t := range r.tags {
		m := mem[t.slot]
		if m.at == 0 {
			out[t.slot] = adapters.Reading{Device: p.dev.Name, Tag: t.name, Quality: adapters.Bad, Time: now, Err: err.Error()}
			continue
		}
		out[t.slot] = adapters.Reading{Device: p.dev.Name, Tag: t.name, Value: m.value, Quality: adapters.Uncertain, Time: time.Unix(0, m.at), Err: err.Error()}
	}
}

func (p *Poller) markBad(ci int, reqs []*request, out []adapters.Reading, err error, now time.Time) {
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

// filter returns the readings of class ci that Run delivers: every reading
// of a tag with publish = "always"; for publish = "change", a reading whose
// quality (or error) differs from the last delivered one, whose value
// changed by more than the deadband (any change for non-numeric values),
// or whose heartbeat is due.
func (p *Poller) filter(ci int, rs []adapters.Reading) []adapters.Reading {
	p.mu.Lock()
	defer p.mu.Unlock()
	c := p.plan.classes[ci]
	if c.rbe == nil {
		return rs // every tag of the class is published every cycle
	}
	mem := p.last[ci]
	pub := p.pub[ci][:0]
	now := p.now()
	for i, r := range rs {
		m := &mem[i]
		rbe := c.rbe[i]
		if rbe.onChange && m.delivered && !changed(r, m, rbe.deadband) &&
			(rbe.heartbeat <= 0 || now.Sub(m.at) < rbe.heartbeat) {
			continue
		}
		m.delivered, m.value, m.quality, m.err, m.at = true, r.Value, r.Quality, r.Err, now
		pub = append(pub, r)
	}
	p.pub[ci] = pub
	return pub
}

func changed(r adapters.Reading, m *tagMemory, deadband float64) bool {
	if r.Quality != m.quality || r.Err != m.err || r.Value.Kind() != m.value.Kind() {
		return true
	}
	switch r.Value.Kind() {
	case adapters.IntKind, adapters.UintKind, adapters.FloatKind:
		a, b := r.Value.Float(), m.value.Float()
		if math.IsNaN(a) || math.IsNaN(b) {
			return math.IsNaN(a) != math.IsNaN(b)
		}
		if deadband == 0 {
			return r.Value != m.value
		}
		return math.Abs(a-b) > deadband
	}
	return r.Value != m.value
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
	k := reqKey{r.table, r.start, r.count}
	if p.reqErr[k] == msg {
		return
	}
	if msg == "" {
		delete(p.reqErr, k)
		p.log.Info("modbus request ok again", "table", r.table, "start", r.start, "count", r.count)
		return
	}
	p.reqErr[k] = msg
	p.log.Warn("modbus request failed", "table", r.table, "start", r.start, "count", r.count, "err", msg)
}
