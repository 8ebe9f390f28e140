package gateway

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/adapters/modbus/modbustest"
	"github.com/ferry-gateway/ferry/adapters/opcua/opcuatest"
	"github.com/ferry-gateway/ferry/config"
	"github.com/ferry-gateway/ferry/gateway/status"
	"github.com/ferry-gateway/ferry/internal/mosquittotest"
)

// statusGateway runs a gateway with one Modbus device "press" (tags speed,
// read-only, and setpoint, writable) on sim, publishing to brokerURL, with
// the [metrics] section given (whose listen port 0, which the config
// refuses, is set after loading); it returns the base URL it listens on.
func statusGateway(t *testing.T, brokerURL string, sim *modbustest.Server, metrics string, moreDevices ...string) (*Gateway, string) {
	t.Helper()
	listen, _, _ := strings.Cut(strings.TrimPrefix(metrics, `listen = "`), `"`)
	metrics = strings.Replace(metrics, listen, strings.TrimSuffix(listen, ":0")+":9", 1)
	cfg := loadConfig(t, fmt.Sprintf(`
[gateway]
id = "line3"
state_dir = %q
[mqtt]
url = %q
reconnect_max = "200ms"
[metrics]
%s
[[modbus]]
name = "press"
url = %q
interval = "50ms"
timeout = "200ms"
retries = 0
  [[modbus.tag]]
  name = "speed"
  table = "holding"
  address = 0
  type = "uint16"
  [[modbus.tag]]
  name = "setpoint"
  table = "holding"
  address = 1
  type = "uint16"
  writable = true
`+strings.Join(moreDevices, "\n"), t.TempDir(), brokerURL, metrics, sim.URL()))
	cfg.Metrics.Listen = listen
	g, err := New(cfg, Options{Version: "test-1.0"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan struct{})
	g.opts.OnReady = func() { close(ready) }
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	select {
	case <-ready:
	case err := <-done:
		t.Fatalf("Run ended before ready: %v", err)
	}
	g.mu.Lock()
	addr := g.metrics.addr
	g.mu.Unlock()
	return g, "http://" + addr
}

func getStatus(t *testing.T, base string, query ...string) status.Snapshot {
	t.Helper()
	resp, err := http.Get(base + "/api/status" + strings.Join(query, ""))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /api/status = %d: %s", resp.StatusCode, body)
	}
	var s status.Snapshot
	if err := json.Unmarshal(body, &s); err != nil {
		t.Fatalf("/api/status: %v\n%s", err, body)
	}
	return s
}

// waitStatus polls /api/status until ok accepts it (what it last saw is
// in the failure).
func waitStatus(t *testing.T, base, what string, ok func(status.Snapshot) bool) status.Snapshot {
	t.Helper()
	var s status.Snapshot
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if s = getStatus(t, base); ok(s) {
			return s
		}
	}
	b, _ := json.MarshalIndent(s, "", "  ")
	t.Fatalf("/api/status never showed %s; last:\n%s", what, b)
	return s
}

func tagValue(s status.Snapshot, device, tag string) string {
	for _, d := range s.Devices {
		if d.Name != device {
			continue
		}
		for _, tg := range d.Tags {
			if tg.Name == tag {
				return string(tg.Value)
			}
		}
	}
	return ""
}

func deviceOf(s status.Snapshot, name string) status.Device {
	for _, d := range s.Devices {
		if d.Name == name {
			return d
		}
	}
	return status.Device{}
}

// TestStatusAPI: /api/status of a running gateway shows the device up with
// its tags' last values (which follow the device), its rate and cycle
// time, the device down with its error when the simulator stops, and the
// buffer filling while the broker is away.
func TestStatusAPI(t *testing.T) {
	broker := mosquittotest.Start(t)
	sim := modbustest.New(t)
	sim.SetHolding(0, 1450, 70)
	gw, base := statusGateway(t, broker.URL(), sim, `listen = "127.0.0.1:0"`)

	s := waitStatus(t, base, "press up with speed 1450 and a rate", func(s status.Snapshot) bool {
		d := deviceOf(s, "press")
		return d.State == status.StateUp && tagValue(s, "press", "speed") == "1450" && d.ReadingsPerSecond != nil && s.Broker.Connected
	})
	g := s.Gateway
	if g.ID != "line3" || g.Version != "test-1.0" || !strings.HasSuffix(g.ConfigFile, "ferry.toml") || g.Started.IsZero() || g.ConfigLoaded.Before(g.Started) {
		t.Errorf("gateway %+v", g)
	}
	d := deviceOf(s, "press")
	if d.Protocol != "modbus" || d.IntervalSeconds != 0.05 || d.RequestsPerCycle != 1 || d.ReadingsTotal == 0 || d.CycleSeconds == nil || d.LastGoodRead == nil {
		t.Errorf("device %+v", d)
	}
	if len(d.Tags) != 2 || d.Tags[0].Writable || !d.Tags[1].Writable || d.Tags[0].Quality != "good" || d.Tags[0].Time == nil {
		t.Errorf("tags %+v", d.Tags)
	}
	if d := deviceOf(getStatus(t, base, "?tags="), "press"); d.Tags != nil || d.State != status.StateUp {
		t.Errorf("?tags= gives press %+v, want it without tags", d)
	}
	if s.Buffer.DiskFreeBytes == nil || *s.Buffer.DiskFreeBytes == 0 {
		t.Errorf("buffer %+v: want the disk free in state_dir", s.Buffer)
	}

	sim.SetHolding(0, 1500)
	waitStatus(t, base, "speed 1500", func(s status.Snapshot) bool { return tagValue(s, "press", "speed") == "1500" })

	if err := sim.SetDown(true); err != nil {
		t.Fatal(err)
	}
	s = waitStatus(t, base, "press down with an error", func(s status.Snapshot) bool {
		d := deviceOf(s, "press")
		return d.State == status.StateDown && d.Error != ""
	})
	if d := deviceOf(s, "press"); d.StateSince == nil {
		t.Errorf("down device without state_since: %+v", d)
	}
	if err := sim.SetDown(false); err != nil {
		t.Fatal(err)
	}
	waitStatus(t, base, "press up again", func(s status.Snapshot) bool { return deviceOf(s, "press").State == status.StateUp })

	// A reload applied is counted, and its time shown.
	g2, _ := json.Marshal(g)
	if err := gw.Reload(gw.cfg); err != nil {
		t.Fatal(err)
	}
	if s := getStatus(t, base); s.Gateway.Reloads != 1 || !s.Gateway.ConfigLoaded.After(g.ConfigLoaded) {
		t.Errorf("after a reload: gateway %+v, before %s", s.Gateway, g2)
	}

	broker.Stop()
	first := waitStatus(t, base, "the broker disconnected", func(s status.Snapshot) bool { return !s.Broker.Connected })
	if first.Broker.ConnectedSince != nil || first.Broker.SessionPresent != nil {
		t.Errorf("disconnected broker %+v: connected_since and session_present belong to a connection", first.Broker)
	}
	waitStatus(t, base, "the buffer growing with an oldest age", func(s status.Snapshot) bool {
		return s.Buffer.Records > first.Buffer.Records+10 && s.Buffer.OldestAgeSeconds != nil
	})
}

// TestStatusAuth: on a non-loopback listen the page, /api/* and
// /debug/pprof need the configured credentials; /metrics and /healthz do
// not. On loopback without credentials everything is open.
func TestStatusAuth(t *testing.T) {
	broker := mosquittotest.Start(t)
	sim := modbustest.New(t)
	dir := t.TempDir()
	for name, content := range map[string]string{"pass": "s3cret\n", "token": "tok-123\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	_, open := statusGateway(t, broker.URL(), sim, `listen = "127.0.0.1:0"`)
	_, guarded := statusGateway(t, broker.URL(), sim, fmt.Sprintf(`listen = "0.0.0.0:0"
username = "op"
password_file = %q
token_file = %q`, filepath.Join(dir, "pass"), filepath.Join(dir, "token")))
	guarded = strings.Replace(guarded, "0.0.0.0", "127.0.0.1", 1)

	type cred struct{ user, pass, token string }
	for _, tc := range []struct {
		name string
		base string
		cred cred
		want map[string]int // path -> status
	}{
		{"loopback, no credentials", open, cred{}, map[string]int{"/": 200, "/api/status": 200, "/debug/pprof/": 200, "/metrics": 200}},
		{"non-loopback, no credentials", guarded, cred{}, map[string]int{"/": 401, "/api/status": 401, "/debug/pprof/": 401, "/debug/pprof/cmdline": 401, "/metrics": 200}},
		{"non-loopback, basic", guarded, cred{user: "op", pass: "s3cret"}, map[string]int{"/": 200, "/api/status": 200, "/debug/pprof/": 200}},
		{"non-loopback, bearer", guarded, cred{token: "tok-123"}, map[string]int{"/": 200, "/api/status": 200, "/debug/pprof/": 200}},
		{"non-loopback, wrong password", guarded, cred{user: "op", pass: "s3cret "}, map[string]int{"/": 401, "/api/status": 401, "/debug/pprof/": 401}},
		{"non-loopback, wrong token", guarded, cred{token: "tok-1234"}, map[string]int{"/": 401, "/api/status": 401, "/metrics": 200}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for path, want := range tc.want {
				req, err := http.NewRequest(http.MethodGet, tc.base+path, nil)
				if err != nil {
					t.Fatal(err)
				}
				if tc.cred.user != "" {
					req.SetBasicAuth(tc.cred.user, tc.cred.pass)
				}
				if tc.cred.token != "" {
					req.Header.Set("Authorization", "Bearer "+tc.cred.token)
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode != want {
					t.Errorf("GET %s = %d, want %d", path, resp.StatusCode, want)
				}
			}
			// /healthz answers with or without credentials (503 while no
			// device is up yet is an answer too).
			resp, err := http.Get(tc.base + "/healthz")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode == http.StatusUnauthorized {
				t.Errorf("/healthz needs credentials")
			}
		})
	}

	// protect_metrics: /metrics and /healthz need the credentials too.
	_, strict := statusGateway(t, broker.URL(), sim, fmt.Sprintf(`listen = "0.0.0.0:0"
token_file = %q
protect_metrics = true`, filepath.Join(dir, "token")))
	strict = strings.Replace(strict, "0.0.0.0", "127.0.0.1", 1)
	for _, tc := range []struct {
		path, token string
		want        int
	}{
		{"/metrics", "", 401}, {"/healthz", "", 401}, {"/metrics", "tok-1234", 401},
		{"/metrics", "tok-123", 200}, {"/api/status", "tok-123", 200},
	} {
		req, err := http.NewRequest(http.MethodGet, strict+tc.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		if tc.token != "" {
			req.Header.Set("Authorization", "Bearer "+tc.token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("protect_metrics: GET %s with token %q = %d, want %d", tc.path, tc.token, resp.StatusCode, tc.want)
		}
	}
}

// TestStatusOPCUA: an OPC UA device has its row too: subscribed (no poll
// interval, no Modbus figures), its tags' values following the server.
func TestStatusOPCUA(t *testing.T) {
	broker := mosquittotest.Start(t)
	osim := opcuatest.New()
	osim.Add("temp", float64(21.5))
	if err := osim.Start(); err != nil {
		t.Fatal(err)
	}
	defer osim.Close()
	_, base := statusGateway(t, broker.URL(), modbustest.New(t), `listen = "127.0.0.1:0"`, fmt.Sprintf(`
[[opcua]]
name = "oven"
endpoint = %q
  [[opcua.tag]]
  name = "temp"
  node = "nsu=urn:ferry:opcuatest;s=temp"
`, osim.URL()))
	s := waitStatus(t, base, "oven up with temp 21.5", func(s status.Snapshot) bool {
		return deviceOf(s, "oven").State == status.StateUp && tagValue(s, "oven", "temp") == "21.5"
	})
	if d := deviceOf(s, "oven"); d.Protocol != "opcua" || d.IntervalSeconds != 0 || d.RequestsPerCycle != 0 || d.CycleSeconds != nil || len(d.Tags) != 1 || d.Tags[0].Writable {
		t.Errorf("oven %+v", d)
	}
	osim.Set("temp", float64(22.25))
	waitStatus(t, base, "temp 22.25", func(s status.Snapshot) bool { return tagValue(s, "oven", "temp") == "22.25" })
}

// TestStatusReloadMetrics: a reload that changes [metrics] (here only the
// credentials) restarts the endpoint with them, without hanging the
// reload.
func TestStatusReloadMetrics(t *testing.T) {
	broker := mosquittotest.Start(t)
	g, base := statusGateway(t, broker.URL(), modbustest.New(t), `listen = "127.0.0.1:0"`)
	getStatus(t, base)

	reload := func(change func(*config.Metrics)) string {
		t.Helper()
		g.mu.Lock()
		next := *g.cfg
		g.mu.Unlock()
		change(&next.Metrics)
		done := make(chan error, 1)
		go func() { done <- g.Reload(&next) }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("Reload with a changed [metrics] did not return (deadlock?)")
		}
		g.mu.Lock()
		defer g.mu.Unlock()
		return "http://" + g.metrics.addr
	}
	base = reload(func(m *config.Metrics) { m.Token = "tok-123" })
	check := func(base string) {
		t.Helper()
		for _, tc := range []struct {
			token string
			want  int
		}{{"", 401}, {"tok-12", 401}, {"tok-123", 200}} {
			req, _ := http.NewRequest(http.MethodGet, base+"/api/status", nil)
			if tc.token != "" {
				req.Header.Set("Authorization", "Bearer "+tc.token)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tc.want {
				t.Errorf("after the reload, GET /api/status with token %q = %d, want %d", tc.token, resp.StatusCode, tc.want)
			}
		}
	}
	check(base)
	check(reload(func(m *config.Metrics) { m.Listen = "localhost:0" }))
}

// TestStatusCommands: /api/status lists the commands answered, newest
// first, with their result code, the value written or the payload sent,
// and who sent them (user properties, response topic, correlation data);
// and the broker's connection time and session present flag.
func TestStatusCommands(t *testing.T) {
	broker := mosquittotest.Start(t)
	sim := modbustest.New(t)
	sim.SetHolding(0, 1450, 70)
	_, base := statusGateway(t, broker.URL(), sim, `listen = "127.0.0.1:0"`)

	s := waitStatus(t, base, "the broker connected and commands running", func(s status.Snapshot) bool {
		return s.Broker.Connected && s.Commands != nil
	})
	if s.Broker.ConnectedSince == nil || s.Broker.SessionPresent == nil {
		t.Fatalf("broker %+v: want connected_since and session_present", s.Broker)
	}
	if since := *s.Broker.ConnectedSince; since.Before(s.Gateway.Started) || since.After(s.Time) {
		t.Errorf("connected_since %v, want between the start %v and now %v", since, s.Gateway.Started, s.Time)
	}
	if len(s.Commands.Recent) != 0 {
		t.Errorf("recent %+v before any command", s.Commands.Recent)
	}

	c := newCommander(t, broker.Addr())
	c.send(t, "ferry/line3/press/setpoint/set", `{"value":75}`, "c1", 0)
	if r := c.wait(t, "c1", 20*time.Second); !strings.Contains(string(r.payload), `"ok":true`) {
		t.Fatalf("c1 answered %s", r.payload)
	}
	c.send(t, "ferry/line3/press/speed/set", `1`, "c2", 0)
	if r := c.wait(t, "c2", 20*time.Second); !strings.Contains(string(r.payload), `"error":"not_writable"`) {
		t.Fatalf("c2 answered %s", r.payload)
	}

	s = getStatus(t, base)
	rec := s.Commands.Recent
	if len(rec) != 2 {
		t.Fatalf("recent %+v, want the 2 commands", rec)
	}
	tests := []struct {
		name                  string
		got                   status.Command
		tag, result, value    string
		payload, corr, msgHas string
	}{
		{"refused, newest first", rec[0], "speed", "not_writable", "", "1", "c2", "not writable"},
		{"written", rec[1], "setpoint", "ok", "75", `{"value":75}`, "c1", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			g := tt.got
			if g.Device != "press" || g.Tag != tt.tag || g.Result != tt.result || string(g.Value) != tt.value || g.Payload != tt.payload {
				t.Errorf("command %+v", g)
			}
			if !strings.Contains(g.Message, tt.msgHas) || (tt.msgHas == "") != (g.Message == "") {
				t.Errorf("message %q, want one with %q", g.Message, tt.msgHas)
			}
			want := map[string]string{"user.operator": "test", "response_topic": "reply/" + tt.corr, "correlation": fmt.Sprintf("%x", tt.corr)}
			for k, v := range want {
				if g.From[k] != v {
					t.Errorf("from %v: %s = %q, want %q", g.From, k, g.From[k], v)
				}
			}
			if g.LatencySeconds <= 0 || g.Time.Before(s.Gateway.Started) || g.Time.After(s.Time) {
				t.Errorf("time %v latency %v", g.Time, g.LatencySeconds)
			}
		})
	}
	if s.Commands.Results["ok"] != 1 || s.Commands.Results["not_writable"] != 1 {
		t.Errorf("results %v", s.Commands.Results)
	}
}

// TestRecentRing: the router keeps the last recentCommands answered,
// newest first, from one to past a wrap.
func TestRecentRing(t *testing.T) {
	for _, n := range []int{0, 1, recentCommands - 1, recentCommands, recentCommands + 1, 3*recentCommands + 7} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			var q recentRing
			for i := range n {
				q.add(recentCmd{tag: fmt.Sprint(i)})
			}
			got := q.newestFirst()
			if want := min(n, recentCommands); len(got) != want {
				t.Fatalf("%d entries, want %d", len(got), want)
			}
			for i, e := range got {
				if want := fmt.Sprint(n - 1 - i); e.tag != want {
					t.Fatalf("entry %d is %s, want %s", i, e.tag, want)
				}
			}
		})
	}
}
