package config

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// writeFiles writes name -> text under dir and returns dir/first.
func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, text := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func loadIn(t *testing.T, dir string, getenv func(string) string) (*Config, error) {
	t.Helper()
	path := filepath.Join(dir, "ferry.toml")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return Parse(path, data, getenv)
}

// TestTemplateExpand: a device gets the template's tags, in order, with
// its own overriding key by key and adding; placeholders are filled from
// the device's vars while ${ENV} and $$ keep their meaning.
func TestTemplateExpand(t *testing.T) {
	dir := writeFiles(t, map[string]string{"ferry.toml": `
[gateway]
id = "gw1"

[[template]]
name = "meter"
  [[template.tag]]
  name = "energy"
  table = "holding"
  address = 0
  type = "uint32"
  order = "CDAB"
  scale = 0.1

  [[template.tag]]
  name = "limit"
  table = "holding"
  address = 10
  type = "uint16"
  writable = true
  max = 100

[[template]]
name = "press"
vars = ["line", "cell"]
  [[template.tag]]
  name = "speed"
  node = "ns=2;s=Line${line}.Cell${cell}.Speed"

  [[template.tag]]
  name = "state"
  node = "ns=2;s=${PLANT}.L${line}.$${cell}"

[[modbus]]
name = "meter01"
template = "meter"
url = "tcp://10.0.0.1:502"
unit = 1

[[modbus]]
name = "meter02"
template = "meter"
url = "tcp://10.0.0.1:502"
unit = 2
  [[modbus.tag]]
  name = "energy"
  scale = 0.01

  [[modbus.tag]]
  name = "temperature"
  table = "input"
  address = 20
  type = "int16"

[[opcua]]
name = "press3"
template = "press"
endpoint = "opc.tcp://10.0.0.9:4840"
vars = { line = 3, cell = "a$b" }
`})
	c, err := loadIn(t, dir, func(k string) string {
		if k == "PLANT" {
			return "Plant1"
		}
		return ""
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.Modbus) != 2 || len(c.OPCUA) != 1 {
		t.Fatalf("%d modbus and %d opcua devices, want 2 and 1", len(c.Modbus), len(c.OPCUA))
	}
	m1, m2 := c.Modbus[0], c.Modbus[1]
	if m1.Name != "meter01" || m1.Unit != 1 || m2.Name != "meter02" || m2.Unit != 2 {
		t.Errorf("devices %s unit %d, %s unit %d", m1.Name, m1.Unit, m2.Name, m2.Unit)
	}
	energy := ModbusTag{Name: "energy", Table: "holding", Address: 0, Type: "uint32", Order: "CDAB", Bit: -1, Scale: 0.1, Interval: m1.Interval}
	limit := ModbusTag{Name: "limit", Table: "holding", Address: 10, Type: "uint16", Order: "ABCD", Bit: -1, Scale: 1, Interval: m1.Interval, Writable: true, Max: ptr(100)}
	limit.MaxInt = new(int64)
	*limit.MaxInt = 100
	if want := []ModbusTag{energy, limit}; !reflect.DeepEqual(m1.Tags, want) {
		t.Errorf("meter01 tags:\n got %+v\nwant %+v", m1.Tags, want)
	}
	energy2 := energy
	energy2.Scale = 0.01 // only the scale is overridden
	temp := ModbusTag{Name: "temperature", Table: "input", Address: 20, Type: "int16", Order: "ABCD", Bit: -1, Scale: 1, Interval: m2.Interval}
	if want := []ModbusTag{energy2, limit, temp}; !reflect.DeepEqual(m2.Tags, want) {
		t.Errorf("meter02 tags:\n got %+v\nwant %+v", m2.Tags, want)
	}
	var nodes []string
	for _, tag := range c.OPCUA[0].Tags {
		nodes = append(nodes, tag.Name+"="+tag.Node)
	}
	if got, want := strings.Join(nodes, " "), "speed=ns=2;s=Line3.Cella$b.Speed state=ns=2;s=Plant1.L3.${cell}"; got != want {
		t.Errorf("nodes %q, want %q", got, want)
	}
}

// TestInclude: included files add templates and devices after the main
// file's own, each pattern's files in name order, a file matched twice
// counting once.
func TestInclude(t *testing.T) {
	device := func(name string, unit int) string {
		return "[[modbus]]\nname = \"" + name + "\"\ntemplate = \"meter\"\nurl = \"tcp://10.0.0.1:502\"\nunit = " + string(rune('0'+unit)) + "\n"
	}
	dir := writeFiles(t, map[string]string{
		"ferry.toml": `include = ["meters/*.toml", "meters/b.toml", "../` + "other" + `/*.toml"]
[gateway]
id = "gw1"
` + device("main", 1),
		"meters/b.toml":        device("b", 3),
		"meters/a.toml":        device("a", 2),
		"meters/template.toml": "[[template]]\nname = \"meter\"\n  [[template.tag]]\n  name = \"energy\"\n  table = \"holding\"\n  address = 0\n  type = \"uint32\"\n",
	})
	other := filepath.Join(filepath.Dir(dir), "other")
	if err := os.MkdirAll(other, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(other) })
	if err := os.WriteFile(filepath.Join(other, "c.toml"), []byte(device("c", 4)), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := loadIn(t, dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, d := range c.Modbus {
		got = append(got, d.Name)
		if len(d.Tags) != 1 || d.Tags[0].Name != "energy" {
			t.Errorf("%s: tags %+v", d.Name, d.Tags)
		}
	}
	if strings.Join(got, ",") != "main,a,b,c" {
		t.Errorf("devices %v, want main,a,b,c", got)
	}
}

// TestIncludeErrors: what an include may not do, with the exact message.
func TestIncludeErrors(t *testing.T) {
	for _, tc := range []struct {
		name  string
		files map[string]string
		want  string
	}{
		{"self", map[string]string{"ferry.toml": "include = [\"*.toml\"]\n[gateway]\nid = \"gw\"\n"},
			`ferry.toml:1:12: include[0]: "*.toml" matches the config file itself`},
		{"not an array", map[string]string{"ferry.toml": "include = \"m/*.toml\"\n[gateway]\nid = \"gw\"\n"},
			`ferry.toml:1:1: include: expected an array of file patterns such as ["meters/*.toml"], got string`},
		{"bad pattern", map[string]string{"ferry.toml": "include = [\"m/[.toml\"]\n[gateway]\nid = \"gw\"\n"},
			`ferry.toml:1:12: include[0]: invalid pattern "m/[.toml": syntax error in pattern`},
		{"syntax in included", map[string]string{"ferry.toml": "include = [\"m/*.toml\"]\n[gateway]\nid = \"gw\"\n", "m/x.toml": "\n[[modbus]]\nname = = 1\n"},
			`m/x.toml:3:8: modbus.name: expected value but found '=' instead`},
		{"a directory", map[string]string{"ferry.toml": "include = [\"m/*\"]\n[gateway]\nid = \"gw\"\n", "m/sub/x.toml": ""},
			`ferry.toml:1:12: include[0]: cannot read m/sub: is a directory`},
		{"unknown key in included", map[string]string{"ferry.toml": "include = [\"m/*.toml\"]\n[gateway]\nid = \"gw\"\n", "m/x.toml": "[[modbuss]]\n"},
			`m/x.toml:1:1: modbuss: unknown key, did you mean "modbus"?`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := writeFiles(t, tc.files)
			_, err := loadIn(t, dir, nil)
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("err = %v, want Errors", err)
			}
			got := strings.ReplaceAll(err.Error(), dir+string(filepath.Separator), "")
			if got != tc.want {
				t.Errorf("got  %s\nwant %s", got, tc.want)
			}
		})
	}
}

// TestFillVars: only declared names are replaced, values are literal,
// everything else is left for expandEnv.
func TestFillVars(t *testing.T) {
	vars := map[string]string{"line": "3", "cash": "$x"}
	for _, tc := range []struct{ in, want string }{
		{"L${line}", "L3"},
		{"${line}${line}", "33"},
		{"$${line}", "$${line}"},
		{"${LINE}", "${LINE}"},
		{"${line:-1}", "${line:-1}"},
		{"${cash}", "$$x"},
		{"${line", "${line"},
		{"$", "$"},
	} {
		got := fillVars(tc.in, vars)
		if got != tc.want {
			t.Errorf("fillVars(%q) = %q, want %q", tc.in, got, tc.want)
		}
		if v, err := expandEnv(got, func(string) string { return "env" }); err == nil && tc.in == "${cash}" && v != "$x" {
			t.Errorf("expanded %q, want the literal value $x", v)
		}
	}
}

// TestTemplateKeysKnown: the lists that tell a template's kind hold keys
// the tag decoders read, and a key of one kind only.
func TestTemplateKeysKnown(t *testing.T) {
	d := &decoder{main: &source{file: "x"}, getenv: func(string) string { return "" }}
	read := func(f func(*table)) []string {
		tt := &table{d: d, s: d.main, m: map[string]any{}}
		f(tt)
		return tt.known
	}
	mb := read(func(tt *table) { d.modbusTag(tt, &ModbusDevice{MaxRegistersPerRequest: 125}, map[string]*table{}) })
	ua := read(func(tt *table) { d.opcuaTag(tt, map[string]*table{}) })
	for _, k := range modbusOnlyTagKeys {
		if !contains(mb, k) || contains(ua, k) {
			t.Errorf("%s: read by modbus %v, by opcua %v", k, contains(mb, k), contains(ua, k))
		}
	}
	for _, k := range opcuaOnlyTagKeys {
		if !contains(ua, k) || contains(mb, k) {
			t.Errorf("%s: read by opcua %v, by modbus %v", k, contains(ua, k), contains(mb, k))
		}
	}
	for _, k := range mb {
		if !contains(ua, k) && !contains(modbusOnlyTagKeys, k) {
			t.Errorf("modbus tag key %s is in neither list", k)
		}
	}
	for _, k := range ua {
		if !contains(mb, k) && !contains(opcuaOnlyTagKeys, k) {
			t.Errorf("opcua tag key %s is in neither list", k)
		}
	}
}

func contains(ss []string, s string) bool {
	for _, x := range ss {
		if x == s {
			return true
		}
	}
	return false
}
