package gateway

import (
	"bytes"
	"encoding/json"
	"errors"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/buffer"
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

type failingLog struct{ calls int }

func (f *failingLog) Append(...[]byte) (uint64, error) {
	f.calls++
	return 0, errors.New("write 00000000000000000001.seg: no space left on device")
}

// TestSinkAppendErrorIsCountedAndLoggedOnce: a full disk must not block
// polling nor flood the log.
func TestSinkAppendErrorIsCountedAndLoggedOnce(t *testing.T) {
	var logs bytes.Buffer
	f := &failingLog{}
	s := newSink(sinkConfig(), f, &stateLog{}, slog.New(slog.NewTextHandler(&logs, nil)))
	for range 100 {
		s.Readings([]adapters.Reading{{Device: "plc1", Tag: "temp", Value: adapters.IntValue(1)}})
	}
	if f.calls != 100 || s.appendErrors.Load() != 100 {
		t.Errorf("appends %d, counted errors %d; want 100 and 100", f.calls, s.appendErrors.Load())
	}
	if n := strings.Count(logs.String(), "buffer append failed"); n != 1 {
		t.Errorf("logged %d times, want once:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), "no space left on device") {
		t.Errorf("the log does not say why:\n%s", logs.String())
	}
}

func TestSinkDeviceState(t *testing.T) {
	st := &stateLog{}
	s := newSink(sinkConfig(), &failingLog{}, st, slog.New(slog.DiscardHandler))
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
