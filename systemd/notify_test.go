package systemd

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// listen creates the datagram socket systemd would own and points
// NOTIFY_SOCKET at it.
func listen(t *testing.T) *net.UnixConn {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify.sock")
	conn, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	t.Setenv("NOTIFY_SOCKET", path)
	return conn
}

func recv(t *testing.T, conn *net.UnixConn, timeout time.Duration) (string, bool) {
	t.Helper()
	buf := make([]byte, 4096)
	_ = conn.SetReadDeadline(time.Now().Add(timeout))
	n, err := conn.Read(buf)
	if err != nil {
		return "", false
	}
	return string(buf[:n]), true
}

func TestNotifyMessages(t *testing.T) {
	conn := listen(t)
	n := NewNotifier(nil)
	n.Ready()
	n.Status("2/2 devices up, buffer 0 records")
	n.Reloading()
	n.Stopping()
	want := []string{"READY=1", "STATUS=2/2 devices up, buffer 0 records", "RELOADING=1\nMONOTONIC_USEC=", "STOPPING=1"}
	for _, w := range want {
		got, ok := recv(t, conn, 5*time.Second)
		if !ok || !strings.HasPrefix(got, w) {
			t.Errorf("got %q, want prefix %q", got, w)
		}
	}
}

func TestNoSocketIsNoOp(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	n := NewNotifier(nil)
	n.Ready()
	n.Stopping()
	done := make(chan struct{})
	go func() { n.Watchdog(context.Background(), func() error { return nil }); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Watchdog without WATCHDOG_USEC did not return")
	}
}

// TestWatchdogStopsWhenUnhealthy: pings flow while healthy, stop while the
// health check fails, and resume when it passes again.
func TestWatchdogStopsWhenUnhealthy(t *testing.T) {
	conn := listen(t)
	t.Setenv("WATCHDOG_USEC", "100000") // 100 ms: pings every 50 ms
	t.Setenv("WATCHDOG_PID", "")
	var hung atomic.Bool
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		NewNotifier(nil).Watchdog(ctx, func() error {
			if hung.Load() {
				return errors.New("poller plc1 made no progress for 3s")
			}
			return nil
		})
		close(done)
	}()
	defer func() { cancel(); <-done }()

	for i := range 3 {
		if got, ok := recv(t, conn, 5*time.Second); !ok || got != "WATCHDOG=1" {
			t.Fatalf("ping %d: got %q (%v)", i, got, ok)
		}
	}
	hung.Store(true)
	// Drain a ping that may already be on its way, then expect silence.
	_, _ = recv(t, conn, 120*time.Millisecond)
	if got, ok := recv(t, conn, 400*time.Millisecond); ok {
		t.Fatalf("got %q while unhealthy, want no ping", got)
	}
	hung.Store(false)
	if got, ok := recv(t, conn, 5*time.Second); !ok || got != "WATCHDOG=1" {
		t.Fatalf("no ping after recovery: %q", got)
	}
}
