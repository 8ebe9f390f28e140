// Package mosquittotest runs a real mosquitto broker on loopback for tests
// and tools, and provides a small paho-based subscriber that records what it
// receives.
//
// Start runs a broker for a test: in t.TempDir(), failing the test on error
// and killing the broker when the test ends. Launch is the same broker
// without a testing.TB, for tools such as cmd/ferry-bench: it returns
// errors, the caller owns the directory and calls Close.
//
// The broker is /usr/sbin/mosquitto (or mosquitto on PATH); a test that needs
// it fails, rather than skips, when it is missing: CI installs it.
package mosquittotest

import (
	"errors"
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

	"github.com/ferry-gateway/ferry/internal/lockedbuf"
)

// StartTimeout bounds how long Launch, Start, Relaunch and Restart wait for
// the port to accept connections, and how long a stop waits for mosquitto to
// exit before killing it.
const StartTimeout = 15 * time.Second

// Option configures Start and Launch.
type Option func(*options)

type options struct {
	persistence bool
	acl         string
	extra       []string
	tls         *TLSFiles
	user, pass  string
	logTypes    []string // nil: all
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

// WithPersistence turns persistence on (in the broker's directory:
// t.TempDir() for Start, dir for Launch) with autosave_interval 0, so the
// database is written when the broker stops with SIGTERM and sessions and
// queued messages survive Stop/Restart.
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

// WithLogTypes logs only these mosquitto log types ("error", "warning",
// "notice", "information", "debug", ...) instead of the default "all".
// Logging all types logs every PUBLISH, which slows a busy broker down.
func WithLogTypes(types ...string) Option {
	return func(o *options) { o.logTypes = append([]string(nil), types...) }
}

// Broker is a running (or stopped) mosquitto process.
type Broker struct {
	t       testing.TB // nil for Launch
	bin     string
	conf    string
	port    int
	tlsPort int
	logs    *lockedbuf.Buffer

	mu     sync.Mutex
	run    *process // nil when stopped
	closed bool
}

// process is one run of mosquitto.
type process struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
	err  error         // cmd.Wait's result, set before done is closed
}

// Binary returns the mosquitto executable: mosquitto on PATH, else
// /usr/sbin/mosquitto (not on a normal user's PATH on Debian).
func Binary() (string, error) {
	if bin, err := exec.LookPath("mosquitto"); err == nil {
		return bin, nil
	}
	const sbin = "/usr/sbin/mosquitto"
	if _, err := os.Stat(sbin); err != nil {
		return "", fmt.Errorf("mosquittotest: mosquitto not found on PATH nor at %s (apt-get install -y mosquitto): %w", sbin, err)
	}
	return sbin, nil
}

// Start launches a broker in t.TempDir() (see Launch) and fails the test if
// it does not come up. The broker is killed when the test ends; its log is
// written to t.Log if the test failed.
func Start(t testing.TB, opts ...Option) *Broker {
	t.Helper()
	b, err := Launch(t.TempDir(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	b.t = t
	t.Cleanup(func() {
		_ = b.StopWith(syscall.SIGKILL)
		if t.Failed() {
			t.Logf("mosquitto log (port %d):\n%s", b.port, b.logs.String())
		}
	})
	return b
}

// Launch writes mosquitto.conf (and the acl and password files, and with
// persistence mosquitto.db) into dir, which it creates if needed and the
// caller owns, picks a free loopback port (and one for WithTLS) and starts
// mosquitto on it, anonymous and with unlimited queues
// (max_queued_messages 0). It returns once the port accepts connections;
// on failure the error names the address and includes mosquitto's log.
// The caller stops the broker with Close.
func Launch(dir string, opts ...Option) (*Broker, error) {
	var o options
	for _, opt := range opts {
		opt(&o)
	}
	if o.user != "" && o.tls == nil {
		return nil, errors.New("mosquittotest: WithPassword needs WithTLS")
	}
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("mosquittotest: %w", err)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	tlsPort := 0
	if o.tls != nil {
		if tlsPort, err = freePort(); err != nil {
			return nil, err
		}
	}
	if o.acl != "" {
		if err := os.WriteFile(filepath.Join(dir, "acl"), []byte(o.acl), 0o600); err != nil {
			return nil, fmt.Errorf("mosquittotest: %w", err)
		}
	}
	if o.user != "" {
		pwPath := filepath.Join(dir, "passwd")
		if err := os.WriteFile(pwPath, nil, 0o600); err != nil {
			return nil, fmt.Errorf("mosquittotest: %w", err)
		}
		if out, err := exec.Command("mosquitto_passwd", "-b", pwPath, o.user, o.pass).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("mosquittotest: mosquitto_passwd: %w: %s", err, out)
		}
	}
	confPath := filepath.Join(dir, "mosquitto.conf")
	conf := o.render(dir, port, tlsPort, os.Geteuid() == 0)
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		return nil, fmt.Errorf("mosquittotest: %w", err)
	}
	b := &Broker{bin: bin, conf: confPath, port: port, tlsPort: tlsPort, logs: &lockedbuf.Buffer{}}
	if err := b.start(); err != nil {
		return nil, err
	}
	return b, nil
}

// render returns mosquitto.conf; the acl and password files are in dir.
func (o *options) render(dir string, port, tlsPort int, root bool) string {
	var conf strings.Builder
	if o.tls != nil {
		conf.WriteString("per_listener_settings true\n")
	}
	fmt.Fprintf(&conf, "listener %d 127.0.0.1\n", port)
	conf.WriteString("allow_anonymous true\n")
	conf.WriteString("log_dest stderr\n")
	if o.logTypes == nil {
		conf.WriteString("log_type all\n")
	}
	for _, lt := range o.logTypes {
		fmt.Fprintf(&conf, "log_type %s\n", lt)
	}
	conf.WriteString("connection_messages true\n")
	conf.WriteString("max_queued_messages 0\n") // unlimited: outage tests queue a lot for offline subscribers
	if root {
		// As root, mosquitto would switch to the mosquitto user, which
		// cannot read the broker's directory (t.TempDir()).
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
		fmt.Fprintf(&conf, "acl_file %s\n", filepath.Join(dir, "acl"))
	}
	if o.tls != nil {
		fmt.Fprintf(&conf, "listener %d 127.0.0.1\n", tlsPort)
		fmt.Fprintf(&conf, "cafile %s\ncertfile %s\nkeyfile %s\n", o.tls.CAFile, o.tls.CertFile, o.tls.KeyFile)
		fmt.Fprintf(&conf, "require_certificate %v\n", o.tls.RequireClientCert)
		if o.user != "" {
			conf.WriteString("allow_anonymous false\n")
			fmt.Fprintf(&conf, "password_file %s\n", filepath.Join(dir, "passwd"))
		} else {
			conf.WriteString("allow_anonymous true\n")
		}
	}
	for _, l := range o.extra {
		conf.WriteString(l + "\n")
	}
	return conf.String()
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

// Port returns the listener port; it stays the same across Restart and
// Relaunch.
func (b *Broker) Port() int { return b.port }

// Logs returns what mosquitto has logged so far (all runs).
func (b *Broker) Logs() string { return b.logs.String() }

// Stop terminates the broker gracefully (SIGTERM: with persistence, the
// database is saved) and waits for it to exit. Stopping a stopped broker is
// a no-op.
func (b *Broker) Stop() { _ = b.StopWith(syscall.SIGTERM) }

// Kill stops the broker with SIGKILL (nothing is saved) and waits.
func (b *Broker) Kill() { _ = b.StopWith(syscall.SIGKILL) }

// Restart starts the broker again on the same port, stopping it first if it
// is running, and fails the test if it does not come up. It is Relaunch for
// a broker from Start; on a broker from Launch it panics on failure.
func (b *Broker) Restart() {
	if b.t != nil {
		b.t.Helper()
	}
	if err := b.Relaunch(); err != nil {
		if b.t == nil {
			panic(err)
		}
		b.t.Fatal(err)
	}
}

// StopWith sends sig to the broker and waits for it to exit: with SIGTERM
// mosquitto saves its persistence database, with SIGKILL nothing is saved.
// A broker still running StartTimeout after sig is killed, and StopWith
// says so. Stopping a stopped broker does nothing and returns nil.
func (b *Broker) StopWith(sig os.Signal) error {
	b.mu.Lock()
	p := b.run
	b.run = nil
	b.mu.Unlock()
	if p == nil {
		return nil
	}
	if err := p.cmd.Process.Signal(sig); err != nil && !errors.Is(err, os.ErrProcessDone) {
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("mosquittotest: signal mosquitto on %s: %w", b.Addr(), err)
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(StartTimeout):
		_ = p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("mosquittotest: mosquitto on %s still running %v after %v; killed", b.Addr(), StartTimeout, sig)
	}
}

// Relaunch starts the broker again on the same port with the same config
// (so, with persistence, the same database), stopping it with SIGTERM
// first if it is running, and waits until the port accepts connections.
// It fails after Close.
func (b *Broker) Relaunch() error {
	if err := b.StopWith(syscall.SIGTERM); err != nil {
		return err
	}
	return b.start()
}

// Close stops the broker with SIGTERM and waits for it to exit; Relaunch
// fails afterwards. It leaves the directory given to Launch in place.
// Closing a closed broker returns nil.
func (b *Broker) Close() error {
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	return b.StopWith(syscall.SIGTERM)
}

var errClosed = errors.New("mosquittotest: broker is closed")

func (b *Broker) start() error {
	b.mu.Lock()
	closed := b.closed
	b.mu.Unlock()
	if closed {
		return errClosed
	}
	fmt.Fprintf(b.logs, "--- starting mosquitto -c %s\n", b.conf)
	cmd := exec.Command(b.bin, "-c", b.conf)
	cmd.Stdout = b.logs
	cmd.Stderr = b.logs
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("mosquittotest: start mosquitto for %s: %w", b.Addr(), err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
	}()
	b.mu.Lock()
	if b.closed { // Close ran meanwhile
		b.mu.Unlock()
		_ = cmd.Process.Kill()
		<-p.done
		return errClosed
	}
	b.run = p
	b.mu.Unlock()

	deadline := time.Now().Add(StartTimeout)
	for {
		c, err := net.DialTimeout("tcp", b.Addr(), time.Second)
		if err == nil {
			_ = c.Close()
			return nil
		}
		select {
		case <-p.done:
			b.mu.Lock()
			if b.run == p {
				b.run = nil
			}
			b.mu.Unlock()
			why := p.err
			if why == nil {
				why = errors.New("exit status 0")
			}
			return fmt.Errorf("mosquittotest: mosquitto for %s exited at start: %w; log:\n%s", b.Addr(), why, b.logs.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = b.StopWith(syscall.SIGKILL)
			return fmt.Errorf("mosquittotest: mosquitto did not accept connections on %s within %v; log:\n%s", b.Addr(), StartTimeout, b.logs.String())
		}
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("mosquittotest: free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
