package main

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// check is one target from issue 10, judged on a measured value.
type check struct {
	Name  string  `json:"name"`
	Value float64 `json:"value"`
	Limit float64 `json:"limit"`
	Max   bool    `json:"max"` // true: value must be <= limit; false: >= limit
	Pass  bool    `json:"pass"`
}

func newCheck(name string, value, limit float64, isMax bool) check {
	c := check{Name: name, Value: value, Limit: limit, Max: isMax}
	if math.IsNaN(value) || math.IsInf(value, 0) {
		c.Value = -1 // no data: a MISS
	} else {
		if isMax {
			c.Pass = value <= limit
		} else {
			c.Pass = value >= limit
		}
	}
	return c
}

func (c check) String() string {
	op := "≤"
	if !c.Max {
		op = "≥"
	}
	verdict := "MISS"
	if c.Pass {
		verdict = "PASS"
	}
	got := trimFloat(c.Value)
	if c.Value < 0 {
		got = "no data"
	}
	return fmt.Sprintf("%s %s %s %s (%s)", verdict, c.Name, op, trimFloat(c.Limit), got)
}

// result is one row of the table.
type result struct {
	Scenario string `json:"scenario"`
	Mode     string `json:"mode,omitempty"` // publish mode
	Source   string `json:"source"`         // modbus, opcua, paho
	Tags     int    `json:"tags,omitempty"`
	Devices  int    `json:"devices,omitempty"`
	Interval string `json:"interval,omitempty"`
	QoS      int    `json:"qos"`

	WindowS          float64        `json:"window_s"`
	CPUPct           float64        `json:"cpu_pct_one_core"`
	CPUPerReadingUS  float64        `json:"cpu_us_per_reading"`
	RSSMiB           float64        `json:"rss_mib"`      // VmRSS at the end of the window
	MaxRSSMiB        float64        `json:"max_rss_mib"`  // largest VmRSS sampled in the window
	PeakRSSMiB       float64        `json:"peak_rss_mib"` // VmHWM at the end of the window (whole run)
	AnonMiB          float64        `json:"rss_anon_mib"` // RssAnon at the end of the window
	FileMiB          float64        `json:"rss_file_mib"` // RssFile at the end of the window
	ReadingsPerS     float64        `json:"readings_per_s"`
	ExpectedPerS     float64        `json:"expected_readings_per_s,omitempty"`
	MsgsPerS         float64        `json:"msgs_per_s"`
	AvgMsgBytes      float64        `json:"avg_msg_bytes"`
	ReqPerCycle      float64        `json:"modbus_requests_per_cycle,omitempty"`
	Messages         int64          `json:"messages"` // delivered over the whole run (distinct seqs)
	Lost             int64          `json:"lost_messages"`
	Dups             int64          `json:"duplicate_messages"`
	Bad              int64          `json:"bad_readings"`
	sample           []byte         // a payload ferry delivered, for the baseline
	Latency          latencySummary `json:"latency"`
	AllReportedS     float64        `json:"all_reported_s,omitempty"` // OPC UA: ferry start to every item seen once
	BaselineMsgsPerS float64        `json:"baseline_msgs_per_s,omitempty"`
	VsBaseline       float64        `json:"vs_baseline,omitempty"` // msgs/s (or drain rate) / baseline

	// outage-drain
	OutageS         float64 `json:"outage_s,omitempty"`
	ReconnectS      float64 `json:"reconnect_s,omitempty"` // broker restart to first delivery
	DrainS          float64 `json:"drain_s,omitempty"`     // first delivery to the last replay message
	BacklogMsgs     int64   `json:"backlog_msgs,omitempty"`
	DrainMsgsPerS   float64 `json:"drain_msgs_per_s,omitempty"`
	DrainRdsPerS    float64 `json:"drain_readings_per_s,omitempty"`
	OutageReadings  int64   `json:"outage_readings,omitempty"` // delivered readings sampled while the broker was down
	OutageExpected  int64   `json:"outage_readings_expected,omitempty"`
	LiveDuringDrain bool    `json:"live_after_drain,omitempty"`

	Checks []check `json:"targets,omitempty"`
	Notes  string  `json:"notes,omitempty"`
	Error  string  `json:"error,omitempty"`
}

// markdownTable renders the results as one Markdown table.
func markdownTable(rs []result) string {
	var b strings.Builder
	b.WriteString("| scenario | mode | tags / interval | CPU % of 1 core | µs CPU / reading | RSS MiB (peak) | readings/s delivered (expected) | msgs/s (÷ baseline) | Modbus req/cycle | lost msgs | latency p50 / p99 / max ms | other | targets |\n")
	b.WriteString("|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|---|\n")
	for _, r := range rs {
		if r.Error != "" {
			fmt.Fprintf(&b, "| %s | %s | %s | | | | | | | | | ERROR: %s | |\n", r.Scenario, r.Mode, load(r), cell(r.Error))
			continue
		}
		if r.Source == "paho" {
			note := "plain paho client, 256 publishing goroutines (window: the broker's Receive Maximum), counted at the subscriber"
			if r.Notes != "" {
				note += "; " + r.Notes
			}
			fmt.Fprintf(&b, "| %s | — | %.0f-byte msgs, QoS %d | | | | | %s | | %d | %s | %s | |\n",
				r.Scenario, r.AvgMsgBytes, r.QoS, num(r.MsgsPerS), r.Lost, lat(r.Latency), cell(note))
			continue
		}
		msgs := num(r.MsgsPerS)
		if r.VsBaseline > 0 && r.OutageS == 0 {
			msgs += fmt.Sprintf(" (%.2f)", r.VsBaseline)
		}
		rds := num(r.ReadingsPerS)
		if r.OutageS > 0 {
			rds, msgs = "—", "—"
		} else if r.ExpectedPerS > 0 {
			rds += " (" + num(r.ExpectedPerS) + ")"
		}
		req := ""
		if r.ReqPerCycle > 0 {
			req = fmt.Sprintf("%.1f", r.ReqPerCycle)
		}
		var other []string
		if r.AllReportedS > 0 {
			other = append(other, fmt.Sprintf("all items reported after %.1f s", r.AllReportedS))
		}
		if r.OutageS > 0 {
			other = append(other, fmt.Sprintf("outage %.0f s: backlog %d msgs drained in %.2f s = %s msgs/s, %s readings/s (%.2f× baseline); reconnect %.1f s; %d/%d readings sampled in the outage delivered; live after drain: %v",
				r.OutageS, r.BacklogMsgs, r.DrainS, num(r.DrainMsgsPerS), num(r.DrainRdsPerS), r.VsBaseline, r.ReconnectS, r.OutageReadings, r.OutageExpected, r.LiveDuringDrain))
		}
		if r.AnonMiB > 0 {
			other = append(other, fmt.Sprintf("RSS anon %.1f + file %.1f MiB", r.AnonMiB, r.FileMiB))
		}
		if r.Bad > 0 {
			other = append(other, fmt.Sprintf("%d bad readings", r.Bad))
		}
		if r.Notes != "" {
			other = append(other, r.Notes)
		}
		var targets []string
		for _, c := range r.Checks {
			targets = append(targets, c.String())
		}
		perReading := ""
		if r.CPUPerReadingUS > 0 {
			perReading = fmt.Sprintf("%.2f", r.CPUPerReadingUS)
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %.2f | %s | %.1f (%.1f) | %s | %s | %s | %d | %s | %s | %s |\n",
			r.Scenario, r.Mode, load(r), r.CPUPct, perReading, r.RSSMiB, r.PeakRSSMiB, rds, msgs, req, r.Lost, lat(r.Latency),
			cell(strings.Join(other, "; ")), cell(strings.Join(targets, "<br>")))
	}
	return b.String()
}

func load(r result) string {
	if r.Tags == 0 {
		return ""
	}
	return fmt.Sprintf("%s on %d dev / %s", num(float64(r.Tags)), r.Devices, r.Interval)
}

func lat(l latencySummary) string {
	if l.N == 0 {
		return "—"
	}
	return fmt.Sprintf("%s / %s / %s", trimFloat(l.P50), trimFloat(l.P99), trimFloat(l.Max))
}

// num formats a count or rate with thousands separators, no decimals
// (one decimal below 10).
func num(f float64) string {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return "—"
	}
	if math.Abs(f) < 10 && f != math.Trunc(f) {
		return fmt.Sprintf("%.1f", f)
	}
	s := fmt.Sprintf("%.0f", math.Abs(f))
	var out []byte
	for i := range len(s) {
		if i > 0 && (len(s)-i)%3 == 0 {
			out = append(out, ',')
		}
		out = append(out, s[i])
	}
	if f < 0 {
		return "-" + string(out)
	}
	return string(out)
}

// trimFloat prints f with up to two decimals and no trailing zeros.
func trimFloat(f float64) string {
	if math.IsNaN(f) {
		return "—"
	}
	prec := 2
	if math.Abs(f) < 1 {
		prec = 3
	}
	s := strconv.FormatFloat(f, 'f', prec, 64)
	s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	return s
}

// cell escapes a table cell.
func cell(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "|", "\\|"), "\n", " ")
}
