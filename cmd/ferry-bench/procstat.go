package main

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat.
// It is 100 on every Linux architecture Go supports (the kernel exports a
// fixed value to user space regardless of CONFIG_HZ).
const clockTicks = 100

// procCPU returns utime+stime of pid, all threads, from /proc/PID/stat.
func procCPU(pid int) (time.Duration, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	return parseStatCPU(data)
}

// parseStatCPU extracts utime + stime (fields 14 and 15) from the contents
// of /proc/PID/stat. The command name (field 2) is in parentheses and may
// contain spaces and ')', so fields are counted after the last ')'.
func parseStatCPU(data []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, fmt.Errorf("stat: no ')' in %q", data)
	}
	f := strings.Fields(string(data[i+1:]))
	// f[0] is field 3 (state); utime is field 14 -> f[11], stime f[12].
	if len(f) < 13 {
		return 0, fmt.Errorf("stat: %d fields after comm, want at least 13", len(f))
	}
	ut, err := strconv.ParseUint(f[11], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("stat: utime: %w", err)
	}
	st, err := strconv.ParseUint(f[12], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("stat: stime: %w", err)
	}
	return time.Duration(ut+st) * time.Second / clockTicks, nil
}

// memInfo is what the benchmark reads from /proc/PID/status.
type memInfo struct {
	RSSKiB  int64 // VmRSS: resident now
	PeakKiB int64 // VmHWM: resident high-water mark
	AnonKiB int64 // RssAnon: heap, stacks (what the Go runtime holds)
	FileKiB int64 // RssFile: mapped files (the binary's text, mmapped segments)
}

func procMem(pid int) (memInfo, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return memInfo{}, err
	}
	return parseStatusMem(data)
}

// parseStatusMem extracts VmRSS and VmHWM (in KiB) from /proc/PID/status.
func parseStatusMem(data []byte) (memInfo, error) {
	var m memInfo
	var seen int
	for _, line := range strings.Split(string(data), "\n") {
		key, val, ok := strings.Cut(line, ":")
		if !ok || (key != "VmRSS" && key != "VmHWM" && key != "RssAnon" && key != "RssFile") {
			continue
		}
		val = strings.TrimSpace(val)
		num, unit, _ := strings.Cut(val, " ")
		if unit != "kB" {
			return m, fmt.Errorf("status: %s: unexpected unit in %q", key, val)
		}
		n, err := strconv.ParseInt(num, 10, 64)
		if err != nil {
			return m, fmt.Errorf("status: %s: %w", key, err)
		}
		switch key {
		case "VmRSS":
			m.RSSKiB = n
			seen++
		case "VmHWM":
			m.PeakKiB = n
			seen++
		case "RssAnon":
			m.AnonKiB = n
		case "RssFile":
			m.FileKiB = n
		}
	}
	if seen < 2 {
		return m, fmt.Errorf("status: VmRSS or VmHWM missing")
	}
	return m, nil
}

// cpuPercent is cpu as a percentage of one core over wall.
func cpuPercent(cpu, wall time.Duration) float64 {
	if wall <= 0 {
		return 0
	}
	return 100 * cpu.Seconds() / wall.Seconds()
}

// machine describes the host for the report.
type machine struct {
	CPUs      int    `json:"cpus"`
	Model     string `json:"model"`
	GoVersion string `json:"go"`
	Kernel    string `json:"kernel"`
	Mosquitto string `json:"mosquitto"`
}

// cpuModel returns the first "model name" of /proc/cpuinfo.
func cpuModel(cpuinfo []byte) string {
	for _, line := range strings.Split(string(cpuinfo), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}
