package mqtt

import (
	"bufio"
	"net"
	"sync"
	"time"
)

// batchConn is the connection paho gets at QoS 1 and 2. It coalesces
// writes and buffers reads:
//
//   - Write appends to a buffer under a mutex; one flusher goroutine writes
//     everything accumulated so far with one Write on the socket (one
//     write(2), or one TLS write) as soon as it can. There is no timer: when
//     the link is idle a packet leaves at once, and while a write(2) is in
//     progress the next packets gather behind it. paho's PUBLISH, PUBREL,
//     PUBACK and PINGREQ of a busy connection then share syscalls instead of
//     costing one writev each (and, with TLS, several records each).
//   - paho writes a packet as several Writes between Lock and Unlock of a
//     sync.Locker connection (packets.ControlPacket.WriteTo), from several
//     goroutines (the publisher, paho's reader for acks and PUBREL, the
//     pinger). Lock/Unlock make each packet contiguous in the buffer, and
//     the flusher does not take a half-appended packet unless the buffer is
//     large, so a packet normally leaves in one piece.
//   - Reads go through a bufio.Reader: paho reads each packet with two or
//     three small reads, one read(2) each on a bare socket; a burst of
//     PUBACKs now costs one.
//
// before, when set, is called by the flusher before every socket write:
// the session store writes its pending records there, so a packet is never
// on the wire before the session store record that describes it is in the
// file (see session.Store.Flush).
//
// A Write succeeds once buffered. A socket write error stops the flusher;
// later Writes are discarded (and succeed), and the socket is not closed:
// paho's reader reads what the peer sent before it went away, then ends
// the connection on EOF, the reset, or a read deadline of readDrain set at
// the error. mosquitto 2.0.11 closes the connection right after the PUBACK
// 0x87 of a denied publish; closing the socket at our next write error
// threw that PUBACK away (and a write error during paho's retransmission
// at CONNACK failed the connect before anything was read), so the refused
// packet stayed in the session and was re-sent, and refused, at every
// reconnect. Everything written after the error is in the session store
// and is sent again on the next connection. Close writes what is buffered
// (DISCONNECT must reach the broker, or it publishes the Will), waiting at
// most closeFlush, then closes the socket; it unblocks waiting writers and
// ends the flusher.
type batchConn struct {
	net.Conn
	r      *bufio.Reader
	before func()

	pmu sync.Mutex // held by paho for a whole packet (Lock/Unlock)

	mu       sync.Mutex
	more     sync.Cond // the flusher waits for data
	room     sync.Cond // writers wait for the buffer to drain
	buf      []byte    // to write
	spare    []byte    // the buffer being written, reused
	inPacket bool      // a packet is being appended (between Lock and Unlock)
	err      error     // net.ErrClosed after Close
	wfail    error     // the socket write error: later Writes are discarded
	closing  bool
	done     chan struct{} // closed when the flusher has ended

	closeOnce sync.Once
	closeErr  error
}

const (
	// batchSplit: the flusher takes a packet still being appended only
	// when this much is buffered.
	batchSplit = 64 << 10
	// batchMax: writers wait while this much is buffered.
	batchMax = 256 << 10
	// batchKeep: larger buffers are not kept for reuse.
	batchKeep = 1 << 20
	// closeFlush bounds how long Close tries to write what is buffered.
	closeFlush = time.Second
	// readDrain bounds how long the reader goes on after a write error.
	readDrain = 2 * time.Second
)

func newBatchConn(c net.Conn, before func()) *batchConn {
	b := &batchConn{
		Conn:   c,
		r:      bufio.NewReaderSize(c, 32<<10),
		before: before,
		buf:    make([]byte, 0, 16<<10),
		spare:  make([]byte, 0, 16<<10),
		done:   make(chan struct{}),
	}
	b.more.L = &b.mu
	b.room.L = &b.mu
	go b.flusher()
	return b
}

// Read reads through the buffer. paho reads from one goroutine at a time.
func (b *batchConn) Read(p []byte) (int, error) { return b.r.Read(p) }

// Lock starts a packet (sync.Locker, used by paho's ControlPacket.WriteTo).
func (b *batchConn) Lock() {
	b.pmu.Lock()
	b.mu.Lock()
	b.inPacket = true
	b.mu.Unlock()
}

// Unlock ends a packet and wakes the flusher.
func (b *batchConn) Unlock() {
	b.mu.Lock()
	b.inPacket = false
	if len(b.buf) > 0 {
		b.more.Signal()
	}
	b.mu.Unlock()
	b.pmu.Unlock()
}

// Write buffers p. It blocks only while batchMax bytes wait for the socket.
func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for len(b.buf) >= batchMax && b.err == nil && b.wfail == nil && !b.closing {
		b.room.Wait()
	}
	if b.err != nil {
		return 0, b.err
	}
	if b.closing {
		return 0, net.ErrClosed
	}
	if b.wfail != nil {
		return len(p), nil // see the type's doc
	}
	b.buf = append(b.buf, p...)
	if !b.inPacket || len(b.buf) >= batchSplit {
		b.more.Signal()
	}
	return len(p), nil
}

func (b *batchConn) flusher() {
	defer close(b.done)
	b.mu.Lock()
	for {
		for b.err == nil && b.wfail == nil && !b.closing && (len(b.buf) == 0 || b.inPacket && len(b.buf) < batchSplit) {
			b.more.Wait()
		}
		if b.err != nil || b.wfail != nil || len(b.buf) == 0 { // failed, or closing and all written
			b.mu.Unlock()
			return
		}
		out := b.buf
		b.buf = b.spare[:0]
		b.mu.Unlock()
		b.room.Broadcast()
		if b.before != nil {
			b.before()
		}
		_, err := b.Conn.Write(out)
		b.mu.Lock()
		if cap(out) <= batchKeep {
			b.spare = out[:0]
		} else {
			b.spare = make([]byte, 0, 16<<10)
		}
		if err != nil {
			b.wfail = err
			b.buf = b.buf[:0]
			b.room.Broadcast()
			b.mu.Unlock()
			// The reader ends the connection once it has read what the
			// peer sent (see the type's doc), at the latest by readDrain.
			_ = b.Conn.SetReadDeadline(time.Now().Add(readDrain))
			return
		}
	}
}

// Close writes what is buffered (for at most closeFlush) and closes the
// connection. It may be called more than once and from any goroutine.
func (b *batchConn) Close() error {
	b.closeOnce.Do(func() {
		_ = b.Conn.SetWriteDeadline(time.Now().Add(closeFlush))
		b.mu.Lock()
		b.closing = true
		b.more.Signal()
		b.room.Broadcast()
		b.mu.Unlock()
		<-b.done
		b.mu.Lock()
		if b.err == nil {
			b.err = net.ErrClosed
		}
		b.room.Broadcast()
		b.mu.Unlock()
		b.closeErr = b.Conn.Close()
	})
	return b.closeErr
}
