package config

import (
	"errors"
	"strings"
	"testing"
)

// A 1 MB key or value is not echoed in full: every message quotes at most
// its first 64 bytes and says how long it was (issue 21).
func TestErrorsClipLongKeysAndValues(t *testing.T) {
	long := strings.Repeat("k", 1<<20)
	cases := map[string]string{
		"unknown key":    "[gateway]\nid = \"g\"\n" + long + " = 1\n",
		"unknown in tag": "[gateway]\nid = \"g\"\n[[modbus]]\nname = \"p\"\nurl = \"tcp://h:502\"\n  [[modbus.tag]]\n  name = \"t\"\n  table = \"holding\"\n  address = 0\n  type = \"uint16\"\n  " + long + " = 1\n",
		"bad name":       "[gateway]\nid = \"" + long + "/\"\n",
		"bad enum":       "[gateway]\nid = \"g\"\n[mqtt]\npublish = \"" + long + "\"\n",
		"bad url":        "[gateway]\nid = \"g\"\n[mqtt]\nurl = \"mqtt://" + long + "\"\n",
		"bad size":       "[gateway]\nid = \"g\"\n[buffer]\nmax_bytes = \"" + long + "\"\n",
		"bad node":       "[gateway]\nid = \"g\"\n[[opcua]]\nname = \"c\"\nendpoint = \"opc.tcp://h:4840\"\n  [[opcua.tag]]\n  name = \"t\"\n  node = \"" + long + "\"\n",
		"bad env":        "[gateway]\nid = \"g\"\nstate_dir = \"${" + long + "\"\n",
		"bad duration":   "[gateway]\nid = \"g\"\n[mqtt]\nkeep_alive = \"" + long + "\"\n",
		"wrong type":     "[gateway]\nid = \"g\"\n[mqtt]\nqos = \"" + long + "\"\n",
	}
	for name, src := range cases {
		_, err := Parse("long.toml", []byte(src), func(string) string { return "" })
		var errs Errors
		if !errors.As(err, &errs) {
			t.Errorf("%s: %v, want Errors", name, err)
			continue
		}
		for _, e := range errs {
			if s := e.Error(); len(s) > 400 {
				t.Errorf("%s: %d-byte message %.200q…", name, len(s), s)
			}
		}
	}
	_, err := Parse("long.toml", []byte(cases["unknown key"]), nil)
	if want := "long.toml:3:1: gateway." + strings.Repeat("k", 64) + "…(1048576 bytes): unknown key"; err == nil || err.Error() != want {
		t.Errorf("got %.300q, want %q", err, want)
	}
}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"mqtt://user:secret@host:1883":                  "mqtt://user:xxxxx@host:1883",
		"mqtts://u:p/a?s#s@host:8883/x":                 "mqtts://u:xxxxx@host:8883/x",
		"user:secret@host:1883":                         "user:xxxxx@host:1883",
		"mqtt://host:1883":                              "mqtt://host:1883",
		"mqtt://user@host:1883":                         "mqtt://user@host:1883",
		"opc.tcp://a:b@c@host:4840":                     "opc.tcp://a:xxxxx@host:4840",
		"tcp://10.0.0.5:502":                            "tcp://10.0.0.5:502",
		"mqtt://u:" + strings.Repeat("s", 100) + "@h:1": "mqtt://u:xxxxx@h:1",
		"mqtt://u:p@" + strings.Repeat("h", 100) + ":1": "mqtt://u:xxxxx@" + strings.Repeat("h", 100) + ":1",
	} {
		if got := RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

// Device and tag names may be letters and digits of any script; the
// gateway id stays ASCII (it is in the MQTT client id). Every refusal says
// which character is wrong.
func TestCheckName(t *testing.T) {
	cases := []struct {
		name, kind string
		want       string // "" valid, else part of the error
	}{
		{"пресс", "device", ""},
		{"давление_1", "tag", ""},
		{"温度", "tag", ""},
		{"Druck-2", "device", ""},
		{"e\u0301t\u00e9", "tag", ""}, // a combining accent
		{"٣", "tag", ""},              // an Arabic-Indic digit
		{"line1", "", ""},
		{"пресс", "", `only ASCII letters A-Z and a-z, digits 0-9, '_' and '-' are allowed (it is part of the MQTT client id and topic prefix), not 'п' (U+043F)`},
		{"a b", "device", `only letters and digits (of any script), '_' and '-' are allowed, not U+0020`},
		{"a+b", "device", `not '+' (U+002B)`},
		{"a/b", "tag", `not '/' (U+002F)`},
		{"a#b", "tag", `not '#' (U+0023)`},
		{"a.b", "tag", `not '.' (U+002E)`},
		{"a\x00b", "tag", `not U+0000`},
		{"a\u200bb", "tag", `not U+200B`},
		{"🔥", "tag", `not '🔥' (U+1F525)`},
		{"a\xffb", "tag", `not invalid UTF-8`},
		{strings.Repeat("я", 65), "tag", `is longer than 128 bytes`},
		{"status", "tag", `"status" is reserved`},
		{"deadletter", "device", `"deadletter" is reserved`},
		{"deadletter", "tag", ""}, // P/DEVICE/deadletter collides with nothing
	}
	for _, c := range cases {
		err := checkName(c.name, c.kind)
		switch {
		case c.want == "" && err != nil:
			t.Errorf("%s %q: %v", c.kind, c.name, err)
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s %q: %v, want %q", c.kind, c.name, err, c.want)
		}
	}
}
