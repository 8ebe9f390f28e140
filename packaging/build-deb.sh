#!/usr/bin/env bash
# Build static ferry binaries and a .deb for each architecture.
#
#   packaging/build-deb.sh [-o OUTDIR] [-v VERSION] [ARCH ...]
#
# ARCH is a Debian architecture: amd64, arm64 or armhf (ARMv7); default all
# three. VERSION defaults to 0.0.0+git<commit>. The binary reports the
# checkout's commit (`ferry version`), with -dirty when the checkout has
# changes; OUTDIR (default dist/, which git ignores) is the only thing the
# build leaves in the tree. Needs go, git and dpkg-deb.
set -euo pipefail
cd "$(dirname "$0")/.."

out=dist
version=""
while getopts "o:v:" opt; do
  case $opt in
    o) out=$OPTARG ;;
    v) version=$OPTARG ;;
    *) echo "usage: $0 [-o OUTDIR] [-v VERSION] [amd64|arm64|armhf ...]" >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
archs=("$@")
[ ${#archs[@]} -gt 0 ] || archs=(amd64 arm64 armhf)
# The commit, taken before anything is built: the toolchain's own VCS stamp
# is missing with -buildvcs=false and counts earlier builds' output.
commit=unknown
if rev=$(git rev-parse --short=12 HEAD 2>/dev/null); then
  commit=$rev
  if [ -n "$(git status --porcelain 2>/dev/null)" ]; then commit="$commit-dirty"; fi
fi
if [ -z "$version" ]; then
  version="0.0.0+git${commit%-dirty}"
fi
mkdir -p "$out"

for arch in "${archs[@]}"; do
  case $arch in
    amd64) goarch=amd64 goarm="" ;;
    arm64) goarch=arm64 goarm="" ;;
    armhf) goarch=arm goarm=7 ;;
    *) echo "unknown architecture $arch (want amd64, arm64 or armhf)" >&2; exit 2 ;;
  esac
  stage=$(mktemp -d)
  chmod 0755 "$stage"
  trap 'rm -rf "$stage"' EXIT
  install -d "$stage/DEBIAN" "$stage/usr/bin" "$stage/lib/systemd/system" \
    "$stage/usr/lib/sysusers.d" "$stage/etc/ferry" "$stage/etc/default" "$stage/usr/share/doc/ferry"

  CGO_ENABLED=0 GOOS=linux GOARCH=$goarch GOARM=$goarm \
    go build -trimpath -ldflags "-s -w -X main.version=$version -X main.buildCommit=$commit" \
    -o "$stage/usr/bin/ferry" ./cmd/ferry

  install -m 0644 systemd/ferry.service "$stage/lib/systemd/system/ferry.service"
  install -m 0644 systemd/ferry.sysusers "$stage/usr/lib/sysusers.d/ferry.conf"
  install -m 0640 packaging/ferry.toml "$stage/etc/ferry/ferry.toml"
  # Read by systemd as root; may hold passwords.
  install -m 0600 packaging/default-ferry "$stage/etc/default/ferry"
  install -m 0644 packaging/copyright "$stage/usr/share/doc/ferry/copyright"
  # The licence and notice files of what the static binary contains: Go's
  # standard library and every module linked in for this architecture.
  lic="$stage/usr/share/doc/ferry/third-party"
  install -d "$lic/go"
  install -m 0644 "$(go env GOROOT)/LICENSE" "$lic/go/LICENSE"
  GOOS=linux GOARCH=$goarch GOARM=$goarm go list -deps \
    -f '{{with .Module}}{{if not .Main}}{{.Path}}@{{.Version}} {{.Dir}}{{end}}{{end}}' ./cmd/ferry |
    sort -u | while read -r mod dir; do
      [ -n "$mod" ] || continue
      install -d "$lic/$mod"
      found=0
      for f in "$dir"/LICENSE* "$dir"/LICENCE* "$dir"/COPYING* "$dir"/NOTICE*; do
        if [ -f "$f" ]; then install -m 0644 "$f" "$lic/$mod/"; found=1; fi
      done
      if [ "$found" = 0 ]; then echo "no licence file in $mod ($dir)" >&2; exit 1; fi
    done
  install -m 0644 examples/ferry.toml "$stage/usr/share/doc/ferry/ferry.toml.example"
  install -m 0644 README.md "$stage/usr/share/doc/ferry/README.md"

  # Depends: what the unit runs besides ferry (ExecReload=/bin/kill is procps,
  # which minimal installs leave out); a test keeps this list complete.
  cat > "$stage/DEBIAN/control" <<CONTROL
Package: ferry
Version: $version
Architecture: $arch
Maintainer: ferry developers <ferry@localhost>
Section: net
Priority: optional
Depends: procps
Installed-Size: $(du -ks "$stage" | cut -f1)
Description: industrial telemetry gateway: Modbus and OPC UA to MQTT 5
 Polls Modbus (TCP, RTU) and OPC UA devices, keeps every reading in a
 crash-safe disk buffer and publishes it to an MQTT 5 broker at QoS 1 or 2.
CONTROL
  printf '%s\n' /etc/ferry/ferry.toml /etc/default/ferry > "$stage/DEBIAN/conffiles"
  cat > "$stage/DEBIAN/postinst" <<'SCRIPT'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  if command -v systemd-sysusers >/dev/null 2>&1; then
    systemd-sysusers ferry.conf
  fi
  if getent group ferry >/dev/null; then
    chown root:ferry /etc/ferry/ferry.toml
  fi
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
    if systemctl is-active --quiet ferry; then systemctl restart ferry || true; fi
  fi
fi
SCRIPT
  cat > "$stage/DEBIAN/prerm" <<'SCRIPT'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -d /run/systemd/system ]; then
  systemctl stop ferry || true
  systemctl disable ferry || true
fi
SCRIPT
  cat > "$stage/DEBIAN/postrm" <<'SCRIPT'
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
SCRIPT
  chmod 0755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/prerm" "$stage/DEBIAN/postrm"

  dpkg-deb --root-owner-group --build "$stage" "$out/ferry_${version}_${arch}.deb" >/dev/null
  echo "$out/ferry_${version}_${arch}.deb"
  rm -rf "$stage"
  trap - EXIT
done
