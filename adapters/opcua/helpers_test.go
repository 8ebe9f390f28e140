package opcua

import (
	"context"
	"fmt"
	"io"
	"log"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/config"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	log.SetOutput(io.Discard) // gopcua's server and channel log through the std logger
	code := m.Run()
	stopNodeServers()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// waitLimit bounds every wait; tests never assert durations.
const waitLimit = 15 * time.Second

type stateChange struct {
	up  bool
	err string
}

// recSink records what a Client delivers.
type recSink struct {
	mu      sync.Mutex
	batches [][]adapters.Reading
	last    map[string]adapters.Reading
	states  []stateChange
	notify  chan struct{}
}

func newRecSink() *recSink {
	return &recSink{notify: make(chan struct{}, 1), last: map[string]adapters.Reading{}}
}

func (s *recSink) Readings(rs []adapters.Reading) {
	s.mu.Lock()
	s.batches = append(s.batches, append([]adapters.Reading(nil), rs...))
	for _, r := range rs {
		s.last[r.Tag] = r
	}
	s.mu.Unlock()
	s.poke()
}

func (s *recSink) DeviceState(device string, up bool, err error) {
	c := stateChange{up: up}
	if err != nil {
		c.err = err.Error()
	}
	s.mu.Lock()
	s.states = append(s.states, c)
	s.mu.Unlock()
	s.poke()
}

func (s *recSink) poke() {
	select {
	case s.notify <- struct{}{}:
	default:
	}
}

// wait waits until cond (called under the sink's lock) holds.
func (s *recSink) wait(t testing.TB, what string, cond func(s *recSink) bool) {
	t.Helper()
	deadline := time.After(waitLimit)
	for {
		s.mu.Lock()
		ok := cond(s)
		s.mu.Unlock()
		if ok {
			return
		}
		select {
		case <-s.notify:
		case <-time.After(50 * time.Millisecond):
		case <-deadline:
			s.mu.Lock()
			defer s.mu.Unlock()
			t.Fatalf("timed out waiting for %s; states %+v; last readings %v", what, s.states, fmtLast(s.last))
		}
	}
}

func fmtLast(m map[string]adapters.Reading) string {
	var b strings.Builder
	n := 0
	for k, r := range m {
		if n++; n > 20 {
			b.WriteString(" ...")
			break
		}
		fmt.Fprintf(&b, " %s=%s/%s/%q", k, r.Value, r.Quality, r.Err)
	}
	return b.String()
}

// waitValue waits for tag to be delivered with value (JSON) and quality.
func (s *recSink) waitValue(t testing.TB, tag, value string, q adapters.Quality) adapters.Reading {
	t.Helper()
	var got adapters.Reading
	s.wait(t, fmt.Sprintf("%s=%s (%s)", tag, value, q), func(s *recSink) bool {
		r, ok := s.last[tag]
		got = r
		return ok && r.Value.String() == value && r.Quality == q
	})
	return got
}

func (s *recSink) upCount() int {
	n := 0
	for _, st := range s.states {
		if st.up {
			n++
		}
	}
	return n
}

// runClient runs c until the test ends.
func runClient(t testing.TB, c *Client) { runClientStoppable(t, c) }

// runClientStoppable runs c until the returned function is called or the
// test ends.
func runClientStoppable(t testing.TB, c *Client) func() {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			select {
			case err := <-done:
				if err != nil {
					t.Errorf("Run returned %v", err)
				}
			case <-time.After(10 * time.Second):
				t.Errorf("Run did not return after cancel")
			}
		})
	}
	t.Cleanup(stop)
	return stop
}

func device(name, endpoint string, tags ...config.OPCUATag) config.OPCUADevice {
	return config.OPCUADevice{
		Name:               name,
		Endpoint:           endpoint,
		SecurityPolicy:     "None",
		SecurityMode:       "None",
		Mode:               ModeSubscribe,
		Interval:           100 * time.Millisecond,
		PublishingInterval: 50 * time.Millisecond,
		SamplingInterval:   50 * time.Millisecond,
		QueueSize:          1,
		MaxItemsPerRequest: 500,
		Timeout:            3 * time.Second,
		Tags:               tags,
	}
}
