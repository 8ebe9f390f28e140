package gateway

import (
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"
)

// Health is the state /healthz reports.
type Health struct {
	OK            bool   `json:"ok"`
	Connected     bool   `json:"mqtt_connected"`
	BufferRecords uint64 `json:"buffer_records"`
	BufferBytes   int64  `json:"buffer_bytes"`
	BufferMax     int64  `json:"buffer_max_bytes"`
	DevicesUp     int    `json:"devices_up"`
	Devices       int    `json:"devices"`
	// DiskFull is true while buffer writes fail with ENOSPC;
	// AppendsFailing while readings cannot be appended (for any reason).
	DiskFull       bool     `json:"buffer_disk_full,omitempty"`
	AppendsFailing bool     `json:"buffer_appends_failing,omitempty"`
	ReadingsLost   uint64   `json:"readings_lost,omitempty"` // since start: readings given up, seen by consumers as seq gaps
	Reasons        []string `json:"reasons,omitempty"`       // why not OK
}

// bufferNearlyFull is the share of max_bytes above which a buffer no
// longer counts as "within its limits" while the broker is unreachable.
const bufferNearlyFull = 0.9

// Health reports whether the gateway does its job: readings reach the
// broker or at least the buffer has room for them, and at least one device
// is up (when any is configured).
func (g *Gateway) Health() Health {
	g.mu.Lock()
	cfg := g.cfg
	names := make([]string, 0, len(g.devices))
	for name := range g.devices {
		names = append(names, name)
	}
	g.mu.Unlock()
	h := Health{Devices: len(names)}
	for _, name := range names {
		if g.deviceUp(name) {
			h.DevicesUp++
		}
	}
	pub := g.pub.Load()
	st := g.blog.Stats()
	h.BufferRecords, h.BufferBytes, h.BufferMax = st.Records, st.Bytes, cfg.Buffer.MaxBytes
	h.Connected = pub != nil && pub.Connected()
	roomy := h.BufferMax <= 0 || float64(h.BufferBytes) < bufferNearlyFull*float64(h.BufferMax)
	if !h.Connected && !roomy {
		h.Reasons = append(h.Reasons, fmt.Sprintf("mqtt disconnected and the buffer is over %.0f%% of max_bytes", 100*bufferNearlyFull))
	}
	h.DiskFull = st.DiskFull
	h.ReadingsLost = g.sink.lost.Load()
	if since := g.sink.failingSince.Load(); since != 0 {
		// Readings are at risk from the first failure: say so at once.
		h.AppendsFailing = true
		why := "write error"
		if st.DiskFull {
			why = "disk full"
		}
		h.Reasons = append(h.Reasons, fmt.Sprintf("buffer appends failing for %v (%s): %d readings held in memory, %d lost so far (seq gaps)",
			time.Since(time.Unix(0, since)).Round(time.Second), why, g.sink.queued.Load(), h.ReadingsLost))
	} else if st.WriteFailing {
		why := "write error"
		if st.DiskFull {
			why = "disk full"
		}
		h.Reasons = append(h.Reasons, fmt.Sprintf("buffer writes failing for %v (%s)", time.Since(st.FailingSince).Round(time.Second), why))
	}
	if h.Devices > 0 && h.DevicesUp == 0 {
		h.Reasons = append(h.Reasons, "no device is up")
	}
	h.OK = len(h.Reasons) == 0
	return h
}

// Status is the one-line summary for `systemctl status` (sd_notify STATUS).
func (g *Gateway) Status() string {
	h := g.Health()
	mq := "mqtt connected"
	if !h.Connected {
		mq = "mqtt disconnected"
	}
	return fmt.Sprintf("%d/%d devices up, %s, buffer %d records (%s)", h.DevicesUp, h.Devices, mq, h.BufferRecords, humanBytes(h.BufferBytes))
}

func humanBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}

// progressState remembers, per watched loop, the last counter value and
// when it last changed.
type progressState struct {
	seen map[string]progressMark
}

type progressMark struct {
	value uint64
	at    time.Time
}

// advanced records value for key and reports how long it has not changed.
func (p *progressState) advanced(key string, value uint64, now time.Time) time.Duration {
	if p.seen == nil {
		p.seen = make(map[string]progressMark)
	}
	m, ok := p.seen[key]
	if !ok || m.value != value {
		p.seen[key] = progressMark{value, now}
		return 0
	}
	return now.Sub(m.at)
}

// publisherStall is how long the publisher may sit connected with a
// backlog and no acknowledgement before it counts as hung.
const publisherStall = 2 * time.Minute

// Progress reports an error when a device loop or the publisher has made
// no progress for longer than it ever should: the systemd watchdog stops
// pinging then, and systemd restarts ferry. A device that is down still
// makes progress (it keeps cycling or reconnecting); only a hung loop
// does not.
func (g *Gateway) Progress() error {
	now := time.Now()
	g.mu.Lock()
	devs := make([]*device, 0, len(g.devices))
	for _, d := range g.devices {
		if d.done != nil { // started
			devs = append(devs, d)
		}
	}
	g.mu.Unlock()
	sort.Slice(devs, func(i, j int) bool { return devs[i].name < devs[j].name })
	counters := make([]uint64, len(devs))
	for i, d := range devs {
		counters[i] = d.counter()
	}
	pub := g.pub.Load()

	g.mu.Lock()
	defer g.mu.Unlock()
	var errs []string
	for i, d := range devs {
		if still := g.progress.advanced("device/"+d.name, counters[i], now); still > d.stallFor {
			errs = append(errs, fmt.Sprintf("device %s made no progress for %v", d.name, still.Round(time.Second)))
		}
	}
	if pub != nil {
		st := pub.Stats()
		pending := g.blog.NextSeq() - g.blog.Acked()
		// Only a connected publisher with work to do must show acks.
		value := st.Acked
		if !st.Connected || pending == 0 {
			value = st.Acked + st.Connects + st.ConnectFails + uint64(now.UnixNano())
		}
		if still := g.progress.advanced("mqtt", value, now); still > publisherStall {
			errs = append(errs, fmt.Sprintf("mqtt publisher connected with %d records pending and no acknowledgement for %v", pending, still.Round(time.Second)))
		}
	}
	if len(errs) > 0 {
		return errors.New(strings.Join(errs, "; "))
	}
	return nil
}
