#!/bin/sh
# Builds go-bbolt-writer with Debian's Go toolchain and Debian's bbolt sources (GOPATH mode,
# no module download):
#
#   benches/go-bbolt-writer/build.sh [OUT]      # default OUT: /tmp/go-bbolt-writer
#
# Installs golang-go and golang-github-coreos-bbolt-dev with apt-get when they are missing
# (as root, or through sudo). Prints the path of the built binary.
set -eu
HERE=$(cd "$(dirname "$0")" && pwd)
OUT=${1:-/tmp/go-bbolt-writer}
case $OUT in /*) ;; *) OUT=$(pwd)/$OUT ;; esac
GOPATH_DEB=/usr/share/gocode
BBOLT_SRC=$GOPATH_DEB/src/go.etcd.io/bbolt

fail() { echo "build.sh: FAIL: $*" >&2; exit 1; }

if ! command -v go >/dev/null 2>&1 || [ ! -f "$BBOLT_SRC/db.go" ]; then
  echo "build.sh: installing golang-go golang-github-coreos-bbolt-dev" >&2
  if [ "$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
    fail "need root or sudo to run: apt-get install -y golang-go golang-github-coreos-bbolt-dev"; fi
  $SUDO apt-get install -y golang-go golang-github-coreos-bbolt-dev >&2 ||
    { $SUDO apt-get update >&2 && $SUDO apt-get install -y golang-go golang-github-coreos-bbolt-dev >&2; } ||
    fail "apt-get install golang-go golang-github-coreos-bbolt-dev failed"
fi
command -v go >/dev/null 2>&1 || fail "go not on PATH after installing golang-go"
[ -f "$BBOLT_SRC/db.go" ] || fail "$BBOLT_SRC missing (golang-github-coreos-bbolt-dev provides go.etcd.io/bbolt)"

mkdir -p "$(dirname "$OUT")"
cd "$HERE"
GO111MODULE=off GOPATH=$GOPATH_DEB GOFLAGS= go build -o "$OUT" . || fail "go build failed"
echo "$OUT"
