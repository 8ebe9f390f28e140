package modbus

import (
	"errors"
	"strings"
	"sync"
	"time"

	mb "github.com/simonvetter/modbus"
)

// Stats are a poller's counters since NewPoller, for the metrics endpoint
// (the gateway turns them into collectors). Every field only grows.
type Stats struct {
	Requests    uint64            // read requests sent: retries and the parts of split requests included
	Errors      map[string]uint64 // failed requests by kind: see ErrorKinds
	Retries     uint64            // requests sent again after a timeout, busy or gateway exception
	Splits      uint64            // requests split in two after a Modbus exception
	Reconnects  uint64            // connections re-opened by this device after a failure
	Cycles      uint64            // poll cycles run (Run only)
	Delivered   uint64            // readings handed to the sink
	Suppressed  uint64            // readings held back by publish = "change"
	CycleTime   Histogram         // duration of a poll cycle
	PollJitter  Histogram         // how late a cycle started after its scheduled tick
	Writes      uint64            // write requests (commands) carried out or attempted (WriteTag)
	WriteErrors uint64            // of which failed (exception, timeout, transport, verify)
}

// ErrorKinds are the keys of Stats.Errors: a transport failure (timeout,
// connection, protocol) or the Modbus exception the device answered with.
var ErrorKinds = []string{
	"timeout", "connection", "protocol",
	"illegal_function", "illegal_address", "illegal_value", "device_failure",
	"acknowledge", "busy", "gateway_path", "gateway_target", "exception",
}

// HistogramBounds are the upper bounds of the Histogram buckets.
var HistogramBounds = []time.Duration{
	time.Millisecond, 5 * time.Millisecond, 10 * time.Millisecond, 50 * time.Millisecond,
	100 * time.Millisecond, 500 * time.Millisecond, time.Second, 5 * time.Second,
}

// Histogram is a duration distribution in the Prometheus shape: Buckets[i]
// counts the observations <= HistogramBounds[i] (cumulative); Count is the
// +Inf bucket.
type Histogram struct {
	Count   uint64
	Sum     time.Duration
	Max     time.Duration
	Buckets []uint64
}

func (h *Histogram) observe(d time.Duration) {
	if h.Buckets == nil {
		h.Buckets = make([]uint64, len(HistogramBounds))
	}
	h.Count++
	h.Sum += d
	h.Max = max(h.Max, d)
	for i, b := range HistogramBounds {
		if d <= b {
			h.Buckets[i]++
		}
	}
}

func (h Histogram) clone() Histogram {
	if h.Buckets == nil {
		h.Buckets = make([]uint64, len(HistogramBounds))
	} else {
		h.Buckets = append([]uint64(nil), h.Buckets...)
	}
	return h
}

// counters is the mutable form of Stats, behind its own mutex so Stats
// never waits for a cycle in progress.
type counters struct {
	mu sync.Mutex
	s  Stats
}

func (c *counters) add(f func(s *Stats)) {
	c.mu.Lock()
	f(&c.s)
	c.mu.Unlock()
}

func (c *counters) snapshot() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	s := c.s
	s.Errors = make(map[string]uint64, len(ErrorKinds))
	for _, k := range ErrorKinds {
		s.Errors[k] = c.s.Errors[k]
	}
	s.CycleTime = c.s.CycleTime.clone()
	s.PollJitter = c.s.PollJitter.clone()
	return s
}

// errorKind names the kind of a failed request for Stats.Errors.
func errorKind(err error) string {
	switch {
	case errors.Is(err, mb.ErrRequestTimedOut):
		return "timeout"
	case errors.Is(err, mb.ErrIllegalFunction):
		return "illegal_function"
	case errors.Is(err, mb.ErrIllegalDataAddress):
		return "illegal_address"
	case errors.Is(err, mb.ErrIllegalDataValue):
		return "illegal_value"
	case errors.Is(err, mb.ErrServerDeviceFailure):
		return "device_failure"
	case errors.Is(err, mb.ErrAcknowledge):
		return "acknowledge"
	case errors.Is(err, mb.ErrServerDeviceBusy):
		return "busy"
	case errors.Is(err, mb.ErrGWPathUnavailable):
		return "gateway_path"
	case errors.Is(err, mb.ErrGWTargetFailedToRespond):
		return "gateway_target"
	case errors.Is(err, mb.ErrProtocolError), errors.Is(err, mb.ErrBadCRC), errors.Is(err, mb.ErrShortFrame),
		errors.Is(err, mb.ErrBadUnitId), errors.Is(err, mb.ErrBadTransactionId):
		return "protocol"
	case strings.HasPrefix(err.Error(), "unknown exception code"):
		return "exception"
	}
	return "connection"
}
