package repotest

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/ferry-gateway/ferry/config"
)

func need(t *testing.T, tool, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		t.Fatalf("%s not found: install it (apt-get install -y %s)", tool, pkg)
	}
	return p
}

// TestSystemdUnit runs systemd-analyze on the unit as CI must: verify is
// clean and the offline security exposure is 2.0 or lower.
func TestSystemdUnit(t *testing.T) {
	analyze := need(t, "systemd-analyze", "systemd")
	unit, err := os.ReadFile("../../systemd/ferry.service")
	if err != nil {
		t.Fatal(err)
	}
	// verify checks that ExecStart binaries exist; point them at one that does.
	dir := t.TempDir()
	stand := filepath.Join(dir, "ferry")
	if err := os.Symlink("/bin/true", stand); err != nil {
		t.Fatal(err)
	}
	copyPath := filepath.Join(dir, "ferry.service")
	if err := os.WriteFile(copyPath, []byte(strings.ReplaceAll(string(unit), "/usr/bin/ferry", stand)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", copyPath).CombinedOutput()
	if err != nil || len(strings.TrimSpace(string(out))) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}

	out, err = exec.Command(analyze, "security", "--offline=true", "--no-pager", "../../systemd/ferry.service").CombinedOutput()
	if err != nil {
		t.Fatalf("systemd-analyze security: %v\n%s", err, out)
	}
	m := regexp.MustCompile(`Overall exposure level for ferry\.service: ([0-9.]+)`).FindSubmatch(out)
	if m == nil {
		t.Fatalf("no exposure level in:\n%s", out)
	}
	level, _ := strconv.ParseFloat(string(m[1]), 64)
	if level > 2.0 {
		t.Errorf("exposure level %.1f, want 2.0 or lower:\n%s", level, out)
	}
}

// TestDebPackage builds the amd64 .deb with the packaging script, as a user
// would in a clean checkout, and checks what it installs: the binary
// reports the checkout's commit (not "unknown", not "-dirty"), the build
// leaves the checkout clean, and the package ships its copyright file and
// /etc/default/ferry, whose variables let the example config pass check.
// (scripts/test builds arm64 and armhf too.)
func TestDebPackage(t *testing.T) {
	need(t, "dpkg-deb", "dpkg")
	git := need(t, "git", "git")
	repo := snapshot(t)
	status := func() string {
		b, err := exec.Command(git, "-C", repo, "status", "--porcelain").CombinedOutput()
		if err != nil {
			t.Fatalf("git status: %v\n%s", err, b)
		}
		return string(b)
	}
	before := status()
	if before != "" {
		t.Fatalf("the snapshot is not clean before the build:\n%s", before)
	}
	rev, err := exec.Command(git, "-C", repo, "rev-parse", "--short=12", "HEAD").Output()
	if err != nil {
		t.Fatal(err)
	}
	commit := strings.TrimSpace(string(rev))

	// The default output directory, dist/, inside the checkout.
	cmd := exec.Command("packaging/build-deb.sh", "amd64")
	cmd.Dir = repo
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build-deb.sh: %v\n%s", err, b)
	}
	if after := status(); after != before {
		t.Errorf("the build left the checkout dirty (git status --porcelain):\n%s", after)
	}
	version := "0.0.0+git" + commit
	deb := filepath.Join(repo, "dist", "ferry_"+version+"_amd64.deb")
	info, err := exec.Command("dpkg-deb", "--info", deb).CombinedOutput()
	if err != nil {
		t.Fatalf("dpkg-deb --info: %v\n%s", err, info)
	}
	for _, want := range []string{"Package: ferry", "Version: " + version, "Architecture: amd64", "conffiles", "postinst"} {
		if !strings.Contains(string(info), want) {
			t.Errorf("dpkg-deb --info lacks %q:\n%s", want, info)
		}
	}
	conffiles, err := exec.Command("dpkg-deb", "--info", deb, "conffiles").CombinedOutput()
	if err != nil {
		t.Fatalf("dpkg-deb --info conffiles: %v\n%s", err, conffiles)
	}
	for _, want := range []string{"/etc/ferry/ferry.toml", "/etc/default/ferry"} {
		if !slices.Contains(strings.Fields(string(conffiles)), want) {
			t.Errorf("conffiles lack %s:\n%s", want, conffiles)
		}
	}
	checkDepends(t, deb)
	contents, err := exec.Command("dpkg-deb", "--contents", deb).CombinedOutput()
	if err != nil {
		t.Fatalf("dpkg-deb --contents: %v\n%s", err, contents)
	}
	for _, want := range []string{
		"-rwxr-xr-x root/root .* ./usr/bin/ferry\n",
		"./lib/systemd/system/ferry.service\n",
		"./usr/lib/sysusers.d/ferry.conf\n",
		"-rw-r----- root/root .* ./etc/ferry/ferry.toml\n",
		"-rw------- root/root .* ./etc/default/ferry\n",
		"-rw-r--r-- root/root .* ./usr/share/doc/ferry/copyright\n",
		"./usr/share/doc/ferry/ferry.toml.example\n",
	} {
		if !regexp.MustCompile(want).Match(contents) {
			t.Errorf("package contents lack %q:\n%s", want, contents)
		}
	}

	x := t.TempDir()
	if b, err := exec.Command("dpkg-deb", "-x", deb, x).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb -x: %v\n%s", err, b)
	}
	// The binary is static, runs, and names the commit it was built from.
	bin := filepath.Join(x, "usr/bin/ferry")
	b, err := exec.Command(bin, "version").CombinedOutput()
	if want := fmt.Sprintf("ferry %s (commit %s, ", version, commit); err != nil || !strings.HasPrefix(string(b), want) {
		t.Errorf("ferry version: %v %q, want prefix %q", err, b, want)
	}
	if file, err := exec.LookPath("file"); err == nil {
		if b, _ := exec.Command(file, bin).Output(); !strings.Contains(string(b), "statically linked") {
			t.Errorf("not a static binary: %s", b)
		}
	}
	checkCopyright(t, filepath.Join(x, "usr/share/doc/ferry/copyright"))
	checkThirdPartyLicences(t, bin, filepath.Join(x, "usr/share/doc/ferry/third-party"))

	// What systemd does: the environment of /etc/default/ferry, then
	// ExecStartPre's check. The starter config passes; so does the full
	// example once the default file's variables are set, and not without
	// them.
	env := defaultFileVars(t, filepath.Join(x, "etc/default/ferry"))
	check := func(config string, env []string) ([]byte, error) {
		c := exec.Command(bin, "check", "-config", config)
		c.Env = env
		return c.CombinedOutput()
	}
	if b, err := check(filepath.Join(x, "etc/ferry/ferry.toml"), env); err != nil {
		t.Errorf("the packaged /etc/ferry/ferry.toml does not pass check: %v\n%s", err, b)
	}
	example := filepath.Join(x, "usr/share/doc/ferry/ferry.toml.example")
	if b, err := check(example, env); err != nil {
		t.Errorf("the packaged example does not pass check with the variables of /etc/default/ferry: %v\n%s", err, b)
	}
	if b, err := check(example, nil); err == nil {
		t.Errorf("the packaged example passed check without any variable; this test no longer shows that /etc/default/ferry is needed:\n%s", b)
	}
}

// checkDepends: every program the unit runs, other than ferry, comes from
// an essential package or one the .deb depends on. (A minimal Debian has no
// /bin/kill: procps is not essential.)
func checkDepends(t *testing.T, deb string) {
	t.Helper()
	out, err := exec.Command("dpkg-deb", "--field", deb, "Depends").Output()
	if err != nil {
		t.Fatalf("dpkg-deb --field Depends: %v", err)
	}
	depends := map[string]bool{}
	for _, d := range strings.Split(string(out), ",") {
		if f := strings.Fields(d); len(f) > 0 {
			depends[f[0]] = true
		}
	}
	for key, values := range unitSection(t, "Service") {
		if !strings.HasPrefix(key, "Exec") {
			continue
		}
		for _, v := range values {
			prog := strings.TrimLeft(strings.Fields(v)[0], "-@+!:")
			if prog == "/usr/bin/ferry" {
				continue
			}
			owner, err := exec.Command("dpkg", "-S", prog).Output()
			if err != nil {
				t.Errorf("%s=%s: no installed package has %s (dpkg -S); install it to run this test", key, v, prog)
				continue
			}
			pkg, _, _ := strings.Cut(strings.TrimSpace(string(owner)), ":")
			essential, _ := exec.Command("dpkg-query", "-W", "-f", "${Essential}", pkg).Output()
			if !depends[pkg] && strings.TrimSpace(string(essential)) != "yes" {
				t.Errorf("%s=%s runs %s from %s, which is not essential and not in the package's Depends (%s)", key, v, prog, pkg, strings.TrimSpace(string(out)))
			}
		}
	}
}

// snapshot copies the working tree's files (tracked and untracked, not
// ignored, as they are now) into a new git repository with one commit: a
// clean checkout of exactly what is being tested, whatever state the
// working tree is in.
func snapshot(t *testing.T) string {
	t.Helper()
	git := need(t, "git", "git")
	list, err := exec.Command(git, "-C", "../..", "ls-files", "-z", "--cached", "--others", "--exclude-standard").Output()
	if err != nil {
		t.Fatalf("git ls-files (the tests need a git checkout): %v", err)
	}
	dst := t.TempDir()
	for _, name := range strings.Split(strings.TrimSuffix(string(list), "\x00"), "\x00") {
		src := filepath.Join("../..", name)
		fi, err := os.Lstat(src)
		if errors.Is(err, fs.ErrNotExist) {
			continue // deleted in the working tree
		}
		if err != nil {
			t.Fatal(err)
		}
		to := filepath.Join(dst, name)
		if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
			t.Fatal(err)
		}
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			target, err := os.Readlink(src)
			if err != nil {
				t.Fatal(err)
			}
			err = os.Symlink(target, to)
			if err != nil {
				t.Fatal(err)
			}
		case fi.Mode().IsRegular():
			data, err := os.ReadFile(src)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(to, data, fi.Mode().Perm()); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, args := range [][]string{
		{"-c", "init.defaultBranch=main", "init", "-q"},
		{"add", "-A"},
		{"-c", "user.name=repotest", "-c", "user.email=repotest@localhost", "-c", "commit.gpgsign=false", "commit", "-q", "-m", "snapshot"},
	} {
		cmd := exec.Command(git, args...)
		cmd.Dir = dst
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, b)
		}
	}
	return dst
}

// defaultFileVars returns the assignments of /etc/default/ferry, each
// uncommented (NAME=value), as an environment.
func defaultFileVars(t *testing.T, path string) []string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var env []string
	for _, m := range regexp.MustCompile(`(?m)^#\s*([A-Za-z_][A-Za-z0-9_]*=.*)$`).FindAllStringSubmatch(string(data), -1) {
		env = append(env, m[1])
	}
	if len(env) == 0 {
		t.Fatalf("%s lists no variables", path)
	}
	return env
}

// checkCopyright: Debian's machine-readable format, Apache-2.0 pointing at
// the system's copy of the licence.
func checkCopyright(t *testing.T, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("the package has no copyright file: %v", err)
	}
	for _, want := range []string{
		"Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n",
		"\nUpstream-Name: ferry\n",
		"\nFiles: *\n",
		"\nLicense: Apache-2.0\n",
		"/usr/share/common-licenses/Apache-2.0",
	} {
		if !strings.Contains(string(data), want) {
			t.Errorf("%s lacks %q:\n%s", path, want, data)
		}
	}
}

// checkThirdPartyLicences: the package carries the licence files of Go's
// standard library and of every module the binary says it contains.
func checkThirdPartyLicences(t *testing.T, bin, dir string) {
	t.Helper()
	out, err := exec.Command("go", "version", "-m", bin).CombinedOutput()
	if err != nil {
		t.Fatalf("go version -m: %v\n%s", err, out)
	}
	mods := []string{"go"}
	for line := range strings.Lines(string(out)) {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "dep" {
			mods = append(mods, f[1]+"@"+f[2])
		}
	}
	if len(mods) < 5 {
		t.Fatalf("go version -m lists only %q:\n%s", mods, out)
	}
	for _, mod := range mods {
		entries, err := os.ReadDir(filepath.Join(dir, mod))
		if err != nil || len(entries) == 0 {
			t.Errorf("no licence file for %s in /usr/share/doc/ferry/third-party: %v", mod, err)
		}
	}
}

// TestLicense: the repository's licence is the Apache License 2.0, word for
// word the text Debian ships.
func TestLicense(t *testing.T) {
	data, err := os.ReadFile("../../LICENSE")
	if err != nil {
		t.Fatalf("no LICENSE at the repository root: %v", err)
	}
	for _, want := range []string{"Apache License", "Version 2.0, January 2004", "END OF TERMS AND CONDITIONS"} {
		if !strings.Contains(string(data), want) {
			t.Errorf("LICENSE lacks %q", want)
		}
	}
	if system, err := os.ReadFile("/usr/share/common-licenses/Apache-2.0"); err == nil && string(system) != string(data) {
		t.Error("LICENSE differs from /usr/share/common-licenses/Apache-2.0")
	}
}

// TestDefaultFileListsVariables: every ${VAR} the shipped configs use is
// listed (commented) in /etc/default/ferry, so `ferry check` under systemd
// can be made to pass by setting them there.
func TestDefaultFileListsVariables(t *testing.T) {
	listed := map[string]bool{}
	for _, kv := range defaultFileVars(t, "../../packaging/default-ferry") {
		name, _, _ := strings.Cut(kv, "=")
		listed[name] = true
	}
	for _, file := range []string{"../../examples/ferry.toml", "../../packaging/ferry.toml"} {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		// The config loader says which variables it looks up.
		used := map[string]bool{}
		if _, err := config.Parse(file, data, func(name string) string { used[name] = true; return "x" }); err != nil {
			t.Fatalf("%s: %v", file, err)
		}
		for name := range used {
			if !listed[name] {
				t.Errorf("%s uses ${%s}; packaging/default-ferry does not list it", file, name)
			}
		}
	}
}

// TestUnitEnvironmentFile: the unit reads /etc/default/ferry (optional)
// for both check and run.
func TestUnitEnvironmentFile(t *testing.T) {
	service := unitSection(t, "Service")
	if !slices.Contains(service["EnvironmentFile"], "-/etc/default/ferry") {
		t.Errorf("[Service] has EnvironmentFile=%q, want -/etc/default/ferry", service["EnvironmentFile"])
	}
}

// TestUnitSerialDevices: the serial classes of PCs, USB adapters and the ARM
// boards the packages target are allowed read-write, and nothing else is
// opened up.
func TestUnitSerialDevices(t *testing.T) {
	service := unitSection(t, "Service")
	if got := service["DevicePolicy"]; !slices.Equal(got, []string{"closed"}) {
		t.Errorf("DevicePolicy=%q, want closed", got)
	}
	allowed := map[string]string{}
	for _, v := range service["DeviceAllow"] {
		dev, acc, _ := strings.Cut(v, " ")
		allowed[dev] = strings.TrimSpace(acc)
	}
	for _, tc := range []struct{ dev, board string }{
		{"char-ttyS", "8250/16550 UARTs"},
		{"char-ttyUSB", "USB serial adapters"},
		{"char-ttyACM", "USB CDC ACM"},
		{"char-ttyAMA", "Raspberry Pi PL011"},
		{"char-ttySC", "SC16IS7xx HATs"},
		{"char-ttymxc", "NXP i.MX"},
	} {
		if acc, ok := allowed[tc.dev]; !ok || acc != "rw" {
			t.Errorf("DeviceAllow=%s rw (%s) missing; have %q", tc.dev, tc.board, service["DeviceAllow"])
		}
	}
	for dev := range allowed {
		if !strings.HasPrefix(dev, "char-tty") || strings.ContainsAny(dev, "*?[") {
			t.Errorf("DeviceAllow=%s: only named serial (tty) classes belong in this unit", dev)
		}
	}
}

// unitSection parses one section of systemd/ferry.service into its keys'
// values, in order.
func unitSection(t *testing.T, name string) map[string][]string {
	t.Helper()
	data, err := os.ReadFile("../../systemd/ferry.service")
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string][]string{}
	in := false
	for line := range strings.Lines(string(data)) {
		line = strings.TrimSpace(line)
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "["):
			in = line == "["+name+"]"
		case in:
			k, v, _ := strings.Cut(line, "=")
			keys[k] = append(keys[k], v)
		}
	}
	if len(keys) == 0 {
		t.Fatalf("systemd/ferry.service has no [%s] section", name)
	}
	return keys
}

// TestStarterConfig: the config the package installs is valid as shipped.
func TestStarterConfig(t *testing.T) {
	if _, err := config.Load("../../packaging/ferry.toml"); err != nil {
		t.Fatalf("packaging/ferry.toml:\n%v", err)
	}
}

// TestReadmeInstallLine: the README's install command picks the package of
// the box's own architecture.
func TestReadmeInstallLine(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(readme), "## Install on the edge box")
	if !ok {
		t.Fatal("README has no Install on the edge box section")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	var installs []string
	for line := range strings.Lines(section) {
		if strings.HasPrefix(strings.TrimSpace(line), "apt install ") || strings.HasPrefix(strings.TrimSpace(line), "dpkg -i ") {
			installs = append(installs, strings.TrimSpace(line))
		}
	}
	if len(installs) == 0 {
		t.Fatal("the Install section has no apt install line")
	}
	for _, line := range installs {
		if !strings.Contains(line, "ferry_*_$(dpkg --print-architecture).deb") {
			t.Errorf("install line %q does not pick the box's architecture (ferry_*_$(dpkg --print-architecture).deb)", line)
		}
	}
}

// TestBuildForPackageArchitectures compiles ferry for the architectures the
// .debs are built for. armhf is 32-bit: an untyped
// constant such as math.MaxInt64 passed as an int compiles on amd64 and
// arm64 but not there.
func TestBuildForPackageArchitectures(t *testing.T) {
	for _, tc := range []struct{ deb, goarch, goarm string }{
		{"arm64", "arm64", ""},
		{"armhf", "arm", "7"},
	} {
		t.Run(tc.deb, func(t *testing.T) {
			// What the .deb ships, with build-deb.sh's flags, so the build
			// cache of scripts/test's .deb step is reused.
			cmd := exec.Command("go", "build", "-trimpath", "-o", os.DevNull, "./cmd/ferry")
			cmd.Dir = "../.."
			cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+tc.goarch, "GOARM="+tc.goarm)
			if out, err := cmd.CombinedOutput(); err != nil {
				t.Errorf("go build ./cmd/ferry for %s (GOARCH=%s GOARM=%s): %v\n%s", tc.deb, tc.goarch, tc.goarm, err, out)
			}
		})
	}
}
