package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// broker is a mosquitto process on a free loopback port (never 1883),
// anonymous, with unlimited queues; with persistence its database lives in
// its temp dir, so sessions and queued messages survive stop/start.
type broker struct {
	bin  string
	conf string
	port int
	logs *syncBuffer

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
}

func mosquittoBin() (string, error) {
	if _, err := os.Stat("/usr/sbin/mosquitto"); err == nil {
		return "/usr/sbin/mosquitto", nil
	}
	return exec.LookPath("mosquitto")
}

func startBroker(dir string, persistence bool) (*broker, error) {
	bin, err := mosquittoBin()
	if err != nil {
		return nil, fmt.Errorf("mosquitto not found (apt-get install mosquitto): %w", err)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	conf := mosquittoConf(port, dir, persistence, os.Geteuid() == 0)
	path := filepath.Join(dir, "mosquitto.conf")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	b := &broker{bin: bin, conf: path, port: port, logs: &syncBuffer{}}
	return b, b.start()
}

// mosquittoConf renders the broker config.
func mosquittoConf(port int, dir string, persistence, root bool) string {
	var c bytes.Buffer
	fmt.Fprintf(&c, "listener %d 127.0.0.1\n", port)
	c.WriteString("allow_anonymous true\n")
	c.WriteString("max_queued_messages 0\n") // unlimited: an offline subscriber loses nothing
	c.WriteString("log_dest stderr\nlog_type error\nlog_type warning\n")
	if root {
		c.WriteString("user root\n")
	}
	if persistence {
		c.WriteString("persistence true\n")
		fmt.Fprintf(&c, "persistence_location %s/\n", dir)
		c.WriteString("autosave_interval 0\n")
	} else {
		c.WriteString("persistence false\n")
	}
	return c.String()
}

func (b *broker) addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(b.port)) }
func (b *broker) url() string  { return "mqtt://" + b.addr() }

func (b *broker) start() error {
	cmd := exec.Command(b.bin, "-c", b.conf)
	cmd.Stdout, cmd.Stderr = b.logs, b.logs
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start mosquitto: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	b.mu.Lock()
	b.cmd, b.done = cmd, done
	b.mu.Unlock()
	deadline := time.Now().Add(15 * time.Second)
	for {
		if c, err := net.DialTimeout("tcp", b.addr(), time.Second); err == nil {
			_ = c.Close()
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("mosquitto exited at start: %s", b.logs.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			b.stop(syscall.SIGKILL)
			return fmt.Errorf("mosquitto did not listen on %s: %s", b.addr(), b.logs.String())
		}
	}
}

// stop signals the broker (SIGTERM saves the persistence database) and
// waits for it to exit.
func (b *broker) stop(sig syscall.Signal) {
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
	case <-time.After(15 * time.Second):
		_ = cmd.Process.Kill()
		<-done
	}
}

func (b *broker) close() { b.stop(syscall.SIGTERM) }

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.b.Len() > 1<<20 { // keep the tail only
		s.b.Reset()
	}
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
