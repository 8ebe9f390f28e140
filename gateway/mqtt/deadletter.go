package mqtt

import (
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"time"
)

// deadLetter appends refused records to a JSON-lines file, one fsynced
// line each:
//
//	{"time":"...","seq":N,"topic":"...","qos":1,"retain":false,
//	 "reason_code":"0x87","reason":"...","attempts":5,"payload":{...}}
//
// payload is the message as it was published (JSON; a string if it is not
// valid JSON).
type deadLetter struct {
	mu   sync.Mutex
	path string
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
	Payload    json.RawMessage `json:"payload"`
}

func (d *deadLetter) write(j *job, now time.Time) error {
	l := deadLine{
		Time:       now.UTC().Format(time.RFC3339Nano),
		Seq:        j.seq,
		Topic:      j.pub.Topic,
		QoS:        j.pub.QoS,
		Retain:     j.pub.Retain,
		ReasonCode: fmt.Sprintf("%#02x", j.rc),
		Reason:     reasonText(j.rc, j.reason),
		Attempts:   j.attempts,
		Payload:    j.pub.Payload,
	}
	if !json.Valid(l.Payload) {
		l.Payload, _ = json.Marshal(string(j.pub.Payload))
	}
	b, err := json.Marshal(l)
	if err != nil {
		return err
	}
	b = append(b, '\n')
	d.mu.Lock()
	defer d.mu.Unlock()
	f, err := os.OpenFile(d.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
