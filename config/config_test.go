package config

import (
	"errors"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"
)

func ptr(f float64) *float64 { return &f }

// TestLoadFull loads the annotated example and checks every resolved
// value: defaults, ${ENV} expansion and file secrets.
func TestLoadFull(t *testing.T) {
	t.Setenv("FERRY_BROKER_HOST", "broker.plant.local")
	t.Setenv("FERRY_MQTT_USER", "")
	const path = "testdata/good/full.toml"
	c, err := Load(path)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	want := &Config{
		Path: path,
		Gateway: Gateway{
			ID:       "line1",
			StateDir: "/var/lib/ferry",
			LogLevel: "info",
		},
		MQTT: MQTT{
			URL:                "mqtts://broker.plant.local:8883",
			QoS:                1,
			TopicPrefix:        "plant/line1",
			ClientID:           "ferry-line1",
			Username:           "gateway",
			Password:           "s3cret-mqtt",
			CAFile:             "/etc/ferry/ca.crt",
			CertFile:           "/etc/ferry/gw.crt",
			KeyFile:            "/etc/ferry/gw.key",
			KeepAlive:          30 * time.Second,
			ConnectTimeout:     10 * time.Second,
			SessionExpiry:      24 * time.Hour,
			MaxInflight:        256,
			ReconnectMin:       100 * time.Millisecond,
			ReconnectMax:       30 * time.Second,
			Publish:            "tag",
			CommandMaxAge:      30 * time.Second,
			CommandMaxSkew:     5 * time.Second,
			MaxReplayRate:      2000,
			DeadLetterAttempts: 5,
		},
		Buffer: Buffer{
			MaxBytes:     1 << 30,
			MaxAge:       168 * time.Hour,
			SegmentBytes: 64 << 20,
			Sync:         "batch",
			SyncInterval: 10 * time.Millisecond,
		},
		Metrics: Metrics{Listen: "127.0.0.1:9108"},
		Modbus: []ModbusDevice{
			{
				Name: "plc1", URL: "tcp://10.0.0.5:502", Unit: 1,
				Interval: time.Second, Timeout: 500 * time.Millisecond,
				MaxGap: 10, MaxRegistersPerRequest: 125, Order: "ABCD", Publish: "tag",
				Retries: 2, MergeRetry: 5 * time.Minute,
				Speed: 19200, DataBits: 8, Parity: "none", StopBits: 1,
				Tags: []ModbusTag{
					{
						Name: "temperature", Table: "holding", Address: 100, Type: "float32", Order: "CDAB",
						Bit: -1, Scale: 0.1, Offset: -40, Interval: 5 * time.Second, Writable: true,
						Min: ptr(0), Max: ptr(150), Verify: true, MinWriteInterval: time.Second, Retain: true,
					},
					{Name: "door_open", Table: "holding", Address: 7, Type: "bool", Order: "ABCD", Bit: 3, Scale: 1, Interval: time.Second},
					{Name: "recipe", Table: "holding", Address: 120, Type: "string", Order: "ABCD", Bit: -1, Length: 8, Scale: 1, Interval: time.Second},
					{Name: "pump_run", Table: "coil", Address: 0, Type: "bool", Order: "ABCD", Bit: -1, Scale: 1, Interval: time.Second, Writable: true},
					{Name: "flow", Table: "input", Address: 30, Type: "uint16", Order: "ABCD", Bit: -1, Scale: 1, Interval: time.Second,
						OnChange: true, Deadband: 5, Heartbeat: time.Minute},
				},
			},
			{
				Name: "meter1", URL: "rtu:///dev/ttyUSB0", Unit: 17,
				Interval: 2 * time.Second, Timeout: time.Second,
				MaxGap: 10, MaxRegistersPerRequest: 125, Order: "ABCD", Publish: "device",
				Retries: 1, MergeRetry: 10 * time.Minute,
				Speed: 19200, DataBits: 8, Parity: "even", StopBits: 1,
				Tags: []ModbusTag{
					{Name: "energy_kwh", Table: "input", Address: 0, Type: "uint64", Order: "DCBA", Bit: -1, Scale: 1, Interval: 2 * time.Second},
				},
			},
		},
		OPCUA: []OPCUADevice{
			{
				Name: "cnc1", Endpoint: "opc.tcp://10.0.0.6:4840",
				SecurityPolicy: "Basic256Sha256", SecurityMode: "SignAndEncrypt",
				Username: "operator", Password: "opcua-pass",
				CertFile: "/etc/ferry/opcua-client.crt", KeyFile: "/etc/ferry/opcua-client.key",
				ServerThumbprint: strings.Repeat("abcdef0123456789", 4),
				TrustedCertsDir:  "/etc/ferry/opcua-trusted",
				Mode:             "subscribe", Interval: time.Second,
				PublishingInterval: 500 * time.Millisecond, SamplingInterval: 250 * time.Millisecond,
				QueueSize: 10, MaxItemsPerRequest: 500, Timeout: 10 * time.Second, Publish: "tag",
				Tags: []OPCUATag{
					{
						Name: "spindle_speed", Node: "ns=2;s=Spindle.Speed", SamplingInterval: 100 * time.Millisecond,
						DeadbandType: "percent", DeadbandValue: 0.5, Writable: true, Min: ptr(0), Max: ptr(24000),
						Verify: true, MinWriteInterval: 500 * time.Millisecond,
					},
					{Name: "program", Node: "ns=2;i=5001", SamplingInterval: 250 * time.Millisecond},
				},
			},
		},
	}
	if !reflect.DeepEqual(c, want) {
		t.Errorf("Load(%s) mismatch\n got %+v\nwant %+v", path, c, want)
		if !reflect.DeepEqual(c.MQTT, want.MQTT) {
			t.Errorf("MQTT\n got %+v\nwant %+v", c.MQTT, want.MQTT)
		}
		for i := range min(len(c.Modbus), len(want.Modbus)) {
			for j := range min(len(c.Modbus[i].Tags), len(want.Modbus[i].Tags)) {
				if g, w := c.Modbus[i].Tags[j], want.Modbus[i].Tags[j]; !reflect.DeepEqual(g, w) {
					t.Errorf("modbus[%d].tag[%d]\n got %+v\nwant %+v", i, j, g, w)
				}
			}
		}
	}
	if got, want := c.Summary(), "testdata/good/full.toml: valid: 3 devices (2 modbus, 1 opcua), 8 tags"; got != want {
		t.Errorf("Summary() = %q, want %q", got, want)
	}
}

func TestDefaults(t *testing.T) {
	c, err := Parse("/etc/ferry/ferry.toml", []byte("[gateway]\nid = \"gw\"\n[[modbus]]\nname = \"d\"\nurl = \"tcp://h:502\"\n[[modbus.tag]]\nname = \"t\"\ntable = \"holding\"\naddress = 0\ntype = \"int32\"\n[[opcua]]\nname = \"o\"\nendpoint = \"opc.tcp://h:4840\"\nsecurity_policy = \"Basic256Sha256\"\nserver_thumbprint = \""+strings.Repeat("0", 64)+"\"\n[[opcua.tag]]\nname = \"t\"\nnode = \"i=1\"\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.MQTT.TopicPrefix != "ferry/gw" || c.MQTT.ClientID != "ferry-gw" {
		t.Errorf("derived MQTT defaults: %q %q", c.MQTT.TopicPrefix, c.MQTT.ClientID)
	}
	if c.Metrics.Listen != "127.0.0.1:9108" || c.Buffer.SegmentBytes != 64*MiB || c.Buffer.MaxBytes != GiB {
		t.Errorf("defaults: %+v %+v", c.Metrics, c.Buffer)
	}
	m := c.Modbus[0]
	if m.Unit != 1 || m.Interval != time.Second || m.Publish != "tag" || m.Tags[0].Order != "ABCD" || m.Tags[0].Bit != -1 || m.Tags[0].Scale != 1 || m.Tags[0].Interval != time.Second {
		t.Errorf("modbus defaults: %+v", m)
	}
	if m.Retries != 1 || m.MergeRetry != 10*time.Minute || m.Tags[0].OnChange || m.Tags[0].Deadband != 0 || m.Tags[0].Heartbeat != 0 {
		t.Errorf("modbus retry / report-by-exception defaults: %+v", m)
	}
	o := c.OPCUA[0]
	if o.SecurityMode != "SignAndEncrypt" || o.SamplingInterval != time.Second || o.Tags[0].SamplingInterval != time.Second || o.QueueSize != 1 {
		t.Errorf("opcua defaults: %+v", o)
	}

	// An explicitly empty metrics.listen disables metrics; a small buffer
	// gets smaller segments.
	c, err = Parse("x.toml", []byte("[gateway]\nid = \"gw\"\n[metrics]\nlisten = \"\"\n[buffer]\nmax_bytes = \"16MiB\"\n"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Metrics.Listen != "" || c.Buffer.SegmentBytes != 2*MiB {
		t.Errorf("metrics %+v buffer %+v", c.Metrics, c.Buffer)
	}
}

func TestRelativePaths(t *testing.T) {
	src := `
[gateway]
id = "gw"
state_dir = "state"
[mqtt]
url = "mqtts://broker:8883"
ca_file = "pki/ca.crt"
cert_file = "/abs/gw.crt"
key_file = "gw.key"
password_file = "secrets/mqtt.pass"
[[opcua]]
name = "o"
endpoint = "opc.tcp://h:4840"
trusted_certs_dir = "trusted"
  [[opcua.tag]]
  name = "t"
  node = "ns=2;s=T"
`
	c, err := Parse("testdata/good/rel.toml", []byte(src), nil)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := filepath.Abs("testdata/good")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ got, want string }{
		{c.Gateway.StateDir, "state"}, // kept as written
		{c.MQTT.CAFile, filepath.Join(dir, "pki/ca.crt")},
		{c.MQTT.CertFile, "/abs/gw.crt"},
		{c.MQTT.KeyFile, filepath.Join(dir, "gw.key")},
		{c.MQTT.Password, "s3cret-mqtt"},
		{c.OPCUA[0].TrustedCertsDir, filepath.Join(dir, "trusted")},
	} {
		if tc.got != tc.want {
			t.Errorf("got %q, want %q", tc.got, tc.want)
		}
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load("testdata/nope.toml")
	var errs Errors
	if !errors.As(err, &errs) || len(errs) != 1 || !strings.HasPrefix(err.Error(), "testdata/nope.toml: cannot read config") {
		t.Fatalf("err = %v", err)
	}
}

func TestErrorFormat(t *testing.T) {
	for _, tc := range []struct {
		e    Error
		want string
	}{
		{Error{File: "f.toml", Line: 3, Col: 7, Path: "mqtt.qos", Msg: "bad"}, "f.toml:3:7: mqtt.qos: bad"},
		{Error{File: "f.toml", Path: "gateway.id", Msg: "missing"}, "f.toml: gateway.id: missing"},
		{Error{File: "f.toml", Msg: "cannot read"}, "f.toml: cannot read"},
	} {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("got %q, want %q", got, tc.want)
		}
	}
	es := Errors{{File: "f", Line: 2, Col: 1, Msg: "b"}, {File: "f", Line: 1, Col: 5, Msg: "a2"}, {File: "f", Line: 1, Col: 5, Msg: "a3"}, {File: "f", Line: 1, Col: 1, Msg: "a1"}}
	sortErrors(es)
	var got []string
	for _, e := range es {
		got = append(got, e.Msg)
	}
	if strings.Join(got, ",") != "a1,a2,a3,b" {
		t.Errorf("sorted: %v", got)
	}
}

func TestExpandEnv(t *testing.T) {
	env := map[string]string{"A": "alpha", "EMPTY": ""}
	getenv := func(k string) string { return env[k] }
	for _, tc := range []struct {
		in, want, err string
	}{
		{in: "plain", want: "plain"},
		{in: "${A}", want: "alpha"},
		{in: "x-${A}-y", want: "x-alpha-y"},
		{in: "$$", want: "$"},
		{in: "$${A}", want: "${A}"},
		{in: "a$b$", want: "a$b$"},
		{in: "${B:-def}", want: "def"},
		{in: "${EMPTY:-def}", want: "def"},
		{in: "${EMPTY}", err: "environment variable EMPTY is not set"},
		{in: "${A:-def}", want: "alpha"},
		{in: "${B}", err: "environment variable B is not set"},
		{in: "${A", err: "unterminated"},
		{in: "${}", err: "invalid environment variable name"},
		{in: "${A B}", err: "invalid environment variable name"},
	} {
		got, err := expandEnv(tc.in, getenv)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("expandEnv(%q) error = %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("expandEnv(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
}

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
		ok   bool
	}{
		{"512MiB", 512 << 20, true},
		{"1GiB", 1 << 30, true},
		{"64KB", 64000, true},
		{"100MB", 100e6, true},
		{"1 gib", 1 << 30, true},
		{"1048576", 1 << 20, true},
		{"10B", 10, true},
		{"1.5GiB", 0, false},
		{"GiB", 0, false},
		{"1GB2", 0, false},
		{"-1MiB", 0, false},
		{"99999999999TiB", 0, false},
		{"", 0, false},
	} {
		got, err := parseSize(tc.in)
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("parseSize(%q) = %d, %v", tc.in, got, err)
		}
	}
}

func TestCheckNodeID(t *testing.T) {
	for _, ok := range []string{
		"i=85", "ns=0;i=85", "ns=2;s=Spindle.Speed", "s=a;b=c", "ns=3;g=09087e75-8e5e-499b-954f-f2a9603db28a",
		"ns=1;b=aGVsbG8=", "nsu=urn:x:y;s=Speed", "nsu=http://example.com/UA/;i=7",
	} {
		if err := checkNodeID(ok); err != nil {
			t.Errorf("checkNodeID(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{
		"", "85", "ns=2", "ns=2;", "ns=x;i=1", "ns=70000;i=1", "i=-1", "i=abc", "s=", "g=1234",
		"b=***", "x=1", "ns=2;q=1", "nsu=;s=x",
	} {
		if err := checkNodeID(bad); err == nil {
			t.Errorf("checkNodeID(%q) accepted", bad)
		}
	}
}

func TestNormalizeThumbprint(t *testing.T) {
	want := strings.Repeat("ab", 32)
	for _, in := range []string{strings.Repeat("AB", 32), strings.Repeat("AB:", 31) + "AB", strings.Repeat("ab ", 32)} {
		if got, err := normalizeThumbprint(in); err != nil || got != want {
			t.Errorf("normalizeThumbprint(%q) = %q, %v", in, got, err)
		}
	}
	for _, bad := range []string{"", "abc", strings.Repeat("zz", 32), strings.Repeat("ab", 33)} {
		if _, err := normalizeThumbprint(bad); err == nil {
			t.Errorf("normalizeThumbprint(%q) accepted", bad)
		}
	}
}

func TestSuggest(t *testing.T) {
	known := []string{"name", "url", "timeout", "interval", "address"}
	for in, want := range map[string]string{
		"timeuot": "timeout", "adress": "address", "intervall": "interval", "Name": "name",
		"frobnicate": "", "x": "", "ur": "url",
	} {
		if got := suggest(in, known); got != want {
			t.Errorf("suggest(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestPositions(t *testing.T) {
	src := `# comment [not.a.table]
[gateway]
id = "a" # x = 1
s = """
[fake]
x = 1
"""

[[modbus]]
name = 'p'
  [[modbus.tag]]
  name = "t0"
  [[modbus.tag]]
  "quoted key" = 1
  dotted.key = 2
[[modbus]]
tag = [
  { name = "i0", nested = { deep = 1 } },
  { name = "i1" }, # comment ]
]
[ mqtt ]
arr = [ "]", '[', """
""", 1 ]
qos = 1
`
	ix := indexPositions(src)
	for path, want := range map[string]position{
		"gateway":                        {2, 1},
		"gateway/id":                     {3, 1},
		"gateway/s":                      {4, 1},
		"modbus":                         {9, 1},
		"modbus/[0]":                     {9, 1},
		"modbus/[0]/name":                {10, 1},
		"modbus/[0]/tag/[0]":             {11, 3},
		"modbus/[0]/tag/[0]/name":        {12, 3},
		"modbus/[0]/tag/[1]":             {13, 3},
		"modbus/[0]/tag/[1]/quoted key":  {14, 3},
		"modbus/[0]/tag/[1]/dotted":      {15, 3},
		"modbus/[0]/tag/[1]/dotted/key":  {15, 3},
		"modbus/[1]":                     {16, 1},
		"modbus/[1]/tag":                 {17, 1},
		"modbus/[1]/tag/[0]":             {18, 3},
		"modbus/[1]/tag/[0]/name":        {18, 5},
		"modbus/[1]/tag/[0]/nested/deep": {18, 29},
		"modbus/[1]/tag/[1]/name":        {19, 5},
		"mqtt":                           {21, 1},
		"mqtt/qos":                       {24, 1},
	} {
		if got := ix.pos[pathKey(strings.Split(path, "/"))]; got != want {
			t.Errorf("%s at %v, want %v", path, got, want)
		}
	}
	if _, ok := ix.pos[pathKey([]string{"fake"})]; ok {
		t.Error("indexed a table header inside a multi-line string")
	}
	if _, ok := ix.pos[pathKey([]string{"gateway", "x"})]; ok {
		t.Error("indexed a key inside a comment")
	}
}
