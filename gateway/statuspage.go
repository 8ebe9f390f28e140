package gateway

import (
	"encoding/json"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/config"
	"github.com/ferry-gateway/ferry/gateway/status"
)

// watchFor is how long after the last request to /api/status the sink
// keeps the last readings for the page: nobody looking costs one atomic
// load per Readings call, nothing per reading.
const watchFor = time.Minute

// rateWindow bounds how far back a rate (readings per second, mean cycle
// time) looks: to the oldest sample kept, at most this old.
const rateWindow = 10 * time.Second

// pageState is what the status page needs beyond the parts' own
// counters: start and reload times, the last readings while somebody
// watches, and recent counter samples for rates. The sink holds it, as
// the one part a Gateway keeps from New to the end (reloads included)
// and the one that sees the readings.
type pageState struct {
	started time.Time
	loaded  atomic.Int64 // unix nanos of the last config applied (start or reload)
	reloads atomic.Uint64

	watchedUntil atomic.Int64 // unix nanos; readings are kept until then
	mu           sync.Mutex
	last         map[tagKey]adapters.Reading
	lastGood     map[string]time.Time // device -> sample time of its newest good reading
	samples      []rateSample         // oldest first, at most one a second
}

type rateSample struct {
	at      time.Time
	devices map[string]deviceCounters
}

type deviceCounters struct {
	readings   uint64
	cycles     uint64
	cycleTotal time.Duration
}

func (p *pageState) init(now time.Time) {
	p.started = now
	p.loaded.Store(now.UnixNano())
}

// reloaded records a reload applied at now.
func (p *pageState) reloaded(now time.Time) {
	p.loaded.Store(now.UnixNano())
	p.reloads.Add(1)
}

// record keeps the last reading of every tag while the page is watched.
func (p *pageState) record(rs []adapters.Reading) {
	until := p.watchedUntil.Load()
	if until == 0 || time.Now().UnixNano() > until {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.last == nil {
		p.last = make(map[tagKey]adapters.Reading)
		p.lastGood = make(map[string]time.Time)
	}
	for _, r := range rs {
		p.last[tagKey{r.Device, r.Tag}] = r
		if r.Quality == adapters.Good && r.Time.After(p.lastGood[r.Device]) {
			p.lastGood[r.Device] = r.Time
		}
	}
}

// watch makes record keep readings for watchFor from now.
func (p *pageState) watch(now time.Time) {
	p.watchedUntil.Store(now.Add(watchFor).UnixNano())
}

// statusProvider builds the status page's Snapshot of g.
type statusProvider Gateway

// Snapshot implements status.Provider.
func (sp *statusProvider) Snapshot(q status.Query) status.Snapshot {
	g := (*Gateway)(sp)
	page := &g.sink.page
	now := time.Now()
	page.watch(now)

	g.mu.Lock()
	cfg := g.cfg
	devs := make(map[string]*device, len(g.devices))
	for name, d := range g.devices {
		devs[name] = d
	}
	g.mu.Unlock()

	s := status.Snapshot{
		Time: now.UTC(),
		Gateway: status.Gateway{
			ID:            cfg.Gateway.ID,
			Version:       g.opts.Version,
			Started:       page.started.UTC(),
			UptimeSeconds: now.Sub(page.started).Seconds(),
			ConfigFile:    cfg.Path,
			ConfigLoaded:  time.Unix(0, page.loaded.Load()).UTC(),
			Reloads:       page.reloads.Load(),
		},
		Broker: status.Broker{URL: cfg.MQTT.URL},
	}
	if pub := g.pub.Load(); pub != nil {
		st := pub.Stats()
		s.Broker.Connected = st.Connected
		s.Broker.Connects, s.Broker.Reconnects, s.Broker.ConnectFailures = st.Connects, st.Reconnects, st.ConnectFails
		s.Broker.SessionLost, s.Broker.InFlight, s.Broker.Acked = st.SessionLost, st.InFlight, st.Acked
		if st.Connected && !st.ConnectedSince.IsZero() {
			since, present := st.ConnectedSince.UTC(), st.SessionPresent
			s.Broker.ConnectedSince, s.Broker.SessionPresent = &since, &present
		}
	}

	b := g.blog.Stats()
	s.Buffer = status.Buffer{
		Dir: g.bufDir, Records: b.Records, Bytes: b.Bytes, MaxBytes: cfg.Buffer.MaxBytes,
		Dropped: b.Dropped, Lost: g.sink.lost.Load(), DiskFull: b.DiskFull,
	}
	if !b.OldestTime.IsZero() && b.Records > 0 {
		age := max(now.Sub(b.OldestTime), 0).Seconds()
		s.Buffer.OldestAgeSeconds = &age
	}
	if free, ok := diskFree(cfg.Gateway.StateDir); ok {
		s.Buffer.DiskFreeBytes = &free
	}

	// Counters, read with no gateway lock held (adapters take their own).
	counters := make(map[string]deviceCounters, len(devs))
	for _, dc := range deviceConfigs(cfg) {
		d := devs[dc.name]
		if d == nil {
			continue
		}
		sd := status.Device{Name: dc.name}
		var c deviceCounters
		switch {
		case d.poller != nil:
			st := d.poller.Stats()
			sd.Protocol = "modbus"
			sd.IntervalSeconds = dc.modbus.Interval.Seconds()
			sd.RequestsPerCycle = d.poller.Plan().NumRequests()
			c = deviceCounters{readings: st.Delivered, cycles: st.CycleTime.Count, cycleTotal: st.CycleTime.Sum}
			if q.WantTags(dc.name) {
				for _, t := range dc.modbus.Tags {
					sd.Tags = append(sd.Tags, status.Tag{Name: t.Name, Writable: t.Writable})
				}
			}
		case d.client != nil:
			st := d.client.Stats()
			sd.Protocol = "opcua"
			if dc.opcua.Mode == "poll" {
				sd.IntervalSeconds = dc.opcua.Interval.Seconds()
			}
			c = deviceCounters{readings: st.Readings}
			if q.WantTags(dc.name) {
				for _, t := range dc.opcua.Tags {
					sd.Tags = append(sd.Tags, status.Tag{Name: t.Name, Writable: t.Writable})
				}
			}
		}
		sd.ReadingsTotal = c.readings
		counters[dc.name] = c
		s.Devices = append(s.Devices, sd)
	}
	sort.Slice(s.Devices, func(i, j int) bool { return s.Devices[i].Name < s.Devices[j].Name })

	g.statesMu.Lock()
	for i := range s.Devices {
		d := &s.Devices[i]
		d.State = status.StateUnknown
		st, ok := g.states[d.Name]
		if !ok {
			continue
		}
		var p struct {
			State string `json:"state"`
			Error string `json:"error"`
			TS    string `json:"ts"`
		}
		if json.Unmarshal(st.payload, &p) == nil && p.State != "" {
			d.State, d.Error = p.State, p.Error
			if ts, err := time.Parse(time.RFC3339Nano, p.TS); err == nil {
				d.StateSince = &ts
			}
		}
	}
	g.statesMu.Unlock()

	page.mu.Lock()
	var total float64
	rated := false
	base := page.rateBase(now, counters)
	for i := range s.Devices {
		d := &s.Devices[i]
		if t, ok := page.lastGood[d.Name]; ok {
			t := t.UTC()
			d.LastGoodRead = &t
		}
		for j := range d.Tags {
			t := &d.Tags[j]
			r, ok := page.last[tagKey{d.Name, t.Name}]
			if !ok {
				continue
			}
			t.Value = json.RawMessage(r.Value.AppendJSON(nil))
			t.Quality = r.Quality.String()
			ts := r.Time.UTC()
			t.Time = &ts
			t.Error = r.Err
		}
		if base == nil {
			continue
		}
		prev, ok := base.devices[d.Name]
		cur := counters[d.Name]
		dt := now.Sub(base.at).Seconds()
		if !ok || cur.readings < prev.readings || cur.cycles < prev.cycles {
			continue // new or restarted device: no rate yet
		}
		rate := float64(cur.readings-prev.readings) / dt
		d.ReadingsPerSecond = &rate
		total += rate
		rated = true
		if n := cur.cycles - prev.cycles; n > 0 {
			mean := (cur.cycleTotal - prev.cycleTotal).Seconds() / float64(n)
			d.CycleSeconds = &mean
		}
	}
	page.mu.Unlock()
	if rated {
		s.ReadingsPerSecond = &total
	}

	if cs, ok := g.CommandStats(); ok {
		s.Commands = &status.Commands{Results: cs.Results}
		if s.Commands.Results == nil {
			s.Commands.Results = map[string]uint64{}
		}
		if r := g.cmdStats.Load(); r != nil {
			s.Commands.Recent = recentStatus(r.recent.newestFirst())
		}
	}
	return s
}

// recentStatus turns the router's recent commands into the page's.
func recentStatus(rs []recentCmd) []status.Command {
	out := make([]status.Command, 0, len(rs))
	for _, e := range rs {
		c := status.Command{
			Time: e.received.UTC(), Device: e.device, Tag: e.tag, Result: e.code, Message: e.message,
			LatencySeconds: e.latency.Seconds(), Payload: string(e.payload),
		}
		if e.ok {
			c.Value = json.RawMessage(e.value.AppendJSON(nil))
		}
		for i := 0; i+1 < len(e.who); i += 2 {
			k, _ := e.who[i].(string)
			if k == "" {
				continue
			}
			if c.From == nil {
				c.From = make(map[string]string, len(e.who)/2)
			}
			switch v := e.who[i+1].(type) {
			case string:
				c.From[k] = v
			case time.Time:
				c.From[k] = v.UTC().Format(time.RFC3339Nano)
			default:
				c.From[k] = fmt.Sprint(v)
			}
		}
		out = append(out, c)
	}
	return out
}

// rateBase returns the sample to measure rates against (the oldest kept,
// at least a second old; nil when there is none) and keeps counters as a
// new sample when the newest is a second old or more; page.mu held.
func (p *pageState) rateBase(now time.Time, counters map[string]deviceCounters) *rateSample {
	keep := p.samples[:0]
	for _, s := range p.samples {
		if now.Sub(s.at) <= rateWindow {
			keep = append(keep, s)
		}
	}
	clear(p.samples[len(keep):])
	p.samples = keep
	var base *rateSample
	if len(p.samples) > 0 && now.Sub(p.samples[0].at) >= time.Second {
		b := p.samples[0]
		base = &b
	}
	if n := len(p.samples); n == 0 || now.Sub(p.samples[n-1].at) >= time.Second {
		p.samples = append(p.samples, rateSample{at: now, devices: counters})
	}
	return base
}

var _ status.Provider = (*statusProvider)(nil)

// statusAuth is what the status page, /api/* and /debug/pprof require.
func statusAuth(m config.Metrics) status.Auth {
	return status.Auth{Username: m.Username, Password: m.Password, Token: m.Token}
}
