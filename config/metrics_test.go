package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestMetricsAuth: a metrics.listen other than loopback needs basic-auth
// or bearer credentials (check refuses it without), the credentials are
// read from their files, and half a basic-auth pair is refused.
func TestMetricsAuth(t *testing.T) {
	dir := t.TempDir()
	for name, content := range map[string]string{"pass": "s3cret\n", "token": "tok-123\r\n", "empty": "\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for _, tc := range []struct {
		name    string
		metrics string
		wantErr string // in the error; "" means loads
		want    Metrics
	}{
		{"default is loopback", ``, "", Metrics{Listen: "127.0.0.1:9108"}},
		{"loopback v4", `listen = "127.0.0.1:9200"`, "", Metrics{Listen: "127.0.0.1:9200"}},
		{"loopback v6", `listen = "[::1]:9200"`, "", Metrics{Listen: "[::1]:9200"}},
		{"localhost", `listen = "localhost:9200"`, "", Metrics{Listen: "localhost:9200"}},
		{"disabled", `listen = ""`, "", Metrics{}},
		{"all interfaces, no credentials", `listen = "0.0.0.0:9108"`, `metrics.listen: "0.0.0.0:9108" is not a loopback address`, Metrics{}},
		{"empty host, no credentials", `listen = ":9108"`, "is not a loopback address", Metrics{}},
		{"LAN address, no credentials", `listen = "192.168.1.10:9108"`, "set username and password_file", Metrics{}},
		{"host name, no credentials", `listen = "ferry-box:9108"`, "is not a loopback address", Metrics{}},
		{"all interfaces, basic auth", `listen = "0.0.0.0:9108"
username = "op"
password_file = "pass"`, "", Metrics{Listen: "0.0.0.0:9108", Username: "op", Password: "s3cret"}},
		{"all interfaces, token", `listen = ":9108"
token_file = "token"`, "", Metrics{Listen: ":9108", Token: "tok-123"}},
		{"loopback with token", `token_file = "token"`, "", Metrics{Listen: "127.0.0.1:9108", Token: "tok-123"}},
		{"protect_metrics with token", `token_file = "token"
protect_metrics = true`, "", Metrics{Listen: "127.0.0.1:9108", Token: "tok-123", ProtectMetrics: true}},
		{"protect_metrics without credentials", `protect_metrics = true`, "metrics.protect_metrics: needs credentials", Metrics{}},
		{"username without password_file", `listen = "0.0.0.0:9108"
username = "op"`, "metrics.username: needs password_file", Metrics{}},
		{"password_file without username", `password_file = "pass"`, "metrics.password_file: needs username", Metrics{}},
		{"empty token file", `listen = "0.0.0.0:9108"
token_file = "empty"`, `metrics.token_file: "empty" is empty`, Metrics{}},
		{"missing token file", `token_file = "nope"`, `metrics.token_file: cannot read "nope"`, Metrics{}},
		{"inline password is not a key", `username = "op"
password = "x"
password_file = "pass"`, "password", Metrics{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, "ferry.toml")
			src := "[gateway]\nid = \"gw\"\n[metrics]\n" + tc.metrics + "\n"
			if err := os.WriteFile(path, []byte(src), 0o600); err != nil {
				t.Fatal(err)
			}
			c, err := Load(path)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Load = %v, want an error with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.Metrics != tc.want {
				t.Errorf("metrics %+v, want %+v", c.Metrics, tc.want)
			}
		})
	}
}

func TestMetricsLoopback(t *testing.T) {
	for listen, want := range map[string]bool{
		"127.0.0.1:9108": true, "127.1.2.3:1": true, "[::1]:9108": true, "localhost:9108": true, "LOCALHOST:1": true,
		"0.0.0.0:9108": false, ":9108": false, "[::]:9108": false, "10.0.0.1:9108": false, "box:9108": false, "garbage": false,
	} {
		if got := (Metrics{Listen: listen}).Loopback(); got != want {
			t.Errorf("Loopback(%q) = %v, want %v", listen, got, want)
		}
	}
}
