// Package mqtt is ferry's MQTT 5 side: it drains the disk buffer to the
// broker and removes a record from the buffer only once the broker has
// acknowledged it (PUBACK at QoS 1, PUBCOMP at QoS 2; written at QoS 0).
//
// # Why a QoS 2 message is never duplicated across a kill -9
//
// Four facts, each kept by one part, make it so. A record is a buffer entry
// with a seq; its PUBLISH carries the seq in the payload.
//
//  1. The buffer (package buffer) forgets a record only when the drain acks
//     it, which it does only when the broker completed the exchange
//     (PUBCOMP) or the session store says the broker already had it. Its
//     commit cursor reaches the disk a little after the ack (sync_interval),
//     so after a kill -9 it may offer again records that were done.
//  2. The session store (package session) writes a packet's record — the
//     packet id, the packet's bytes and the seq, in one CRC-checked frame —
//     before the packet can reach the socket: every connection at QoS 1 and
//     2 is a batchConn, which calls Store.Flush before each socket write.
//     The write is a write(2) without fsync: it survives a kill -9 of ferry
//     (the kernel has the data), not a power failure. A PUBREL replaces its
//     PUBLISH in the store the same way, before it is sent. When the
//     exchange is over the store marks the seq done (kept 30 s after a
//     restart, far longer than the buffer takes to persist its cursor).
//  3. At start (Publisher.resume), before anything is sent, the drain asks
//     the store: a seq marked done is acked in the buffer without
//     publishing (the broker has it: fact 1's stale cursor); a seq whose
//     packet is still in the store is not published again as a new message,
//     because paho resumes it from the store with the same packet id
//     (PUBLISH with DUP=1, or the PUBREL), and the drain acks it when that
//     exchange completes. Any other seq from the cursor on was never on the
//     wire (fact 2: its packet would be in the store), so publishing it is
//     its first delivery.
//  4. The broker keeps our session: Clean Start is set only on the first
//     connection of a state directory (the store remembers that a session
//     exists), with a Session Expiry of 24 h by default. Within it the
//     broker's QoS 2 state remembers each packet id until our PUBREL, so a
//     re-sent PUBLISH with the same id is not delivered twice, and a PUBREL
//     of an exchange it already finished is answered without a delivery.
//     Packet ids in the store stay in use, so a new message never takes the
//     id of one the broker is still holding.
//
// So whichever instant the process dies at — before the PUBLISH's record
// was written (the packet never left; the buffer still has the record),
// with the packet in flight (resumed by id), after the PUBCOMP but before
// the done mark reached the file (the store still holds the PUBREL, which
// is re-sent and answered without a delivery), or after the done mark but
// before the buffer's cursor (acked from the mark) — each seq reaches
// subscribers once. What breaks it, and is counted: a broker that lost
// our session (Session Present = 0 when one was expected: what was in
// flight is published again, Stats.SessionLost and Stats.Resent), a power
// failure that costs the store's tail, or a session store that cannot be
// written (a full disk; Stats.SessionWriteErrors). The test is
// cmd/ferry's TestCrashLoop: 30 kill -9 at random instants, 0 missing and
// 0 duplicates.
//
// # The parts
//
//   - The connection (connection.go): dial, CONNECT, up and down, the
//     write-coalescing batchConn (conn.go), the session gate that sees
//     every acknowledgement, and the publish of one record (link). The
//     command side's Subscribe, Respond and ClearRetained (inbound.go) use
//     it; callbacks run on paho's goroutines and must not block.
//   - The drain (drain.go, refuse.go, deadletter.go): the only part that
//     knows the buffer, through the consumer-side Log interface. It scans
//     the buffer in seq order, sends, completes a record on PUBACK/PUBCOMP,
//     retries or dead-letters refusals, marks replayed records and paces
//     them.
//   - The state messages (state.go): status, the Will, device status,
//     published again on every connection.
//   - The session store (package session): the packets in flight with
//     their seqs, and the done marks, on disk.
//
// # Why paho.Client and not autopaho
//
// It drives paho.golang's paho.Client directly with its own small
// connection loop. autopaho was considered and rejected for three reasons:
// its Publish waits forever for a message paho silently dropped when the
// broker answers Session Present = 0; an old client of autopaho can still
// add a publish to the shared session after the new connection re-sent it
// (the packet then waits a whole reconnect for its acknowledgement); and its
// queue removes a message once it is in the session store, not on PUBACK, so
// broker reason codes are lost. Owning the loop also lets the publisher
// choose the connection paho writes to (see below) and see each CONNACK
// before anything is published on the new connection.
//
// # The connection
//
// At QoS 1 and 2 paho gets a batchConn (conn.go): reads are buffered, and
// packets are appended to a buffer that one flusher goroutine writes with
// one write(2) per batch as soon as the socket takes it (no timer, so an
// idle link adds no latency). The session store's records of a batch are
// written just before it (one write(2) too), so a packet never reaches the
// socket before its record is in the store file. This roughly doubles the
// QoS 1 and 2 rate over a plain *net.TCPConn (one writev per packet and two
// or three reads per acknowledgement). At QoS 0, where a record is acked
// once written to the socket, paho writes straight to the socket.
//
// # Delivery
//
// One sender goroutine takes records from the buffer in seq order and hands
// each to paho's session without waiting for its acknowledgement, so
// packets leave in buffer order while up to MaxInflight (and at most the
// broker's Receive Maximum) are awaiting acknowledgement. At QoS 1 and 2
// the record's PUBLISH enters the session as a session.Record, which
// carries its seq to the store (link.publishRecord). Acknowledgements are
// taken from the session itself (sessionGate wraps paho's session.State
// and sees every PUBACK, PUBREC and PUBCOMP with its reason code,
// including those of packets restored from disk after a restart). paho's
// own Publish result is not used, which also sidesteps its bug of
// returning a QoS 2 PUBREC >= 0x80 as success.
//
// A reason code >= 0x80 is a failure, counted and logged (at most once per
// topic per logEvery). A refusal for good (not authorized, bad topic name
// or payload) writes the record to the dead-letter file and acks it at
// once, and holds its topic for a while: its next records are
// dead-lettered without being sent (see fail). Other refusals are retried
// with backoff, and dead-lettered after DeadLetterAttempts. Either way a
// refused record never keeps the buffer's commit cursor (and so the
// read-ahead of every other topic) for long, and each dead letter is
// announced on DeadLetterTopic so consumers can tell its seq gap from a
// loss. Retries are out of order by nature; every other record keeps its
// place.
package mqtt
