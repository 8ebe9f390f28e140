package opcua

import (
	"bufio"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/config"
)

// The interoperability tests run node-opcua 2.182.2 (pinned by
// testdata/nodeopcua/package-lock.json) as a subprocess. They fail, never
// skip, when node or the package is missing.

const nodeDir = "testdata/nodeopcua"

const nodeNS = "urn:ferry:nodeopcua"

type nodeServer struct {
	port       int
	pki        string
	thumbprint string
	cmd        *exec.Cmd
	done       chan struct{}
}

func (s *nodeServer) url() string { return fmt.Sprintf("opc.tcp://127.0.0.1:%d", s.port) }

var (
	sharedMu    sync.Mutex
	shared      *nodeServer
	sharedState string // client PKI shared by the interop tests (one key generation)
	ownServers  []*nodeServer
)

func requireNode(t testing.TB) string {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Fatalf("node (Node.js 20) is not installed; the OPC UA interop tests need it: apt-get install -y nodejs npm, then npm ci --prefix adapters/opcua/testdata/nodeopcua")
	}
	if _, err := os.Stat(filepath.Join(nodeDir, "node_modules", "node-opcua", "package.json")); err != nil {
		t.Fatalf("node-opcua is not installed; run: npm ci --prefix adapters/opcua/testdata/nodeopcua (from the repository root)")
	}
	return node
}

func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// startNode starts a node-opcua server on port with its PKI in pki and
// waits until it listens.
func startNode(t testing.TB, port int, pki string, userPKI ...string) *nodeServer {
	t.Helper()
	node := requireNode(t)
	cmd := exec.Command(node, append([]string{"server.js", fmt.Sprint(port), pki}, userPKI...)...)
	cmd.Dir = nodeDir
	cmd.Stderr = nil
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start node-opcua: %v", err)
	}
	s := &nodeServer{port: port, pki: pki, cmd: cmd, done: make(chan struct{})}
	ready := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			if tb, ok := strings.CutPrefix(sc.Text(), "READY "); ok {
				ready <- tb
			}
		}
		_ = cmd.Wait()
		close(s.done)
	}()
	select {
	case s.thumbprint = <-ready:
	case <-s.done:
		t.Fatalf("node-opcua server exited before it was ready (run npm ci --prefix adapters/opcua/testdata/nodeopcua?)")
	case <-time.After(60 * time.Second):
		s.kill()
		t.Fatalf("node-opcua server not ready after 60 s")
	}
	return s
}

func (s *nodeServer) kill() {
	if s.cmd.Process != nil {
		_ = s.cmd.Process.Signal(syscall.SIGKILL)
	}
	<-s.done
}

// sharedNode returns the node-opcua server shared by the interop tests.
func sharedNode(t testing.TB) (*nodeServer, string) {
	t.Helper()
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if shared == nil {
		dir, err := os.MkdirTemp("", "ferry-opcua-interop-")
		if err != nil {
			t.Fatal(err)
		}
		sharedState = dir
		shared = startNode(t, freePort(t), filepath.Join(dir, "server-pki"))
	}
	return shared, sharedState
}

func stopNodeServers() {
	sharedMu.Lock()
	defer sharedMu.Unlock()
	if shared != nil {
		shared.kill()
		shared = nil
	}
	for _, s := range ownServers {
		s.kill()
	}
	if sharedState != "" {
		os.RemoveAll(sharedState)
	}
}

func nodeTags(names ...string) []config.OPCUATag {
	var tags []config.OPCUATag
	for _, n := range names {
		tags = append(tags, config.OPCUATag{Name: n, Node: "nsu=" + nodeNS + ";s=" + n})
	}
	return tags
}

func nodeDevice(srv *nodeServer, policy, mode string) config.OPCUADevice {
	dev := device("node", srv.url(), nodeTags("Temperature", "Counter", "Big", "ReadOnly", "Secret")...)
	dev.SecurityPolicy, dev.SecurityMode = policy, mode
	dev.ServerThumbprint = strings.ToUpper(srv.thumbprint) // normalised by the client
	dev.PublishingInterval = 100 * time.Millisecond
	dev.SamplingInterval = 100 * time.Millisecond
	return dev
}

func TestNodeOPCUASecurity(t *testing.T) {
	srv, state := sharedNode(t)
	for _, tc := range []struct{ policy, mode string }{
		{"None", "None"},
		{"Basic256Sha256", "Sign"},
		{"Basic256Sha256", "SignAndEncrypt"},
		{"Aes128_Sha256_RsaOaep", "SignAndEncrypt"},
		{"Aes256_Sha256_RsaPss", "SignAndEncrypt"},
	} {
		t.Run(tc.policy+"/"+tc.mode, func(t *testing.T) {
			sink := newRecSink()
			c, err := NewClient(nodeDevice(srv, tc.policy, tc.mode), state, sink, nil)
			if err != nil {
				t.Fatal(err)
			}
			runClient(t, c)
			sink.wait(t, "a changing temperature", func(s *recSink) bool {
				n := 0
				for _, b := range s.batches {
					for _, r := range b {
						if r.Tag == "Counter" && r.Quality == adapters.Good {
							n++
						}
					}
				}
				return n >= 2
			})
			sink.waitValue(t, "Big", `"1152921504606846977"`, adapters.Good)
			sink.waitValue(t, "ReadOnly", "7.25", adapters.Good)
			secret := sink.waitValue(t, "Secret", "null", adapters.Bad)
			if !strings.Contains(secret.Err, "NotReadable") && !strings.Contains(secret.Err, "AccessDenied") {
				t.Errorf("unreadable node: err %q", secret.Err)
			}
		})
	}
}

func TestNodeOPCUAPoll(t *testing.T) {
	srv, state := sharedNode(t)
	sink := newRecSink()
	dev := nodeDevice(srv, "Basic256Sha256", "SignAndEncrypt")
	dev.Mode = ModePoll
	c, err := NewClient(dev, state, sink, nil)
	if err != nil {
		t.Fatal(err)
	}
	runClient(t, c)
	sink.waitValue(t, "ReadOnly", "7.25", adapters.Good)
	sink.waitValue(t, "Secret", "null", adapters.Bad)
	sink.wait(t, "three poll cycles", func(s *recSink) bool { return len(s.batches) >= 3 })
}

func TestNodeOPCUAUsername(t *testing.T) {
	srv, state := sharedNode(t)
	t.Run("good", func(t *testing.T) {
		sink := newRecSink()
		dev := nodeDevice(srv, "Basic256Sha256", "SignAndEncrypt")
		dev.Username, dev.Password = "operator", "secret"
		c, err := NewClient(dev, state, sink, nil)
		if err != nil {
			t.Fatal(err)
		}
		runClient(t, c)
		sink.waitValue(t, "ReadOnly", "7.25", adapters.Good)
	})
	t.Run("wrong password", func(t *testing.T) {
		sink := newRecSink()
		dev := nodeDevice(srv, "Basic256Sha256", "SignAndEncrypt")
		dev.Username, dev.Password = "operator", "wrong"
		c, err := NewClient(dev, state, sink, nil)
		if err != nil {
			t.Fatal(err)
		}
		runClient(t, c)
		var msg string
		sink.wait(t, "down", func(s *recSink) bool {
			if len(s.states) > 0 {
				msg = s.states[0].err
			}
			return len(s.states) > 0
		})
		if !strings.Contains(msg, `login as "operator" refused`) || !strings.Contains(msg, "check username and password") {
			t.Errorf("wrong password gives %q", msg)
		}
		if c.Stats().Up {
			t.Errorf("up with a wrong password")
		}
	})
}

func TestNodeOPCUAUntrustedServer(t *testing.T) {
	srv, state := sharedNode(t)
	dev := nodeDevice(srv, "Basic256Sha256", "SignAndEncrypt")
	dev.ServerThumbprint = ""
	sink := newRecSink()
	c, err := NewClient(dev, state, sink, nil)
	if err != nil {
		t.Fatal(err)
	}
	stop := runClientStoppable(t, c)
	var msg string
	sink.wait(t, "refused", func(s *recSink) bool {
		if len(s.states) > 0 {
			msg = s.states[0].err
		}
		return len(s.states) > 0
	})
	stop()
	if !strings.Contains(msg, "is not trusted") || !strings.Contains(msg, srv.thumbprint) || !strings.Contains(msg, "server_thumbprint = ") {
		t.Fatalf("untrusted server error %q lacks the thumbprint or the hint", msg)
	}
	var ue *UntrustedServerError
	if _, err := c.connect(t.Context()); !errors.As(err, &ue) || ue.SavedAs == "" {
		t.Fatalf("connect: %v, want an UntrustedServerError with the saved certificate", err)
	}

	t.Run("trusted by thumbprint", func(t *testing.T) {
		dev := dev
		dev.ServerThumbprint = ue.Thumbprint // as the message says
		sink := newRecSink()
		c, err := NewClient(dev, state, sink, nil)
		if err != nil {
			t.Fatal(err)
		}
		runClient(t, c)
		sink.waitValue(t, "ReadOnly", "7.25", adapters.Good)
	})
	t.Run("trusted by directory", func(t *testing.T) {
		dir := t.TempDir()
		der, err := os.ReadFile(ue.SavedAs)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, "server.der"), der, 0o644); err != nil {
			t.Fatal(err)
		}
		dev := dev
		dev.TrustedCertsDir = dir
		sink := newRecSink()
		c, err := NewClient(dev, state, sink, nil)
		if err != nil {
			t.Fatal(err)
		}
		runClient(t, c)
		sink.waitValue(t, "ReadOnly", "7.25", adapters.Good)
	})
	t.Run("wrong pin", func(t *testing.T) {
		dev := dev
		dev.ServerThumbprint = strings.Repeat("ab", 32)
		c, err := NewClient(dev, state, nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.connect(t.Context()); !errors.As(err, &ue) || !strings.Contains(err.Error(), "does not match the pinned") {
			t.Fatalf("connect with a wrong pin: %v", err)
		}
	})
}

// TestNodeOPCUARestart kills the node-opcua process (SIGKILL) and starts
// it again on the same port: values flow again without restarting the
// client.
func TestNodeOPCUARestart(t *testing.T) {
	_, state := sharedNode(t)
	port := freePort(t)
	pki := filepath.Join(t.TempDir(), "pki")
	srv := startNode(t, port, pki)
	sharedMu.Lock()
	ownServers = append(ownServers, srv)
	sharedMu.Unlock()
	sink := newRecSink()
	c, err := NewClient(nodeDevice(srv, "Basic256Sha256", "SignAndEncrypt"), state, sink, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.minBackoff, c.maxBackoff = 100*time.Millisecond, time.Second
	runClient(t, c)
	sink.waitValue(t, "ReadOnly", "7.25", adapters.Good)
	srv.kill()
	sink.wait(t, "down", func(s *recSink) bool { return len(s.states) >= 2 && !s.states[len(s.states)-1].up })
	srv2 := startNode(t, port, pki) // same PKI: same certificate, so the pin holds
	sharedMu.Lock()
	ownServers = append(ownServers, srv2)
	sharedMu.Unlock()
	restarted := time.Now()
	sink.wait(t, "up again", func(s *recSink) bool { return s.upCount() >= 2 })
	sink.waitValue(t, "ReadOnly", "7.25", adapters.Good)
	t.Logf("values again %v after the restarted server was ready", time.Since(restarted).Round(time.Millisecond))
}

func TestNodeOPCUABrowse(t *testing.T) {
	srv, state := sharedNode(t)
	dev := nodeDevice(srv, "Basic256Sha256", "SignAndEncrypt")
	got := map[string]BrowseEntry{}
	err := Browse(t.Context(), dev, state, "", 2, func(e BrowseEntry) { got[e.BrowseName] = e })
	if err != nil {
		t.Fatal(err)
	}
	ro, ok := got["ReadOnly"]
	if !ok || ro.NodeID != "nsu="+nodeNS+";s=ReadOnly" || ro.Access != "r" || ro.DataType != "Double" || ro.Class != "Variable" {
		t.Errorf("ReadOnly browsed as %+v", ro)
	}
	if sp := got["Setpoint"]; sp.Access != "rw" {
		t.Errorf("Setpoint browsed as %+v", sp)
	}
}

// TestNodeOPCUAX509User: ferry logs in with an X.509 user certificate that
// node-opcua trusts (the server checks the token's signature, made with
// the user's key over its certificate and nonce); an untrusted user
// certificate, and a trusted one with the wrong key, are refused with an
// error that says what to check.
func TestNodeOPCUAX509User(t *testing.T) {
	_, state := sharedNode(t)
	dir := t.TempDir()
	userPKI := filepath.Join(dir, "user-pki")
	type user struct{ cert, key string }
	newUser := func(name string) (user, []byte) {
		certPEM, keyPEM, err := generateIdentity()
		if err != nil {
			t.Fatal(err)
		}
		u := user{filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")}
		if err := os.WriteFile(u.cert, certPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(u.key, keyPEM, 0o600); err != nil {
			t.Fatal(err)
		}
		blk, _ := pem.Decode(certPEM)
		return u, blk.Bytes
	}
	trusted, trustedDER := newUser("operator")
	untrusted, _ := newUser("stranger")
	certs := filepath.Join(userPKI, "trusted", "certs")
	if err := os.MkdirAll(certs, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(certs, "operator.der"), trustedDER, 0o600); err != nil {
		t.Fatal(err)
	}
	srv := startNode(t, freePort(t), filepath.Join(dir, "pki"), userPKI)
	sharedMu.Lock()
	ownServers = append(ownServers, srv)
	sharedMu.Unlock()

	login := func(t *testing.T, cert, key string) *recSink {
		sink := newRecSink()
		dev := nodeDevice(srv, "Basic256Sha256", "SignAndEncrypt")
		dev.UserCertFile, dev.UserKeyFile = cert, key
		c, err := NewClient(dev, state, sink, nil)
		if err != nil {
			t.Fatal(err)
		}
		runClient(t, c)
		return sink
	}
	refused := func(t *testing.T, sink *recSink, want ...string) {
		var msg string
		sink.wait(t, "down", func(s *recSink) bool {
			if len(s.states) > 0 {
				msg = s.states[0].err
			}
			return len(s.states) > 0
		})
		if sink.upCount() > 0 {
			t.Fatalf("logged in; want refused")
		}
		for _, w := range want {
			if !strings.Contains(msg, w) {
				t.Errorf("refusal %q does not say %q", msg, w)
			}
		}
	}
	t.Run("trusted", func(t *testing.T) {
		sink := login(t, trusted.cert, trusted.key)
		sink.waitValue(t, "ReadOnly", "7.25", adapters.Good)
	})
	t.Run("untrusted", func(t *testing.T) {
		refused(t, login(t, untrusted.cert, untrusted.key), "login with the user certificate "+untrusted.cert, "refused", "must trust this user certificate")
	})
	t.Run("wrong key", func(t *testing.T) {
		// Caught before any connection: the key must match the certificate.
		dev := nodeDevice(srv, "Basic256Sha256", "SignAndEncrypt")
		dev.UserCertFile, dev.UserKeyFile = trusted.cert, untrusted.key
		_, err := NewClient(dev, state, newRecSink(), nil)
		if err == nil || !strings.Contains(err.Error(), "does not belong to certificate") {
			t.Fatalf("NewClient = %v, want the key/certificate mismatch", err)
		}
	})
}
