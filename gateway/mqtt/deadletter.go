package mqtt

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/eclipse/paho.golang/paho"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/gateway/record"
)

// deadLetter appends refused records to a JSON-lines file, one fsynced
// line each:
//
//	{"time":"...","seq":N,"topic":"...","qos":1,"retain":false,
//	 "reason_code":"0x87","reason":"...","attempts":1,"held":true,"payload":{...}}
//
// payload is the message as it was published (JSON; a string if it is not
// valid JSON). attempts is the number of times the broker refused it;
// held (attempts 0) means it was not sent because the broker had just
// refused its topic for good (see Publisher.fail), and reason_code is that
// refusal's.
type deadLetter struct {
	mu   sync.Mutex
	path string
	f    *os.File // opened at the first write, kept open
	size int64    // bytes in f after the last good write
}

type deadLine struct {
	Time       string          `json:"time"`
	Seq        uint64          `json:"seq"`
	Topic      string          `json:"topic"`
	QoS        byte            `json:"qos"`
	Retain     bool            `json:"retain"`
	ReasonCode string          `json:"reason_code"`
	Reason     string          `json:"reason,omitempty"`
	Attempts   int             `json:"attempts"`
	Held       bool            `json:"held,omitempty"`
	Payload    json.RawMessage `json:"payload"`
}

// write appends one line per job with one write and one fsync. A failed
// write is cut back, so the file never holds half a line.
func (d *deadLetter) write(js []*job, now time.Time) error {
	var b []byte
	for _, j := range js {
		l := deadLine{
			Time:       now.UTC().Format(time.RFC3339Nano),
			Seq:        j.seq,
			Topic:      j.pub.Topic,
			QoS:        j.pub.QoS,
			Retain:     j.pub.Retain,
			ReasonCode: fmt.Sprintf("%#02x", j.rc),
			Reason:     reasonText(j.rc, j.reason),
			Attempts:   j.attempts,
			Held:       j.held,
			Payload:    j.pub.Payload,
		}
		if !json.Valid(l.Payload) {
			l.Payload, _ = json.Marshal(string(j.pub.Payload))
		}
		line, err := json.Marshal(l)
		if err != nil {
			return fmt.Errorf("dead-letter line of seq %d: %w", j.seq, err)
		}
		b = append(append(b, line...), '\n')
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.f == nil {
		f, err := os.OpenFile(d.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
		if err != nil {
			return err
		}
		st, err := f.Stat()
		if err != nil {
			f.Close()
			return err
		}
		d.f, d.size = f, st.Size()
	}
	n, err := d.f.Write(b)
	if err == nil {
		err = d.f.Sync()
	}
	if err != nil {
		if n > 0 {
			_ = d.f.Truncate(d.size)
		}
		return err
	}
	d.size += int64(n)
	return nil
}

func (d *deadLetter) close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.f != nil {
		d.f.Close()
		d.f = nil
	}
}

// maxDeadBatch bounds the dead letters written with one fsync.
const maxDeadBatch = 1024

// deadWriter writes the jobs handed over on p.deadCh to the dead-letter
// file, in batches of what has queued up (one fsync each), and then marks
// them done and acks them; it ends when p.deadCh is closed. The sender
// therefore never waits for an fsync per refused record: with many
// refused records a second, that had throttled every other topic.
func (p *Publisher) deadWriter() {
	for j := range p.deadCh {
		batch := []*job{j}
	more:
		for len(batch) < maxDeadBatch {
			select {
			case j, ok := <-p.deadCh:
				if !ok {
					break more
				}
				batch = append(batch, j)
			default:
				break more
			}
		}
		p.writeDead(batch)
	}
}

func (p *Publisher) writeDead(batch []*job) {
	if err := p.dl.write(batch, time.Now()); err != nil {
		p.logger.Error("dead-letter file not written; will retry the records", "file", p.dl.path, "records", len(batch),
			"first_seq", batch[0].seq, "err", err)
		p.jmu.Lock()
		for _, j := range batch {
			j.held = false
			p.retryLocked(j)
		}
		p.jmu.Unlock()
		ring(p.wake)
		return
	}
	seqs := make([]uint64, len(batch))
	for i, j := range batch {
		seqs[i] = j.seq
	}
	p.store.MarkDone(seqs...)
	p.stats.deadLettered.Add(uint64(len(batch)))
	for _, j := range batch {
		if ok, suppressed := p.refusals.allow("dead " + j.pub.Topic); ok {
			p.logger.Error("record moved to the dead-letter file", "file", p.dl.path, "topic", j.pub.Topic, "seq", j.seq,
				"reason_code", fmt.Sprintf("%#02x", j.rc), "attempts", j.attempts, "held", j.held, "suppressed", suppressed)
		}
		if err := p.log.Ack(j.seq); err != nil {
			p.logger.Error("ack dead-lettered record", "seq", j.seq, "err", err)
		}
		p.announce(j)
	}
	ring(p.wake)
}

// topicHold is a topic the broker refused for good (see Publisher.fail).
type topicHold struct {
	until    time.Time
	refusals int // consecutive refusals, for the backoff
	rc       byte
	reason   string
}

// logEvery is how often a refusal or dead letter is logged per topic; the
// lines in between are counted in the next one ("suppressed").
const logEvery = 10 * time.Second

// logLimiter allows one log line per key per interval and counts the rest.
type logLimiter struct {
	mu    sync.Mutex
	every time.Duration
	keys  map[string]*limitEntry
	now   func() time.Time
}

type limitEntry struct {
	last       time.Time
	suppressed int
}

func newLogLimiter(every time.Duration) *logLimiter {
	return &logLimiter{every: every, keys: map[string]*limitEntry{}, now: time.Now}
}

// allow reports whether a line for key may be logged now, and how many
// were suppressed since the last one.
func (l *logLimiter) allow(key string) (ok bool, suppressed int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.now()
	e := l.keys[key]
	if e == nil {
		if len(l.keys) >= 10000 { // many topics: forget the old ones
			for k, v := range l.keys {
				if now.Sub(v.last) >= l.every {
					delete(l.keys, k)
				}
			}
		}
		e = &limitEntry{}
		l.keys[key] = e
	} else if now.Sub(e.last) < l.every {
		e.suppressed++
		return false, 0
	}
	suppressed, e.suppressed, e.last = e.suppressed, 0, now
	return true, suppressed
}

// deadNotice announces dead-lettered records of one topic on the
// DeadLetterTopic, so a consumer can tell their seq gap from a loss:
//
//	{"topic":"P/line/denied","reason_code":"0x87","reason":"Not authorized",
//	 "seqs":[[17,17],[27,29]],"count":4,"ts":"..."}
//
// seqs are inclusive ranges. Consecutive dead letters of the same topic and
// reason code that are not yet published share one notice.
type deadNotice struct {
	topic  string
	rc     byte
	reason string
	seqs   [][2]uint64
	count  int
	ts     time.Time
}

// maxNotices bounds the notices waiting for a connection; the oldest are
// dropped beyond it (the dead-letter file has every record).
const maxNotices = 1000

// announce queues the notice of the dead-lettered j.
func (p *Publisher) announce(j *job) {
	if p.cfg.DeadLetterTopic == "" {
		return
	}
	now := time.Now()
	p.jmu.Lock()
	if n := len(p.notices); n > 0 && p.notices[n-1].topic == j.pub.Topic && p.notices[n-1].rc == j.rc {
		d := &p.notices[n-1]
		if r := &d.seqs[len(d.seqs)-1]; r[1]+1 == j.seq {
			r[1] = j.seq
		} else {
			d.seqs = append(d.seqs, [2]uint64{j.seq, j.seq})
		}
		d.count++
		d.ts = now
	} else {
		if n >= maxNotices {
			p.notices = slices.Delete(p.notices, 0, n-maxNotices+1)
			p.logger.Warn("dead-letter notices dropped: no connection to publish them", "topic", p.cfg.DeadLetterTopic)
		}
		p.notices = append(p.notices, deadNotice{topic: j.pub.Topic, rc: j.rc, reason: reasonText(j.rc, j.reason),
			seqs: [][2]uint64{{j.seq, j.seq}}, count: 1, ts: now})
	}
	p.jmu.Unlock()
	ring(p.states.bell)
}

// takeNotices returns the queued notices.
func (p *Publisher) takeNotices() []deadNotice {
	p.jmu.Lock()
	defer p.jmu.Unlock()
	n := p.notices
	p.notices = nil
	return n
}

// requeueNotices puts back notices that were not published, before the
// ones queued since.
func (p *Publisher) requeueNotices(ns []deadNotice) {
	if len(ns) == 0 {
		return
	}
	p.jmu.Lock()
	p.notices = append(ns, p.notices...)
	if n := len(p.notices); n > maxNotices {
		p.notices = slices.Delete(p.notices, 0, n-maxNotices)
	}
	p.jmu.Unlock()
}

// publishNotices publishes the queued notices on cli (QoS 1, not
// retained); what fails to go out is queued again. False on a failure.
func (p *Publisher) publishNotices(ctx context.Context, cli *paho.Client) bool {
	ns := p.takeNotices()
	for i, d := range ns {
		resp, err := cli.Publish(ctx, &paho.Publish{Topic: p.cfg.DeadLetterTopic, QoS: 1, Payload: d.payload()})
		if err != nil {
			p.requeueNotices(ns[i:])
			p.logger.Debug("dead-letter notice not published; retrying", "err", err)
			return false
		}
		if resp != nil && resp.ReasonCode >= 0x80 {
			p.logger.Warn("broker refused dead-letter notice", "topic", p.cfg.DeadLetterTopic, "reason_code", fmt.Sprintf("%#02x", resp.ReasonCode))
		}
	}
	return true
}

func (d *deadNotice) payload() []byte {
	b := make([]byte, 0, 128+len(d.topic)+len(d.reason)+24*len(d.seqs))
	b = append(b, `{"topic":`...)
	b = adapters.AppendJSONString(b, d.topic)
	b = fmt.Appendf(b, `,"reason_code":"%#02x","reason":`, d.rc)
	b = adapters.AppendJSONString(b, d.reason)
	b = append(b, `,"seqs":[`...)
	for i, r := range d.seqs {
		if i > 0 {
			b = append(b, ',')
		}
		b = fmt.Appendf(b, "[%d,%d]", r[0], r[1])
	}
	b = fmt.Appendf(b, `],"count":%d,"ts":"`, d.count)
	b = record.AppendTime(b, d.ts)
	return append(b, `"}`...)
}
