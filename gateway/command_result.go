package gateway

import (
	"context"
	"log/slog"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/config"
	"github.com/ferry-gateway/ferry/gateway/record"
)

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
	latency := res.TS.Sub(c.received)
	r.recent.add(recentCmd{device: c.device, tag: c.tag, payload: payload, ok: res.OK, value: res.Value,
		code: code, message: res.Message, received: c.received, latency: latency, who: c.who})
	attrs := []any{"device", c.device, "tag", c.tag, "payload", string(payload), "result", code,
		"latency", latency.Round(time.Microsecond)}
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
	if !r.mqtt {
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
		mq := r.transport()
		if m.clear != "" {
			if err := mq.ClearRetained(r.ctx, m.clear); err != nil {
				r.mu.Lock()
				r.clearFailed++
				r.mu.Unlock()
				r.log.Error("retained command not deleted from the broker", "topic", m.clear, "err", err)
			}
		}
		if err := mq.Respond(r.ctx, m.topic, m.payload, m.correlation); err != nil {
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

// recentCommands is how many finished commands the router keeps for the
// status page.
const recentCommands = 50

// recentCmd is one finished command as the status page shows it.
type recentCmd struct {
	device, tag string
	payload     []byte // as sent, clipped to 256 bytes (shared with the command, never written)
	ok          bool
	value       adapters.Value // the value written (ok only)
	code        string         // "ok" or the error code
	message     string
	received    time.Time
	latency     time.Duration // from receipt to the answer
	who         []any         // the command's who: key/value pairs
}

// recentRing keeps the last recentCommands finished commands. It has its
// own lock so that the status page never waits on the router's.
type recentRing struct {
	mu   sync.Mutex
	buf  [recentCommands]recentCmd
	next int // index of the slot written next
	n    int // entries kept, at most recentCommands
}

func (q *recentRing) add(e recentCmd) {
	q.mu.Lock()
	q.buf[q.next] = e
	q.next = (q.next + 1) % recentCommands
	q.n = min(q.n+1, recentCommands)
	q.mu.Unlock()
}

// newestFirst returns a copy of the entries kept, newest first.
func (q *recentRing) newestFirst() []recentCmd {
	q.mu.Lock()
	defer q.mu.Unlock()
	out := make([]recentCmd, q.n)
	for i := range out {
		out[i] = q.buf[(q.next-1-i+2*recentCommands)%recentCommands]
	}
	return out
}
