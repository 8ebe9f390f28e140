// Package buffer is ferry's store-and-forward buffer: a crash-safe, bounded,
// segmented append-only log of opaque records with a durable commit cursor.
//
// Producers call [Log.Append]; every record gets a sequence number (seq),
// starting at 1 for a new log, consecutive, continuing across restarts and
// never reused. A consumer reads with [Log.Scan] from [Log.Acked], publishes,
// and calls [Log.Ack] for each record, possibly out of order (an MQTT
// in-flight window). The commit cursor advances over the longest fully acked
// prefix. Delivery is at-least-once: after a crash, records acked after the
// last cursor write are delivered again.
//
// # Following the writer
//
// A consumer that has read everything waits on [Log.Notify], which has room
// for one value and receives one (without blocking the producer) after
// appended records become visible to Scan. The loop
//
//	for {
//		next, _ = l.Scan(next, n, fn) // until it returns next unchanged
//		<-l.Notify()
//	}
//
// cannot miss a wake-up: a record appended after a Scan found nothing
// leaves a value in the channel. A value may be stale (the Scan already saw
// the record): the loop then scans once for nothing.
//
// # Directory layout
//
//	<dir>/00000000000000000001.seg     segments, named %020d after the seq of their first record
//	<dir>/cursor                       commit cursor (created once as cursor.tmp, fsync, rename, fsync dir; then rewritten in place)
//	<dir>/LOCK                         flock(2) held while the log is open
//	<dir>/corrupt/                     corrupt bytes and loss records (see Recovery), never deleted by the log
//
// Files are created with mode 0640 and directories with 0750 (before the
// umask), like the MQTT session's.
//
// # Segment format
//
// A segment is a plain sequence of frames, with no file header. All integers
// are little endian. This version writes version 2 frames:
//
//	offset size field
//	0      4    magic F3 52 59 02 ("\xF3RY" + frame version 2)
//	4      4    n, length of the data (at most MaxRecordBytes)
//	8      8    seq of the record
//	16     8    append time, Unix nanoseconds (one time per Append batch,
//	            never lower than the previous record's)
//	24     4    CRC-32C (Castagnoli) over bytes 4..24 and the data
//	28     n    data
//
// and still reads version 1 frames, written by the first build, which have
// no time (a segment may hold both; testdata/format-v1.seg and
// testdata/format-v2.seg pin both formats):
//
//	0 4 magic F3 52 59 01 | 4 4 n | 8 8 seq | 16 4 CRC-32C over 4..16 and data | 20 n data
//
// Seqs inside a segment are strictly increasing and, when nothing was lost,
// consecutive from the number in the file name. A segment is cut when the next
// Append batch would make it larger than Options.SegmentBytes (a batch is never
// split, so one oversized batch makes one oversized segment). The segment being
// appended to (the newest) is never deleted, so the next seq is always
// recoverable; older segments are deleted whole once the persisted cursor is
// past their last record, or dropped whole by the size cap or MaxAge.
//
// # Cursor format
//
// The cursor file is 1024 bytes: two slots, at offsets 0 and 512 (different
// disk sectors), each a version 2 cursor record:
//
//	0  8 magic "FRYCUR02"
//	8  8 cursor: the first seq not yet acknowledged
//	16 8 next-seq floor: 0, or the seq the next record gets at least
//	     (seqs given up by Skip and not yet followed by a record)
//	24 4 CRC-32C over bytes 0..24
//
// The file is created once (at Open, as cursor.tmp, fsync, rename, fsync
// dir) and then rewritten in place: each write puts the new record in the
// slot not holding the newest one (pwrite) and fdatasyncs. It needs no new
// disk space and no directory change, so it works on a full disk, and a
// torn write leaves the other slot, one write older, intact. The valid slot
// with the highest cursor wins. Earlier builds wrote one version 1 record
// (20 bytes: magic "FRYCUR01", cursor, CRC-32C over 0..16, as
// testdata/format-v2.cursor); it is read as slot 0 and rewritten in place.
//
// A missing or damaged cursor file is logged and treated as "nothing acked":
// delivery restarts at the oldest retained record. At open the next seq is
// max(last valid seq in the newest segment + 1, newest segment's base, cursor,
// next-seq floor), so seqs are not reused even when every segment is empty.
//
// The cursor is written by the background goroutine at most every
// Options.CursorInterval (default 1 s) while it moves, and by [Log.Sync]
// and [Log.Close]; each write costs one fdatasync, so a busy consumer costs
// at most one cursor write per interval, not one per ack. After a crash up
// to CursorInterval of acks are lost: those records are delivered again.
//
// # Holes
//
// Seqs without a record (given up by [Log.Skip], lost to corruption or with
// a lost segment file) are holes: the cursor steps over them as if they
// were acknowledged. Holes this process made are known at once; those of
// earlier runs are found by Open (in the newest segment) and by Scan as it
// first reads each older segment, before it hands out the records after
// them. Acks past a hole wider than AckWindow are accepted as long as the
// records in between fit the window.
//
// # Durability
//
//   - SyncAlways: Append returns after the batch is fsynced (fdatasync on
//     Linux). Group commit: concurrent Appends queue their frames; one of
//     them (the leader) writes everything queued with one write call and
//     fsyncs it for all. The leader first yields while appends keep
//     arriving (at most 8 times), so goroutines woken by the previous
//     fsync join this one.
//   - SyncBatch: every Append batch is written with one write call; a
//     background goroutine fsyncs at most every SyncInterval while there is
//     unsynced data. A process crash (kill -9) loses nothing, since the
//     data is in the page cache; a power failure loses at most about
//     SyncInterval of appends.
//   - SyncNone: no fsync on Append; Sync and Close still fsync. Segments are
//     always fsynced when they are cut, the directory is fsynced after segment
//     files are created or deleted.
//
// # Write errors and a full disk
//
// If a write fails (ENOSPC, EIO, short write), Append returns the error
// wrapped with the file name, the file is truncated back to its last good
// size and no seq is consumed (with SyncAlways, every Append of the failed
// group write gets the error). The log stays usable: the next Append tries
// again, and succeeds once there is room. Nothing unacknowledged is dropped
// to make room: the size cap (MaxBytes) is the policy for a full buffer,
// and it should be set below the free space of the file system. Every
// failed write, fsync, segment creation and cursor write counts in
// [Stats].WriteErrors; [Stats].WriteFailing (and DiskFull for ENOSPC, with
// FailingSince) is set from a failed segment write until the next
// successful one. Callers that give up records call [Log.Skip] so that the
// loss shows as a gap in the seqs (counted in [Stats].Skipped).
//
// The log frees acknowledged space by itself: acknowledged segments are
// deleted after a cursor write, which needs no new space (see Cursor
// format). While segment writes fail and every record is acknowledged, the
// newest segment is sealed (a new empty segment, named after the next seq,
// keeps it) and deleted too, so appends work again once the consumer has
// caught up. If the cursor cannot be written while segment writes fail,
// acknowledged segments are deleted anyway and the cursor write is retried
// in the space they left; a crash before it succeeds reports those
// (delivered) records as missing at the next Open, never sends them again. If an fsync fails
// under SyncAlways, Append returns the error although the records were
// written and are visible to Scan: a retry then duplicates them
// (at-least-once). A failing background fsync or cursor write is logged once
// and retried at the next interval.
//
// # Recovery
//
// Open lists the segment files and takes the first seq of each from its name;
// only the newest segment is read in full (it is at most SegmentBytes), plus
// the first frame header of each older one (for its time). Older segments are
// read lazily, when Scan first reaches them, which also builds a sparse
// per-segment index, so opening a large buffer does not read every record. A
// frame that fails its checks (magic, length, CRC, increasing seq) starts a
// search for the next frame prefix whose frame checks out:
//
//   - If one is found, the bytes in between are copied to corrupt/, the
//     skipped records are counted in [Stats].Corrupt and logged as a
//     [*CorruptionError], and reading continues.
//   - If none is found in the newest segment, it is a torn tail (a partial
//     write, garbage, or zeros after a power loss): the segment is truncated
//     at the last good frame; non-zero bytes are copied to corrupt/ first.
//     Not counted: these records' Appends never returned under SyncAlways.
//   - Seqs missing between the end of a sealed segment and the next segment
//     (a lost segment file), or between the persisted cursor and the oldest
//     segment, are counted and logged the same way.
//
// Each loss is recorded once, as corrupt/<segment>.<offset>.<records>.bin
// (the bad bytes; empty for a gap) or corrupt/<segment>.missing.<records>.bin.
// Stats().Corrupt starts at the sum of <records> over these names, so it is
// a lifetime count, and damage already recorded is skipped silently after a
// restart: it is counted, logged and copied once, not at every start. The
// segments themselves are not rewritten. Bad data never makes Open fail or
// panic; only I/O errors do.
//
// # Size cap and age limit
//
// With Options.MaxBytes set, after an Append that makes the segments exceed
// it, the oldest whole segments (never the newest) are dropped, acked or not,
// the cursor is moved past them, the records they held that Scan had not
// yet handed out are counted in [Stats].Dropped (records already handed out
// are the consumer's: it delivers and acks them), and one warning is logged
// per event. With
// Options.MaxAge set, the background goroutine drops, the same way, the
// oldest segments whose newest record was appended more than MaxAge ago
// (also counted in [Stats].Expired); when even the newest segment is that
// old, it is cut first so it can go. The newest record time of a sealed
// segment of an earlier run is its file's mtime until Scan has read it
// (never earlier than the truth, so nothing expires early; a segment holding
// only version 1 frames is aged by its mtime). The producer is never
// blocked. Dropped segment files are deleted right after the next cursor
// write, so a crash never leaves the persisted cursor below the oldest
// segment file; until then they still take disk space. Scan silently skips
// seqs below the oldest retained record.
//
// # Metrics
//
// [Log.Stats] takes no I/O and is meant to be read at every scrape: depth
// (Records, Bytes, Segments), OldestTime (age of the backlog) and
// NewestTime, counters (Appended, Committed, Dropped, Expired, Corrupt,
// WriteErrors, CursorWrites) and an fsync latency histogram ([FsyncStats],
// cumulative buckets in [FsyncBuckets]).
//
// # Offline inspection
//
// [Inspect] reads a buffer directory without opening it as a Log: no lock,
// no repair, no file created or changed. It works while ferry runs
// (Summary.Live says so; the result is a snapshot) and on a read-only copy.
// `ferry buffer stats|dump` use it. Package buffertest injects faults
// (ENOSPC, short writes, failing fsync, a small disk) through
// Options.OpenFile.
package buffer
