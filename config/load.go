package config

import (
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Load reads the file at path and parses it with [Parse], expanding ${ENV}
// references from the process environment.
func Load(path string) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		msg := err.Error()
		var pe *os.PathError
		if errors.As(err, &pe) {
			msg = pe.Err.Error()
		}
		return nil, Errors{{File: path, Msg: "cannot read config: " + msg}}
	}
	return Parse(path, data, os.Getenv)
}

// Parse decodes, resolves and validates the TOML in data. path names the
// file in errors and in Config.Path, and relative file names in the config
// are resolved against its directory. getenv looks up ${ENV} references; a
// nil getenv means no variable is set.
//
// On success Parse returns a Config with every default applied (see the
// table in defaults.go), every ${ENV} expanded and every *_file secret read.
// Otherwise it returns a nil Config and an [Errors] listing every problem
// found, sorted by position.
func Parse(path string, data []byte, getenv func(string) string) (*Config, error) {
	return parse(path, data, getenv, osFiles{})
}

// parse is Parse reading included files through files.
func parse(path string, data []byte, getenv func(string) string, files fileSystem) (*Config, error) {
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	dir := filepath.Dir(path)
	if abs, err := filepath.Abs(dir); err == nil {
		dir = abs
	}
	main := &source{file: path}
	d := &decoder{dir: dir, getenv: getenv, main: main, files: files, sources: []*source{main}}

	src := string(data)
	var root map[string]any
	if _, err := toml.Decode(src, &root); err != nil {
		return nil, syntaxError(path, src, err)
	}
	main.src = src // positions are indexed only when an error needs one

	c := d.decode(root)
	if len(d.errs) > 0 {
		return nil, d.sorted()
	}
	c.Path = path
	return c, nil
}

// syntaxError converts a TOML parser error.
func syntaxError(file, src string, err error) Errors {
	var pe toml.ParseError
	if !errors.As(err, &pe) {
		return Errors{{File: file, Msg: strings.TrimPrefix(err.Error(), "toml: ")}}
	}
	e := &Error{File: file, Line: pe.Position.Line, Col: pe.Position.Col, Path: pe.LastKey, Msg: pe.Message}
	// Recompute the column from the byte offset: the parser's own column
	// is off by a line when the error sits on a newline.
	ix := newPosIndex(src)
	if ls := ix.lineStart(pe.Position.Line); ls >= 0 && pe.Position.Start >= ls {
		end := len(src)
		if next := ix.lineStart(pe.Position.Line + 1); next >= 0 {
			end = next
		}
		if pe.Position.Start <= end {
			e.Col = pe.Position.Start - ls + 1
		}
	}
	if e.Line <= 0 && pe.Position.Start >= 0 && pe.Position.Start <= len(src) {
		p := ix.at(pe.Position.Start)
		e.Line, e.Col = p.line, p.col
	}
	switch {
	case e.Line <= 0:
		e.Line, e.Col = 0, 0
	case e.Col <= 0:
		e.Col = 1
	}
	if e.Msg == "" {
		e.Msg = "syntax error"
	}
	return Errors{e}
}

// decoder walks the generic TOML tree, collecting every error.
type decoder struct {
	dir     string // of the main file, absolute
	getenv  func(string) string
	main    *source
	files   fileSystem
	sources []*source // the main file, then every included file, in order
	errs    Errors

	templates    map[string]*template
	templateList []*template        // in the order they are defined
	used         map[string]*usedBy // errors in a template's tags, by errKey
}

// source is one file of the configuration: the main file or an included
// one.
type source struct {
	file string // as shown in errors
	src  string
	ix   *posIndex // built on first use: a valid config never needs it
}

// positions returns the position index of the source, building it once.
func (s *source) positions() *posIndex {
	if s.ix == nil {
		s.ix = indexPositions(s.src)
	}
	return s.ix
}

// at returns "FILE:LINE:COL" of the key at raw.
func (s *source) at(raw []string) string {
	p := s.positions().lookup(raw)
	return fmt.Sprintf("%s:%d:%d", s.file, p.line, p.col)
}

// errAt reports a problem at raw in s. use is the device a template's
// tag is being expanded for, or nil: the same problem in a template found
// for several devices is reported once, naming the first of them and how
// many more there are.
func (d *decoder) errAt(s *source, raw []string, path string, use *templateUse, format string, args ...any) {
	p := s.positions().lookup(raw)
	e := &Error{File: s.file, Line: p.line, Col: p.col, Path: path, Msg: fmt.Sprintf(format, clipArgs(args)...)}
	if use != nil && d.usedBy(e, use) {
		return
	}
	d.errs = append(d.errs, e)
}

// sorted returns the errors sorted by file (the main file first, then the
// included ones in the order they were included), then by position.
func (d *decoder) sorted() Errors {
	d.noteUses()
	rank := map[string]int{}
	for i, s := range d.sources {
		if _, ok := rank[s.file]; !ok {
			rank[s.file] = i
		}
	}
	byFile := make([]Errors, len(d.sources))
	for _, e := range d.errs {
		i := rank[e.File]
		byFile[i] = append(byFile[i], e)
	}
	var out Errors
	for _, es := range byFile {
		sortErrors(es)
		out = append(out, es...)
	}
	return out
}

// table is one TOML table being decoded. Every key read through it is
// remembered, so that finish can report the rest as unknown.
type table struct {
	d     *decoder
	s     *source // the file it is written in
	m     map[string]any
	raw   []string // raw path for positions: modbus, [0], tag, [3]
	disp  string   // path shown to users: modbus[plc1].tag[temperature]
	index int      // index in its array, for array elements
	known []string

	// A template's tag expanded for a device: use is the device, and
	// origin names the table each key the device overrides was written in.
	use    *templateUse
	origin map[string]*table
}

func (t *table) child(key string) []string {
	return append(append([]string(nil), t.raw...), key)
}

func (t *table) path(key string) string {
	key = clip(key)
	switch {
	case key == "":
		return t.disp
	case t.disp == "":
		return key
	}
	return t.disp + "." + key
}

// errf reports a problem with key (or with the table itself when key is
// empty), positioned at the key.
func (t *table) errf(key, format string, args ...any) {
	if o := t.origin[key]; o != nil && key != "" {
		o.errf(key, format, args...)
		return
	}
	raw := t.raw
	if key != "" {
		raw = t.child(key)
	}
	t.d.errAt(t.s, raw, t.path(key), t.use, format, args...)
}

// get returns the raw value of key and marks the key as known.
func (t *table) get(key string) (any, bool) {
	t.known = append(t.known, key)
	v, ok := t.m[key]
	return v, ok
}

// has reports whether key is present, without marking it as known.
func (t *table) has(key string) bool {
	_, ok := t.m[key]
	return ok
}

// require reports every key in keys that is absent.
func (t *table) require(keys ...string) {
	for _, k := range keys {
		if !t.has(k) {
			t.missing(k, "missing required key")
		}
	}
}

// missing reports a problem with an absent key, positioned at its table.
func (t *table) missing(key, format string, args ...any) {
	t.d.errAt(t.s, t.raw, t.path(key), t.use, format, args...)
}

// finish reports every key that was not read as unknown.
func (t *table) finish() {
	var unknown []string
	for k := range t.m {
		if !slices.Contains(t.known, k) {
			unknown = append(unknown, k)
		}
	}
	// Positions sort these later; sort by name for determinism first.
	sortStrings(unknown)
	for _, k := range unknown {
		if s := suggest(k, t.known); s != "" {
			t.errf(k, "unknown key, did you mean %q?", s)
		} else {
			t.errf(k, "unknown key")
		}
	}
}

func (t *table) wrongType(key, want string, v any) {
	switch v := v.(type) {
	case string:
		if len(v) > 40 {
			v = v[:40] + "..."
		}
		t.errf(key, "expected %s, got string %q", want, v)
	case int64, float64, bool:
		t.errf(key, "expected %s, got %s %v", want, tomlType(v), v)
	default:
		t.errf(key, "expected %s, got %s", want, tomlType(v))
	}
}

// tomlType names the TOML type of a decoded value.
func tomlType(v any) string {
	switch v := v.(type) {
	case string:
		return "string"
	case int64:
		return "integer"
	case float64:
		return "float"
	case bool:
		return "boolean"
	case time.Time:
		return "datetime"
	case []map[string]any:
		return "array of tables"
	case []any:
		if len(v) > 0 {
			if _, ok := v[0].(map[string]any); ok {
				return "array of tables"
			}
		}
		return "array"
	case map[string]any:
		return "table"
	}
	return fmt.Sprintf("%T", v)
}

// str reads a string, expanding ${ENV} references. It reports whether dst
// was set.
func (t *table) str(key string, dst *string) bool {
	v, ok := t.get(key)
	if !ok {
		return false
	}
	s, ok := v.(string)
	if !ok {
		t.wrongType(key, "string", v)
		return false
	}
	written := s
	s, err := expandEnv(s, t.d.getenv)
	if err != nil {
		var unset *envUnsetError
		if secretKeys[key] && !errors.As(err, &unset) {
			t.errf(key, "invalid ${...} in the value, which is not shown because it is a secret (use $$ for a literal dollar)")
			return false
		}
		if name := unsetEnv(written, t.d.getenv); name != "" && t.use != nil && t.origin[key] == nil && errors.As(err, &unset) {
			t.errf(key, "%v, and the template declares no placeholder %s (vars = [%q] fills it from each device's vars)", err, name, name)
			return false
		}
		t.errf(key, "%v", err)
		return false
	}
	*dst = s
	return true
}

// secretKeys are the keys whose values error messages never show.
var secretKeys = map[string]bool{"password": true}

// nonEmpty reads a string that must not be empty.
func (t *table) nonEmpty(key string, dst *string) bool {
	var s string
	if !t.str(key, &s) {
		return false
	}
	if s == "" {
		t.errf(key, "must not be empty")
		return false
	}
	*dst = s
	return true
}

// oneOf reads a string that must be one of allowed.
func (t *table) oneOf(key string, dst *string, allowed ...string) bool {
	var s string
	if !t.str(key, &s) {
		return false
	}
	for _, a := range allowed {
		if s == a {
			*dst = s
			return true
		}
	}
	t.errf(key, "must be one of %s; got %q", quoteList(allowed), clip(s))
	return false
}

// file reads a file name, resolving a relative one against the config
// file's directory. The empty string stays empty.
func (t *table) file(key string, dst *string) bool {
	var s string
	if !t.str(key, &s) {
		return false
	}
	*dst = t.d.resolve(s)
	return true
}

func (d *decoder) resolve(name string) string {
	if name == "" || filepath.IsAbs(name) {
		return name
	}
	return filepath.Join(d.dir, name)
}

// integer reads an integer in [min, max].
func (t *table) integer(key string, dst *int64, min, max int64) bool {
	v, ok := t.get(key)
	if !ok {
		return false
	}
	n, ok := v.(int64)
	if !ok {
		t.wrongType(key, "integer", v)
		return false
	}
	if n < min || n > max {
		t.errf(key, "must be between %d and %d, got %d", min, max, n)
		return false
	}
	*dst = n
	return true
}

// intv is integer for an int.
func (t *table) intv(key string, dst *int, min, max int64) bool {
	var n int64
	if !t.integer(key, &n, min, max) {
		return false
	}
	*dst = int(n)
	return true
}

// float reads a finite number; integers are accepted.
func (t *table) float(key string, dst *float64) bool {
	v, ok := t.get(key)
	if !ok {
		return false
	}
	var f float64
	switch v := v.(type) {
	case float64:
		f = v
	case int64:
		f = float64(v)
	default:
		t.wrongType(key, "number", v)
		return false
	}
	if math.IsNaN(f) || math.IsInf(f, 0) {
		t.errf(key, "must be a finite number")
		return false
	}
	*dst = f
	return true
}

// optFloat reads an optional number into a new pointer.
func (t *table) optFloat(key string, dst **float64) bool {
	var f float64
	if !t.float(key, &f) {
		return false
	}
	*dst = &f
	return true
}

// limits reads a tag's optional min and max: each as a float64 and, when
// the file holds an integer, also exactly, so that a write is compared
// with 9007199254740993 and not with its nearest float64. min must not be
// greater than max (compared exactly).
func (t *table) limits(min, max **float64, minInt, maxInt **int64) {
	minOK := t.optFloat("min", min)
	maxOK := t.optFloat("max", max)
	if v, ok := t.get("min"); ok && minOK {
		if i, ok := v.(int64); ok {
			*minInt = &i
		}
	}
	if v, ok := t.get("max"); ok && maxOK {
		if i, ok := v.(int64); ok {
			*maxInt = &i
		}
	}
	if !minOK || !maxOK {
		return
	}
	greater := *min != nil && *max != nil && **min > **max
	switch {
	case *minInt != nil && *maxInt != nil:
		greater = **minInt > **maxInt
	case *minInt != nil:
		greater = compareIntFloat(**minInt, **max) > 0
	case *maxInt != nil:
		greater = compareIntFloat(**maxInt, **min) < 0
	}
	if greater {
		t.errf("min", "min (%s) is greater than max (%s)", limitText(*min, *minInt), limitText(*max, *maxInt))
	}
}

func limitText(f *float64, i *int64) string {
	if i != nil {
		return strconv.FormatInt(*i, 10)
	}
	if *f == math.Trunc(*f) && math.Abs(*f) < 1e21 {
		return strconv.FormatFloat(*f, 'f', -1, 64) + ".0"
	}
	return strconv.FormatFloat(*f, 'g', -1, 64)
}

// compareIntFloat is -1, 0 or +1 as i is below, equal to or above f,
// exactly (f is finite).
func compareIntFloat(i int64, f float64) int {
	switch {
	case f >= 0x1p63:
		return -1
	case f < -0x1p63:
		return 1
	}
	t := math.Trunc(f)
	switch ti := int64(t); {
	case i < ti:
		return -1
	case i > ti:
		return 1
	case t < f:
		return -1
	case t > f:
		return 1
	}
	return 0
}

func (t *table) boolean(key string, dst *bool) bool {
	v, ok := t.get(key)
	if !ok {
		return false
	}
	b, ok := v.(bool)
	if !ok {
		t.wrongType(key, "boolean", v)
		return false
	}
	*dst = b
	return true
}

// duration reads a non-negative Go duration string such as "250ms". An
// integer is refused: BurntSushi/toml would read it as nanoseconds, which
// is never what is meant.
func (t *table) duration(key string, dst *time.Duration) bool {
	v, ok := t.get(key)
	if !ok {
		return false
	}
	switch v := v.(type) {
	case string:
	case int64, float64:
		t.errf(key, "expected a duration string such as \"1s\" or \"250ms\", got %s %v (a bare number has no unit)", tomlType(v), v)
		return false
	default:
		t.wrongType(key, "duration string", v)
		return false
	}
	var s string
	if !t.str(key, &s) {
		return false
	}
	dur, err := time.ParseDuration(strings.TrimSpace(s))
	if err != nil {
		t.errf(key, "invalid duration %q: use a number with a unit, such as \"250ms\", \"1s\" or \"1m30s\"", s)
		return false
	}
	if dur < 0 {
		t.errf(key, "must not be negative, got %q", s)
		return false
	}
	*dst = dur
	return true
}

// size reads a positive size in bytes: an integer, or a string such as
// "512MiB", "64KB" or "1048576".
func (t *table) size(key string, dst *int64) bool {
	v, ok := t.get(key)
	if !ok {
		return false
	}
	var n int64
	switch v := v.(type) {
	case int64:
		n = v
	case string:
		var s string
		if !t.str(key, &s) {
			return false
		}
		var err error
		if n, err = parseSize(s); err != nil {
			t.errf(key, "%v", err)
			return false
		}
	default:
		t.wrongType(key, "size (a string such as \"512MiB\" or an integer number of bytes)", v)
		return false
	}
	if n <= 0 {
		t.errf(key, "must be positive")
		return false
	}
	*dst = n
	return true
}

// secret reads a secret given either inline (key) or in a file (fileKey).
// The file's trailing newlines are trimmed.
func (t *table) secret(key, fileKey string, dst *string) {
	inline, file := t.has(key), t.has(fileKey)
	var s, name string
	okInline := t.str(key, &s)
	okFile := t.str(fileKey, &name)
	if inline && file {
		t.errf(fileKey, "set either %s or %s, not both", key, fileKey)
		return
	}
	if okInline {
		*dst = s
	}
	if !okFile {
		return
	}
	if name == "" {
		t.errf(fileKey, "must not be empty")
		return
	}
	data, err := readSecret(t.d.resolve(name))
	if err != nil {
		t.errf(fileKey, "cannot read %q: %v", name, err)
		return
	}
	*dst = strings.TrimRight(string(data), "\r\n")
}

// maxSecretSize bounds what is read from a *_file.
const maxSecretSize = 64 << 10

func readSecret(name string) ([]byte, error) {
	fi, err := os.Stat(name)
	if err != nil {
		return nil, unwrapPath(err)
	}
	if !fi.Mode().IsRegular() {
		return nil, errors.New("not a regular file")
	}
	f, err := os.Open(name)
	if err != nil {
		return nil, unwrapPath(err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxSecretSize+1))
	if err != nil {
		return nil, unwrapPath(err)
	}
	if len(data) > maxSecretSize {
		return nil, fmt.Errorf("larger than %d bytes", maxSecretSize)
	}
	return data, nil
}

func unwrapPath(err error) error {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// sub returns the table at key, or nil (with an error if it is present but
// not a table).
func (t *table) sub(key string) *table {
	v, ok := t.get(key)
	if !ok {
		return &table{d: t.d, s: t.s, m: map[string]any{}, raw: t.child(key), disp: t.path(key), use: t.use}
	}
	m, ok := v.(map[string]any)
	if !ok {
		if tomlType(v) == "array of tables" {
			t.errf(key, "expected a single table [%s], got an array of tables [[%s]]", key, key)
		} else {
			t.wrongType(key, "table", v)
		}
		return nil
	}
	return &table{d: t.d, s: t.s, m: m, raw: t.child(key), disp: t.path(key), use: t.use}
}

// array returns the elements of the array of tables at key. Elements that
// are not tables are reported and skipped. disp is set by the caller once
// the element's name is known; until then it is key[index].
// emptyOrAbsent reports whether key is absent or an empty array (not
// whether it is valid: array reports that).
func (t *table) emptyOrAbsent(key string) bool {
	switch v := t.m[key].(type) {
	case nil:
		return true
	case []any:
		return len(v) == 0
	case []map[string]any:
		return len(v) == 0
	}
	return false
}

func (t *table) array(key string) []*table {
	v, ok := t.get(key)
	if !ok {
		return nil
	}
	var elems []any
	switch v := v.(type) {
	case []map[string]any:
		for _, m := range v {
			elems = append(elems, m)
		}
	case []any:
		elems = v
	default:
		t.errf(key, "expected an array of tables [[%s]], got %s", t.path(key), tomlType(v))
		return nil
	}
	var out []*table
	for i, e := range elems {
		raw := append(t.child(key), elem(i))
		disp := fmt.Sprintf("%s[%d]", t.path(key), i)
		m, ok := e.(map[string]any)
		if !ok {
			t.d.errAt(t.s, raw, disp, t.use, "expected a table, got %s", tomlType(e))
			continue
		}
		out = append(out, &table{d: t.d, s: t.s, m: m, raw: raw, disp: disp, index: i, use: t.use})
	}
	return out
}

// nameElem reads the name of an array element, validates it, and switches
// the element's display path from key[index] to key[name] when the name is
// valid. kind is "device" or "tag".
func (t *table) nameElem(kind string) (string, bool) {
	var name string
	if !t.has("name") {
		t.get("name")
		t.missing("name", "missing required key")
		return "", false
	}
	if !t.str("name", &name) {
		return "", false
	}
	if err := checkName(name, kind); err != nil {
		t.errf("name", "%v", err)
		return name, false
	}
	t.disp = strings.TrimSuffix(t.disp, fmt.Sprintf("[%d]", t.index)) + "[" + name + "]"
	return name, true
}
