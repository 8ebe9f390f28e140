package gateway

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/config"
	"github.com/ferry-gateway/ferry/gateway/mqtt"
	"github.com/ferry-gateway/ferry/gateway/record"
)

// Command result codes (CONTRACT.md, Commands).
const (
	CodeUnknownTag  = "unknown_tag"
	CodeNotWritable = "not_writable"
	CodeBadValue    = "bad_value"
	CodeOutOfRange  = "out_of_range"
	CodeExpired     = "expired"
	CodeRateLimited = "rate_limited"
	CodeDeviceError = "device_error"
	CodeTimeout     = "timeout"
)

// ResultCodes lists every result code; "ok" is counted for successes.
var ResultCodes = []string{"ok", CodeUnknownTag, CodeNotWritable, CodeBadValue, CodeOutOfRange,
	CodeExpired, CodeRateLimited, CodeDeviceError, CodeTimeout}

// TagWriter writes tags of one device: *modbus.Poller and *opcua.Client.
type TagWriter interface {
	// CheckWrite validates a write of v to tag without any I/O.
	CheckWrite(tag string, v adapters.Value) error
	// WriteTag writes v to tag (and reads it back with verify); it returns
	// the value the device holds. An error may carry its result code
	// through a WriteCode() string method (bad_value, device_error,
	// timeout); other errors are device_error.
	WriteTag(ctx context.Context, tag string, v adapters.Value, verify bool) (adapters.Value, error)
}

// commandTransport is the MQTT side of commands: *mqtt.Publisher.
type commandTransport interface {
	Subscribe(filter string, qos byte, h func(mqtt.Message)) error
	Respond(ctx context.Context, topic string, payload, correlation []byte) error
	// ClearRetained deletes the retained message on topic at the broker.
	ClearRetained(ctx context.Context, topic string) error
}

// Defaults of the router.
const (
	defaultWriteTimeout = 10 * time.Second // a write (and its verify) from dequeue to answer
	deviceQueueLen      = 64               // commands waiting per device; more are rate_limited
	resultQueueLen      = 4096             // answers not yet published; an accepted command holds one slot
	resultSlotWait      = 10 * time.Second // how long a refusal waits for a slot before it is dropped
	resultGrace         = 2 * time.Second  // Close: how long queued results may still be published
)

// cmdTag is a configured tag as commands see it.
type cmdTag struct {
	device, name string
	writable     bool
	min, max     *float64
	verify       bool
	minInterval  time.Duration
	dev          *cmdDevice
}

// readOnlyTag stands for every configured tag without writable = true: a
// command to it is answered not_writable. Read-only tags are only kept as
// names (cmdTables.readOnly), so a gateway with thousands of them keeps
// no per-tag command state.
var readOnlyTag = &cmdTag{}

// cmdDevice serializes the commands of one device: one queue and one
// worker per device, for as long as the device keeps its writer. A reload
// that keeps the device keeps its cmdDevice (and the commands queued on
// it); one that changes or removes the device retires it.
type cmdDevice struct {
	name   string
	writer TagWriter
	queue  chan *command
	done   chan struct{} // closed when the worker has ended

	// Guarded by commandRouter.mu.
	started bool
	retired string // why the device left the router ("changed", "removed"); "" while in force

	lastWrite map[string]time.Time // by tag; the worker's own
}

// command is one command in flight.
type command struct {
	device, tag string
	payload     []byte
	received    time.Time
	deadline    time.Time // MQTT 5 Message Expiry; zero: none
	queued      bool      // the broker held it in ferry's session before this connection (mqtt.Message.Queued)
	resultTopic string
	correlation []byte
	who         []any // log attributes: user properties, response topic
	t           *cmdTag
	value       adapters.Value
	slot        bool               // holds a result slot (MQTT commands)
	clear       string             // retained command: topic whose retained message is deleted
	done        chan commandResult // Execute only; nil for MQTT commands
}

// commandResult is the answer to one command.
type commandResult struct {
	OK      bool
	Code    string // "" when OK
	Message string
	Value   adapters.Value
	TS      time.Time
}

// JSON is the result payload of the contract.
func (r commandResult) JSON() []byte {
	b := make([]byte, 0, 96)
	if r.OK {
		b = append(b, `{"ok":true,"value":`...)
		b = r.Value.AppendJSON(b)
	} else {
		b = append(b, `{"ok":false,"error":`...)
		b = adapters.AppendJSONString(b, r.Code)
		b = append(b, `,"message":`...)
		b = adapters.AppendJSONString(b, r.Message)
	}
	b = append(b, `,"ts":"`...)
	b = record.AppendTime(b, r.TS)
	return append(b, `"}`...)
}

// CommandStats are the router's counters.
type CommandStats struct {
	Results map[string]uint64     // by result code ("ok" for successes)
	ByTag   map[CommandKey]uint64 // by device, tag and result; unknown tags are counted under ""/""
	// Dropped are answers to refused commands that found no room in the
	// result queue within resultSlotWait; an accepted command always has
	// room for its answer.
	Dropped uint64
	Failed  uint64 // results the broker refused or that were not published before Close
	// Retained are commands refused because they arrived with the retain
	// flag (also counted under expired); ClearFailed are the deletions of
	// their retained message that failed.
	Retained, ClearFailed uint64
	// Queued are commands refused because the broker held them in ferry's
	// session before this connection and they carry no age (also counted
	// under expired); see command_accept_queued.
	Queued uint64
}

// CommandKey is a device, tag and result code.
type CommandKey struct{ Device, Tag, Result string }

type resultMsg struct {
	topic       string
	payload     []byte
	correlation []byte
	clear       string // delete the retained message on this topic first
}

// cmdTables are the devices, tags and limits of one config: swapped as a
// whole by update.
type cmdTables struct {
	prefix       string
	maxAge       time.Duration
	maxSkew      time.Duration
	acceptQueued bool
	devices      map[string]*cmdDevice
	tags         map[string]map[string]*cmdTag // device -> writable tags
	readOnly     map[string][]string           // device -> its other tags, sorted (names shared with the config)
}

// commandRouter takes commands from MQTT (P/DEVICE/TAG/set), validates
// them before any device I/O, writes valid ones through the device's
// TagWriter, one at a time per device in arrival order, and publishes
// exactly one result per command. One router lives as long as the
// gateway: a reload swaps its tables (update), so no command is ever
// routed to a router that is gone.
type commandRouter struct {
	writeTimeout time.Duration
	mq           commandTransport
	log          *slog.Logger
	now          func() time.Time
	tab          atomic.Pointer[cmdTables]

	ctx     context.Context
	cancel  context.CancelFunc
	results chan resultMsg
	slots   chan struct{} // one per answer that is queued or reserved; len(results) <= len(slots)
	wg      sync.WaitGroup
	resWG   sync.WaitGroup

	mu            sync.Mutex // guards the fields below, cmdDevice.started/retired and the sends on queues
	closed        bool
	resultsClosed bool
	started       bool
	filter        string // the subscribed filter
	res           map[string]uint64
	byTag         map[CommandKey]uint64
	dropped       uint64
	failed        uint64
	retained      uint64
	clearFailed   uint64
	queuedN       uint64
}

// newCommandRouter builds the router for every tag of cfg. writers holds
// the TagWriter of each device by name; a device without one answers
// device_error. mq may be nil when only Execute is used (ferry write).
func newCommandRouter(cfg *config.Config, mq commandTransport, writers map[string]TagWriter, logger *slog.Logger) *commandRouter {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	r := &commandRouter{
		writeTimeout: defaultWriteTimeout,
		mq:           mq,
		log:          logger.With("component", "commands"),
		now:          time.Now,
		results:      make(chan resultMsg, resultQueueLen),
		slots:        make(chan struct{}, resultQueueLen),
		res:          map[string]uint64{},
		byTag:        map[CommandKey]uint64{},
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	tab, _ := buildTables(cfg, writers, nil)
	r.tab.Store(tab)
	return r
}

// buildTables builds the tables of cfg. A device of old whose writer is
// the same keeps its cmdDevice (queue, worker, last writes); the others
// of old are returned as retired.
func buildTables(cfg *config.Config, writers map[string]TagWriter, old *cmdTables) (*cmdTables, []*cmdDevice) {
	tab := &cmdTables{
		prefix:       cfg.MQTT.TopicPrefix,
		maxAge:       cfg.MQTT.CommandMaxAge,
		maxSkew:      cfg.MQTT.CommandMaxSkew,
		acceptQueued: cfg.MQTT.CommandAcceptQueued,
		devices:      map[string]*cmdDevice{},
		tags:         map[string]map[string]*cmdTag{},
		readOnly:     map[string][]string{},
	}
	add := func(dev, name string, writable bool, lo, hi *float64, verify bool, iv time.Duration) {
		d := tab.devices[dev]
		if d == nil {
			w := writers[dev]
			if old != nil {
				if od := old.devices[dev]; od != nil && w != nil && od.writer == w {
					d = od
				}
			}
			if d == nil {
				d = &cmdDevice{name: dev, writer: w, queue: make(chan *command, deviceQueueLen),
					done: make(chan struct{}), lastWrite: map[string]time.Time{}}
			}
			tab.devices[dev] = d
			tab.tags[dev] = map[string]*cmdTag{}
		}
		if !writable {
			tab.readOnly[dev] = append(tab.readOnly[dev], name) // known, never written: no state
			return
		}
		tab.tags[dev][name] = &cmdTag{device: dev, name: name, writable: true, min: lo, max: hi, verify: verify, minInterval: iv, dev: d}
	}
	for _, d := range cfg.Modbus {
		for _, t := range d.Tags {
			add(d.Name, t.Name, t.Writable, t.Min, t.Max, t.Verify, t.MinWriteInterval)
		}
	}
	for _, d := range cfg.OPCUA {
		for _, t := range d.Tags {
			add(d.Name, t.Name, t.Writable, t.Min, t.Max, t.Verify, t.MinWriteInterval)
		}
	}
	for dev, names := range tab.readOnly {
		slices.Sort(names)
		tab.readOnly[dev] = slices.Clip(names)
	}
	var retired []*cmdDevice
	if old != nil {
		for name, d := range old.devices {
			if tab.devices[name] != d {
				retired = append(retired, d)
			}
		}
	}
	return tab, retired
}

// writable is the number of writable tags.
func (r *commandRouter) writable() int {
	n := 0
	for _, ts := range r.tab.Load().tags {
		n += len(ts)
	}
	return n
}

// Start starts the device workers and, with a transport, subscribes to
// P/+/+/set. Call it before the publisher connects (before its Run), so
// commands the broker kept for ferry's session while it was away reach the
// router. Commands to unknown or read-only tags are answered (unknown_tag,
// not_writable), so the subscription is the wildcard, not one per
// writable tag; nothing but a configured writable tag is ever written.
func (r *commandRouter) Start() error {
	r.mu.Lock()
	if r.started {
		r.mu.Unlock()
		return errors.New("commands: started twice")
	}
	r.started = true
	r.mu.Unlock()
	r.startWorkers()
	if r.mq == nil {
		return nil
	}
	r.resWG.Go(r.publishResults)
	return r.subscribe()
}

// subscribe subscribes to the filter of the tables in force when it is
// not the subscribed one.
func (r *commandRouter) subscribe() error {
	tab := r.tab.Load()
	filter := tab.prefix + "/+/+/set"
	r.mu.Lock()
	same := r.filter == filter
	r.filter = filter
	r.mu.Unlock()
	if same {
		return nil
	}
	if err := r.mq.Subscribe(filter, 2, r.handle); err != nil {
		return fmt.Errorf("commands: subscribe %s: %w", filter, err)
	}
	r.log.Info("accepting commands", "topic", filter, "writable_tags", r.writable())
	return nil
}

// startWorkers starts the worker of every device in force that has none.
func (r *commandRouter) startWorkers() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return
	}
	for _, d := range r.tab.Load().devices {
		if !d.started {
			d.started = true
			r.wg.Go(func() { r.worker(d) })
		}
	}
}

// update swaps in the devices, tags and limits of cfg (a reload). A
// device whose writer is unchanged keeps its queue: the commands waiting
// for it are carried out in order. The other devices of the old tables
// are retired: the commands waiting for them are answered device_error
// (not carried out); a command arriving afterwards for a removed device
// is unknown_tag. update returns once the write in progress on each
// retired device has ended, so the caller may then stop those devices.
// Devices new in cfg queue commands until startWorkers, which the caller
// calls once their writers run. With a new topic prefix the router
// subscribes to the new filter.
func (r *commandRouter) update(cfg *config.Config, writers map[string]TagWriter) error {
	r.mu.Lock()
	tab, retired := buildTables(cfg, writers, r.tab.Load())
	var wait []chan struct{}
	for _, d := range retired {
		d.retired = "removed"
		if _, ok := tab.devices[d.name]; ok {
			d.retired = "changed"
		}
		if !d.started && !r.closed {
			d.started = true
			r.wg.Go(func() { r.worker(d) }) // answers what was queued
		}
		if !r.closed {
			close(d.queue)
		}
		if d.started {
			wait = append(wait, d.done)
		}
	}
	r.tab.Store(tab)
	started := r.started
	r.mu.Unlock()
	for _, ch := range wait {
		<-ch
	}
	if started && r.mq != nil {
		return r.subscribe()
	}
	return nil
}

// Close stops taking commands, answers the queued ones that were not
// carried out (device_error: shutting down) after the running writes end,
// and publishes the remaining results for up to resultGrace.
func (r *commandRouter) Close() {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	r.closed = true
	for _, d := range r.tab.Load().devices {
		close(d.queue)
		if !d.started {
			d.started = true
			r.wg.Go(func() { r.worker(d) })
		}
	}
	r.mu.Unlock()
	r.wg.Wait()
	r.mu.Lock()
	r.resultsClosed = true
	close(r.results)
	r.mu.Unlock()
	done := make(chan struct{})
	go func() { r.resWG.Wait(); close(done) }()
	t := time.NewTimer(resultGrace)
	select {
	case <-done:
	case <-t.C:
		r.cancel()
		<-done
	}
	t.Stop()
	r.cancel()
}

// Stats returns a snapshot of the counters.
func (r *commandRouter) Stats() CommandStats {
	r.mu.Lock()
	defer r.mu.Unlock()
	s := CommandStats{Results: map[string]uint64{}, ByTag: map[CommandKey]uint64{}, Dropped: r.dropped, Failed: r.failed,
		Retained: r.retained, ClearFailed: r.clearFailed, Queued: r.queuedN}
	for _, c := range ResultCodes {
		s.Results[c] = r.res[c]
	}
	for k, v := range r.byTag {
		s.ByTag[k] = v
	}
	return s
}

// handle takes a message delivered on P/+/+/set. It runs on the MQTT
// reader goroutine, so it only checks (no I/O) and queues. It may wait
// for room in the result queue when answers back up (the broker then
// holds further commands: MQTT flow control), at most resultSlotWait.
func (r *commandRouter) handle(m mqtt.Message) {
	c := &command{payload: m.Payload, received: m.Received, correlation: m.CorrelationData, queued: m.Queued}
	if c.received.IsZero() {
		c.received = r.now()
	}
	if m.MessageExpiry != nil {
		c.deadline = c.received.Add(time.Duration(*m.MessageExpiry) * time.Second)
	}
	prefix := r.tab.Load().prefix
	rest, _ := strings.CutPrefix(m.Topic, prefix+"/")
	rest, _ = strings.CutSuffix(rest, "/set")
	c.device, c.tag, _ = strings.Cut(rest, "/")
	c.resultTopic = m.Topic + "/result"
	for _, u := range m.User {
		c.who = append(c.who, "user."+u.Key, u.Value)
	}
	if m.ResponseTopic != "" {
		c.who = append(c.who, "response_topic", m.ResponseTopic)
	}
	if m.CorrelationData != nil {
		c.who = append(c.who, "correlation", hex.EncodeToString(m.CorrelationData[:min(len(m.CorrelationData), 64)]))
	}
	if m.Queued {
		c.who = append(c.who, "queued", true)
	}
	var refuse *commandResult
	if m.ResponseTopic != "" {
		if err := validTopicName(m.ResponseTopic); err != nil {
			res := fail(CodeBadValue, "response topic: %v", err)
			refuse = &res
		} else {
			c.resultTopic = m.ResponseTopic
		}
	}
	if m.Retain {
		// Retain As Published is set on the subscription, so the flag is
		// the sender's. A retained command would act again on every
		// subscriber that comes later: refuse it and delete it.
		res := fail(CodeExpired, "retained command refused: a retained command is never carried out (it would be delivered again to every later subscriber); publish commands with retain=false")
		refuse = &res
		if len(m.Payload) > 0 {
			c.clear = m.Topic
		}
		r.mu.Lock()
		r.retained++
		r.mu.Unlock()
		r.log.Warn("retained command refused; deleting it from the broker", append([]any{"topic", m.Topic}, c.who...)...)
	}
	if r.mq != nil {
		if c.slot = r.trySlot(); !c.slot {
			if !r.waitSlot() {
				r.drop(c, "result queue full")
				return
			}
			c.slot = true
			if refuse == nil {
				res := fail(CodeRateLimited, "%d command results are waiting to be published; command not carried out", resultQueueLen)
				refuse = &res
			}
		}
	}
	if refuse != nil {
		r.finish(c, *refuse)
		return
	}
	r.submit(c)
}

// trySlot takes a result slot if one is free.
func (r *commandRouter) trySlot() bool {
	select {
	case r.slots <- struct{}{}:
		return true
	default:
		return false
	}
}

// waitSlot waits up to resultSlotWait for a result slot.
func (r *commandRouter) waitSlot() bool {
	t := time.NewTimer(resultSlotWait)
	defer t.Stop()
	select {
	case r.slots <- struct{}{}:
		return true
	case <-t.C:
	case <-r.ctx.Done():
	}
	return false
}

// drop counts and logs a command whose answer cannot be queued. It is
// never carried out.
func (r *commandRouter) drop(c *command, why string) {
	r.mu.Lock()
	r.dropped++
	r.mu.Unlock()
	r.log.Error("command not carried out and not answered: "+why, append([]any{"device", c.device, "tag", c.tag}, c.who...)...)
}

// validTopicName reports whether s may be published to.
func validTopicName(s string) error {
	switch {
	case s == "":
		return errors.New("empty")
	case len(s) > 65535:
		return errors.New("too long")
	case !utf8.ValidString(s):
		return errors.New("not valid UTF-8")
	case strings.ContainsAny(s, "+#\x00"):
		return errors.New("wildcards and NUL are not allowed")
	}
	return nil
}

// Execute runs one command synchronously through the same validation and
// writer as MQTT commands (ferry write). Start must have been called.
func (r *commandRouter) Execute(ctx context.Context, device, tag string, payload []byte) commandResult {
	c := &command{device: device, tag: tag, payload: payload, received: r.now(), done: make(chan commandResult, 1),
		who: []any{"source", "cli"}}
	r.submit(c)
	select {
	case res := <-c.done:
		return res
	case <-ctx.Done():
		return fail(CodeTimeout, "%v", ctx.Err())
	}
}

// submit validates c (no I/O) and queues it for its device, or answers
// it at once. A command validated against tables that a reload replaced
// meanwhile is validated again against the new ones.
func (r *commandRouter) submit(c *command) {
	for attempt := 1; ; attempt++ {
		res, ok := r.validate(c)
		if !ok {
			r.finish(c, res)
			return
		}
		r.mu.Lock()
		switch {
		case r.closed:
			r.finishLocked(c, fail(CodeDeviceError, "gateway shutting down"))
		case c.t.dev.retired != "" && attempt < 3:
			r.mu.Unlock()
			continue
		case c.t.dev.retired != "":
			r.finishLocked(c, fail(CodeDeviceError, "device %s is being reconfigured by a reload; command not carried out", c.device))
		default:
			select {
			case c.t.dev.queue <- c:
			default:
				r.finishLocked(c, fail(CodeRateLimited, "%d commands already waiting for device %s", deviceQueueLen, c.device))
			}
		}
		r.mu.Unlock()
		return
	}
}

func fail(code, format string, args ...any) commandResult {
	return commandResult{Code: code, Message: fmt.Sprintf(format, args...)}
}

// validate runs every check that needs no device I/O, in the order of the
// contract: the tag, the payload, expiry, the value against the tag.
func (r *commandRouter) validate(c *command) (commandResult, bool) {
	tab := r.tab.Load()
	t := tab.tags[c.device][c.tag]
	if t == nil {
		if _, ok := slices.BinarySearch(tab.readOnly[c.device], c.tag); ok {
			t = readOnlyTag
		}
	}
	if t == nil {
		return fail(CodeUnknownTag, "no tag %q on device %q", c.tag, c.device), false
	}
	c.t = t
	if !t.writable {
		return fail(CodeNotWritable, "tag %s/%s is not writable", c.device, c.tag), false
	}
	p, err := decodeCommand(c.payload)
	if err != nil {
		return fail(CodeBadValue, "%v", err), false
	}
	c.value = p.value
	if !p.ts.IsZero() && !slices.Contains(c.who, any("command_ts")) {
		c.who = append(c.who, "command_ts", p.ts)
	}
	if res, expired := r.expired(c, p.ts, tab); expired {
		return res, false
	}
	v := p.value
	switch v.Kind() {
	case adapters.IntKind, adapters.UintKind, adapters.FloatKind:
		f := v.Float()
		if t.min != nil && f < *t.min {
			return fail(CodeOutOfRange, "%s is below the minimum %g", v, *t.min), false
		}
		if t.max != nil && f > *t.max {
			return fail(CodeOutOfRange, "%s is above the maximum %g", v, *t.max), false
		}
		// Exact comparison at the bounds for integers beyond 2^53.
		if t.max != nil && v.Kind() == adapters.UintKind && f == *t.max && v.Uint() > uint64(f) && f < 1<<64 {
			return fail(CodeOutOfRange, "%s is above the maximum %g", v, *t.max), false
		}
	}
	if t.dev.writer == nil {
		return fail(CodeDeviceError, "device %s has no writer in this process", c.device), false
	}
	if err := t.dev.writer.CheckWrite(c.tag, v); err != nil {
		return fail(codeOf(err, CodeBadValue), "%v", err), false
	}
	return commandResult{}, true
}

// expired checks the MQTT 5 Message Expiry, and the command's ts against
// command_max_skew and command_max_age. A command without either that the
// broker held in ferry's session before this connection has no known age:
// it is refused unless command_accept_queued. tab is nil when the command
// is checked again at its turn (expiry only).
func (r *commandRouter) expired(c *command, ts time.Time, tab *cmdTables) (commandResult, bool) {
	now := r.now()
	if !c.deadline.IsZero() && !now.Before(c.deadline) {
		return fail(CodeExpired, "message expiry passed %v ago", now.Sub(c.deadline).Round(time.Millisecond)), true
	}
	if tab == nil {
		return commandResult{}, false
	}
	if tab.maxSkew > 0 && !ts.IsZero() && ts.Sub(now) > tab.maxSkew {
		return fail(CodeExpired, "command ts %s is %v in the future (command_max_skew %v): the sender's clock or ts is wrong, so the command's age is unknown",
			ts.UTC().Format(time.RFC3339Nano), ts.Sub(now).Round(time.Millisecond), tab.maxSkew), true
	}
	if tab.maxAge > 0 && !ts.IsZero() && now.Sub(ts) > tab.maxAge {
		return fail(CodeExpired, "command of %s is %v old (command_max_age %v)", ts.UTC().Format(time.RFC3339Nano), now.Sub(ts).Round(time.Millisecond), tab.maxAge), true
	}
	if c.queued && ts.IsZero() && c.deadline.IsZero() && !tab.acceptQueued {
		r.mu.Lock()
		r.queuedN++
		r.mu.Unlock()
		return fail(CodeExpired, "the broker held this command for ferry while ferry was not connected, and it carries neither a ts nor a Message Expiry, so its age is unknown (command_accept_queued = false)"), true
	}
	return commandResult{}, false
}

// codeOf is the result code an error carries, else def.
func codeOf(err error, def string) string {
	var ce interface{ WriteCode() string }
	if errors.As(err, &ce) {
		switch code := ce.WriteCode(); code {
		case CodeBadValue, CodeDeviceError, CodeTimeout, CodeOutOfRange:
			return code
		}
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return CodeTimeout
	}
	return def
}

// worker carries out the commands of one device, in order, until its
// queue is closed (Close, or update retiring the device).
func (r *commandRouter) worker(d *cmdDevice) {
	defer close(d.done)
	for c := range d.queue {
		r.mu.Lock()
		closed, retired := r.closed, d.retired
		r.mu.Unlock()
		switch {
		case retired != "" && c.done == nil:
			r.finish(c, fail(CodeDeviceError, "device %s was %s by a reload before the command's turn; not carried out", d.name, retired))
		case closed && c.done == nil:
			r.finish(c, fail(CodeDeviceError, "gateway shutting down; not carried out"))
		default:
			r.finish(c, r.execute(c))
		}
	}
}

// execute writes one validated command: expiry and the rate limit are
// checked again now that it is its turn.
func (r *commandRouter) execute(c *command) commandResult {
	if res, expired := r.expired(c, time.Time{}, nil); expired {
		return res
	}
	t := c.t
	now := r.now()
	last := t.dev.lastWrite[t.name]
	if t.minInterval > 0 && !last.IsZero() && now.Sub(last) < t.minInterval {
		return fail(CodeRateLimited, "last write %v ago; min_write_interval is %v", now.Sub(last).Round(time.Millisecond), t.minInterval)
	}
	t.dev.lastWrite[t.name] = now
	ctx, cancel := context.WithTimeout(r.ctx, r.writeTimeout)
	defer cancel()
	v, err := t.dev.writer.WriteTag(ctx, t.name, c.value, t.verify)
	if err != nil {
		return fail(codeOf(err, CodeDeviceError), "%v", err)
	}
	return commandResult{OK: true, Value: v}
}

// finish logs, counts and answers c.
func (r *commandRouter) finish(c *command, res commandResult) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.finishLocked(c, res)
}

func (r *commandRouter) finishLocked(c *command, res commandResult) {
	res.TS = r.now()
	code := res.Code
	if res.OK {
		code = "ok"
	}
	r.res[code]++
	k := CommandKey{Device: c.device, Tag: c.tag, Result: code}
	if code == CodeUnknownTag {
		k.Device, k.Tag = "", "" // topic levels chosen by the sender: bounded cardinality
	}
	r.byTag[k]++
	payload := c.payload
	if len(payload) > 256 {
		payload = payload[:256]
	}
	attrs := []any{"device", c.device, "tag", c.tag, "payload", string(payload), "result", code,
		"latency", r.now().Sub(c.received).Round(time.Microsecond)}
	if res.OK {
		attrs = append(attrs, "value", res.Value.String())
	} else {
		attrs = append(attrs, "message", res.Message)
	}
	attrs = append(attrs, c.who...)
	r.log.Info("command", attrs...)
	if c.done != nil {
		c.done <- res
		return
	}
	if r.mq == nil {
		return
	}
	msg := resultMsg{topic: c.resultTopic, payload: res.JSON(), correlation: c.correlation, clear: c.clear}
	switch {
	case !c.slot:
		// Not reachable: every MQTT command takes a slot in handle.
		r.dropped++
		r.log.Error("command result dropped: no result slot", "topic", msg.topic)
	case r.resultsClosed:
		<-r.slots
		r.failed++
		r.log.Error("command result not published: gateway shut down", "topic", msg.topic)
	default:
		r.results <- msg // never blocks: the slot held guarantees room
	}
	c.slot = false
}

// publishResults publishes the results in order.
// A retained command's retained message is deleted before its answer
// goes out. Each published result frees its slot.
func (r *commandRouter) publishResults() {
	for m := range r.results {
		if m.clear != "" {
			if err := r.mq.ClearRetained(r.ctx, m.clear); err != nil {
				r.mu.Lock()
				r.clearFailed++
				r.mu.Unlock()
				r.log.Error("retained command not deleted from the broker", "topic", m.clear, "err", err)
			}
		}
		if err := r.mq.Respond(r.ctx, m.topic, m.payload, m.correlation); err != nil {
			r.mu.Lock()
			r.failed++
			r.mu.Unlock()
			r.log.Error("command result not published", "topic", m.topic, "err", err)
		}
		<-r.slots
	}
}

// CommandResult is the answer to one command (ferry write).
type CommandResult = commandResult

// WriteOnce carries out one command (ferry write): the payload goes through
// the validation of MQTT commands and the device's writer. A payload that
// is not JSON is taken as a string, so `ferry write dev/recipe ABC` works.
func WriteOnce(ctx context.Context, cfg *config.Config, writers map[string]TagWriter, device, tag string, payload []byte, logger *slog.Logger) CommandResult {
	r := newCommandRouter(cfg, nil, writers, logger)
	if err := r.Start(); err != nil {
		return fail(CodeDeviceError, "%v", err)
	}
	defer r.Close()
	if _, err := decodeCommand(payload); err != nil && utf8.Valid(payload) && !looksJSON(payload) {
		payload = adapters.AppendJSONString(nil, string(payload))
	}
	return r.Execute(ctx, device, tag, payload)
}

// looksJSON reports whether b starts like a JSON object, array, string,
// number or literal.
func looksJSON(b []byte) bool {
	s := strings.TrimSpace(string(b))
	if s == "" {
		return false
	}
	switch s[0] {
	case '{', '[', '"', '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		return true
	}
	return s == "true" || s == "false" || s == "null"
}
