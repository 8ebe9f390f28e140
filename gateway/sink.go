package gateway

import (
	"bytes"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/buffer"
	"github.com/ferry-gateway/ferry/config"
	"github.com/ferry-gateway/ferry/gateway/record"
)

// appender is the buffer as the sink uses it.
type appender interface {
	Append(recs ...[]byte) (first uint64, err error)
	// Skip gives up n seqs for records that could not be stored, so that
	// consumers see the loss as a gap in the seqs.
	Skip(n uint64) error
}

// stater receives device state changes as retained P/DEVICE/status
// messages.
type stater interface {
	deviceState(device string, up bool, topic string, payload []byte)
}

type tagKey struct{ device, tag string }

type tagInfo struct {
	topic  string
	retain bool
}

// sink turns readings into buffer records and device state changes into
// retained P/DEVICE/status messages. It implements adapters.Sink.
//
// A device publishes per tag (one record per reading, topic P/DEVICE/TAG)
// or per device (one record per Readings call, topic P/DEVICE, payload
// {"ts":...,"values":{"TAG":{"value":...,"quality":...,"ts":...},...},"seq":N}).
type sink struct {
	log    appender
	states stater
	routes atomic.Pointer[routes] // replaced whole on reload
	logger *slog.Logger

	scratch sync.Pool // *batch

	appendErrors atomic.Uint64
	lastErrLog   atomic.Int64 // unix nanos of the last logged append error

	// Records whose append failed (disk full, I/O error) wait here, at
	// most retryBytes, and go first at the next append: a short disk-full
	// episode loses nothing and order is kept. Overflow drops the oldest,
	// and their seqs are skipped in the buffer, so consumers see the gap.
	retryMu      sync.Mutex
	retry        [][]byte // owned copies
	retryBytes   int
	episodeLost  uint64        // lost in the current episode; retryMu held
	queued       atomic.Int64  // len(retry), read without the lock
	failingSince atomic.Int64  // unix nanos of the first failure of the current episode; 0 when appends work
	lost         atomic.Uint64 // records given up: dropped from the queue or refused for good

	page pageState // for the status page (statuspage.go)
}

// retryLimit bounds the records kept for retry after failed appends.
const retryLimit = 1 << 20

// retryChunk bounds the bytes of one append of queued records: on a disk
// with less room than the queue holds, the queue drains in parts instead
// of failing whole for good.
const retryChunk = 64 << 10

// routes maps devices and tags to topics; immutable once built.
type routes struct {
	prefix  string
	tags    map[tagKey]tagInfo
	devices map[string]deviceInfo
}

type deviceInfo struct {
	perDevice bool
	topic     string // P/DEVICE
	retain    bool
}

type batch struct {
	buf  []byte
	ends []int
	recs [][]byte
}

func newSink(cfg *config.Config, log appender, states stater, logger *slog.Logger) *sink {
	s := &sink{log: log, states: states, logger: logger}
	s.page.init(time.Now())
	s.scratch.New = func() any { return new(batch) }
	s.setRoutes(cfg)
	return s
}

// setRoutes makes the sink publish by cfg's topics and modes from now on.
func (s *sink) setRoutes(cfg *config.Config) {
	r := &routes{
		prefix:  cfg.MQTT.TopicPrefix,
		tags:    make(map[tagKey]tagInfo),
		devices: make(map[string]deviceInfo),
	}
	addDevice := func(name, publish string) {
		r.devices[name] = deviceInfo{
			perDevice: publish == config.PublishDevice,
			topic:     r.prefix + "/" + name,
			retain:    cfg.MQTT.Retain,
		}
	}
	// Per-tag topics only for devices that publish per tag: a device-mode
	// gateway with 10,000 tags keeps no 10,000 topic strings.
	addTag := func(device, publish, tag string, retain bool) {
		if publish != config.PublishDevice {
			r.tags[tagKey{device, tag}] = tagInfo{r.prefix + "/" + device + "/" + tag, retain}
		}
	}
	for _, d := range cfg.Modbus {
		addDevice(d.Name, d.Publish)
		for _, t := range d.Tags {
			addTag(d.Name, d.Publish, t.Name, t.Retain)
		}
	}
	for _, d := range cfg.OPCUA {
		addDevice(d.Name, d.Publish)
		for _, t := range d.Tags {
			addTag(d.Name, d.Publish, t.Name, t.Retain)
		}
	}
	s.routes.Store(r)
}

// Readings appends the records of one poll cycle or notification batch, all
// in one buffer append so a cycle costs one write (and at most one fsync).
// Every reading of one call belongs to one device.
func (s *sink) Readings(rs []adapters.Reading) {
	if len(rs) == 0 {
		return
	}
	s.page.record(rs)
	b := s.scratch.Get().(*batch)
	defer s.scratch.Put(b)
	b.buf, b.ends, b.recs = b.buf[:0], b.ends[:0], b.recs[:0]
	r := s.routes.Load()
	if dev, ok := r.devices[rs[0].Device]; ok && dev.perDevice {
		b.buf = appendDeviceRecord(b.buf, dev, rs)
		b.ends = append(b.ends, len(b.buf))
	} else {
		r.appendTagRecords(b, rs)
	}
	start := 0
	for _, end := range b.ends {
		b.recs = append(b.recs, b.buf[start:end])
		start = end
	}
	if s.queued.Load() == 0 {
		_, err := s.log.Append(b.recs...)
		if err == nil {
			if s.failingSince.Load() != 0 {
				// The queue emptied by dropping what it held (a batch
				// larger than retryLimit): appends work again.
				s.failingSince.Store(0)
			}
			return
		}
		if s.refused(rs, b.recs, err) {
			return
		}
	}
	s.retryAppend(rs, b.recs)
}

// refused handles an append error that retrying cannot fix and reports
// whether it was one: a closed log (shutdown) or a record too large.
func (s *sink) refused(rs []adapters.Reading, recs [][]byte, err error) bool {
	switch {
	case errors.Is(err, buffer.ErrClosed):
		return true
	case errors.Is(err, buffer.ErrRecordTooLarge):
		s.giveUp(uint64(len(recs)))
		s.appendFailed(rs, err)
		return true
	}
	return false
}

// giveUp counts n records as lost and skips their seqs in the buffer: the
// next record appended gets a seq n higher, so consumers see the gap.
func (s *sink) giveUp(n uint64) {
	s.lost.Add(n)
	if err := s.log.Skip(n); err != nil && !errors.Is(err, buffer.ErrClosed) {
		s.logger.Error("cannot mark lost readings as a seq gap", "records", n, "err", err)
	}
}

// retryAppend appends the queued records, then recs; whatever cannot be
// appended now is queued (copied), dropping the oldest beyond retryLimit.
func (s *sink) retryAppend(rs []adapters.Reading, recs [][]byte) {
	s.retryMu.Lock()
	defer s.retryMu.Unlock()
	if len(s.retry) > 0 {
		queued := len(s.retry)
		if err := s.flushRetry(); err != nil {
			s.appendFailed(rs, err)
			s.enqueue(recs)
			return
		}
		s.logger.Info("buffer appends work again; queued readings appended",
			"records", queued, "lost", s.episodeLost,
			"failing_for", time.Since(time.Unix(0, s.failingSince.Load())).Round(time.Millisecond))
		s.episodeLost = 0
		s.failingSince.Store(0)
	}
	if _, err := s.log.Append(recs...); err != nil {
		if s.refused(rs, recs, err) {
			return
		}
		s.appendFailed(rs, err)
		s.enqueue(recs)
		return
	}
	s.failingSince.Store(0)
}

// flushRetry appends the queued records in order, at most retryChunk
// bytes per append, and forgets those appended. It stops at the first
// failure; s.retryMu held.
func (s *sink) flushRetry() error {
	for len(s.retry) > 0 {
		n, size := 0, 0
		for n < len(s.retry) && (n == 0 || size+len(s.retry[n]) <= retryChunk) {
			size += len(s.retry[n])
			n++
		}
		if _, err := s.log.Append(s.retry[:n]...); err != nil {
			return err
		}
		rest := copy(s.retry, s.retry[n:])
		clear(s.retry[rest:])
		s.retry = s.retry[:rest]
		s.retryBytes -= size
		s.queued.Store(int64(rest))
	}
	return nil
}

// enqueue keeps copies of recs for retry; s.retryMu held.
func (s *sink) enqueue(recs [][]byte) {
	s.failingSince.CompareAndSwap(0, time.Now().UnixNano())
	for _, r := range recs {
		s.retry = append(s.retry, bytes.Clone(r))
		s.retryBytes += len(r)
	}
	drop := 0
	for s.retryBytes > retryLimit && drop < len(s.retry) {
		s.retryBytes -= len(s.retry[drop])
		drop++
	}
	if drop > 0 {
		s.retry = append(s.retry[:0], s.retry[drop:]...)
		s.episodeLost += uint64(drop)
		s.giveUp(uint64(drop))
	}
	s.queued.Store(int64(len(s.retry)))
}

// appendDeviceRecord appends one record carrying every reading of a cycle:
// {"ts":CYCLE,"values":{"TAG":{"value":..,"quality":..,"ts":..},...}
// (the publisher closes it with ,"seq":N}). The cycle's ts is its newest
// reading's.
func appendDeviceRecord(dst []byte, dev deviceInfo, rs []adapters.Reading) []byte {
	newest := rs[0].Time
	for i := range rs {
		if rs[i].Time.After(newest) {
			newest = rs[i].Time
		}
	}
	dst = record.AppendHeader(dst, dev.topic, dev.retain)
	dst = append(dst, `{"ts":"`...)
	dst = record.AppendTime(dst, newest)
	dst = append(dst, `","values":{`...)
	for i := range rs {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = adapters.AppendJSONString(dst, rs[i].Tag)
		dst = append(dst, ':')
		dst = record.AppendReadingBody(dst, rs[i])
		dst = append(dst, '}')
	}
	return append(dst, '}')
}

func (r *routes) appendTagRecords(b *batch, rs []adapters.Reading) {
	for i := range rs {
		info, ok := r.tags[tagKey{rs[i].Device, rs[i].Tag}]
		if !ok {
			info.topic = r.prefix + "/" + rs[i].Device + "/" + rs[i].Tag
		}
		b.buf = record.AppendReading(b.buf, info.topic, info.retain, rs[i])
		b.ends = append(b.ends, len(b.buf))
	}
}

// appendFailed counts a failed append (the cycle's readings are lost).
func (s *sink) appendFailed(rs []adapters.Reading, err error) {
	n := s.appendErrors.Add(1)
	// Log the first failure and then at most once a minute: a full disk
	// must not also flood the journal.
	now := time.Now().UnixNano()
	last := s.lastErrLog.Load()
	if now-last >= int64(time.Minute) && s.lastErrLog.CompareAndSwap(last, now) {
		s.logger.Error("buffer append failed; readings are held in memory (up to 1 MiB, then the oldest are lost and their seqs skipped) and appended when the disk takes them again",
			"device", rs[0].Device, "readings", len(rs), "failures", n, "lost_so_far", s.lost.Load(), "err", err)
	}
}

// DeviceState publishes the retained P/DEVICE/status message.
func (s *sink) DeviceState(device string, up bool, err error) {
	b := make([]byte, 0, 128)
	b = append(b, `{"state":`...)
	if up {
		b = append(b, `"up"`...)
	} else {
		b = append(b, `"down"`...)
	}
	if err != nil {
		b = append(b, `,"error":`...)
		b = adapters.AppendJSONString(b, err.Error())
	}
	b = append(b, `,"ts":"`...)
	b = time.Now().UTC().AppendFormat(b, "2006-01-02T15:04:05.000Z")
	b = append(b, `"}`...)
	if up {
		s.logger.Info("device up", "device", device)
	} else {
		s.logger.Warn("device down", "device", device, "err", err)
	}
	s.states.deviceState(device, up, s.routes.Load().prefix+"/"+device+"/status", b)
}
