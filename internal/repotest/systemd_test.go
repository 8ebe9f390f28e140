package repotest

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
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

// TestDebPackage builds the amd64 .deb with the packaging script and checks
// what it installs. (.ci/run builds arm64 and armhf too.)
func TestDebPackage(t *testing.T) {
	need(t, "dpkg-deb", "dpkg")
	out := t.TempDir()
	cmd := exec.Command("packaging/build-deb.sh", "-o", out, "-v", "1.2.3", "amd64")
	cmd.Dir = "../.."
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build-deb.sh: %v\n%s", err, b)
	}
	deb := filepath.Join(out, "ferry_1.2.3_amd64.deb")
	info, err := exec.Command("dpkg-deb", "--info", deb).CombinedOutput()
	if err != nil {
		t.Fatalf("dpkg-deb --info: %v\n%s", err, info)
	}
	for _, want := range []string{"Package: ferry", "Version: 1.2.3", "Architecture: amd64", "conffiles", "postinst"} {
		if !strings.Contains(string(info), want) {
			t.Errorf("dpkg-deb --info lacks %q:\n%s", want, info)
		}
	}
	contents, err := exec.Command("dpkg-deb", "--contents", deb).CombinedOutput()
	if err != nil {
		t.Fatalf("dpkg-deb --contents: %v\n%s", err, contents)
	}
	for _, want := range []string{
		"-rwxr-xr-x root/root .* ./usr/bin/ferry\n",
		"./lib/systemd/system/ferry.service\n",
		"./usr/lib/sysusers.d/ferry.conf\n",
		"-rw-r----- root/root .* ./etc/ferry/ferry.toml\n",
		"./usr/share/doc/ferry/ferry.toml.example\n",
	} {
		if !regexp.MustCompile(want).Match(contents) {
			t.Errorf("package contents lack %q:\n%s", want, contents)
		}
	}
	conf, err := exec.Command("dpkg-deb", "--ctrl-tarfile", deb).Output()
	if err != nil || len(conf) == 0 {
		t.Errorf("control archive: %v", err)
	}

	// The installed binary is static and runs; the conffile passes check.
	x := t.TempDir()
	if b, err := exec.Command("dpkg-deb", "-x", deb, x).CombinedOutput(); err != nil {
		t.Fatalf("dpkg-deb -x: %v\n%s", err, b)
	}
	bin := filepath.Join(x, "usr/bin/ferry")
	if b, err := exec.Command(bin, "version").CombinedOutput(); err != nil || !strings.HasPrefix(string(b), "ferry 1.2.3 ") {
		t.Errorf("ferry version: %v %s", err, b)
	}
	if b, err := exec.Command(bin, "check", "-config", filepath.Join(x, "etc/ferry/ferry.toml")).CombinedOutput(); err != nil {
		t.Errorf("the packaged /etc/ferry/ferry.toml does not pass check: %v\n%s", err, b)
	}
	if file, err := exec.LookPath("file"); err == nil {
		if b, _ := exec.Command(file, bin).Output(); !strings.Contains(string(b), "statically linked") {
			t.Errorf("not a static binary: %s", b)
		}
	}
}

// TestStarterConfig: the config the package installs is valid as shipped.
func TestStarterConfig(t *testing.T) {
	if _, err := config.Load("../../packaging/ferry.toml"); err != nil {
		t.Fatalf("packaging/ferry.toml:\n%v", err)
	}
}
