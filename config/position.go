package config

import (
	"sort"
	"strconv"
	"strings"
)

// BurntSushi/toml reports positions for syntax errors only, so this file
// keeps a small index of where each key is defined. It is a best-effort
// scanner, run only on input the TOML parser has accepted: it follows
// [table] and [[array]] headers (counting array elements), dotted and quoted
// keys, inline tables and arrays, and skips over strings of all four kinds
// and comments.
//
// Paths in the index are raw: key names, with array elements as "[N]", e.g.
// modbus, [0], tag, [3], address.

type position struct{ line, col int }

type posIndex struct {
	pos        map[string]position
	lineStarts []int // byte offset of each line's start
}

func pathKey(p []string) string { return strings.Join(p, "\x00") }

func elem(i int) string { return "[" + strconv.Itoa(i) + "]" }

// lookup returns the position of path, or of its closest ancestor with a
// known position.
func (ix *posIndex) lookup(path []string) position {
	for n := len(path); n > 0; n-- {
		if p, ok := ix.pos[pathKey(path[:n])]; ok {
			return p
		}
	}
	return position{}
}

// at converts a byte offset to a line and column.
func (ix *posIndex) at(off int) position {
	line := sort.Search(len(ix.lineStarts), func(i int) bool { return ix.lineStarts[i] > off }) - 1
	if line < 0 {
		line = 0
	}
	return position{line: line + 1, col: off - ix.lineStarts[line] + 1}
}

// lineStart returns the byte offset at which the 1-based line starts, or -1.
func (ix *posIndex) lineStart(line int) int {
	if line < 1 || line > len(ix.lineStarts) {
		return -1
	}
	return ix.lineStarts[line-1]
}

func newPosIndex(src string) *posIndex {
	ix := &posIndex{pos: make(map[string]position), lineStarts: []int{0}}
	for i := 0; i < len(src); i++ {
		if src[i] == '\n' {
			ix.lineStarts = append(ix.lineStarts, i+1)
		}
	}
	return ix
}

// indexPositions scans src and records the position of every key, table
// header and array element.
func indexPositions(src string) *posIndex {
	s := &scanner{src: src, ix: newPosIndex(src), arrays: make(map[string]int)}
	s.run()
	return s.ix
}

type scanner struct {
	src    string
	i      int
	ix     *posIndex
	arrays map[string]int // array-of-tables path -> elements seen
	depth  int
}

const maxScanDepth = 200

func (s *scanner) eof() bool { return s.i >= len(s.src) }

func (s *scanner) peek(n int) byte {
	if s.i+n < len(s.src) {
		return s.src[s.i+n]
	}
	return 0
}

func (s *scanner) record(path []string, off int) {
	k := pathKey(path)
	if _, ok := s.ix.pos[k]; !ok {
		s.ix.pos[k] = s.ix.at(off)
	}
}

// recordAll records every prefix of path longer than base, e.g. the
// implicit tables of a dotted key.
func (s *scanner) recordAll(path []string, base, off int) {
	for n := base + 1; n <= len(path); n++ {
		s.record(path[:n], off)
	}
}

func (s *scanner) skipSpace() {
	for !s.eof() && (s.src[s.i] == ' ' || s.src[s.i] == '\t' || s.src[s.i] == '\r') {
		s.i++
	}
}

// skipSpaceNL skips whitespace, newlines and comments.
func (s *scanner) skipSpaceNL() {
	for !s.eof() {
		switch s.src[s.i] {
		case ' ', '\t', '\r', '\n':
			s.i++
		case '#':
			s.skipLine()
		default:
			return
		}
	}
}

// skipLine moves to the start of the next line.
func (s *scanner) skipLine() {
	if j := strings.IndexByte(s.src[s.i:], '\n'); j >= 0 {
		s.i += j + 1
	} else {
		s.i = len(s.src)
	}
}

func (s *scanner) run() {
	if strings.HasPrefix(s.src, "\ufeff") {
		s.i = 3
	}
	var cur []string
	for !s.eof() {
		s.skipSpaceNL()
		if s.eof() {
			return
		}
		start := s.i
		if s.src[s.i] == '[' {
			array := s.peek(1) == '['
			if array {
				s.i += 2
			} else {
				s.i++
			}
			keys := s.key()
			if len(keys) > 0 {
				cur = s.header(keys, array, start)
			}
			s.skipLine()
			continue
		}
		keys := s.key()
		s.skipSpace()
		if len(keys) == 0 || s.eof() || s.src[s.i] != '=' {
			s.skipLine()
			continue
		}
		s.i++
		full := append(append([]string(nil), cur...), keys...)
		s.recordAll(full, len(cur), start)
		s.value(full)
	}
}

// header handles [keys] or [[keys]] starting at off and returns the new
// current table path.
func (s *scanner) header(keys []string, array bool, off int) []string {
	var path []string
	for i, k := range keys {
		path = append(path, k)
		if array && i == len(keys)-1 {
			n := s.arrays[pathKey(path)]
			s.arrays[pathKey(path)] = n + 1
			s.record(path, off)
			path = append(path, elem(n))
		} else if n, ok := s.arrays[pathKey(path)]; ok {
			path = append(path, elem(n-1))
		}
		s.record(path, off)
	}
	return path
}

// key reads a possibly dotted, possibly quoted key.
func (s *scanner) key() []string {
	var keys []string
	for {
		s.skipSpace()
		if s.eof() {
			return keys
		}
		switch c := s.src[s.i]; c {
		case '"':
			start := s.i
			s.i++
			for !s.eof() && s.src[s.i] != '"' && s.src[s.i] != '\n' {
				if s.src[s.i] == '\\' {
					s.i++
				}
				s.i++
			}
			if s.eof() {
				return keys
			}
			s.i++
			raw := s.src[start:s.i]
			if k, err := strconv.Unquote(raw); err == nil {
				keys = append(keys, k)
			} else {
				keys = append(keys, raw[1:len(raw)-1])
			}
		case '\'':
			start := s.i + 1
			j := strings.IndexAny(s.src[start:], "'\n")
			if j < 0 || s.src[start+j] != '\'' {
				return keys
			}
			keys = append(keys, s.src[start:start+j])
			s.i = start + j + 1
		default:
			start := s.i
			for !s.eof() && isBareKeyChar(s.src[s.i]) {
				s.i++
			}
			if s.i == start {
				return keys
			}
			keys = append(keys, s.src[start:s.i])
		}
		s.skipSpace()
		if s.eof() || s.src[s.i] != '.' {
			return keys
		}
		s.i++
	}
}

func isBareKeyChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}

// value skips one value, indexing the keys of inline tables and the
// elements of arrays under path.
func (s *scanner) value(path []string) {
	s.depth++
	defer func() { s.depth-- }()
	s.skipSpace()
	if s.eof() {
		return
	}
	switch rest := s.src[s.i:]; {
	case strings.HasPrefix(rest, `"""`), strings.HasPrefix(rest, `'''`):
		delim := rest[:3]
		s.i += 3
		for !s.eof() {
			if delim[0] == '"' && s.src[s.i] == '\\' {
				s.i += 2
				continue
			}
			if strings.HasPrefix(s.src[s.i:], delim) {
				s.i += 3
				// Up to two quotes may precede the closing delimiter.
				for n := 0; n < 2 && !s.eof() && s.src[s.i] == delim[0]; n++ {
					s.i++
				}
				return
			}
			s.i++
		}
	case rest[0] == '"':
		s.i++
		for !s.eof() && s.src[s.i] != '"' && s.src[s.i] != '\n' {
			if s.src[s.i] == '\\' {
				s.i++
			}
			s.i++
		}
		if !s.eof() && s.src[s.i] == '"' {
			s.i++
		}
	case rest[0] == '\'':
		s.i++
		for !s.eof() && s.src[s.i] != '\'' && s.src[s.i] != '\n' {
			s.i++
		}
		if !s.eof() && s.src[s.i] == '\'' {
			s.i++
		}
	case rest[0] == '[':
		s.i++
		for n := 0; ; {
			s.skipSpaceNL()
			if s.eof() {
				return
			}
			switch s.src[s.i] {
			case ']':
				s.i++
				return
			case ',':
				s.i++
				continue
			}
			start := s.i
			p := append(append([]string(nil), path...), elem(n))
			s.record(p, start)
			if s.depth < maxScanDepth {
				s.value(p)
			}
			if s.i == start {
				s.i++ // never stall on unexpected input
			}
			n++
		}
	case rest[0] == '{':
		s.i++
		for {
			s.skipSpaceNL()
			if s.eof() {
				return
			}
			switch s.src[s.i] {
			case '}':
				s.i++
				return
			case ',':
				s.i++
				continue
			}
			start := s.i
			keys := s.key()
			s.skipSpace()
			if len(keys) > 0 && !s.eof() && s.src[s.i] == '=' {
				s.i++
				full := append(append([]string(nil), path...), keys...)
				s.recordAll(full, len(path), start)
				if s.depth < maxScanDepth {
					s.value(full)
				}
			}
			if s.i == start {
				s.i++
			}
		}
	default:
		// Numbers, booleans, dates: up to a delimiter.
		for !s.eof() && strings.IndexByte(",]}#\n", s.src[s.i]) < 0 {
			s.i++
		}
	}
}
