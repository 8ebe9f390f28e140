// Package record is the codec of a buffer record: one MQTT message minus its
// seq, as written by the gateway when a reading enters the buffer and read
// back by the publisher.
//
// Layout (version 1):
//
//	byte 0     version (1)
//	byte 1     flags: bit 0 = retain; other bits must be zero
//	uvarint    topic length (1..65535), then the topic bytes (UTF-8)
//	rest       the JSON payload without its closing brace and without seq,
//	           e.g. {"value":23.5,"quality":"good","ts":"2026-11-25T21:00:00.123Z"
//
// The seq is assigned by the buffer when the record is appended and joined
// to the body only when publishing (Message.AppendPayload), so a record never
// has to be rewritten.
package record

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/ferry-gateway/ferry/adapters"
)

// Version is the record format version written by this package.
const Version = 1

// TimeLayout is the layout of every "ts" field: RFC 3339 UTC with exactly
// three fractional digits.
const TimeLayout = "2006-01-02T15:04:05.000Z"

// MaxTopicLen is the longest topic MQTT can carry.
const MaxTopicLen = 65535

const flagRetain = 1 << 0

// ErrCorrupt is wrapped by every error Decode returns.
var ErrCorrupt = errors.New("record: corrupt")

// Message is a decoded record.
type Message struct {
	Topic  string
	Retain bool
	// Body is the payload without its closing brace and without seq. It
	// aliases the decoded record: valid only as long as that is.
	Body []byte
}

// AppendTime appends t in UTC as TimeLayout (no allocation).
func AppendTime(dst []byte, t time.Time) []byte {
	t = t.UTC()
	year, month, day := t.Date()
	if year < 0 || year > 9999 {
		return t.AppendFormat(dst, TimeLayout)
	}
	// By hand: time.AppendFormat interprets the layout on every call, and a
	// device message formats one time per tag (it was 9 % of the CPU of a
	// device-mode run).
	hour, minute, sec := t.Clock()
	ms := t.Nanosecond() / 1e6
	return append(dst,
		byte('0'+year/1000), byte('0'+year/100%10), byte('0'+year/10%10), byte('0'+year%10), '-',
		byte('0'+int(month)/10), byte('0'+int(month)%10), '-',
		byte('0'+day/10), byte('0'+day%10), 'T',
		byte('0'+hour/10), byte('0'+hour%10), ':',
		byte('0'+minute/10), byte('0'+minute%10), ':',
		byte('0'+sec/10), byte('0'+sec%10), '.',
		byte('0'+ms/100), byte('0'+ms/10%10), byte('0'+ms%10), 'Z')
}

// AppendHeader appends a record header (version, flags, topic); the caller
// appends a body starting with '{'. AppendReading uses it; other record
// kinds (per-device messages) can too.
func AppendHeader(dst []byte, topic string, retain bool) []byte {
	var flags byte
	if retain {
		flags |= flagRetain
	}
	dst = append(dst, Version, flags)
	dst = binary.AppendUvarint(dst, uint64(len(topic)))
	return append(dst, topic...)
}

// AppendReading appends the record of one reading published on topic. With a
// dst of sufficient capacity it does not allocate.
func AppendReading(dst []byte, topic string, retain bool, r adapters.Reading) []byte {
	dst = AppendHeader(dst, topic, retain)
	return AppendReadingBody(dst, r)
}

// AppendReadingBody appends the JSON body of a reading without the closing
// brace: value, quality, ts and, for a bad reading or one carrying an error
// text, error. The value of a bad reading is null.
func AppendReadingBody(dst []byte, r adapters.Reading) []byte {
	dst = append(dst, `{"value":`...)
	if r.Quality == adapters.Bad {
		dst = append(dst, "null"...)
	} else {
		dst = r.Value.AppendJSON(dst)
	}
	dst = append(dst, `,"quality":"`...)
	dst = append(dst, r.Quality.String()...)
	dst = append(dst, `","ts":"`...)
	dst = AppendTime(dst, r.Time)
	dst = append(dst, '"')
	if r.Quality == adapters.Bad || r.Err != "" {
		dst = append(dst, `,"error":`...)
		dst = adapters.AppendJSONString(dst, r.Err)
	}
	return dst
}

func corrupt(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, args...))
}

// Decode parses a record. The returned Body aliases rec. Every error wraps
// ErrCorrupt; Decode never panics.
func Decode(rec []byte) (Message, error) {
	if len(rec) < 2 {
		return Message{}, corrupt("truncated header (%d bytes)", len(rec))
	}
	if rec[0] != Version {
		return Message{}, corrupt("unknown version %d", rec[0])
	}
	flags := rec[1]
	if flags&^flagRetain != 0 {
		return Message{}, corrupt("unknown flags %#02x", flags)
	}
	n, w := binary.Uvarint(rec[2:])
	switch {
	case w == 0:
		return Message{}, corrupt("truncated topic length")
	case w < 0:
		return Message{}, corrupt("topic length overflows")
	}
	rest := rec[2+w:]
	if n == 0 {
		return Message{}, corrupt("empty topic")
	}
	if n > MaxTopicLen {
		return Message{}, corrupt("topic length %d exceeds %d", n, MaxTopicLen)
	}
	if n > uint64(len(rest)) {
		return Message{}, corrupt("topic length %d beyond data (%d bytes left)", n, len(rest))
	}
	topic, body := rest[:n], rest[n:]
	if !utf8.Valid(topic) {
		return Message{}, corrupt("topic is not valid UTF-8")
	}
	if i := bytes.IndexAny(topic, "\x00+#"); i >= 0 {
		return Message{}, corrupt("topic contains %q", topic[i])
	}
	if len(body) == 0 || body[0] != '{' {
		return Message{}, corrupt("body does not start with '{'")
	}
	return Message{Topic: string(topic), Retain: flags&flagRetain != 0, Body: body}, nil
}

// AppendPayload appends the final MQTT payload: the body, `"seq":N` and the
// closing brace.
func (m Message) AppendPayload(dst []byte, seq uint64) []byte {
	dst = append(dst, m.Body...)
	if len(m.Body) > 1 {
		dst = append(dst, ',')
	}
	dst = append(dst, `"seq":`...)
	dst = strconv.AppendUint(dst, seq, 10)
	return append(dst, '}')
}
