package record

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/adapters"
	"go.uber.org/goleak"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var ts = time.Date(2026, 11, 25, 21, 0, 0, 123_456_789, time.UTC)

var goldenCases = []struct {
	name   string
	topic  string
	retain bool
	seq    uint64
	r      adapters.Reading
}{
	{"good_float", "ferry/line1/plc1/temperature", false, 1234,
		adapters.Reading{Device: "plc1", Tag: "temperature", Value: adapters.FloatValue(23.5), Quality: adapters.Good, Time: ts}},
	{"bad", "ferry/line1/plc1/temperature", false, 1235,
		adapters.Reading{Value: adapters.FloatValue(1), Quality: adapters.Bad, Time: ts, Err: `read timeout: "unit 1"`}},
	{"bool", "ferry/line1/plc1/door_open", true, 7,
		adapters.Reading{Value: adapters.BoolValue(true), Quality: adapters.Good, Time: ts}},
	{"string", "ferry/line1/plc1/recipe", false, 8,
		adapters.Reading{Value: adapters.StringValue("Brot\n\"Spezial\" \u00e9"), Quality: adapters.Uncertain, Time: ts}},
	{"uint64", "ferry/line1/plc1/counter", false, math.MaxUint64,
		adapters.Reading{Value: adapters.UintValue(math.MaxUint64), Quality: adapters.Good, Time: ts}},
	{"int64", "ferry/line1/plc1/offset", false, 0,
		adapters.Reading{Value: adapters.IntValue(-42), Quality: adapters.Good, Time: ts}},
	{"nan", "ferry/line1/cnc1/spindle_speed", false, 9,
		adapters.Reading{Value: adapters.FloatValue(math.NaN()), Quality: adapters.Good, Time: ts}},
	{"local_time_zero_ms", "ferry/line1/cnc1/x", false, 10,
		adapters.Reading{Value: adapters.FloatValue(1e21), Quality: adapters.Good,
			Time: time.Date(2026, 1, 2, 4, 5, 6, 0, time.FixedZone("CET", 3600))}},
}

// TestGolden pins the exact payload bytes (testdata/NAME.json) and the
// record bytes (testdata/NAME.record, hex). Regenerate with -update.
func TestGolden(t *testing.T) {
	for _, c := range goldenCases {
		t.Run(c.name, func(t *testing.T) {
			rec := AppendReading(nil, c.topic, c.retain, c.r)
			m, err := Decode(rec)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if m.Topic != c.topic || m.Retain != c.retain {
				t.Fatalf("Decode = topic %q retain %v, want %q %v", m.Topic, m.Retain, c.topic, c.retain)
			}
			payload := m.AppendPayload(nil, c.seq)
			if !json.Valid(payload) {
				t.Fatalf("payload is not valid JSON: %s", payload)
			}
			checkGolden(t, c.name+".json", payload)
			checkGolden(t, c.name+".record", []byte(hex.EncodeToString(rec)+"\n"))
		})
	}
}

func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s mismatch\n got: %s\nwant: %s", path, got, want)
	}
}

func TestAppendPayloadEmptyBody(t *testing.T) {
	rec := append(AppendHeader(nil, "a/b", false), '{')
	m, err := Decode(rec)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(m.AppendPayload(nil, 5)); got != `{"seq":5}` {
		t.Fatalf("payload = %s", got)
	}
}

func TestDecodeRejects(t *testing.T) {
	valid := AppendReading(nil, "a/b", true, adapters.Reading{Value: adapters.IntValue(1), Time: ts})
	long := AppendHeader(nil, string(bytes.Repeat([]byte("x"), MaxTopicLen+1)), false)
	long = append(long, '{')
	cases := map[string][]byte{
		"empty":             nil,
		"one byte":          {1},
		"bad version":       append([]byte{2}, valid[1:]...),
		"version zero":      append([]byte{0}, valid[1:]...),
		"unknown flags":     append([]byte{1, 0x82}, valid[2:]...),
		"no topic length":   {1, 0},
		"unterminated len":  {1, 0, 0x80},
		"len overflow":      {1, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01},
		"empty topic":       {1, 0, 0, '{'},
		"topic beyond data": {1, 0, 10, 'a', 'b', '{'},
		"topic too long":    long,
		"no body":           {1, 0, 1, 'a'},
		"body not object":   {1, 0, 1, 'a', '['},
		"wildcard topic":    {1, 0, 3, 'a', '/', '#', '{'},
		"plus topic":        {1, 0, 1, '+', '{'},
		"nul in topic":      {1, 0, 1, 0, '{'},
		"invalid utf8":      {1, 0, 1, 0xff, '{'},
	}
	for name, rec := range cases {
		_, err := Decode(rec)
		if err == nil {
			t.Errorf("%s: Decode(%x) succeeded", name, rec)
			continue
		}
		if !errors.Is(err, ErrCorrupt) {
			t.Errorf("%s: error %v does not wrap ErrCorrupt", name, err)
		}
	}
	if _, err := Decode(valid); err != nil {
		t.Fatalf("valid record: %v", err)
	}
}

func TestAppendReadingZeroAlloc(t *testing.T) {
	r := adapters.Reading{Device: "plc1", Tag: "temperature", Value: adapters.FloatValue(23.5), Quality: adapters.Good, Time: time.Now()}
	bad := adapters.Reading{Quality: adapters.Bad, Time: time.Now().In(time.FixedZone("X", 7200)), Err: "timeout \"x\""}
	str := adapters.Reading{Value: adapters.StringValue("hello wörld"), Time: time.Now()}
	buf := make([]byte, 0, 512)
	var payload []byte
	for _, rd := range []adapters.Reading{r, bad, str} {
		if n := testing.AllocsPerRun(200, func() {
			buf = AppendReading(buf[:0], "ferry/line1/plc1/temperature", false, rd)
		}); n != 0 {
			t.Errorf("AppendReading(%v) allocates %v times", rd.Value, n)
		}
	}
	payload = make([]byte, 0, 512)
	rec := AppendReading(nil, "t", false, r)
	if n := testing.AllocsPerRun(200, func() {
		m, err := Decode(rec)
		if err != nil {
			t.Fatal(err)
		}
		payload = m.AppendPayload(payload[:0], 123456)
	}); n > 1 { // the topic string
		t.Errorf("Decode+AppendPayload allocates %v times, want <= 1", n)
	}
}

func BenchmarkAppendReading(b *testing.B) {
	r := adapters.Reading{Device: "plc1", Tag: "temperature", Value: adapters.FloatValue(23.5), Quality: adapters.Good, Time: time.Now()}
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		buf = AppendReading(buf[:0], "ferry/line1/plc1/temperature", false, r)
	}
	b.SetBytes(int64(len(buf)))
}

func BenchmarkDecodeAppendPayload(b *testing.B) {
	r := adapters.Reading{Value: adapters.FloatValue(23.5), Quality: adapters.Good, Time: time.Now()}
	rec := AppendReading(nil, "ferry/line1/plc1/temperature", false, r)
	buf := make([]byte, 0, 256)
	b.ReportAllocs()
	for b.Loop() {
		m, err := Decode(rec)
		if err != nil {
			b.Fatal(err)
		}
		buf = m.AppendPayload(buf[:0], 1234)
	}
}

func FuzzDecode(f *testing.F) {
	for _, c := range goldenCases {
		f.Add(AppendReading(nil, c.topic, c.retain, c.r))
	}
	f.Add([]byte{1, 0, 10, 'a', '{'})
	f.Add([]byte{1, 1, 1, 'a', '{'})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, rec []byte) {
		m, err := Decode(rec)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("error %v does not wrap ErrCorrupt", err)
			}
			return
		}
		// A decodable record re-encodes to the same bytes.
		again := append(AppendHeader(nil, m.Topic, m.Retain), m.Body...)
		if !bytes.Equal(again, rec) {
			// Non-minimal uvarint encodings of the topic length decode fine
			// but re-encode shorter; everything else must round-trip.
			if len(again) >= len(rec) || !bytes.Equal(again[len(again)-len(m.Body):], m.Body) {
				t.Fatalf("re-encoding %x gave %x", rec, again)
			}
		}
		p := m.AppendPayload(nil, 42)
		if !bytes.HasSuffix(p, []byte(`"seq":42}`)) || p[0] != '{' {
			t.Fatalf("payload %q", p)
		}
	})
}

// TestAppendTime: the hand-written formatter matches time.AppendFormat with
// TimeLayout for any instant, zone and sub-millisecond part.
func TestAppendTime(t *testing.T) {
	zones := []*time.Location{time.UTC, time.FixedZone("plant", -5*3600-1800), time.FixedZone("east", 14*3600)}
	r := rand.New(rand.NewPCG(1, 2))
	cases := []time.Time{
		time.Date(2026, 11, 25, 21, 0, 0, 123456789, time.UTC),
		time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(9999, 12, 31, 23, 59, 59, 999999999, time.UTC),
		time.Date(-1, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC),
		{},
	}
	for range 10000 {
		cases = append(cases, time.Unix(r.Int64N(1<<36)-1<<35, r.Int64N(1e9)).In(zones[r.IntN(len(zones))]))
	}
	for _, tm := range cases {
		want := tm.UTC().AppendFormat(nil, TimeLayout)
		if got := AppendTime(nil, tm); string(got) != string(want) {
			t.Fatalf("AppendTime(%v) = %s, want %s", tm, got, want)
		}
	}
}
