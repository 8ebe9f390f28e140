package repotest

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// testPackages parses scripts/test-packages: package name -> the commands
// the tests run from it.
func testPackages(t *testing.T) map[string][]string {
	t.Helper()
	data, err := os.ReadFile("../../scripts/test-packages")
	if err != nil {
		t.Fatal(err)
	}
	pkgs := map[string][]string{}
	for line := range strings.Lines(string(data)) {
		line, _, _ = strings.Cut(line, "#")
		if f := strings.Fields(line); len(f) > 0 {
			pkgs[f[0]] = f[1:]
		}
	}
	if len(pkgs) == 0 {
		t.Fatal("scripts/test-packages lists no package")
	}
	return pkgs
}

// TestOneTestCommand: the README's test command is scripts/test, and
// .ci/run runs exactly it.
func TestOneTestCommand(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, quick, _ := strings.Cut(string(readme), "## Quick start")
	quick, _, _ = strings.Cut(quick, "\n## ")
	if !strings.Contains(quick, "```sh\nscripts/test\n```") {
		t.Error("README's Quick start does not show scripts/test as a command")
	}
	for _, want := range []string{"Go 1.26", "Node.js 20", "scripts/test-packages"} {
		if !strings.Contains(quick, want) {
			t.Errorf("README's Quick start does not mention %q", want)
		}
	}
	ci, err := os.ReadFile("../../.ci/run")
	if err != nil {
		t.Fatal(err)
	}
	var commands []string
	for line := range strings.Lines(string(ci)) {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			commands = append(commands, line)
		}
	}
	// Only a cd to the repository, then the command itself.
	if len(commands) == 0 || commands[len(commands)-1] != "exec scripts/test" {
		t.Errorf(".ci/run should end with exec scripts/test; it runs %q", commands)
	}
	for _, c := range commands[:max(len(commands)-1, 0)] {
		if !strings.HasPrefix(c, "cd ") {
			t.Errorf(".ci/run runs %q before scripts/test; it should run exactly the README's command", c)
		}
	}
}

// TestTestPackagesCoverCommands: every external command the Go code runs is
// installed by scripts/test, from scripts/test-packages or as one of its
// prerequisites, so a fresh box can run the tests.
func TestTestPackagesCoverCommands(t *testing.T) {
	provided := map[string]bool{"go": true, "node": true, "npm": true} // prerequisites scripts/test checks
	for _, cmds := range testPackages(t) {
		for _, c := range cmds {
			provided[c] = true
		}
	}
	run := regexp.MustCompile(`exec\.(?:LookPath|Command)\("([^"]+)"|exec\.CommandContext\([A-Za-z_.]+,\s*"([^"]+)"|\bneed\(t, "([^"]+)"`)
	found := map[string]string{}
	err := filepath.WalkDir("../..", func(path string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "node_modules" || (strings.HasPrefix(d.Name(), ".") && path != "../..")) {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") {
			return nil
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, m := range run.FindAllStringSubmatch(string(data), -1) {
			name := m[1] + m[2] + m[3]
			if !strings.Contains(name, "/") { // a path is the repository's own script or a built binary
				found[name] = path
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"mosquitto", "socat", "node"} {
		if found[want] == "" {
			t.Fatalf("the scan found no use of %s; it no longer sees the commands the tests run (found %v)", want, found)
		}
	}
	for name, path := range found {
		if !provided[name] {
			t.Errorf("%s runs %q, which scripts/test does not install: add its Debian package to scripts/test-packages", path, name)
		}
	}
}

// TestTestCommandPrerequisites runs scripts/test with a Go or Node.js that
// is too old: it stops with a message naming the version it needs, before
// apt-get runs (a stand-in apt-get records any call).
func TestTestCommandPrerequisites(t *testing.T) {
	script, err := filepath.Abs("../../scripts/test")
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, goVersion, nodeVersion string
		want                         []string // in the message
		apt                          bool     // apt-get is reached
	}{
		{"go too old", "go1.19.8", "20.20.2", []string{"Go 1.19.8", "Go 1.26.0 or newer", "go.mod"}, false},
		{"go release candidate too old", "go1.25rc1", "20.20.2", []string{"Go 1.26.0 or newer"}, false},
		{"node too old", "go1.26.0", "18.20.4", []string{"Node.js v18.20.4", "20 or newer"}, false},
		{"both new enough", "go1.27.1", "22.1.0", nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bin := t.TempDir()
			aptLog := filepath.Join(bin, "apt.log")
			major, _, _ := strings.Cut(tc.nodeVersion, ".")
			fakes := map[string]string{
				"go":      "[ \"$1 $2\" = 'env GOVERSION' ] && echo " + tc.goVersion + " && exit 0\nexit 1\n",
				"node":    "case $1 in -p) echo " + major + ";; --version) echo v" + tc.nodeVersion + ";; esac\n",
				"npm":     "exit 0\n",
				"apt-get": "echo \"$*\" >> " + aptLog + "\nexit 1\n",
				"sudo":    "exit 1\n",
			}
			for name, body := range fakes {
				if err := os.WriteFile(filepath.Join(bin, name), []byte("#!/bin/sh\n"+body), 0o755); err != nil {
					t.Fatal(err)
				}
			}
			cmd := exec.Command(script)
			cmd.Env = []string{"PATH=" + bin + ":/usr/bin:/bin", "HOME=" + t.TempDir(), "LANG=C.UTF-8"}
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("scripts/test passed with stand-in tools:\n%s", out)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("message lacks %q:\n%s", w, out)
				}
			}
			calls, _ := os.ReadFile(aptLog)
			if !tc.apt {
				if len(calls) > 0 {
					t.Errorf("apt-get ran although a prerequisite is missing: %s", calls)
				}
				return
			}
			// apt-get update comes first: a fresh box has no package lists.
			lines := strings.Split(strings.TrimSpace(string(calls)), "\n")
			if len(lines) == 0 || lines[0] != "update" {
				t.Fatalf("apt-get calls %q, want update first", lines)
			}
		})
	}
}

// TestTestCommandInstallsPackages: with the prerequisites present,
// scripts/test updates the package lists, then installs exactly the
// packages of scripts/test-packages.
func TestTestCommandInstallsPackages(t *testing.T) {
	script, err := filepath.Abs("../../scripts/test")
	if err != nil {
		t.Fatal(err)
	}
	bin := t.TempDir()
	aptLog := filepath.Join(bin, "apt.log")
	fakes := map[string]string{
		"go":   "[ \"$1 $2\" = 'env GOVERSION' ] && echo go1.26.0 && exit 0\nexit 1\n",
		"node": "case $1 in -p) echo 20;; --version) echo v20.0.0;; esac\n",
		"npm":  "exit 0\n",
		// Update succeeds; install records its arguments and stops the script.
		"apt-get": "echo \"$*\" >> " + aptLog + "\n[ \"$1\" = update ]\n",
		"sudo":    "exit 1\n",
	}
	for name, body := range fakes {
		if err := os.WriteFile(filepath.Join(bin, name), []byte("#!/bin/sh\n"+body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(script)
	cmd.Env = []string{"PATH=" + bin + ":/usr/bin:/bin", "HOME=" + t.TempDir(), "LANG=C.UTF-8"}
	if out, err := cmd.CombinedOutput(); err == nil {
		t.Fatalf("scripts/test went on after apt-get install failed:\n%s", out)
	}
	calls, err := os.ReadFile(aptLog)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(calls)), "\n")
	if len(lines) != 2 || lines[0] != "update" {
		t.Fatalf("apt-get calls %q, want update then install", lines)
	}
	installed := strings.Fields(lines[1])
	if !slices.Equal(installed[:3], []string{"install", "-y", "--no-install-recommends"}) {
		t.Errorf("apt-get %s, want install -y --no-install-recommends PACKAGES", lines[1])
	}
	var want []string
	for p := range testPackages(t) {
		want = append(want, p)
	}
	got := slices.Clone(installed[3:])
	slices.Sort(want)
	slices.Sort(got)
	if !slices.Equal(got, want) {
		t.Errorf("apt-get installs %q, want the packages of scripts/test-packages %q", got, want)
	}
	for _, p := range []string{"mosquitto", "socat", "systemd", "gcc", "git", "ca-certificates"} {
		if !slices.Contains(got, p) {
			t.Errorf("scripts/test does not install %s", p)
		}
	}
}
