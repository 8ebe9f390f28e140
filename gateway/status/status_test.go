package status

import (
	"bytes"
	"encoding/json"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

func ptr[T any](v T) *T { return &v }

// fixedSnapshot has every field set, and one device with the optional
// figures absent, as a gateway gives them before its second request.
func fixedSnapshot(Query) Snapshot {
	t0 := time.Date(2026, 12, 4, 16, 0, 0, 0, time.UTC)
	return Snapshot{
		Time: t0.Add(time.Hour),
		Gateway: Gateway{
			ID: "line3", Version: "1.4.0", Started: t0, UptimeSeconds: 3600,
			ConfigFile: "/etc/ferry/ferry.toml", ConfigLoaded: t0.Add(30 * time.Minute), Reloads: 1,
		},
		Broker: Broker{URL: "mqtts://broker.plant:8883", Connected: true, Connects: 3, Reconnects: 2, ConnectFailures: 7, SessionLost: 1, InFlight: 4, Acked: 123456,
			ConnectedSince: ptr(t0.Add(20 * time.Minute)), SessionPresent: ptr(true)},
		Buffer: Buffer{
			Dir: "/var/lib/ferry/buffer", Records: 42, Bytes: 1 << 20, MaxBytes: 1 << 30,
			OldestAgeSeconds: ptr(1.5), Dropped: 0, Lost: 0, DiskFreeBytes: ptr(uint64(5 << 30)),
		},
		ReadingsPerSecond: ptr(20.0),
		Devices: []Device{
			{
				Name: "press", Protocol: "modbus", State: StateUp, StateSince: ptr(t0.Add(time.Minute)),
				IntervalSeconds: 0.5, CycleSeconds: ptr(0.012), RequestsPerCycle: 3, ReadingsTotal: 72000,
				ReadingsPerSecond: ptr(20.0), LastGoodRead: ptr(t0.Add(time.Hour - time.Second)),
				Tags: []Tag{
					{Name: "speed", Value: json.RawMessage(`1450`), Quality: "good", Time: ptr(t0.Add(time.Hour - time.Second))},
					{Name: "setpoint", Writable: true, Value: json.RawMessage(`72.5`), Quality: "good", Time: ptr(t0.Add(time.Hour - time.Second))},
					{Name: "alarm", Value: json.RawMessage(`null`), Quality: "bad", Time: ptr(t0.Add(time.Hour - time.Second)), Error: "illegal data address"},
				},
			},
			{
				Name: "oven", Protocol: "opcua", State: StateDown, StateSince: ptr(t0.Add(2 * time.Minute)),
				Error: "dial tcp 10.0.0.9:4840: connection refused",
				Tags:  []Tag{{Name: "temp"}},
			},
		},
		Commands: &Commands{
			Results: map[string]uint64{"ok": 5, "refused": 1},
			Recent: []Command{
				{
					Time: t0.Add(59 * time.Minute), Device: "press", Tag: "speed", Payload: `1`,
					Result: "not_writable", Message: "tag press/speed is not writable", LatencySeconds: 0.0002,
					From: map[string]string{"user.operator": "hmi-1"},
				},
				{
					Time: t0.Add(58 * time.Minute), Device: "press", Tag: "setpoint", Payload: `{"value":72.5}`, Value: json.RawMessage(`72.5`),
					Result: "ok", LatencySeconds: 0.034,
					From: map[string]string{"user.operator": "hmi-2", "response_topic": "hmi/2/replies", "correlation": "6331"},
				},
			},
		},
	}
}

func get(t *testing.T, h http.Handler, path string, header ...string) *http.Response {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, path, nil)
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec.Result()
}

// TestAPIStatusGolden: /api/status is the Snapshot as JSON with the
// documented field names, and figures the gateway does not have are left
// out (the "oven" device), not shown as zero.
func TestAPIStatusGolden(t *testing.T) {
	h := Handler(ProviderFunc(fixedSnapshot))
	resp := get(t, h, "/api/status")
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d: %s", resp.StatusCode, body)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	var pretty bytes.Buffer
	if err := json.Indent(&pretty, body, "", "  "); err != nil {
		t.Fatalf("not JSON: %v\n%s", err, body)
	}
	golden := filepath.Join("testdata", "status.json")
	if *update {
		if err := os.WriteFile(golden, pretty.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test -update once to write it)", err)
	}
	if !bytes.Equal(pretty.Bytes(), want) {
		t.Errorf("/api/status differs from %s:\n%s", golden, pretty.Bytes())
	}
	// The absent figures are absent, not zero.
	var raw struct {
		Devices []map[string]any `json:"devices"`
	}
	if err := json.Unmarshal(body, &raw); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"cycle_seconds", "readings_per_second", "last_good_read", "interval_seconds", "requests_per_cycle"} {
		if v, ok := raw.Devices[1][k]; ok {
			t.Errorf("oven has %s = %v; an unknown figure must be left out", k, v)
		}
	}
}

// TestPage: GET / is the embedded page, self-contained: no script, style
// or font from anywhere else, and it reads api/status.
func TestPage(t *testing.T) {
	h := Handler(ProviderFunc(fixedSnapshot))
	resp := get(t, h, "/")
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
		t.Fatalf("GET / = %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	page := string(body)
	for _, want := range []string{"<script>", `fetch("api/status?tags="`, `id="devices"`, "<svg"} {
		if !strings.Contains(page, want) {
			t.Errorf("page lacks %q", want)
		}
	}
	// The SVG namespace is a name, not an address the browser loads.
	local := strings.ReplaceAll(page, `"http://www.w3.org/2000/svg"`, "")
	for _, bad := range []string{"http://", "https://", "src=", "<link", "@import", "url("} {
		if strings.Contains(local, bad) {
			t.Errorf("page refers to %q: it must work offline with nothing loaded from elsewhere", bad)
		}
	}
	if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") {
		t.Errorf("CSP %q", csp)
	}
	for _, path := range []string{"/index.html", "/api/other", "/api/status/x"} {
		if r := get(t, h, path); r.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s = %d, want 404", path, r.StatusCode)
		}
	}
}

// TestReadOnly: the handler answers nothing but GET (and HEAD).
func TestReadOnly(t *testing.T) {
	h := Handler(ProviderFunc(fixedSnapshot))
	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch} {
		for _, path := range []string{"/", "/api/status"} {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(m, path, strings.NewReader("{}")))
			if rec.Code != http.StatusMethodNotAllowed {
				t.Errorf("%s %s = %d, want 405", m, path, rec.Code)
			}
		}
	}
}

// TestAuth: without credentials the handler is open; with them, only a
// matching basic-auth user or bearer token gets through, and anything
// else gets 401 with a challenge.
func TestAuth(t *testing.T) {
	basic := Auth{Username: "op", Password: "s3cret"}
	bearer := Auth{Token: "tok-123"}
	both := Auth{Username: "op", Password: "s3cret", Token: "tok-123"}
	b64 := func(user, pass string) string {
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		req.SetBasicAuth(user, pass)
		return req.Header.Get("Authorization")
	}
	for _, tc := range []struct {
		name   string
		auth   Auth
		header string // Authorization
		want   int
	}{
		{"none configured, no credentials", Auth{}, "", 200},
		{"none configured, credentials ignored", Auth{}, b64("x", "y"), 200},
		{"basic right", basic, b64("op", "s3cret"), 200},
		{"basic wrong password", basic, b64("op", "s3cret!"), 401},
		{"basic wrong user", basic, b64("root", "s3cret"), 401},
		{"basic empty password", basic, b64("op", ""), 401},
		{"basic missing", basic, "", 401},
		{"basic given a bearer", basic, "Bearer s3cret", 401},
		{"bearer right", bearer, "Bearer tok-123", 200},
		{"bearer lower-case scheme", bearer, "bearer tok-123", 200},
		{"bearer wrong", bearer, "Bearer tok-124", 401},
		{"bearer prefix of the token", bearer, "Bearer tok-12", 401},
		{"bearer missing", bearer, "", 401},
		{"bearer given as basic password", bearer, b64("", "tok-123"), 401},
		{"both: basic", both, b64("op", "s3cret"), 200},
		{"both: bearer", both, "Bearer tok-123", 200},
		{"both: wrong", both, "Bearer nope", 401},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.auth.Wrap(Handler(ProviderFunc(fixedSnapshot)))
			var hdr []string
			if tc.header != "" {
				hdr = []string{"Authorization", tc.header}
			}
			for _, path := range []string{"/", "/api/status"} {
				resp := get(t, h, path, hdr...)
				if resp.StatusCode != tc.want {
					t.Errorf("GET %s = %d, want %d", path, resp.StatusCode, tc.want)
				}
				if tc.want == 401 {
					if resp.Header.Get("WWW-Authenticate") == "" {
						t.Errorf("401 without WWW-Authenticate")
					}
					if b, _ := io.ReadAll(resp.Body); bytes.Contains(b, []byte("line3")) {
						t.Errorf("401 body leaks the status: %s", b)
					}
				}
			}
		})
	}
}

// TestManyTags: 10,000 tags with values stay under 2 MB of JSON.
func TestManyTags(t *testing.T) {
	s := fixedSnapshot(Query{})
	ts := s.Time
	for d := range 10 {
		dev := Device{Name: "meter" + string(rune('a'+d)), Protocol: "modbus", State: StateUp}
		for i := range 1000 {
			dev.Tags = append(dev.Tags, Tag{Name: "energy_total_" + strings.Repeat("x", i%5), Value: json.RawMessage(`123456.789`), Quality: "good", Time: &ts})
		}
		s.Devices = append(s.Devices, dev)
	}
	resp := get(t, Handler(ProviderFunc(func(Query) Snapshot { return s })), "/api/status")
	b, _ := io.ReadAll(resp.Body)
	if len(b) > 2<<20 {
		t.Errorf("/api/status with 10,000 tags is %d bytes, want under 2 MiB", len(b))
	}
}

// TestQueryTags: ?tags= names the devices whose tags the provider is
// asked for; without it, every device's.
func TestQueryTags(t *testing.T) {
	for _, tc := range []struct {
		path string
		want map[string]bool // WantTags for press, oven, "" (none)
	}{
		{"/api/status", map[string]bool{"press": true, "oven": true}},
		{"/api/status?tags=", map[string]bool{"press": false, "oven": false}},
		{"/api/status?tags=press", map[string]bool{"press": true, "oven": false}},
		{"/api/status?tags=press,oven", map[string]bool{"press": true, "oven": true}},
		{"/api/status?tags=oven&tags=x", map[string]bool{"press": false, "oven": true}},
	} {
		var got Query
		h := Handler(ProviderFunc(func(q Query) Snapshot { got = q; return fixedSnapshot(q) }))
		if r := get(t, h, tc.path); r.StatusCode != http.StatusOK {
			t.Fatalf("GET %s = %d", tc.path, r.StatusCode)
		}
		for dev, want := range tc.want {
			if got.WantTags(dev) != want {
				t.Errorf("GET %s: WantTags(%q) = %v, want %v", tc.path, dev, !want, want)
			}
		}
	}
}
