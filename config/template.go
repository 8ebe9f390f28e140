package config

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// Templates and includes.
//
// A [[template]] holds a tag map ([[template.tag]], any key of a
// [[modbus.tag]] or an [[opcua.tag]]) and may declare placeholders,
// vars = ["line"]. A device with template = "NAME" gets the template's
// tags, in the template's order, followed by its own: a device tag with the
// name of a template tag overrides that tag key by key (scale = 0.01 alone
// changes only the scale), any other device tag is added. Each device's
// tags are then checked as if the device had been written out in full.
//
// Placeholders and ${ENV}: in the string values of a template's tags
// (every key but name), ${NAME} where NAME is declared in the template's
// vars is replaced by the device's vars.NAME, taken literally. Every other
// ${NAME} is an environment variable, expanded as everywhere else, and $$
// is a literal dollar. A device must give a value for every placeholder
// its template declares, and no other.
//
// A problem in a template's tag is reported at the template's line, with
// the device it was found for: "(used by modbus[meter07] at
// ferry.toml:30:1)", or "(used by modbus[meter01] at ...:3:1 and 49 other
// devices)" when the same problem is found for several.
//
// include = ["meters/*.toml"] (main file only) adds the [[template]],
// [[modbus]] and [[opcua]] tables of the files the patterns match (globs
// relative to the main file's directory, each pattern's files in name
// order, after the main file's own). An included file may hold nothing
// else, and in particular no include: there are no include cycles. A
// pattern that matches no file is an error: a mistyped pattern must not
// quietly drop fifty meters.

// Device kinds, for templates.
const (
	kindModbus = "modbus"
	kindOPCUA  = "opcua"
)

// Tag keys that belong to one kind of device only: a template's kind is
// told by them.
var (
	modbusOnlyTagKeys = []string{"table", "address", "type", "order", "bit", "length", "scale", "offset", "interval", "publish", "deadband", "heartbeat"}
	opcuaOnlyTagKeys  = []string{"node", "sampling_interval", "deadband_type", "deadband_value"}
)

// maxIncludedFiles bounds how many files include may add.
const maxIncludedFiles = 10000

// fileSystem is what Parse reads included files through.
type fileSystem interface {
	Glob(pattern string) ([]string, error)
	ReadFile(name string) ([]byte, error)
}

type osFiles struct{}

func (osFiles) Glob(pattern string) ([]string, error) { return filepath.Glob(pattern) }
func (osFiles) ReadFile(name string) ([]byte, error)  { return os.ReadFile(name) }

// template is one [[template]], checked once.
type template struct {
	name  string
	t     *table // the [[template]] table
	tags  []*table
	vars  []string // declared placeholders
	kind  string   // kindModbus, kindOPCUA, or "" when its keys do not tell
	kindT *table   // the tag holding the first key that told the kind
	kindK string   // that key
	mixed bool     // Modbus and OPC UA keys: not expanded
	used  bool     // by a device
}

// templateUse is the device a template's tags are expanded for.
type templateUse struct {
	dev string // modbus[meter07]
	t   *table // the device
}

func (u *templateUse) String() string {
	if u.t == nil {
		return u.dev
	}
	return u.dev + " at " + u.t.s.at(u.t.child("template"))
}

// usedBy groups the uses of one problem in a template.
type usedBy struct {
	e     *Error
	first string
	devs  map[string]bool
}

func errKey(e *Error) string {
	return fmt.Sprintf("%s\x00%d\x00%d\x00%s\x00%s", e.File, e.Line, e.Col, e.Path, e.Msg)
}

// usedBy records e, found in a template's tag for use, and reports whether
// the same problem was already found for another device.
func (d *decoder) usedBy(e *Error, use *templateUse) bool {
	if d.used == nil {
		d.used = map[string]*usedBy{}
	}
	k := errKey(e)
	if g := d.used[k]; g != nil {
		g.devs[use.dev] = true
		return true
	}
	d.used[k] = &usedBy{e: e, first: use.String(), devs: map[string]bool{use.dev: true}}
	return false
}

// noteUses appends to every problem found in a template the devices it
// was found for.
func (d *decoder) noteUses() {
	for _, g := range d.used {
		switch n := len(g.devs) - 1; n {
		case 0:
			g.e.Msg += " (used by " + g.first + ")"
		case 1:
			g.e.Msg += " (used by " + g.first + " and 1 other device)"
		default:
			g.e.Msg += fmt.Sprintf(" (used by %s and %d other devices)", g.first, n)
		}
	}
	d.used = nil
}

// includes reads the files the main file's include patterns match and
// returns their top-level tables.
func (d *decoder) includes(top *table) []*table {
	v, ok := top.get("include")
	if !ok {
		return nil
	}
	patterns, ok := v.([]any)
	if !ok {
		top.errf("include", "expected an array of file patterns such as [\"meters/*.toml\"], got %s", tomlType(v))
		return nil
	}
	mainAbs, _ := filepath.Abs(d.main.file)
	seen := map[string]bool{mainAbs: true}
	var out []*table
	for i, p := range patterns {
		raw := append(top.child("include"), elem(i))
		disp := fmt.Sprintf("include[%d]", i)
		errf := func(format string, args ...any) { d.errAt(d.main, raw, disp, nil, format, args...) }
		pattern, ok := p.(string)
		if !ok {
			errf("expected a file pattern (a string), got %s", tomlType(p))
			continue
		}
		pattern, err := expandEnv(pattern, d.getenv)
		if err != nil {
			errf("%v", err)
			continue
		}
		if pattern == "" {
			errf("must not be empty")
			continue
		}
		abs := pattern
		if !filepath.IsAbs(abs) {
			abs = filepath.Join(d.dir, pattern)
		}
		matches, err := d.files.Glob(abs)
		if err != nil {
			errf("invalid pattern %q: %v", clip(pattern), err)
			continue
		}
		if len(matches) == 0 {
			errf("no file matches %q (patterns are relative to the directory of %s)", clip(pattern), filepath.Base(d.main.file))
			continue
		}
		slices.Sort(matches)
		for _, m := range matches {
			if m == mainAbs {
				if !seen[m+"\x00self"] {
					errf("%q matches the config file itself", clip(pattern))
					seen[m+"\x00self"] = true
				}
				continue
			}
			if seen[m] {
				continue // matched by an earlier pattern
			}
			seen[m] = true
			if len(d.sources) > maxIncludedFiles {
				errf("more than %d included files", maxIncludedFiles)
				return out
			}
			if t := d.include(m, errf); t != nil {
				out = append(out, t)
			}
		}
	}
	return out
}

// include reads and decodes one included file.
func (d *decoder) include(abs string, errf func(string, ...any)) *table {
	name := abs
	if rel, err := filepath.Rel(d.dir, abs); err == nil && !strings.HasPrefix(rel, "..") {
		name = filepath.Join(filepath.Dir(d.main.file), rel)
	}
	data, err := d.files.ReadFile(abs)
	if err != nil {
		errf("cannot read %s: %v", name, unwrapPath(err))
		return nil
	}
	s := &source{file: name, src: string(data)}
	d.sources = append(d.sources, s)
	var root map[string]any
	if _, err := toml.Decode(s.src, &root); err != nil {
		d.errs = append(d.errs, syntaxError(name, s.src, err)...)
		return nil
	}
	return &table{d: d, s: s, m: root}
}

// finishIncluded reports the keys of an included file other than
// template, modbus and opcua.
func (t *table) finishIncluded() {
	for _, k := range sortedKeys(t.m) {
		switch k {
		case "template", "modbus", "opcua":
		case "include":
			t.get(k)
			t.errf(k, "an included file may not include others: list every pattern in the include of %s", filepath.Base(t.d.main.file))
		case "gateway", "mqtt", "buffer", "metrics":
			t.get(k)
			t.errf(k, "not allowed in an included file, which may hold only [[template]], [[modbus]] and [[opcua]]: put [%s] in %s", k, filepath.Base(t.d.main.file))
		}
	}
	t.finish()
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// collectTemplates checks every [[template]] of every file once.
func (d *decoder) collectTemplates(files []*table) {
	d.templates = map[string]*template{}
	seen := map[string]*table{}
	for _, f := range files {
		for _, t := range f.array("template") {
			d.template(t, seen)
		}
	}
}

func (d *decoder) template(t *table, seen map[string]*table) {
	tp := &template{t: t}
	name, ok := t.nameElem("template")
	if ok {
		_, dup := seen[name]
		t.checkDuplicate(seen, "template", name)
		ok = !dup
	}
	if v, has := t.get("vars"); has {
		tp.vars = d.declaredVars(t, v)
	}
	tagNames := map[string]*table{}
	for _, tt := range t.array("tag") {
		n, nameOK := tt.nameElem("tag")
		if !nameOK {
			continue
		}
		_, dup := tagNames[n]
		tt.checkDuplicate(tagNames, "tag", n)
		if !dup {
			tp.tags = append(tp.tags, tt)
		}
	}
	if len(tp.tags) == 0 && t.emptyOrAbsent("tag") {
		t.missing("tag", "a template needs at least one tag: add a [[template.tag]] table after this [[template]]")
	}
	t.finish()
	d.templateKind(tp)
	if ok {
		tp.name = name
		d.templates[name] = tp
		d.templateList = append(d.templateList, tp)
	}
}

// declaredVars reads a template's vars: placeholder names.
func (d *decoder) declaredVars(t *table, v any) []string {
	list, ok := v.([]any)
	if !ok {
		t.errf("vars", "expected an array of placeholder names such as [\"line\"], got %s", tomlType(v))
		return nil
	}
	var out []string
	for i, e := range list {
		raw := append(t.child("vars"), elem(i))
		disp := t.path("vars") + "[" + strconv.Itoa(i) + "]"
		s, ok := e.(string)
		switch {
		case !ok:
			d.errAt(t.s, raw, disp, nil, "expected a placeholder name (a string), got %s", tomlType(e))
		case !validEnvName(s):
			d.errAt(t.s, raw, disp, nil, "invalid placeholder name %q: use letters, digits and '_', not starting with a digit", clip(s))
		case slices.Contains(out, s):
			d.errAt(t.s, raw, disp, nil, "placeholder %q is declared twice", s)
		default:
			out = append(out, s)
		}
	}
	return out
}

// templateKind tells a template's kind by its tags' keys.
func (d *decoder) templateKind(tp *template) {
	for _, tt := range tp.tags {
		for _, k := range sortedKeys(tt.m) {
			kind := ""
			switch {
			case slices.Contains(modbusOnlyTagKeys, k):
				kind = kindModbus
			case slices.Contains(opcuaOnlyTagKeys, k):
				kind = kindOPCUA
			default:
				continue
			}
			switch tp.kind {
			case "":
				tp.kind, tp.kindT, tp.kindK = kind, tt, k
			case kind:
			default:
				if !tp.mixed {
					p := tp.kindT.s.positions().lookup(tp.kindT.child(tp.kindK))
					tt.errf(k, "%s key, but %s has %s key %q (line %d): a template is for either [[modbus]] or [[opcua]] devices",
						kindName(kind), tp.kindT.disp, kindName(tp.kind), tp.kindK, p.line)
				}
				tp.mixed = true
			}
		}
	}
}

func kindTitle(kind string) string {
	if kind == kindOPCUA {
		return "OPC UA"
	}
	return "Modbus"
}

func kindName(kind string) string {
	if kind == kindOPCUA {
		return "an OPC UA"
	}
	return "a Modbus"
}

// deviceTags returns the tag tables of a device: its own, or, with
// template = "NAME", the template's expanded for it followed by its own
// that add to them.
func (d *decoder) deviceTags(t *table, kind string) []*table {
	name, hasTemplate := "", t.has("template")
	templateOK := t.str("template", &name)
	vars := t.sub("vars")
	own := t.array("tag")
	if !hasTemplate {
		if t.has("vars") {
			t.errf("vars", "placeholders only apply to a device with template = \"...\"")
		}
		return own
	}
	if !templateOK {
		return own
	}
	tp := d.templates[name]
	if tp == nil {
		var names []string
		for n := range d.templates {
			names = append(names, n)
		}
		if s := suggest(name, names); s != "" {
			t.errf("template", "unknown template %q, did you mean %q?", clip(name), s)
		} else {
			t.errf("template", "unknown template %q: define it in a [[template]] table (here or in an included file)", clip(name))
		}
		return own
	}
	tp.used = true
	use := &templateUse{dev: t.disp, t: t}
	values := d.deviceVars(vars, tp, use)
	if tp.mixed {
		return own
	}
	if tp.kind != "" && tp.kind != kind {
		tp.kindT.use = use
		tp.kindT.errf(tp.kindK, "%s key, but template %q is used by a [[%s]] device: its tags must be %s tags", kindName(tp.kind), tp.name, kind, kindTitle(kind))
		tp.kindT.use = nil
		return own
	}

	overrides := map[string]*table{}
	for _, ot := range own {
		if n, ok := ot.m["name"].(string); ok {
			if n, err := expandEnv(n, d.getenv); err == nil {
				if _, dup := overrides[n]; !dup {
					overrides[n] = ot
				}
			}
		}
	}
	var out []*table
	used := map[*table]bool{}
	for _, tt := range tp.tags {
		x := expandTag(tp, tt, values, use)
		m := x.m
		tagName, _ := tt.m["name"].(string)
		if ot := overrides[tagName]; ot != nil && tagName != "" {
			used[ot] = true
			ot.disp = t.disp + ".tag[" + tagName + "]"
			x.origin = map[string]*table{}
			for k, v := range ot.m {
				if k == "name" {
					continue
				}
				m[k] = v
				x.origin[k] = ot
			}
		}
		out = append(out, x)
	}
	for _, ot := range own {
		if !used[ot] {
			out = append(out, ot)
		}
	}
	return out
}

// expandTag returns a template's tag with its placeholders filled from
// values, to be decoded for use.
func expandTag(tp *template, tt *table, values map[string]string, use *templateUse) *table {
	m := make(map[string]any, len(tt.m))
	for k, v := range tt.m {
		if s, ok := v.(string); ok && k != "name" {
			v = fillVars(s, values)
		}
		m[k] = v
	}
	return &table{d: tt.d, s: tt.s, m: m, raw: tt.raw, disp: fmt.Sprintf("%s.tag[%d]", tp.t.disp, tt.index), index: tt.index, use: use}
}

// checkUnused checks the tags of every template no device uses as those
// of a device of its kind with the default settings, its placeholders
// filled with "1": a register map written before its devices is checked
// too.
func (d *decoder) checkUnused() {
	for _, tp := range d.templateList {
		if tp.used || tp.mixed || tp.kind == "" {
			continue
		}
		values := map[string]string{}
		for _, v := range tp.vars {
			values[v] = "1"
		}
		use := &templateUse{dev: fmt.Sprintf("no device: checked as the tags of a [[%s]] device with the default settings", tp.kind)}
		seen := map[string]*table{}
		for _, tt := range tp.tags {
			x := expandTag(tp, tt, values, use)
			if tp.kind == kindModbus {
				dev := defaultModbusDevice()
				d.modbusTag(x, &dev, seen)
			} else {
				d.opcuaTag(x, seen)
			}
		}
	}
}

// deviceVars reads a device's vars: a value for every placeholder of its
// template, and nothing else.
func (d *decoder) deviceVars(vars *table, tp *template, use *templateUse) map[string]string {
	values := map[string]string{}
	if vars == nil {
		return values
	}
	for _, k := range sortedKeys(vars.m) {
		if !slices.Contains(tp.vars, k) {
			vars.get(k)
			if len(tp.vars) == 0 {
				vars.errf(k, "template %q declares no placeholders (declare them in its vars, at %s)", tp.name, tp.t.s.at(tp.t.raw))
			} else if s := suggest(k, tp.vars); s != "" {
				vars.errf(k, "template %q declares no placeholder %q, did you mean %q?", tp.name, clip(k), s)
			} else {
				vars.errf(k, "template %q declares no placeholder %q (it declares %s)", tp.name, clip(k), quoteList(tp.vars))
			}
		}
	}
	for _, k := range tp.vars {
		v, ok := vars.m[k]
		switch {
		case !ok:
			values[k] = "" // reported here, not again as an environment variable
			vars.missing(k, "template %q (%s) needs a value for its placeholder ${%s}: add vars = { %s = \"...\" } to %s", tp.name, tp.t.s.at(tp.t.raw), k, k, use.dev)
		case tomlType(v) == "integer":
			vars.get(k)
			values[k] = strconv.FormatInt(v.(int64), 10)
		default:
			var s string
			if vars.str(k, &s) {
				values[k] = s
			}
		}
	}
	return values
}

// fillVars replaces every ${NAME} in s whose NAME is in vars with its
// value, written so that expandEnv gives it back literally. $$ and every
// other ${...} are left for expandEnv.
func fillVars(s string, vars map[string]string) string {
	if len(vars) == 0 || !strings.Contains(s, "${") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '$' || i+1 >= len(s) {
			b.WriteByte(s[i])
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteString("$$")
			i++
			continue
		case '{':
			if end := strings.IndexByte(s[i+2:], '}'); end >= 0 {
				if v, ok := vars[s[i+2:i+2+end]]; ok {
					b.WriteString(strings.ReplaceAll(v, "$", "$$"))
					i += 2 + end
					continue
				}
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// unsetEnv returns the name of the first ${NAME} (without a default) in s
// whose environment variable is unset or empty, or "".
func unsetEnv(s string, getenv func(string) string) string {
	for i := 0; i+1 < len(s); i++ {
		if s[i] != '$' {
			continue
		}
		if s[i+1] == '$' {
			i++
			continue
		}
		if s[i+1] != '{' {
			continue
		}
		end := strings.IndexByte(s[i+2:], '}')
		if end < 0 {
			return ""
		}
		name := s[i+2 : i+2+end]
		if validEnvName(name) && getenv(name) == "" {
			return name
		}
		i += 2 + end
	}
	return ""
}
