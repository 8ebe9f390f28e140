// Package session is the client side of ferry's MQTT session, kept on
// disk: the packets paho keeps until the broker has acknowledged them
// (an outgoing PUBLISH, then its PUBREL at QoS 2), each with the buffer seq
// it carries, and the seqs whose delivery is over. It is what makes QoS 2
// exactly-once across a kill -9 (see the mqtt package documentation for the
// whole argument); this package's part of it is three promises:
//
//   - A packet's record (its bytes and its seq, in one frame, so the two
//     never disagree) is in the file before the packet can reach the
//     socket: Put writes it at once, or, with SetDeferPuts, leaves it
//     pending for Flush, which the connection calls before every socket
//     write. The file is written with write(2) and no fsync: the data is
//     in the kernel, so it survives a kill -9 of ferry (a power failure can
//     cost its tail, which makes QoS 2 at-least-once for what was in
//     flight; no record is ever lost, because the buffer is acked only for
//     completed deliveries).
//   - When a packet's exchange is over (Delete after PUBACK, PUBCOMP, or a
//     PUBREC with a failure code) its seq is marked done unless FailNext
//     said the broker refused it. The buffer persists its commit cursor a
//     little after Ack, so after a kill -9 it may offer again a record the
//     broker already has: StartState returns the done seqs read at open
//     (kept for markRetention, far longer than the buffer takes to persist
//     its cursor), and the publisher acks them without publishing.
//   - StartState returns the seqs of the packets still in flight: the
//     publisher does not publish them again as new messages; paho resumes
//     them from the store (PUBLISH with DUP=1 and the same packet id, or
//     PUBREL), which the broker's own QoS 2 state deduplicates.
//
// The buffer seq reaches the store with the packet: the publisher hands
// paho's session a [Record] (the PUBLISH and its seq), which the session
// passes as is to Put. Any other packet (state messages, command answers)
// carries no seq (0).
//
// # Directory layout
//
//	<dir>/session.log       the log (below)
//	<dir>/session.log.tmp   a compaction or rewrite in progress; removed at open
//	<dir>/corrupt/          bad bytes skipped at open, as session.log.<unixnano>.<offset>.bin
//
// The directory should hold nothing else; the gateway uses <state_dir>/mqtt.
// Files are created with mode 0640 and directories with 0750.
//
// # File format
//
// session.log is a plain sequence of frames, with no file header. All
// integers are little endian. This version writes version 2 frames:
//
//	offset size field
//	0      4    magic F3 53 53 02 ("\xF3SS" + frame version 2)
//	4      4    n, length of the body (1 .. 2^28)
//	8      4    CRC-32C (Castagnoli) over bytes 4..8 and the body
//	12     n    body
//
// and still reads version 1 frames (no magic; testdata/session-v1.log),
// written before this version:
//
//	0 4 n | 4 4 CRC-32C over the body | 8 n body
//
// A file of version 1 frames is rewritten in version 2 when it is opened.
// The body's first byte is its type; the bodies are, byte by byte:
//
//	put (1): a packet is stored (or replaced: a PUBREL replaces its PUBLISH)
//	0  1  type 1
//	1  2  packet id
//	3  1  MQTT packet type (3 PUBLISH, 6 PUBREL)
//	4  8  buffer seq (0: not a buffer record)
//	12 -  the packet as paho serializes it, fixed header included
//
//	delete (2): the packet's exchange is over (n = 4)
//	0  1  type 2
//	1  2  packet id
//	3  1  1: its seq is done; 0: the broker refused it, it will be retried
//
//	mark (3): seqs done without a packet, such as dead letters (n = 17)
//	0  1  type 3
//	1  8  from
//	9  8  to (inclusive; to >= from, to - from <= 2^24)
//
//	reset (4): the broker had no session; every live packet is forgotten (n = 1)
//	session (5): a session exists at the broker, Clean Start = 0 from now on (n = 1)
//
// A body of another type, or of a length its type does not allow, fails the
// frame like a bad CRC. testdata/session-v2.log pins the format (go test
// -run TestSessionStoreGolden -update rewrites it, for an intended change
// only); testdata/session-v1.log is the first format and must keep opening.
//
// The log is compacted (the session flag, the done marks of the last
// markRetention, the live packets in their order, written to
// session.log.tmp and renamed over session.log) when it has grown past
// compactMin and four times its size after the last compaction.
//
// # Damage
//
// At open, a frame that fails its checks (magic, length, CRC, body) starts
// a search, byte by byte, for the next good frame of the same version:
// replay resyncs past a bad region instead of stopping there, as the
// buffer does. Each bad region is a [*CorruptionError] (file, offset, size),
// logged and returned by Damage. Bad bytes with good frames after them are
// copied to corrupt/ and counted (Health), and the file is rewritten from
// what was read; a bad tail (a write torn by a crash or a full disk) is cut
// off, its bytes kept unless all zero, and not counted. Opening never fails
// on bad data, only on I/O errors.
//
// # Write errors
//
// A write that fails or is short (ENOSPC, EIO) is cut back to the last
// whole frame at once, and the file is then rewritten from memory (which
// holds everything the lost frames said) as soon as writes succeed again;
// until then nothing is appended. So the file on disk is always a prefix
// of good frames, and a kill -9 after a full-disk episode finds everything
// but what the missing frames said (at QoS 2: duplicates of what was in
// flight, never a loss).
//
// # Why not paho's store/file
//
// It fsyncs and renames a file per packet (two per QoS 2 message, about
// 3 k operations/s on the reference hardware, far below the broker),
// orders resends by file ModTime, pads List with 0 ids when the directory
// holds other files, and has nowhere to keep the seq of a PUBREL.
package session
