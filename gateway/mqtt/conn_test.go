package mqtt

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/eclipse/paho.golang/packets"

	"github.com/ferry-gateway/ferry/gateway/mqtt/session"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	acc := make(chan net.Conn, 1)
	go func() {
		c, _ := ln.Accept()
		acc <- c
	}()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server = <-acc
	if server == nil {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

func waitDone(t *testing.T, b *batchConn) {
	t.Helper()
	select {
	case <-b.done:
	case <-time.After(5 * time.Second):
		t.Fatal("flusher still running")
	}
}

// Packets written through paho from many goroutines arrive whole and each
// is parsed back; Close writes everything buffered (the DISCONNECT) before
// closing.
func TestBatchConnPackets(t *testing.T) {
	c, s := tcpPair(t)
	var flushes atomic.Int64
	b := newBatchConn(c, func() { flushes.Add(1) })

	const writers, per = 8, 500
	got := make(chan map[string]int, 1)
	go func() {
		seen := map[string]int{}
		for {
			cp, err := packets.ReadPacket(s)
			if err != nil {
				got <- seen
				return
			}
			switch pk := cp.Content.(type) {
			case *packets.Publish:
				if string(pk.Payload) != pk.Topic+"-payload" {
					t.Errorf("packet %q: payload %q", pk.Topic, pk.Payload)
				}
				seen[pk.Topic]++
			case *packets.Disconnect:
				seen["DISCONNECT"]++
			}
		}
	}()
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() {
			for i := range per {
				topic := string(rune('a'+w)) + "/" + string(rune('A'+i%26))
				pk := &packets.Publish{Topic: topic, QoS: 1, PacketID: uint16(i + 1), Payload: []byte(topic + "-payload"), Properties: &packets.Properties{}}
				if _, err := pk.WriteTo(b); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	if _, err := (&packets.Disconnect{Properties: &packets.Properties{}}).WriteTo(b); err != nil {
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	waitDone(t, b)
	seen := <-got
	n := 0
	for k, v := range seen {
		if k != "DISCONNECT" {
			n += v
		}
	}
	if n != writers*per || seen["DISCONNECT"] != 1 {
		t.Fatalf("got %d PUBLISH and %d DISCONNECT, want %d and 1", n, seen["DISCONNECT"], writers*per)
	}
	if f := flushes.Load(); f < 1 || f > writers*per {
		t.Fatalf("%d socket writes for %d packets", f, writers*per+1)
	}
	t.Logf("%d packets in %d socket writes", writers*per+1, flushes.Load())
	if _, err := b.Write([]byte{1}); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close = %v, want net.ErrClosed", err)
	}
	if err := b.Close(); err != nil { // idempotent
		t.Fatal(err)
	}
}

// Reads are buffered but return the stream unchanged.
func TestBatchConnRead(t *testing.T) {
	c, s := tcpPair(t)
	b := newBatchConn(c, nil)
	defer b.Close()
	want := bytes.Repeat([]byte("0123456789"), 10000)
	go func() { _, _ = s.Write(want); s.Close() }()
	got, err := io.ReadAll(b)
	if err != nil || !bytes.Equal(got, want) {
		t.Fatalf("read %d bytes, err %v; want %d", len(got), err, len(want))
	}
}

// A socket error fails the following writes, closes the socket (so paho's
// reader ends the connection) and ends the flusher.
// TestBatchConnWriteError: the peer sends a packet and resets the
// connection (as mosquitto 2.0.11 does after the PUBACK 0x87 of a denied
// publish). Our writes then fail on the socket: the flusher stops, Writes
// are discarded, and the packet the peer sent before going away is still
// read before the reader sees the failure.
func TestBatchConnWriteError(t *testing.T) {
	c, s := tcpPair(t)
	b := newBatchConn(c, nil)
	if _, err := s.Write([]byte("puback-0x87")); err != nil {
		t.Fatal(err)
	}
	s.(*net.TCPConn).SetLinger(0)
	time.Sleep(50 * time.Millisecond) // the packet is in our receive buffer
	s.Close()                         // RST: writes fail
	deadline := time.Now().Add(5 * time.Second)
	for {
		if _, err := b.Write(make([]byte, 1024)); err != nil {
			t.Fatalf("Write after a socket error: %v, want it discarded", err)
		}
		b.mu.Lock()
		failed := b.wfail != nil
		b.mu.Unlock()
		if failed {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("writes to a reset connection keep succeeding on the socket")
		}
		time.Sleep(time.Millisecond)
	}
	waitDone(t, b)
	got := make([]byte, len("puback-0x87"))
	if _, err := io.ReadFull(b, got); err != nil || string(got) != "puback-0x87" {
		t.Fatalf("read after the write error: %q, %v; want what the peer sent first", got, err)
	}
	if _, rerr := b.Read(make([]byte, 1)); rerr == nil {
		t.Fatal("read succeeds after the peer's data")
	}
	_ = b.Close()
	if _, err := b.Write([]byte("x")); err == nil {
		t.Fatal("Write after Close succeeds")
	}
}

// A peer that does not read: writers block once batchMax is buffered, and
// Close gives up after closeFlush, unblocks them and ends the flusher.
func TestBatchConnCloseUnblocks(t *testing.T) {
	c, s := net.Pipe() // synchronous: nothing is written unless read
	defer s.Close()
	var before atomic.Bool
	b := newBatchConn(c, func() { before.Store(true) })
	blocked := make(chan error, 1)
	go func() {
		chunk := make([]byte, 16<<10)
		for {
			if _, err := b.Write(chunk); err != nil {
				blocked <- err
				return
			}
		}
	}()
	time.Sleep(100 * time.Millisecond)
	select {
	case err := <-blocked:
		t.Fatalf("writer stopped: %v", err)
	default:
	}
	b.mu.Lock()
	n := len(b.buf)
	b.mu.Unlock()
	if n < batchMax || n > batchMax+16<<10 {
		t.Fatalf("%d bytes buffered, want about %d", n, batchMax)
	}
	if !before.Load() {
		t.Fatal("before was not called before the socket write")
	}
	start := time.Now()
	_ = b.Close()
	if d := time.Since(start); d > closeFlush+time.Second {
		t.Fatalf("Close took %v", d)
	}
	select {
	case <-blocked:
	case <-time.After(5 * time.Second):
		t.Fatal("writer still blocked after Close")
	}
	waitDone(t, b)
}

// The session store's pending records are in the file before the packet
// is on the socket.
func TestBatchConnStoreBeforeSocket(t *testing.T) {
	dir := t.TempDir()
	st, err := session.Open(dir, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	st.SetDeferPuts(true)
	size := func() int64 {
		fi, err := os.Stat(filepath.Join(dir, "session.log"))
		if err != nil {
			t.Error(err)
			return 0
		}
		return fi.Size()
	}
	c, s := tcpPair(t)
	var sizeAtWrite atomic.Int64
	b := newBatchConn(c, func() {
		st.Flush()
		sizeAtWrite.Store(size())
	})
	defer b.Close()
	pk := &packets.Publish{Topic: "t", QoS: 1, PacketID: 7, Payload: []byte("x"), Properties: &packets.Properties{}}
	if err := st.Put(7, packets.PUBLISH, session.Record{Publish: pk, Seq: 42}); err != nil {
		t.Fatal(err)
	}
	if n := size(); n != 0 {
		t.Fatalf("Put wrote %d bytes at once with deferred puts", n)
	}
	if _, err := pk.WriteTo(b); err != nil {
		t.Fatal(err)
	}
	if _, err := packets.ReadPacket(s); err != nil {
		t.Fatal(err)
	}
	if sizeAtWrite.Load() == 0 {
		t.Fatal("packet written before its store record")
	}
	st2, err := session.Open(dir, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer st2.Close()
	if live, _ := st2.StartState(); len(live) != 1 || live[0] != 42 {
		t.Fatalf("reopened store has seqs %v, want [42]", live)
	}
}
