package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/adapters/opcua/opcuatest"
)

// nodeOPCUADir holds the node-opcua test server of the OPC UA adapter's
// interop tests (npm ci --prefix adapters/opcua/testdata/nodeopcua).
const nodeOPCUADir = "../../adapters/opcua/testdata/nodeopcua"

// startNodeOPCUA starts the node-opcua test server on a free loopback port
// and returns its endpoint. It fails, never skips, when node or the
// package is missing, as the adapter's interop tests do.
func startNodeOPCUA(t *testing.T) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node is not installed: apt-get install -y nodejs npm, then npm ci --prefix adapters/opcua/testdata/nodeopcua")
	}
	if _, err := os.Stat(filepath.Join(nodeOPCUADir, "node_modules", "node-opcua", "package.json")); err != nil {
		t.Fatalf("node-opcua is not installed; run: npm ci --prefix adapters/opcua/testdata/nodeopcua")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	cmd := exec.Command(node, "server.js", fmt.Sprint(port), filepath.Join(t.TempDir(), "pki"))
	cmd.Dir = nodeOPCUADir
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	ready, done := make(chan struct{}, 1), make(chan struct{})
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if strings.HasPrefix(sc.Text(), "READY ") {
				ready <- struct{}{}
			}
		}
		_ = cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-done
	})
	select {
	case <-ready:
	case <-done:
		t.Fatal("node-opcua server exited before it was ready")
	case <-time.After(60 * time.Second):
		t.Fatal("node-opcua server not ready after 60 s")
	}
	return fmt.Sprintf("opc.tcp://127.0.0.1:%d", port)
}

// opcuaReadConfig writes a config with one OPC UA device cnc1 holding the
// given name = node pairs.
func opcuaReadConfig(t *testing.T, endpoint, mode string, tags ...string) string {
	t.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "[gateway]\nid = \"t\"\nstate_dir = %q\n\n[[opcua]]\nname = \"cnc1\"\nendpoint = %q\nmode = %q\ntimeout = \"5s\"\nmax_items_per_request = 2\n",
		t.TempDir(), endpoint, mode)
	for i := 0; i+1 < len(tags); i += 2 {
		fmt.Fprintf(&b, "\n  [[opcua.tag]]\n  name = %q\n  node = %q\n", tags[i], tags[i+1])
	}
	return writeConfig(t, b.String())
}

// tsRE is the source time column of `ferry read`.
var tsRE = regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z`)

// readLine returns the line of `ferry read` output for DEVICE/TAG.
func readLine(out, tag string) string {
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == tag {
			return l
		}
	}
	return ""
}

// TestReadOPCUA: `ferry read cnc1` and `ferry read cnc1/TAG` print every
// tag's value, quality and source time once, against gopcua's server and
// node-opcua, in either mode of the device; `ferry plan` plans the same
// device.
func TestReadOPCUA(t *testing.T) {
	sim := opcuatest.New()
	sim.Add("Speed", 1234.5)
	sim.Add("Program", "O1000")
	sim.Add("Count", int32(-7))
	if err := sim.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Close)
	nodeURL := startNodeOPCUA(t)
	const nodeNS = "nsu=urn:ferry:nodeopcua;s="

	type want struct{ tag, value, quality string }
	for _, tc := range []struct {
		name     string
		endpoint string
		tags     []string
		want     []want
	}{
		{"gopcua", sim.URL(), []string{
			"speed", sim.NSUNodeID("Speed"), "program", sim.NodeID("Program"), "count", sim.NSUNodeID("Count"),
			"gone", "nsu=urn:no-such-namespace;s=X",
		}, []want{
			{"cnc1/speed", "1234.5", "good"}, {"cnc1/program", `"O1000"`, "good"}, {"cnc1/count", "-7", "good"},
			{"cnc1/gone", "null", "bad"},
		}},
		{"node-opcua", nodeURL, []string{
			"ro", nodeNS + "ReadOnly", "setpoint", nodeNS + "Setpoint", "secret", nodeNS + "Secret",
		}, []want{
			{"cnc1/ro", "7.25", "good"}, {"cnc1/setpoint", "", "good"}, {"cnc1/secret", "null", "bad"},
		}},
	} {
		for _, mode := range []string{"subscribe", "poll"} {
			t.Run(tc.name+"/"+mode, func(t *testing.T) {
				path := opcuaReadConfig(t, tc.endpoint, mode, tc.tags...)
				code, stdout, stderr := run(t, "read", "-config", path, "cnc1")
				if code != exitOK {
					t.Fatalf("exit %d, stderr %q", code, stderr)
				}
				if n := strings.Count(stdout, "\n"); n != len(tc.want) {
					t.Errorf("%d lines, want %d:\n%s", n, len(tc.want), stdout)
				}
				for _, w := range tc.want {
					l := readLine(stdout, w.tag)
					f := strings.Fields(l)
					if len(f) < 4 || (w.value != "" && f[1] != w.value) || f[2] != w.quality || !tsRE.MatchString(f[3]) {
						t.Errorf("%s: line %q, want value %s, quality %s and a source time", w.tag, l, w.value, w.quality)
					}
				}
				one := tc.want[0].tag
				code, stdout, stderr = run(t, "read", one, "-config", path)
				if code != exitOK || strings.Count(stdout, "\n") != 1 || readLine(stdout, one) == "" {
					t.Errorf("read %s: exit %d\n%s%s", one, code, stdout, stderr)
				}

				code, stdout, stderr = run(t, "plan", "-config", path)
				if code != exitOK || stderr != "" {
					t.Fatalf("plan: exit %d, stderr %q", code, stderr)
				}
				head := fmt.Sprintf("opcua cnc1: %s, subscribe: %d monitored items in 1 subscription, %d CreateMonitoredItems requests",
					tc.endpoint, len(tc.tags)/2, (len(tc.tags)/2+1)/2)
				if mode == "poll" {
					head = fmt.Sprintf("opcua cnc1: %s, poll every 1s: %d tags in %d Read requests per cycle", tc.endpoint, len(tc.tags)/2, (len(tc.tags)/2+1)/2)
				}
				if !strings.HasPrefix(stdout, head) {
					t.Errorf("plan:\n%s\nwant it to start with %q", stdout, head)
				}
			})
		}
	}

	path := opcuaReadConfig(t, sim.URL(), "subscribe", "speed", sim.NodeID("Speed"))
	if code, _, stderr := run(t, "read", "-config", path, "cnc1/nope"); code != exitUsage || !strings.Contains(stderr, `device cnc1 has no tag "nope"`) {
		t.Errorf("unknown tag: exit %d, %q", code, stderr)
	}
	sim.Stop()
	code, stdout, stderr := run(t, "read", "-config", path, "cnc1")
	if code != exitFailure || !strings.Contains(stderr, "ferry read: cnc1 unreachable: ") || !strings.Contains(stdout, "bad") {
		t.Errorf("server down: exit %d\nstdout %s\nstderr %s", code, stdout, stderr)
	}
}
