package gateway

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/gateway/mqtt"
)

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
	if r.mqtt {
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
// contract: the tag, the payload, expiry, the value against the tag (its
// type and, exactly, its min and max: the adapter's TagWrite.Check, the
// one check of the value).
func (r *commandRouter) validate(c *command) (commandResult, bool) {
	tab := r.tab.Load()
	t := tab.tags[c.device][c.tag]
	if t == nil {
		if _, ok := slices.BinarySearch(tab.readOnly[c.device], c.tag); ok {
			return fail(CodeNotWritable, "tag %s/%s is not writable", c.device, c.tag), false
		}
		return fail(CodeUnknownTag, "no tag %q on device %q", c.tag, c.device), false
	}
	c.t = t
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
	if t.dev.writer == nil {
		return fail(CodeDeviceError, "device %s has no writer in this process", c.device), false
	}
	if t.werr != nil {
		return fail(codeOf(t.werr, CodeBadValue), "%v", t.werr), false
	}
	raw, err := t.w.Check(p.value)
	if err != nil {
		return fail(codeOf(err, CodeBadValue), "%v", err), false
	}
	c.raw = raw
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

// codeOf is the result code an error carries (an *adapters.WriteError),
// else def.
func codeOf(err error, def string) string {
	var we *adapters.WriteError
	if errors.As(err, &we) {
		switch we.Code {
		case CodeBadValue, CodeDeviceError, CodeTimeout, CodeOutOfRange:
			return we.Code
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
	last := t.lastWrite
	if t.minInterval > 0 && !last.IsZero() && now.Sub(last) < t.minInterval {
		return fail(CodeRateLimited, "last write %v ago; min_write_interval is %v", now.Sub(last).Round(time.Millisecond), t.minInterval)
	}
	t.lastWrite = now
	ctx, cancel := context.WithTimeout(r.ctx, r.writeTimeout)
	defer cancel()
	v, err := t.w.Write(ctx, c.raw, t.verify)
	if err != nil {
		return fail(codeOf(err, CodeDeviceError), "%v", err)
	}
	return commandResult{OK: true, Value: v}
}
