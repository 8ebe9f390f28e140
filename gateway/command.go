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
}

// Defaults of the router.
const (
	defaultWriteTimeout = 10 * time.Second // a write (and its verify) from dequeue to answer
	deviceQueueLen      = 64               // commands waiting per device; more are rate_limited
	resultQueueLen      = 4096
	resultGrace         = 2 * time.Second // Close: how long queued results may still be published
)

// cmdTag is a configured tag as commands see it.
type cmdTag struct {
	device, name string
	writable     bool
	min, max     *float64
	verify       bool
	minInterval  time.Duration
	dev          *cmdDevice

	lastWrite time.Time // guarded by dev.mu
}

// readOnlyTag stands for every configured tag without writable = true: a
// command to it is answered not_writable. Read-only tags are only kept as
// names (commandRouter.readOnly), so a gateway with thousands of them
// keeps no per-tag command state.
var readOnlyTag = &cmdTag{}

// cmdDevice serializes the commands of one device.
type cmdDevice struct {
	name   string
	writer TagWriter
	queue  chan *command
	mu     sync.Mutex
}

// command is one command in flight.
type command struct {
	device, tag string
	payload     []byte
	received    time.Time
	deadline    time.Time // MQTT 5 Message Expiry; zero: none
	resultTopic string
	correlation []byte
	who         []any // log attributes: user properties, response topic
	t           *cmdTag
	value       adapters.Value
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
	Dropped uint64                // results that could not be queued for publishing
	Failed  uint64                // results the broker refused or that were not published before Close
}

// CommandKey is a device, tag and result code.
type CommandKey struct{ Device, Tag, Result string }

type resultMsg struct {
	topic       string
	payload     []byte
	correlation []byte
}

// commandRouter takes commands from MQTT (P/DEVICE/TAG/set), validates
// them before any device I/O, writes valid ones through the device's
// TagWriter, one at a time per device in arrival order, and publishes
// exactly one result per command.
type commandRouter struct {
	prefix       string
	maxAge       time.Duration
	writeTimeout time.Duration
	devices      map[string]*cmdDevice
	tags         map[string]map[string]*cmdTag // device -> writable tags
	readOnly     map[string][]string           // device -> its other tags, sorted (names shared with the config)
	mq           commandTransport
	log          *slog.Logger
	now          func() time.Time

	ctx     context.Context
	cancel  context.CancelFunc
	results chan resultMsg
	wg      sync.WaitGroup
	resWG   sync.WaitGroup

	mu      sync.Mutex // guards closed, stats and the sends on queues
	closed  bool
	started bool
	res     map[string]uint64
	byTag   map[CommandKey]uint64
	dropped uint64
	failed  uint64
}

// newCommandRouter builds the router for every tag of cfg. writers holds
// the TagWriter of each device by name; a device without one answers
// device_error. mq may be nil when only Execute is used (ferry write).
func newCommandRouter(cfg *config.Config, mq commandTransport, writers map[string]TagWriter, logger *slog.Logger) *commandRouter {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	r := &commandRouter{
		prefix:       cfg.MQTT.TopicPrefix,
		maxAge:       cfg.MQTT.CommandMaxAge,
		writeTimeout: defaultWriteTimeout,
		devices:      map[string]*cmdDevice{},
		tags:         map[string]map[string]*cmdTag{},
		readOnly:     map[string][]string{},
		mq:           mq,
		log:          logger.With("component", "commands"),
		now:          time.Now,
		results:      make(chan resultMsg, resultQueueLen),
		res:          map[string]uint64{},
		byTag:        map[CommandKey]uint64{},
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	add := func(dev, name string, writable bool, lo, hi *float64, verify bool, iv time.Duration) {
		d := r.devices[dev]
		if d == nil {
			d = &cmdDevice{name: dev, writer: writers[dev], queue: make(chan *command, deviceQueueLen)}
			r.devices[dev] = d
			r.tags[dev] = map[string]*cmdTag{}
		}
		if !writable {
			r.readOnly[dev] = append(r.readOnly[dev], name) // known, never written: no state
			return
		}
		r.tags[dev][name] = &cmdTag{device: dev, name: name, writable: true, min: lo, max: hi, verify: verify, minInterval: iv, dev: d}
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
	for dev, names := range r.readOnly {
		slices.Sort(names)
		r.readOnly[dev] = slices.Clip(names)
	}
	return r
}

// writable is the number of writable tags.
func (r *commandRouter) writable() int {
	n := 0
	for _, ts := range r.tags {
		for _, t := range ts {
			if t.writable {
				n++
			}
		}
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
	for _, d := range r.devices {
		r.wg.Go(func() { r.worker(d) })
	}
	if r.mq == nil {
		return nil
	}
	r.resWG.Go(r.publishResults)
	filter := r.prefix + "/+/+/set"
	if err := r.mq.Subscribe(filter, 2, r.handle); err != nil {
		return err
	}
	r.log.Info("accepting commands", "topic", filter, "writable_tags", r.writable())
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
	for _, d := range r.devices {
		close(d.queue)
	}
	r.mu.Unlock()
	r.wg.Wait()
	close(r.results)
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
	s := CommandStats{Results: map[string]uint64{}, ByTag: map[CommandKey]uint64{}, Dropped: r.dropped, Failed: r.failed}
	for _, c := range ResultCodes {
		s.Results[c] = r.res[c]
	}
	for k, v := range r.byTag {
		s.ByTag[k] = v
	}
	return s
}

// handle takes a message delivered on P/+/+/set. It runs on the MQTT
// reader goroutine, so it only checks (no I/O) and queues.
func (r *commandRouter) handle(m mqtt.Message) {
	c := &command{payload: m.Payload, received: m.Received, correlation: m.CorrelationData}
	if c.received.IsZero() {
		c.received = r.now()
	}
	if m.MessageExpiry != nil {
		c.deadline = c.received.Add(time.Duration(*m.MessageExpiry) * time.Second)
	}
	rest, _ := strings.CutPrefix(m.Topic, r.prefix+"/")
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
	if m.ResponseTopic != "" {
		if err := validTopicName(m.ResponseTopic); err != nil {
			r.finish(c, fail(CodeBadValue, "response topic: %v", err))
			return
		}
		c.resultTopic = m.ResponseTopic
	}
	if m.Retain {
		r.finish(c, fail(CodeExpired, "retained command refused: a retained command is stale by nature"))
		return
	}
	r.submit(c)
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
// it at once.
func (r *commandRouter) submit(c *command) {
	if res, ok := r.validate(c); !ok {
		r.finish(c, res)
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		r.finishLocked(c, fail(CodeDeviceError, "gateway shutting down"))
		return
	}
	select {
	case c.t.dev.queue <- c:
	default:
		r.finishLocked(c, fail(CodeRateLimited, "%d commands already waiting for device %s", deviceQueueLen, c.device))
	}
}

func fail(code, format string, args ...any) commandResult {
	return commandResult{Code: code, Message: fmt.Sprintf(format, args...)}
}

// validate runs every check that needs no device I/O, in the order of the
// contract: the tag, the payload, expiry, the value against the tag.
func (r *commandRouter) validate(c *command) (commandResult, bool) {
	t := r.tags[c.device][c.tag]
	if t == nil {
		if _, ok := slices.BinarySearch(r.readOnly[c.device], c.tag); ok {
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
	if res, expired := r.expired(c, p.ts); expired {
		return res, false
	}
	if !p.ts.IsZero() {
		c.who = append(c.who, "command_ts", p.ts)
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

// expired checks the MQTT 5 Message Expiry and command_max_age against
// the command's ts.
func (r *commandRouter) expired(c *command, ts time.Time) (commandResult, bool) {
	now := r.now()
	if !c.deadline.IsZero() && !now.Before(c.deadline) {
		return fail(CodeExpired, "message expiry passed %v ago", now.Sub(c.deadline).Round(time.Millisecond)), true
	}
	if r.maxAge > 0 && !ts.IsZero() && now.Sub(ts) > r.maxAge {
		return fail(CodeExpired, "command of %s is %v old (command_max_age %v)", ts.UTC().Format(time.RFC3339Nano), now.Sub(ts).Round(time.Millisecond), r.maxAge), true
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

// worker carries out the commands of one device, in order.
func (r *commandRouter) worker(d *cmdDevice) {
	for c := range d.queue {
		r.mu.Lock()
		closed := r.closed
		r.mu.Unlock()
		if closed && c.done == nil {
			r.finish(c, fail(CodeDeviceError, "gateway shutting down; not carried out"))
			continue
		}
		r.finish(c, r.execute(c))
	}
}

// execute writes one validated command: expiry and the rate limit are
// checked again now that it is its turn.
func (r *commandRouter) execute(c *command) commandResult {
	if res, expired := r.expired(c, time.Time{}); expired {
		return res
	}
	t := c.t
	now := r.now()
	if t.minInterval > 0 && !t.lastWrite.IsZero() && now.Sub(t.lastWrite) < t.minInterval {
		return fail(CodeRateLimited, "last write %v ago; min_write_interval is %v", now.Sub(t.lastWrite).Round(time.Millisecond), t.minInterval)
	}
	t.lastWrite = now
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
	msg := resultMsg{topic: c.resultTopic, payload: res.JSON(), correlation: c.correlation}
	if r.mq == nil {
		return
	}
	select {
	case r.results <- msg:
	default:
		r.dropped++
		r.log.Error("command result dropped: result queue full", "topic", msg.topic)
	}
}

// publishResults publishes the results in order.
func (r *commandRouter) publishResults() {
	for m := range r.results {
		if err := r.mq.Respond(r.ctx, m.topic, m.payload, m.correlation); err != nil {
			r.mu.Lock()
			r.failed++
			r.mu.Unlock()
			r.log.Error("command result not published", "topic", m.topic, "err", err)
		}
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
