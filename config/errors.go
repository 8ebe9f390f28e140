package config

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Error is one problem found in a configuration file.
//
// Line and Col are 1-based (Col counts bytes, like the Go toolchain does);
// both are zero when no position is known. Path is the key path of the
// offending value, e.g. "mqtt.qos" or "modbus[plc1].tag[temperature].address".
type Error struct {
	File string
	Line int
	Col  int
	Path string
	Msg  string
}

// Error formats the error as "FILE:LINE:COL: KEY.PATH: message", or
// "FILE: KEY.PATH: message" when there is no position.
func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d:%d", e.Line, e.Col)
	}
	b.WriteString(": ")
	if e.Path != "" {
		b.WriteString(e.Path)
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Errors is every problem found in a configuration file, sorted by
// position. Parse and Load return a non-empty Errors when the file is
// invalid.
type Errors []*Error

// Error formats the errors one per line.
func (es Errors) Error() string {
	lines := make([]string, len(es))
	for i, e := range es {
		lines[i] = e.Error()
	}
	return strings.Join(lines, "\n")
}

// sortErrors orders errors by line, then column; errors without a position
// come first. The sort is stable, so problems found at the same position
// keep the order in which they were found.
func sortErrors(es Errors) {
	sort.SliceStable(es, func(i, j int) bool {
		if es[i].Line != es[j].Line {
			return es[i].Line < es[j].Line
		}
		return es[i].Col < es[j].Col
	})
}

// maxShown is how much of a key or value an error message quotes.
const maxShown = 64

// clip shortens s for an error message: its first 64 bytes (whole UTF-8
// characters) and "…(N bytes)", so that a 1 MB key is not echoed in full.
func clip(s string) string {
	if len(s) <= maxShown {
		return s
	}
	n := maxShown
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n] + "…(" + strconv.Itoa(len(s)) + " bytes)"
}

// clipArgs clips every long string argument of an error message: a
// safety net for values no check clipped (the lists of allowed values
// that messages quote are shorter than 256 bytes).
func clipArgs(args []any) []any {
	for i, a := range args {
		if s, ok := a.(string); ok && len(s) > 256 {
			args[i] = clip(s)
		}
	}
	return args
}
