// Package mosquittotest runs a real mosquitto broker on loopback for tests,
// and provides a small paho-based subscriber that records what it receives.
//
// The broker is /usr/sbin/mosquitto (or mosquitto on PATH); a test that needs
// it fails, rather than skips, when it is missing: CI installs it.
package mosquittotest

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// StartTimeout bounds how long Start and Restart wait for the port to
// accept connections.
const StartTimeout = 15 * time.Second

// Option configures Start.
type Option func(*options)

type options struct {
	persistence bool
	acl         string
	extra       []string
	tls         *TLSFiles
	user, pass  string
}

// TLSFiles are the PEM files of a TLS listener.
type TLSFiles struct {
	CAFile, CertFile, KeyFile string
	// RequireClientCert makes the listener refuse clients without a
	// certificate signed by CAFile (mutual TLS).
	RequireClientCert bool
}

// WithTLS adds a TLS listener on a second free port (TLSURL, TLSPort)
// next to the plain one, which stays anonymous (for Subscribe).
func WithTLS(f TLSFiles) Option { return func(o *options) { o.tls = &f } }

// WithPassword makes the TLS listener (WithTLS is required) accept only
// this user name and password.
func WithPassword(user, pass string) Option {
	return func(o *options) { o.user, o.pass = user, pass }
}

// WithPersistence turns persistence on (in the test's temp dir), so sessions
// and queued messages survive Stop/Restart.
func WithPersistence() Option { return func(o *options) { o.persistence = true } }

// WithACL writes acl as the broker's acl_file. Lines before any "user" line
// apply to anonymous clients, e.g.
//
//	topic readwrite #
//	topic deny ferry/denied/#
//
// mosquitto 2.0.11 answers a denied QoS 1 publish with PUBACK reason code
// 0x87 (Not authorized) and then closes the client's connection.
func WithACL(acl string) Option { return func(o *options) { o.acl = acl } }

// WithConfig appends raw lines to mosquitto.conf.
func WithConfig(lines ...string) Option {
	return func(o *options) { o.extra = append(o.extra, lines...) }
}

// Broker is a running (or stopped) mosquitto process.
type Broker struct {
	t       testing.TB
	bin     string
	conf    string
	port    int
	tlsPort int

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
	logs *syncBuffer
}

// Start writes a config into t.TempDir(), picks a free loopback port and
// starts mosquitto on it. The broker is killed when the test ends; its log is
// written to t.Log if the test failed.
func Start(t testing.TB, opts ...Option) *Broker {
	t.Helper()
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	bin, err := exec.LookPath("mosquitto")
	if err != nil {
		bin = "/usr/sbin/mosquitto"
		if _, err := os.Stat(bin); err != nil {
			t.Fatalf("mosquitto not found: install mosquitto (apt-get install -y mosquitto)")
		}
	}
	dir := t.TempDir()
	port := freePort(t)
	var conf strings.Builder
	if o.tls != nil {
		conf.WriteString("per_listener_settings true\n")
	}
	fmt.Fprintf(&conf, "listener %d 127.0.0.1\n", port)
	conf.WriteString("allow_anonymous true\n")
	conf.WriteString("log_dest stderr\n")
	conf.WriteString("log_type all\n")
	conf.WriteString("connection_messages true\n")
	conf.WriteString("max_queued_messages 0\n") // unlimited: outage tests queue a lot for offline subscribers
	if os.Geteuid() == 0 {
		// As root, mosquitto would switch to the mosquitto user, which
		// cannot read t.TempDir().
		conf.WriteString("user root\n")
	}
	if o.persistence {
		conf.WriteString("persistence true\n")
		fmt.Fprintf(&conf, "persistence_location %s/\n", dir)
		conf.WriteString("autosave_interval 0\n")
	} else {
		conf.WriteString("persistence false\n")
	}
	if o.acl != "" {
		aclPath := filepath.Join(dir, "acl")
		if err := os.WriteFile(aclPath, []byte(o.acl), 0o600); err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(&conf, "acl_file %s\n", aclPath)
	}
	tlsPort := 0
	if o.user != "" && o.tls == nil {
		t.Fatal("mosquittotest: WithPassword needs WithTLS")
	}
	if o.tls != nil {
		tlsPort = freePort(t)
		fmt.Fprintf(&conf, "listener %d 127.0.0.1\n", tlsPort)
		fmt.Fprintf(&conf, "cafile %s\ncertfile %s\nkeyfile %s\n", o.tls.CAFile, o.tls.CertFile, o.tls.KeyFile)
		fmt.Fprintf(&conf, "require_certificate %v\n", o.tls.RequireClientCert)
		if o.user != "" {
			pwPath := filepath.Join(dir, "passwd")
			if err := os.WriteFile(pwPath, nil, 0o600); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command("mosquitto_passwd", "-b", pwPath, o.user, o.pass).CombinedOutput(); err != nil {
				t.Fatalf("mosquitto_passwd: %v: %s", err, out)
			}
			conf.WriteString("allow_anonymous false\n")
			fmt.Fprintf(&conf, "password_file %s\n", pwPath)
		} else {
			conf.WriteString("allow_anonymous true\n")
		}
	}
	for _, l := range o.extra {
		conf.WriteString(l + "\n")
	}
	confPath := filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(confPath, []byte(conf.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	b := &Broker{t: t, bin: bin, conf: confPath, port: port, tlsPort: tlsPort, logs: &syncBuffer{}}
	t.Cleanup(func() {
		b.kill()
		if t.Failed() {
			t.Logf("mosquitto log (port %d):\n%s", b.port, b.logs.String())
		}
	})
	b.start()
	return b
}

// URL returns "mqtt://127.0.0.1:PORT".
func (b *Broker) URL() string { return "mqtt://" + b.Addr() }

// Addr returns "127.0.0.1:PORT".
func (b *Broker) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(b.port)) }

// TLSURL returns "mqtts://127.0.0.1:PORT" of the TLS listener (WithTLS).
func (b *Broker) TLSURL() string { return "mqtts://" + b.TLSAddr() }

// TLSAddr returns "127.0.0.1:PORT" of the TLS listener (WithTLS).
func (b *Broker) TLSAddr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(b.tlsPort)) }

// TLSPort returns the TLS listener's port (0 without WithTLS).
func (b *Broker) TLSPort() int { return b.tlsPort }

// Port returns the listener port; it stays the same across Restart.
func (b *Broker) Port() int { return b.port }

// Logs returns what mosquitto has logged so far (all runs).
func (b *Broker) Logs() string { return b.logs.String() }

// Stop terminates the broker gracefully (SIGTERM: with persistence, the
// database is saved) and waits for it to exit. Stopping a stopped broker is
// a no-op.
func (b *Broker) Stop() {
	b.t.Helper()
	b.signal(syscall.SIGTERM)
}

// Kill stops the broker with SIGKILL (nothing is saved) and waits.
func (b *Broker) Kill() {
	b.t.Helper()
	b.kill()
}

// Restart starts the broker again on the same port, stopping it first if it
// is running.
func (b *Broker) Restart() {
	b.t.Helper()
	b.Stop()
	b.start()
}

func (b *Broker) kill() { b.signal(syscall.SIGKILL) }

func (b *Broker) signal(sig syscall.Signal) {
	b.mu.Lock()
	cmd, done := b.cmd, b.done
	b.cmd = nil
	b.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	select {
	case <-done:
	case <-time.After(StartTimeout):
		_ = cmd.Process.Kill()
		<-done
	}
}

func (b *Broker) start() {
	b.t.Helper()
	fmt.Fprintf(b.logs, "--- starting mosquitto -c %s\n", b.conf)
	cmd := exec.Command(b.bin, "-c", b.conf)
	cmd.Stdout = b.logs
	cmd.Stderr = b.logs
	if err := cmd.Start(); err != nil {
		b.t.Fatalf("start mosquitto: %v", err)
	}
	done := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	b.mu.Lock()
	b.cmd, b.done = cmd, done
	b.mu.Unlock()

	deadline := time.Now().Add(StartTimeout)
	for {
		c, err := net.DialTimeout("tcp", b.Addr(), time.Second)
		if err == nil {
			_ = c.Close()
			return
		}
		select {
		case <-done:
			b.mu.Lock()
			b.cmd = nil
			b.mu.Unlock()
			b.t.Fatalf("mosquitto exited at start (port %d): %v\n%s", b.port, cmd.ProcessState, b.logs.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			b.kill()
			b.t.Fatalf("mosquitto did not accept connections on %s within %v:\n%s", b.Addr(), StartTimeout, b.logs.String())
		}
	}
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
