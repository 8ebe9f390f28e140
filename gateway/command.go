package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/config"
	"github.com/ferry-gateway/ferry/gateway/mqtt"
)

// Command result codes (CONTRACT.md, Commands), defined once in adapters.
const (
	CodeUnknownTag  = adapters.CodeUnknownTag
	CodeNotWritable = adapters.CodeNotWritable
	CodeBadValue    = adapters.CodeBadValue
	CodeOutOfRange  = adapters.CodeOutOfRange
	CodeExpired     = adapters.CodeExpired
	CodeRateLimited = adapters.CodeRateLimited
	CodeDeviceError = adapters.CodeDeviceError
	CodeTimeout     = adapters.CodeTimeout
)

// ResultCodes lists every result code; "ok" is counted for successes.
var ResultCodes = adapters.ResultCodes

// TagWriter is a device adapter that takes commands (adapters.Writer):
// *modbus.Poller and *opcua.Client. The router compiles each writable tag
// once through it, when the config is loaded or a reload changes the
// device.
type TagWriter = adapters.Writer

// commandSubscriber subscribes the router to the command topics:
// *mqtt.Publisher. h runs on the MQTT reader and must not block long.
type commandSubscriber interface {
	Subscribe(filter string, qos byte, h func(mqtt.Message)) error
}

// commandResponder publishes the answers: *mqtt.Publisher.
type commandResponder interface {
	Respond(ctx context.Context, topic string, payload, correlation []byte) error
	// ClearRetained deletes the retained message on topic at the broker.
	ClearRetained(ctx context.Context, topic string) error
}

// commandTransport is the MQTT side of commands, *mqtt.Publisher: the
// router subscribes and answers through it directly (attach).
type commandTransport interface {
	commandSubscriber
	commandResponder
}

// Defaults of the router.
const (
	defaultWriteTimeout = 10 * time.Second // a write (and its verify) from dequeue to answer
	deviceQueueLen      = 64               // commands waiting per device; more are rate_limited
	resultQueueLen      = 4096             // answers not yet published; an accepted command holds one slot
	resultSlotWait      = 10 * time.Second // how long a refusal waits for a slot before it is dropped
	resultGrace         = 2 * time.Second  // Close: how long queued results may still be published
)

// cmdTag is a writable tag as commands see it, compiled once: the
// adapter's TagWrite (type, encoding, limits), verify and the rate limit.
type cmdTag struct {
	device, name string
	w            adapters.TagWrite // nil when the adapter refused the tag: werr
	werr         error
	verify       bool
	minInterval  time.Duration
	dev          *cmdDevice
	lastWrite    time.Time // rate state: the worker of dev's own
}

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
	raw         any                // what t.w.Check returned, for t.w.Write
	slot        bool               // holds a result slot (MQTT commands)
	clear       string             // retained command: topic whose retained message is deleted
	done        chan commandResult // Execute only; nil for MQTT commands
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
	mqtt         bool                             // answers go out over MQTT (not Execute only)
	mq           atomic.Pointer[commandTransport] // the publisher in force; swapped by attach
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

	recent recentRing // the last finished commands, for the status page
}

// newCommandRouter builds the router for every tag of cfg. writers holds
// the TagWriter of each device by name; a device without one answers
// device_error. mq is the publisher the router subscribes and answers
// through (attach swaps it); nil when only Execute is used (ferry write).
func newCommandRouter(cfg *config.Config, mq commandTransport, writers map[string]TagWriter, logger *slog.Logger) *commandRouter {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	r := &commandRouter{
		writeTimeout: defaultWriteTimeout,
		mqtt:         mq != nil,
		log:          logger.With("component", "commands"),
		now:          time.Now,
		results:      make(chan resultMsg, resultQueueLen),
		slots:        make(chan struct{}, resultQueueLen),
		res:          map[string]uint64{},
		byTag:        map[CommandKey]uint64{},
	}
	if mq != nil {
		r.mq.Store(&mq)
	}
	r.ctx, r.cancel = context.WithCancel(context.Background())
	tab, _ := buildTables(cfg, writers, nil)
	r.tab.Store(tab)
	return r
}

// buildTables builds the tables of cfg, compiling each writable tag once
// through its device's TagWriter. A device of old whose writer is the
// same keeps its cmdDevice (queue, worker) and its compiled tags with
// their last writes (its config is the same: a changed device gets a new
// writer); the others of old are returned as retired.
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
	for _, d := range cfg.Modbus {
		tab.addDevice(d.Name, writers[d.Name], old, func(add func(name string, writable, verify bool, iv time.Duration)) {
			for _, t := range d.Tags {
				add(t.Name, t.Writable, t.Verify, t.MinWriteInterval)
			}
		})
	}
	for _, d := range cfg.OPCUA {
		tab.addDevice(d.Name, writers[d.Name], old, func(add func(name string, writable, verify bool, iv time.Duration)) {
			for _, t := range d.Tags {
				add(t.Name, t.Writable, t.Verify, t.MinWriteInterval)
			}
		})
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

// addDevice adds device name, written through w, with the tags that each
// lists; a device kept from old keeps its tables.
func (tab *cmdTables) addDevice(name string, w TagWriter, old *cmdTables, each func(add func(tag string, writable, verify bool, iv time.Duration))) {
	if old != nil {
		if od := old.devices[name]; od != nil && w != nil && od.writer == w {
			tab.devices[name], tab.tags[name], tab.readOnly[name] = od, old.tags[name], old.readOnly[name]
			return
		}
	}
	d := &cmdDevice{name: name, writer: w, queue: make(chan *command, deviceQueueLen),
		done: make(chan struct{})}
	tags := map[string]*cmdTag{}
	var readOnly []string
	each(func(tag string, writable, verify bool, iv time.Duration) {
		if !writable {
			readOnly = append(readOnly, tag) // known, never written: no state
			return
		}
		t := &cmdTag{device: name, name: tag, verify: verify, minInterval: iv, dev: d}
		if w != nil {
			t.w, t.werr = w.CompileWrite(tag)
		}
		tags[tag] = t
	})
	slices.Sort(readOnly)
	tab.devices[name], tab.tags[name], tab.readOnly[name] = d, tags, slices.Clip(readOnly)
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
	if !r.mqtt {
		return nil
	}
	r.resWG.Go(r.publishResults)
	return r.subscribe(*r.mq.Load(), false)
}

// attach makes mq the publisher the router subscribes and answers
// through: the gateway calls it when a publisher replaces the one in
// force, before the new one connects, so the commands the broker kept for
// ferry's session reach the router. Answers queued meanwhile go out
// through mq.
func (r *commandRouter) attach(mq commandTransport) error {
	r.mq.Store(&mq)
	r.mu.Lock()
	started := r.started && r.mqtt
	r.mu.Unlock()
	if !started {
		return nil
	}
	return r.subscribe(mq, true)
}

// transport is the publisher in force.
func (r *commandRouter) transport() commandTransport {
	if p := r.mq.Load(); p != nil {
		return *p
	}
	return nil
}

// subscribe subscribes mq to the filter of the tables in force when it
// is not the subscribed one (always with force: a new publisher).
func (r *commandRouter) subscribe(mq commandTransport, force bool) error {
	tab := r.tab.Load()
	filter := tab.prefix + "/+/+/set"
	r.mu.Lock()
	same := r.filter == filter
	r.filter = filter
	r.mu.Unlock()
	if same && !force {
		return nil
	}
	if err := mq.Subscribe(filter, 2, r.handle); err != nil {
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
	if started && r.mqtt {
		return r.subscribe(r.transport(), false)
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
