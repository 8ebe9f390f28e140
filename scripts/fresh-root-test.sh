#!/usr/bin/env bash
# scripts/fresh-root-test.sh: run the README's test command (scripts/test) on
# a fresh Debian 12 root file system, as a new user's box would.
#
#   sudo scripts/fresh-root-test.sh [-k] [-r REF]
#
# It debootstraps a minimal Debian 12 (bookworm) into a temporary directory,
# adds only what the README names as prerequisites (the host's Go, the
# host's Node.js with npm, git to clone), copies in the host's CA
# certificates and apt sources so the package registries answer, clones
# REF (default HEAD: committed work only) of this repository, bind-mounts
# /proc, /sys, /dev, /dev/pts and /dev/shm and runs scripts/test inside
# chroot as root. Mirrors, the Go module proxy and the npm registry are
# read from the host at run time. -k keeps the root file system (its path
# is printed). Every mount is undone on exit, also on failure or Ctrl-C.
set -euo pipefail

die() { echo "fresh-root-test: $*" >&2; exit 1; }

keep=0
ref=HEAD
while getopts "kr:" opt; do
  case $opt in
    k) keep=1 ;;
    r) ref=$OPTARG ;;
    *) echo "usage: $0 [-k] [-r REF]" >&2; exit 2 ;;
  esac
done
repo=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" -eq 0 ] || die "run as root: debootstrap, mount and chroot need it"
for tool in debootstrap git go node npm apt-get; do
  command -v "$tool" >/dev/null || die "$tool is not installed on this host"
done
commit=$(git -C "$repo" rev-parse --verify "$ref^{commit}")

# The Debian mirror the host's apt uses for bookworm.
mirror=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(TARGET_OF)' |
  awk '$2 == "bookworm" && $3 == "deb" { print $1; exit }')
[ -n "$mirror" ] || die "the host's apt sources have no bookworm deb entry"

root=$(mktemp -d /var/tmp/ferry-fresh-root.XXXXXX)
chmod 0755 "$root"

mounts_under_root() {
  # Mount points at or below $root, deepest first.
  awk -v r="$root" '$5 == r || index($5, r "/") == 1 { print $5 }' /proc/self/mountinfo | sort -r
}
cleanup() {
  local rc=$? p m
  trap - EXIT INT TERM
  # Processes still running inside the root (a daemon a test left behind).
  for p in /proc/[0-9]*; do
    if [ "$(readlink "$p/root" 2>/dev/null)" = "$root" ]; then
      kill -KILL "${p#/proc/}" 2>/dev/null || true
    fi
  done
  for m in $(mounts_under_root); do
    umount "$m" 2>/dev/null || umount -l "$m" || true
  done
  if [ -n "$(mounts_under_root)" ]; then
    echo "fresh-root-test: still mounted under $root; not removing it" >&2
  elif [ "$keep" = 1 ]; then
    echo "fresh-root-test: kept $root"
  else
    # Never crosses into a mount, even if one appeared after the check.
    rm -rf --one-file-system "$root"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
trap 'echo "fresh-root-test: failed at line $LINENO: $BASH_COMMAND" >&2' ERR

start=$(date +%s)
echo "== debootstrap bookworm (minbase) into $root"
debootstrap --variant=minbase --include=git bookworm "$root" "$mirror"
boot_done=$(date +%s)

echo "== host apt sources, CA certificates, resolver"
rm -f "$root/etc/apt/sources.list"
cp -a /etc/apt/sources.list "$root/etc/apt/" 2>/dev/null || true
mkdir -p "$root/etc/apt/sources.list.d" "$root/etc/apt/apt.conf.d"
for f in /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources /etc/apt/apt.conf.d/*; do
  if [ -f "$f" ]; then cp -a "$f" "$root$f"; fi
done
# Keyrings the copied sources name (Signed-By:/signed-by=).
keys=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null |
  grep -oE '(Signed-By:|signed-by=)[[:space:]]*/[^] ]+' | sed -E 's/^(Signed-By:|signed-by=)[[:space:]]*//' | sort -u || true)
for key in $keys; do
  if [ -f "$key" ]; then mkdir -p "$root$(dirname "$key")"; cp -a "$key" "$root$key"; fi
done
mkdir -p "$root/usr/local/share/ca-certificates" "$root/etc/ssl/certs"
cp -a /usr/local/share/ca-certificates/. "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
cp -L /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
cp -L /etc/hosts "$root/etc/hosts"
# Package scripts must not start daemons (mosquitto) inside the chroot: they
# would outlive this run on the host's network.
printf '#!/bin/sh\nexit 101\n' > "$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"

echo "== Go from $(go env GOROOT) ($(go env GOVERSION))"
cp -a "$(go env GOROOT)" "$root/usr/local/go"

node_bin=$(readlink -f "$(command -v node)")
npm_root=$(npm root -g)
echo "== Node.js $(node --version) from $node_bin, npm $(npm --version) from $npm_root/npm"
if node_pkg=$(dpkg -S "$node_bin" 2>/dev/null | head -n1 | cut -d: -f1) && [ -n "$node_pkg" ]; then
  # The files of the host's package (NodeSource's nodejs ships npm too).
  dpkg -L "$node_pkg" | sed 's#^/##' | grep -v '^\.\?$' |
    while IFS= read -r p; do if [ -e "/$p" ] || [ -L "/$p" ]; then echo "$p"; fi; done |
    tar -C / --no-recursion -cf - -T - | tar -C "$root" -xpf -
else
  mkdir -p "$root$(dirname "$node_bin")"
  cp -a "$node_bin" "$root$node_bin"
fi
# npm as the host has it now (`npm install -g npm` replaces the packaged one
# outside dpkg), and its commands.
rm -rf "${root:?}$npm_root/npm"
mkdir -p "$root$npm_root" "$root$(npm prefix -g)/bin"
cp -a "$npm_root/npm" "$root$npm_root/"
for c in npm npx; do
  if [ -L "$(npm prefix -g)/bin/$c" ]; then cp -a "$(npm prefix -g)/bin/$c" "$root$(npm prefix -g)/bin/"; fi
done

echo "== clone $ref ($commit)"
git clone --quiet --no-local "$repo" "$root/root/ferry"
git -C "$root/root/ferry" checkout --quiet --detach "$commit"

# The host's registry settings, as environment (nothing is written into the
# repository): Go module proxy and checksum database, npm registry and
# proxies, the HTTP proxy variables.
envs=(HOME=/root USER=root LOGNAME=root TERM=dumb LANG=C.UTF-8
  PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
for v in GOPROXY GOSUMDB GONOSUMDB GOPRIVATE GONOPROXY GOINSECURE; do
  val=$(go env "$v")
  if [ -n "$val" ]; then envs+=("$v=$val"); fi
done
for v in registry proxy https-proxy noproxy strict-ssl; do
  val=$(npm config get "$v" 2>/dev/null || true)
  case $val in "" | null | undefined) ;; *) envs+=("npm_config_${v//-/_}=$val") ;; esac
done
cafile=$(npm config get cafile 2>/dev/null || true)
for f in "$cafile" "${NODE_EXTRA_CA_CERTS:-}"; do
  case $f in /*) if [ -f "$f" ]; then mkdir -p "$root$(dirname "$f")"; cp -L "$f" "$root$f"; fi ;; esac
done
case $cafile in /*) envs+=("npm_config_cafile=$cafile") ;; esac
if [ -n "${NODE_EXTRA_CA_CERTS:-}" ]; then envs+=("NODE_EXTRA_CA_CERTS=$NODE_EXTRA_CA_CERTS"); fi
for v in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
  if [ -n "${!v:-}" ]; then envs+=("$v=${!v}"); fi
done

echo "== mounts"
mount -t proc proc "$root/proc"
mount --bind /sys "$root/sys"
mount --bind /dev "$root/dev"
mount --bind /dev/pts "$root/dev/pts"
mkdir -p "$root/dev/shm"
mount --bind /dev/shm "$root/dev/shm"

prep_done=$(date +%s)
echo "== scripts/test inside the chroot"
rc=0
env -i "${envs[@]}" chroot "$root" /bin/bash -c 'cd /root/ferry && scripts/test' || rc=$?
end=$(date +%s)

echo "== fresh-root-test: commit $commit"
echo "   debootstrap $((boot_done - start)) s, preparation $((prep_done - boot_done)) s, scripts/test $((end - prep_done)) s, total $((end - start)) s"
if [ "$rc" -eq 0 ]; then
  echo "   PASS: scripts/test exited 0 on a fresh Debian 12 root"
else
  echo "   FAIL: scripts/test exited $rc"
fi
exit "$rc"
