package gateway

import (
	"context"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ferry-gateway/ferry/adapters/modbus/modbustest"
	"github.com/ferry-gateway/ferry/internal/mosquittotest"
)

// chromiumDOM loads url in headless Chromium, lets the page's script run
// for a few seconds of virtual time (its first fetches of /api/status
// included) and returns the DOM as rendered.
func chromiumDOM(t *testing.T, chromium, url string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// The flags that keep Chromium off the network and from setting up a
	// profile: only the page's own requests leave it.
	cmd := exec.CommandContext(ctx, chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
		"--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
		"--disable-dev-shm-usage", "--user-data-dir="+t.TempDir(), "--virtual-time-budget=3000", "--dump-dom", url)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("chromium --dump-dom %s: %v\n%s", url, err, stderr.String())
	}
	return string(out)
}

var (
	deviceRow  = regexp.MustCompile(`(?s)<tr[^>]*data-device="([^"]+)"[^>]*>(.*?)</tr>`)
	stateCell  = regexp.MustCompile(`<td class="state state-[a-z]+">([a-z]+)</td>`)
	errorCell  = regexp.MustCompile(`<td class="error">([^<]*)</td>`)
	tagRow     = regexp.MustCompile(`(?s)<tr data-tag="([^"]+)">(.*?)</tr>`)
	valueCell  = regexp.MustCompile(`<td class="value num">([^<]*)</td>`)
	bufferRecs = regexp.MustCompile(`<dl id="buffer-dl"><dt>records</dt><dd[^>]*>([0-9]+)</dd>`)
	brokerSt   = regexp.MustCompile(`<span id="broker-state" class="state state-[a-z]+">([a-z]+)</span>`)
	commandRow = regexp.MustCompile(`(?s)<tr class="command" data-result="([a-z_]+)">(.*?)</tr>`)
	fromCell   = regexp.MustCompile(`<td class="from">([^<]*)</td>`)
	sparkLine  = regexp.MustCompile(`<svg id="spark-buffer"[^>]*><polyline points="[0-9.,]+`)
)

// pageView is what the rendered page shows of the device "press".
type pageView struct {
	state, err string
	values     map[string]string // tag -> value cell
	spark      bool              // the buffer sparkline is drawn
	broker     string            // connected, disconnected
	records    int               // buffer depth
	commands   []string          // the Commands table's rows, "RESULT FROM", top first
}

func readPage(dom string) pageView {
	v := pageView{values: map[string]string{}, spark: sparkLine.MatchString(dom), records: -1}
	if m := brokerSt.FindStringSubmatch(dom); m != nil {
		v.broker = m[1]
	}
	if m := bufferRecs.FindStringSubmatch(dom); m != nil {
		v.records, _ = strconv.Atoi(m[1])
	}
	for _, m := range deviceRow.FindAllStringSubmatch(dom, -1) {
		if m[1] != "press" {
			continue
		}
		if s := stateCell.FindStringSubmatch(m[2]); s != nil {
			v.state = s[1]
		}
		if e := errorCell.FindStringSubmatch(m[2]); e != nil {
			v.err = e[1]
		}
	}
	for _, m := range tagRow.FindAllStringSubmatch(dom, -1) {
		if c := valueCell.FindStringSubmatch(m[2]); c != nil {
			v.values[m[1]] = c[1]
		}
	}
	for _, m := range commandRow.FindAllStringSubmatch(dom, -1) {
		from := ""
		if f := fromCell.FindStringSubmatch(m[2]); f != nil {
			from = f[1]
		}
		v.commands = append(v.commands, m[1]+" "+from)
	}
	return v
}

// TestStatusPageInBrowser: the page of a running gateway, rendered by a
// real browser (Debian's chromium, headless), shows the device up with its
// tag's value, the new value after the register changes, the device down
// with its error once the simulator stops answering, and the buffer
// growing while the broker is stopped.
func TestStatusPageInBrowser(t *testing.T) {
	chromium, err := exec.LookPath("chromium")
	if err != nil {
		t.Skip("chromium is not installed (Debian package chromium, which scripts/test installs): the status page is not checked in a browser")
	}
	broker := mosquittotest.Start(t)
	sim := modbustest.New(t)
	sim.SetHolding(0, 1450, 70)
	_, base := statusGateway(t, broker.URL(), sim, `listen = "127.0.0.1:0"`)

	waitPage := func(what string, ok func(pageView) bool) pageView {
		t.Helper()
		var v pageView
		var dom string
		for deadline := time.Now().Add(90 * time.Second); time.Now().Before(deadline); {
			dom = chromiumDOM(t, chromium, base+"/#press")
			if v = readPage(dom); ok(v) {
				return v
			}
		}
		t.Fatalf("the page never showed %s; it showed %+v in:\n%s", what, v, dom)
		return v
	}
	v := waitPage("press up with speed 1450", func(v pageView) bool { return v.state == "up" && v.values["speed"] == "1450" })
	if v.values["setpoint"] != "70" || !v.spark {
		t.Errorf("page shows %+v: want setpoint 70 and the buffer sparkline", v)
	}
	if shot := os.Getenv("FERRY_STATUS_SCREENSHOT"); shot != "" {
		// For the README: FERRY_STATUS_SCREENSHOT=$PWD/docs/status-page.png.
		out, err := exec.Command(chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
			"--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
			"--user-data-dir="+t.TempDir(), "--virtual-time-budget=5000", "--window-size=1280,760", "--screenshot="+shot, base+"/#press").CombinedOutput()
		if err != nil {
			t.Errorf("screenshot: %v\n%s", err, out)
		}
	}
	// A command refused shows in the Commands table with who sent it.
	c := newCommander(t, broker.Addr())
	c.send(t, "ferry/line3/press/speed/set", `1`, "b1", 0)
	c.wait(t, "b1", 20*time.Second)
	waitPage("the refused command", func(v pageView) bool {
		return len(v.commands) == 1 && strings.HasPrefix(v.commands[0], "not_writable ") && strings.Contains(v.commands[0], "user.operator=test")
	})

	sim.SetHolding(0, 1500)
	waitPage("speed 1500", func(v pageView) bool { return v.values["speed"] == "1500" })
	if err := sim.SetDown(true); err != nil {
		t.Fatal(err)
	}
	waitPage("press down with its error", func(v pageView) bool { return v.state == "down" && v.err != "" })
	if err := sim.SetDown(false); err != nil {
		t.Fatal(err)
	}

	// The broker goes away: the page says so, and the buffer fills.
	broker.Stop()
	v = waitPage("the broker disconnected", func(v pageView) bool { return v.broker == "disconnected" && v.records >= 0 })
	waitPage("the buffer growing", func(w pageView) bool { return w.state == "up" && w.records > v.records+10 })
}
