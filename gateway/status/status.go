// Package status serves ferry's local status page: a single read-only HTML
// page (GET /, embedded, no build step, works offline) and the same data as
// JSON (GET /api/status) for scripts. It knows nothing of the gateway's
// internals: the gateway hands it a Provider, which builds a Snapshot on
// request, so the page costs nothing while nobody looks at it.
//
// Figures a running gateway cannot give yet are left out of the JSON
// (omitempty), never filled with a made-up zero.
package status

import (
	_ "embed"
	"encoding/json"
	"net/http"
	"strings"
	"time"
)

// Provider builds the status of the running gateway. Snapshot is called
// once per request to /api/status, from the HTTP server's goroutines.
type Provider interface {
	Snapshot(Query) Snapshot
}

// ProviderFunc adapts a function to a Provider.
type ProviderFunc func(Query) Snapshot

// Snapshot calls f.
func (f ProviderFunc) Snapshot(q Query) Snapshot { return f(q) }

// Query is what a request asks of a Snapshot.
type Query struct {
	// Tags names the devices whose tags to include; nil means every
	// device's. From ?tags=DEV1,DEV2 (an empty list asks for none): the
	// page asks only for the devices it shows opened.
	Tags map[string]bool
}

// WantTags reports whether the tags of device are asked for.
func (q Query) WantTags(device string) bool { return q.Tags == nil || q.Tags[device] }

func parseQuery(r *http.Request) Query {
	var q Query
	if v, ok := r.URL.Query()["tags"]; ok {
		q.Tags = map[string]bool{}
		for _, list := range v {
			for _, name := range strings.Split(list, ",") {
				if name != "" {
					q.Tags[name] = true
				}
			}
		}
	}
	return q
}

// Snapshot is the body of GET /api/status.
type Snapshot struct {
	Time     time.Time `json:"time"` // when the snapshot was taken
	Gateway  Gateway   `json:"gateway"`
	Broker   Broker    `json:"broker"`
	Buffer   Buffer    `json:"buffer"`
	Devices  []Device  `json:"devices"`
	Commands *Commands `json:"commands,omitempty"` // absent while commands are not running
	// ReadingsPerSecond is the sum of the devices' rates (absent on the
	// first request after a quiet spell: a rate needs two samples).
	ReadingsPerSecond *float64 `json:"readings_per_second,omitempty"`
}

// Gateway is the running ferry.
type Gateway struct {
	ID            string    `json:"id"`
	Version       string    `json:"version,omitempty"`
	Started       time.Time `json:"started"`
	UptimeSeconds float64   `json:"uptime_seconds"`
	ConfigFile    string    `json:"config_file,omitempty"`
	ConfigLoaded  time.Time `json:"config_loaded"` // start, or the last reload applied
	Reloads       uint64    `json:"reloads"`       // reloads applied since start
}

// Broker is the MQTT connection.
type Broker struct {
	URL             string `json:"url"`
	Connected       bool   `json:"connected"`
	Connects        uint64 `json:"connects"`         // successful connections, the first included
	Reconnects      uint64 `json:"reconnects"`       // successful connections after the first
	ConnectFailures uint64 `json:"connect_failures"` // failed attempts
	SessionLost     uint64 `json:"session_lost"`     // connections where the broker had lost ferry's session
	InFlight        int    `json:"in_flight"`        // records sent and not yet acknowledged
	Acked           uint64 `json:"acked"`            // records acknowledged since start
	// ConnectedSince is when the broker accepted the current connection
	// (its CONNACK), and SessionPresent that CONNACK's Session Present
	// flag; both absent while not connected.
	ConnectedSince *time.Time `json:"connected_since,omitempty"`
	SessionPresent *bool      `json:"session_present,omitempty"`
}

// Buffer is the disk buffer.
type Buffer struct {
	Dir      string `json:"dir"`
	Records  uint64 `json:"records"` // appended and not yet acknowledged
	Bytes    int64  `json:"bytes"`
	MaxBytes int64  `json:"max_bytes"`
	// OldestAgeSeconds is the age of the oldest unacknowledged record;
	// absent when there is none.
	OldestAgeSeconds *float64 `json:"oldest_age_seconds,omitempty"`
	Dropped          uint64   `json:"dropped"` // dropped by max_bytes or max_age since start
	Lost             uint64   `json:"lost"`    // readings given up after failed appends since start
	DiskFull         bool     `json:"disk_full"`
	// DiskFreeBytes is the room left for an unprivileged writer on the
	// file system of state_dir; absent where it cannot be read.
	DiskFreeBytes *uint64 `json:"disk_free_bytes,omitempty"`
}

// Device states.
const (
	StateUp      = "up"
	StateDown    = "down"
	StateStopped = "stopped"
	StateUnknown = "unknown" // no state reported yet (connecting)
)

// Device is one [[modbus]] or [[opcua]] device.
type Device struct {
	Name     string `json:"name"`
	Protocol string `json:"protocol"` // modbus, opcua
	State    string `json:"state"`    // up, down, stopped, unknown
	// StateSince is when the device last reported its state.
	StateSince *time.Time `json:"state_since,omitempty"`
	Error      string     `json:"error,omitempty"` // why it is down
	// IntervalSeconds is the poll interval (absent for an OPC UA
	// subscription, which has none).
	IntervalSeconds float64 `json:"interval_seconds,omitempty"`
	// CycleSeconds is the mean duration of the recent poll cycles (Modbus).
	CycleSeconds     *float64 `json:"cycle_seconds,omitempty"`
	RequestsPerCycle int      `json:"requests_per_cycle,omitempty"` // Modbus read requests of a full cycle, as planned
	ReadingsTotal    uint64   `json:"readings_total"`               // readings delivered since the device started
	// ReadingsPerSecond is measured between this request and one a few
	// seconds earlier; absent on the first.
	ReadingsPerSecond *float64 `json:"readings_per_second,omitempty"`
	// LastGoodRead is the sample time of the newest good reading seen
	// since the page started watching; absent before.
	LastGoodRead *time.Time `json:"last_good_read,omitempty"`
	// Tags are absent when the request did not ask for them (?tags=).
	Tags []Tag `json:"tags,omitempty"`
}

// Tag is one tag of a device with its last value. Value, Quality and Time
// are absent until a reading arrived while the page was watching.
type Tag struct {
	Name     string          `json:"name"`
	Writable bool            `json:"writable"`
	Value    json.RawMessage `json:"value,omitempty"`
	Quality  string          `json:"quality,omitempty"` // good, uncertain, bad
	Time     *time.Time      `json:"time,omitempty"`    // sample time
	Error    string          `json:"error,omitempty"`   // why the read failed (quality bad)
}

// Commands are the write-back commands' counters since start.
type Commands struct {
	Results map[string]uint64 `json:"results"` // by result code ("ok" for successes)
	// Recent are the last 50 commands answered, newest first (empty
	// before the first).
	Recent []Command `json:"recent"`
}

// Command is one command answered.
type Command struct {
	Time    time.Time `json:"time"` // when ferry received it
	Device  string    `json:"device"`
	Tag     string    `json:"tag"`
	Payload string    `json:"payload"` // as sent, clipped to 256 bytes
	// Value is the value written (absent when the command was refused or
	// failed).
	Value          json.RawMessage `json:"value,omitempty"`
	Result         string          `json:"result"`            // "ok" or the error code
	Message        string          `json:"message,omitempty"` // why it was refused or failed
	LatencySeconds float64         `json:"latency_seconds"`   // from receipt to the answer
	// From is who sent it: the MQTT user properties ("user.KEY"),
	// response_topic and correlation (hex), queued and command_ts, where
	// present.
	From map[string]string `json:"from,omitempty"`
}

//go:embed index.html
var indexHTML []byte

// Handler serves GET / (the page) and GET /api/status[?tags=DEV,...]
// (JSON). Mount it
// at "/" and "/api/"; anything else under it is 404. It serves no write.
func Handler(p Provider) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "text/html; charset=utf-8")
		h.Set("Cache-Control", "no-store")
		// The page loads nothing from anywhere: say so to the browser.
		h.Set("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; connect-src 'self'")
		h.Set("X-Content-Type-Options", "nosniff")
		_, _ = w.Write(indexHTML)
	})
	mux.HandleFunc("GET /api/status", func(w http.ResponseWriter, r *http.Request) {
		b, err := json.Marshal(p.Snapshot(parseQuery(r)))
		if err != nil {
			http.Error(w, "encode status: "+err.Error(), http.StatusInternalServerError)
			return
		}
		h := w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("Cache-Control", "no-store")
		h.Set("X-Content-Type-Options", "nosniff")
		_, _ = w.Write(append(b, '\n'))
	})
	return mux
}
