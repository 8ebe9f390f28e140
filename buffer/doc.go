// Package buffer is ferry's store-and-forward buffer: a crash-safe, bounded,
// segmented append-only log of opaque records with a durable commit cursor.
//
// Producers call [Log.Append]; every record gets a sequence number (seq),
// starting at 1 for a new log, consecutive, continuing across restarts and
// never reused. A consumer reads with [Log.Scan] from [Log.Acked], publishes,
// and calls [Log.Ack] for each record, possibly out of order (an MQTT
// in-flight window). The commit cursor advances over the longest fully acked
// prefix and is persisted at most every Options.SyncInterval (and on
// [Log.Sync] / [Log.Close]), not on every Ack. Delivery is at-least-once:
// after a crash, records acked after the last cursor write are delivered again.
//
// # Directory layout
//
//	<dir>/00000000000000000001.seg     segments, named %020d after the seq of their first record
//	<dir>/cursor                       commit cursor (written as cursor.tmp, fsync, rename, fsync dir)
//	<dir>/LOCK                         flock(2) held while the log is open
//	<dir>/corrupt/<segment>.<off>.bin  corrupt bytes set aside by recovery, never deleted by the log
//
// # Segment format
//
// A segment is a plain sequence of frames, with no file header. All integers
// are little endian.
//
//	offset size field
//	0      4    magic F3 52 59 01 ("\xF3RY" + format version 1)
//	4      4    n, length of the data (at most MaxRecordBytes)
//	8      8    seq of the record
//	16     4    CRC-32C (Castagnoli) over bytes 4..16 (length and seq) and the data
//	20     n    data
//
// Seqs inside a segment are strictly increasing and, when nothing was lost,
// consecutive from the number in the file name. A segment is cut when the next
// Append batch would make it larger than Options.SegmentBytes (a batch is never
// split, so one oversized batch makes one oversized segment). The segment being
// appended to (the newest) is never deleted, so the next seq is always
// recoverable; older segments are deleted whole once the persisted cursor is
// past their last record, or dropped whole by the size cap.
//
// # Cursor format
//
//	0  8 magic "FRYCUR01"
//	8  8 cursor: the first seq not yet acknowledged
//	16 4 CRC-32C over bytes 0..16
//
// A missing or damaged cursor file is logged and treated as "nothing acked":
// delivery restarts at the oldest retained record. At open the next seq is
// max(last valid seq in the newest segment + 1, newest segment's base, cursor),
// so seqs are not reused even when every segment is empty.
//
// # Durability
//
//   - SyncAlways: Append returns after the batch is fsynced (fdatasync on
//     Linux). Concurrent Appends share fsyncs (group commit); every Append
//     batch is written with one write call.
//   - SyncBatch: a background goroutine fsyncs at most every SyncInterval while
//     there is unsynced data. A process crash (kill -9) loses nothing, since the
//     data is in the page cache; a power failure loses at most about
//     SyncInterval of appends.
//   - SyncNone: no fsync on Append; Sync and Close still fsync. Segments are
//     always fsynced when they are cut, the directory is fsynced after segment
//     files are created or deleted.
//
// If a write fails (ENOSPC, EIO, short write), Append returns the error wrapped
// with the file name, the file is truncated back to its last good size and no
// seq is consumed; the caller may retry. If an fsync fails under SyncAlways,
// Append returns the error although the records were written and are visible
// to Scan: a retry then duplicates them (at-least-once).
//
// # Recovery
//
// Open lists the segment files and takes the first seq of each from its name;
// only the newest segment is read in full (it is at most SegmentBytes). Older
// segments are read lazily, when Scan first reaches them, which also builds a
// sparse per-segment index, so opening a large buffer does not read every
// record. A frame that fails its checks (magic, length, CRC, increasing seq)
// starts a byte-by-byte search for the next magic whose frame checks out:
//
//   - If one is found, the bytes in between are copied to corrupt/, the
//     skipped records are counted in [Stats].Corrupt and logged as a
//     [*CorruptionError], and reading continues.
//   - If none is found in the newest segment, it is a torn tail (a partial
//     write, garbage, or zeros after a power loss): the segment is truncated
//     at the last good frame; non-zero bytes are copied to corrupt/ first.
//
// Bad data never makes Open fail or panic; only I/O errors do.
//
// # Size cap
//
// With Options.MaxBytes set, after an Append that makes the segments exceed
// it, the oldest whole segments (never the newest) are deleted, acked or not,
// the cursor is moved past them, the unacked records they held are counted
// in [Stats].Dropped, and one warning is logged per event. The producer is
// never blocked. Scan silently skips seqs below the oldest retained record.
package buffer
