package gateway

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/adapters"
	"github.com/ferry-gateway/ferry/config"
	"github.com/ferry-gateway/ferry/gateway/status"
)

// tenThousandTags builds (without running) a gateway with ten Modbus
// devices of 1,000 tags each, every tag with a last value.
func tenThousandTags(tb testing.TB) *Gateway {
	tb.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "[gateway]\nid = \"big\"\nstate_dir = %q\n[metrics]\nlisten = \"\"\n", tb.TempDir())
	for d := range 10 {
		fmt.Fprintf(&b, "[[modbus]]\nname = \"meter%02d\"\nurl = \"tcp://127.0.0.1:1\"\n", d)
		for i := range 1000 {
			fmt.Fprintf(&b, "  [[modbus.tag]]\n  name = \"energy_%04d\"\n  table = \"holding\"\n  address = %d\n  type = \"uint16\"\n", i, i)
		}
	}
	path := filepath.Join(tb.TempDir(), "ferry.toml")
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		tb.Fatal(err)
	}
	cfg, err := config.Load(path)
	if err != nil {
		tb.Fatal(err)
	}
	g, err := New(cfg, Options{})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { _ = g.blog.Close() })
	now := time.Now()
	g.sink.page.watch(now)
	for d := range 10 {
		rs := make([]adapters.Reading, 1000)
		for i := range rs {
			rs[i] = adapters.Reading{Device: fmt.Sprintf("meter%02d", d), Tag: fmt.Sprintf("energy_%04d", i), Value: adapters.UintValue(uint64(40000 + i)), Time: now}
		}
		g.sink.Readings(rs)
	}
	return g
}

// TestStatus10kTagsSize: /api/status of a gateway with 10,000 tags, all
// with values, stays under 2 MB; the page's usual request (no device
// opened) is a small fraction of that.
func TestStatus10kTagsSize(t *testing.T) {
	g := tenThousandTags(t)
	h := status.Handler((*statusProvider)(g))
	for _, tc := range []struct {
		path string
		max  int
	}{
		{"/api/status", 2 << 20},
		{"/api/status?tags=", 16 << 10},
		{"/api/status?tags=meter03", 256 << 10},
		{"/", 32 << 10},
	} {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, tc.path, nil))
		if rec.Code != http.StatusOK {
			t.Fatalf("GET %s = %d", tc.path, rec.Code)
		}
		if n := rec.Body.Len(); n > tc.max {
			t.Errorf("GET %s is %d bytes, want at most %d", tc.path, n, tc.max)
		}
		t.Logf("GET %s: %d bytes", tc.path, rec.Body.Len())
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/api/status?tags=meter09", nil))
	if !strings.Contains(rec.Body.String(), `{"name":"energy_0999","writable":false,"value":40999,"quality":"good"`) {
		t.Errorf("the last tag's value is not in the answer")
	}
}

// BenchmarkStatus10kTags: one /api/status with every tag of 10,000, the
// figure behind "responds within 200 ms" (not asserted: the machine is
// shared).
func BenchmarkStatus10kTags(b *testing.B) {
	h := status.Handler((*statusProvider)(tenThousandTags(b)))
	b.ReportAllocs()
	for b.Loop() {
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/api/status", nil))
		if rec.Code != http.StatusOK {
			b.Fatal(rec.Code)
		}
		b.SetBytes(int64(rec.Body.Len()))
	}
}
