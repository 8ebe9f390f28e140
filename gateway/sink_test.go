package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/buffer"
	"github.com/ferry-gateway/ferry/buffer/buffertest"
	"github.com/ferry-gateway/ferry/config"
	"github.com/ferry-gateway/ferry/gateway/record"
)

type stateLog struct {
	mu     sync.Mutex
	topics []string
	bodies []string
}

func (s *stateLog) deviceState(_ string, _ bool, topic string, payload []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.topics = append(s.topics, topic)
	s.bodies = append(s.bodies, string(payload))
}

func sinkConfig() *config.Config {
	return &config.Config{
		MQTT: config.MQTT{TopicPrefix: "plant/l1"},
		Modbus: []config.ModbusDevice{{Name: "plc1", Tags: []config.ModbusTag{
			{Name: "temp"}, {Name: "level", Retain: true},
		}}},
	}
}

// TestSinkAppendsOneRecordPerReading runs the sink against the real buffer:
// one Append per cycle, topics P/DEVICE/TAG, retain per tag, payloads that
// decode, seq assigned by the buffer.
func TestSinkAppendsOneRecordPerReading(t *testing.T) {
	blog, err := buffer.Open(t.TempDir(), buffer.Options{Sync: buffer.SyncNone})
	if err != nil {
		t.Fatal(err)
	}
	defer blog.Close()
	s := newSink(sinkConfig(), blog, &stateLog{}, slog.New(slog.DiscardHandler))
	ts := time.Date(2026, 11, 25, 21, 0, 0, 123e6, time.UTC)
	s.Readings([]adapters.Reading{
		{Device: "plc1", Tag: "temp", Value: adapters.FloatValue(23.5), Time: ts},
		{Device: "plc1", Tag: "level", Value: adapters.UintValue(7), Time: ts},
		{Device: "plc1", Tag: "gone", Quality: adapters.Bad, Err: "illegal data address", Time: ts},
	})
	s.Readings(nil) // nothing to append
	if got := blog.NextSeq(); got != 4 {
		t.Fatalf("NextSeq %d after 3 readings, want 4", got)
	}
	want := []struct {
		topic, payload string
		retain         bool
	}{
		{"plant/l1/plc1/temp", `{"value":23.5,"quality":"good","ts":"2026-11-25T21:00:00.123Z","seq":1}`, false},
		{"plant/l1/plc1/level", `{"value":7,"quality":"good","ts":"2026-11-25T21:00:00.123Z","seq":2}`, true},
		{"plant/l1/plc1/gone", `{"value":null,"quality":"bad","ts":"2026-11-25T21:00:00.123Z","error":"illegal data address","seq":3}`, false},
	}
	i := 0
	_, err = blog.Scan(1, 10, func(seq uint64, data []byte) error {
		m, err := record.Decode(data)
		if err != nil {
			return err
		}
		if i >= len(want) {
			t.Fatalf("unexpected record %d", seq)
		}
		w := want[i]
		if m.Topic != w.topic || m.Retain != w.retain || string(m.AppendPayload(nil, seq)) != w.payload {
			t.Errorf("record %d: topic %q retain %v payload %s; want %q %v %s", seq, m.Topic, m.Retain, m.AppendPayload(nil, seq), w.topic, w.retain, w.payload)
		}
		i++
		return nil
	})
	if err != nil || i != len(want) {
		t.Fatalf("scan: %v (%d records)", err, i)
	}
}

// flakyLog fails appends while full is set (like a full disk) and keeps
// what it accepted.
type flakyLog struct {
	full    bool
	room    int // if positive, an append of more bytes fails (a disk with that much room)
	calls   int
	got     []string
	skipped uint64
}

func (f *flakyLog) Skip(n uint64) error {
	f.skipped += n
	return nil
}

func (f *flakyLog) Append(recs ...[]byte) (uint64, error) {
	f.calls++
	size := 0
	for _, r := range recs {
		size += len(r)
	}
	if f.full || (f.room > 0 && size > f.room) {
		return 0, errors.New("write 00000000000000000001.seg: no space left on device")
	}
	for _, r := range recs {
		f.got = append(f.got, string(r))
	}
	return 1, nil
}

// TestSinkDiskFull: while appends fail, readings wait in memory and are
// appended, in order, when the disk takes them again; the failure is
// logged once; beyond the retry limit the oldest are dropped and counted.
func TestSinkDiskFull(t *testing.T) {
	var logs bytes.Buffer
	f := &flakyLog{}
	s := newSink(sinkConfig(), f, &stateLog{}, slog.New(slog.NewTextHandler(&logs, nil)))
	reading := func(i int) []adapters.Reading {
		return []adapters.Reading{{Device: "plc1", Tag: "temp", Value: adapters.IntValue(int64(i))}}
	}
	s.Readings(reading(0))
	f.full = true
	for i := 1; i <= 100; i++ {
		s.Readings(reading(i))
	}
	if s.appendErrors.Load() == 0 || s.queued.Load() != 100 || s.lost.Load() != 0 {
		t.Fatalf("errors %d, queued %d, lost %d; want >0, 100, 0", s.appendErrors.Load(), s.queued.Load(), s.lost.Load())
	}
	if s.failingSince.Load() == 0 {
		t.Error("the failing episode is not recorded")
	}
	f.full = false
	s.Readings(reading(101))
	if len(f.got) != 102 || s.queued.Load() != 0 || s.failingSince.Load() != 0 {
		t.Fatalf("after recovery: %d appended, %d queued; want 102 and 0", len(f.got), s.queued.Load())
	}
	for i, r := range f.got {
		m, err := record.Decode([]byte(r))
		if err != nil || !strings.Contains(string(m.Body), fmt.Sprintf(`"value":%d,`, i)) {
			t.Fatalf("record %d out of order: %s (%v)", i, m.Body, err)
		}
	}
	if n := strings.Count(logs.String(), "buffer append failed"); n != 1 {
		t.Errorf("logged %d times, want once:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "no space left on device") || !strings.Contains(logs.String(), "appends work again") {
		t.Errorf("the log does not tell the story:\n%s", logs.String())
	}

	// A long outage: the queue keeps the newest retryLimit bytes.
	f.full = true
	big := make([]adapters.Reading, 100)
	for i := range big {
		big[i] = adapters.Reading{Device: "plc1", Tag: "temp", Value: adapters.StringValue(strings.Repeat("x", 1000))}
	}
	for range 20 { // ~2 MB of records
		s.Readings(big)
	}
	if s.lost.Load() == 0 || s.retryBytes > retryLimit {
		t.Errorf("lost %d, queued bytes %d; want some lost and at most %d queued", s.lost.Load(), s.retryBytes, retryLimit)
	}
	if f.skipped != s.lost.Load() {
		t.Errorf("lost %d readings but skipped %d seqs", s.lost.Load(), f.skipped)
	}
}

// TestSinkQueueDrainsOnASmallDisk: the disk has room again, but less than
// the queue holds: the queue goes in parts, in order, instead of failing
// whole for good. Before the fix it was appended in one piece, so on a
// 2 MiB disk appends never worked again.
func TestSinkQueueDrainsOnASmallDisk(t *testing.T) {
	f := &flakyLog{full: true}
	s := newSink(sinkConfig(), f, &stateLog{}, slog.New(slog.DiscardHandler))
	pad := strings.Repeat("x", 1000)
	reading := func(i int) []adapters.Reading {
		return []adapters.Reading{{Device: "plc1", Tag: "temp", Value: adapters.StringValue(fmt.Sprintf("%d %s", i, pad))}}
	}
	for i := range 300 { // about 300 KiB queued
		s.Readings(reading(i))
	}
	f.full, f.room = false, 100<<10
	s.Readings(reading(300))
	if s.queued.Load() != 0 || len(f.got) != 301 || s.lost.Load() != 0 {
		t.Fatalf("queued %d, appended %d, lost %d; want 0, 301, 0", s.queued.Load(), len(f.got), s.lost.Load())
	}
	for i, r := range f.got {
		m, err := record.Decode([]byte(r))
		if err != nil || !strings.Contains(string(m.Body), fmt.Sprintf(`"value":"%d `, i)) {
			t.Fatalf("record %d out of order: %.40s (%v)", i, m.Body, err)
		}
	}
}

// TestSinkLostReadingsLeaveSeqGap: a disk-full episode long enough for the
// in-memory queue to drop readings, on the real buffer: once the disk takes
// writes again, the seqs show a gap exactly as large as the readings lost,
// where they would have been, and the queued readings follow in order.
// Before the fix the lost readings took no seq: no gap showed.
func TestSinkLostReadingsLeaveSeqGap(t *testing.T) {
	faults := buffertest.NewFaults()
	blog, err := buffer.Open(t.TempDir(), buffer.Options{Sync: buffer.SyncNone, OpenFile: faults.OpenFile})
	if err != nil {
		t.Fatal(err)
	}
	defer blog.Close()
	s := newSink(sinkConfig(), blog, &stateLog{}, slog.New(slog.DiscardHandler))
	pad := strings.Repeat("x", 1000)
	cycle := func(i int) {
		s.Readings([]adapters.Reading{{Device: "plc1", Tag: "temp", Value: adapters.StringValue(fmt.Sprintf("%d %s", i, pad))}})
	}
	for i := range 10 {
		cycle(i)
	}
	faults.Set(func(f *buffertest.Faults) { f.Write = syscall.ENOSPC })
	const n = 3000 // ~3 MB: about 2 MB is lost
	for i := 10; i < 10+n; i++ {
		cycle(i)
	}
	lost := s.lost.Load()
	if lost == 0 {
		t.Fatal("nothing lost: the queue held everything; the test tests nothing")
	}
	faults.Clear()
	cycle(10 + n)
	var seqs []uint64
	var values []int
	if _, err := blog.Scan(1, 0, func(seq uint64, data []byte) error {
		m, err := record.Decode(data)
		if err != nil {
			return err
		}
		var v int
		body := string(m.Body)
		if _, err := fmt.Sscanf(body[strings.Index(body, `"value":"`)+len(`"value":"`):], "%d", &v); err != nil {
			return fmt.Errorf("seq %d: %s: %w", seq, body, err)
		}
		seqs, values = append(seqs, seq), append(values, v)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var gap uint64
	for i := 1; i < len(seqs); i++ {
		gap += seqs[i] - seqs[i-1] - 1
		if d := values[i] - values[i-1]; d < 1 || uint64(d-1) != seqs[i]-seqs[i-1]-1 {
			t.Fatalf("seq %d (value %d) after seq %d (value %d): the gap in seqs is not the readings lost", seqs[i], values[i], seqs[i-1], values[i-1])
		}
	}
	if gap != lost {
		t.Fatalf("seq gaps total %d, readings lost %d", gap, lost)
	}
	if values[len(values)-1] != 10+n || uint64(len(values))+lost != 11+n {
		t.Fatalf("%d readings stored + %d lost, want %d", len(values), lost, 11+n)
	}
}

func TestSinkDeviceState(t *testing.T) {
	st := &stateLog{}
	s := newSink(sinkConfig(), &flakyLog{}, st, slog.New(slog.DiscardHandler))
	s.DeviceState("plc1", false, errors.New(`dial tcp 10.0.0.5:502: connection "refused"`))
	s.DeviceState("plc1", true, nil)
	if len(st.topics) != 2 || st.topics[0] != "plant/l1/plc1/status" {
		t.Fatalf("topics %v", st.topics)
	}
	if !strings.HasPrefix(st.bodies[0], `{"state":"down","error":"dial tcp 10.0.0.5:502: connection \"refused\"","ts":"`) {
		t.Errorf("down payload %s", st.bodies[0])
	}
	if !strings.HasPrefix(st.bodies[1], `{"state":"up","ts":"`) || !strings.HasSuffix(st.bodies[1], `Z"}`) {
		t.Errorf("up payload %s", st.bodies[1])
	}
}

// TestSinkDeviceMode: publish = "device" makes one record per cycle on
// P/DEVICE, with every tag, a failed one included.
func TestSinkDeviceMode(t *testing.T) {
	blog, err := buffer.Open(t.TempDir(), buffer.Options{Sync: buffer.SyncNone})
	if err != nil {
		t.Fatal(err)
	}
	defer blog.Close()
	cfg := sinkConfig()
	cfg.Modbus[0].Publish = config.PublishDevice
	s := newSink(cfg, blog, &stateLog{}, slog.New(slog.DiscardHandler))
	t0 := time.Date(2026, 11, 25, 21, 0, 0, 123e6, time.UTC)
	t1 := t0.Add(5 * time.Millisecond)
	s.Readings([]adapters.Reading{
		{Device: "plc1", Tag: "temp", Value: adapters.FloatValue(23.5), Time: t0},
		{Device: "plc1", Tag: "level", Value: adapters.BoolValue(true), Time: t1},
		{Device: "plc1", Tag: `odd"name`, Quality: adapters.Bad, Err: "timeout", Time: t0},
	})
	if blog.NextSeq() != 2 {
		t.Fatalf("NextSeq %d, want 2: one record per cycle", blog.NextSeq())
	}
	want := `{"ts":"2026-11-25T21:00:00.128Z","values":{` +
		`"temp":{"value":23.5,"quality":"good","ts":"2026-11-25T21:00:00.123Z"},` +
		`"level":{"value":true,"quality":"good","ts":"2026-11-25T21:00:00.128Z"},` +
		`"odd\"name":{"value":null,"quality":"bad","ts":"2026-11-25T21:00:00.123Z","error":"timeout"}},"seq":1}`
	_, err = blog.Scan(1, 1, func(seq uint64, data []byte) error {
		m, err := record.Decode(data)
		if err != nil {
			return err
		}
		if m.Topic != "plant/l1/plc1" || string(m.AppendPayload(nil, seq)) != want {
			t.Errorf("topic %q payload\n%s\nwant %q\n%s", m.Topic, m.AppendPayload(nil, seq), "plant/l1/plc1", want)
		}
		if !json.Valid(m.AppendPayload(nil, seq)) {
			t.Error("payload is not valid JSON")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// BenchmarkSinkModes compares the encode cost per reading of a 100-tag
// cycle in tag and device mode (no disk: a discarding appender).
func BenchmarkSinkModes(b *testing.B) {
	for _, mode := range []string{config.PublishTag, config.PublishDevice} {
		b.Run(mode, func(b *testing.B) {
			cfg := &config.Config{MQTT: config.MQTT{TopicPrefix: "plant/l1"}}
			dev := config.ModbusDevice{Name: "plc1", Publish: mode}
			rs := make([]adapters.Reading, 100)
			for i := range rs {
				name := "tag" + strconv.Itoa(i)
				dev.Tags = append(dev.Tags, config.ModbusTag{Name: name})
				rs[i] = adapters.Reading{Device: "plc1", Tag: name, Value: adapters.FloatValue(float64(i) * 1.5), Time: time.Now()}
			}
			cfg.Modbus = []config.ModbusDevice{dev}
			s := newSink(cfg, discard{}, &stateLog{}, slog.New(slog.DiscardHandler))
			b.ReportAllocs()
			b.ResetTimer()
			for b.Loop() {
				s.Readings(rs)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(rs)), "ns/reading")
		})
	}
}

type discard struct{}

func (discard) Append(...[]byte) (uint64, error) { return 1, nil }
func (discard) Skip(uint64) error                { return nil }

// TestSinkDiskFullRealBuffer: the real buffer on a disk that fills up
// (ENOSPC from the file layer): polling never blocks, and when space comes
// back every reading is in the buffer, in order, with consecutive seqs.
func TestSinkDiskFullRealBuffer(t *testing.T) {
	faults := buffertest.NewFaults()
	blog, err := buffer.Open(t.TempDir(), buffer.Options{Sync: buffer.SyncAlways, OpenFile: faults.OpenFile})
	if err != nil {
		t.Fatal(err)
	}
	defer blog.Close()
	s := newSink(sinkConfig(), blog, &stateLog{}, slog.New(slog.DiscardHandler))
	cycle := func(i int) {
		s.Readings([]adapters.Reading{{Device: "plc1", Tag: "temp", Value: adapters.IntValue(int64(i))}})
	}
	for i := range 10 {
		cycle(i)
	}
	faults.Set(func(f *buffertest.Faults) { f.Write = syscall.ENOSPC })
	for i := 10; i < 50; i++ {
		cycle(i)
	}
	if s.queued.Load() != 40 {
		t.Fatalf("queued %d during the disk-full episode, want 40", s.queued.Load())
	}
	faults.Clear()
	cycle(50)
	if s.queued.Load() != 0 || blog.NextSeq() != 52 {
		t.Fatalf("after the disk had room again: queued %d, NextSeq %d; want 0 and 52", s.queued.Load(), blog.NextSeq())
	}
	want := 0
	if _, err := blog.Scan(1, 100, func(seq uint64, data []byte) error {
		m, err := record.Decode(data)
		if err != nil {
			return err
		}
		if !strings.Contains(string(m.Body), fmt.Sprintf(`"value":%d,`, want)) {
			return fmt.Errorf("seq %d holds %s, want value %d", seq, m.Body, want)
		}
		want++
		return nil
	}); err != nil || want != 51 {
		t.Fatalf("scan: %v after %d records", err, want)
	}
}

// TestSinkEpisodeEndsWhenQueueDroppedAll: a reading larger than the whole
// retry queue is lost during a disk-full episode, leaving the queue empty;
// the next append that works ends the episode (healthz reads failingSince).
func TestSinkEpisodeEndsWhenQueueDroppedAll(t *testing.T) {
	f := &flakyLog{full: true}
	s := newSink(sinkConfig(), f, &stateLog{}, slog.New(slog.DiscardHandler))
	s.Readings([]adapters.Reading{{Device: "plc1", Tag: "temp", Value: adapters.StringValue(strings.Repeat("x", retryLimit+1))}})
	if s.queued.Load() != 0 || s.lost.Load() != 1 || f.skipped != 1 || s.failingSince.Load() == 0 {
		t.Fatalf("queued %d, lost %d, skipped %d, failing since %d", s.queued.Load(), s.lost.Load(), f.skipped, s.failingSince.Load())
	}
	f.full = false
	s.Readings([]adapters.Reading{{Device: "plc1", Tag: "temp", Value: adapters.IntValue(1)}})
	if s.failingSince.Load() != 0 {
		t.Fatal("appends work again but the episode goes on")
	}
}
