#!/usr/bin/env bash
# Builds the pinned control plane (etcd, kube-apiserver, kube-controller-manager,
# kubectl) from the Go modules beside this script, once, into a cache outside
# the repository keyed by the versions and the modules' go.sum. Prints the bin
# directory on its last line. A warm cache returns at once.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
kube_version=v1.37.2
etcd_version=v3.7.0
version_flags="-X k8s.io/component-base/version.gitVersion=$kube_version \
  -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37 \
  -X k8s.io/client-go/pkg/version.gitVersion=$kube_version \
  -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=37"
# The cache key: what decides the binaries, not this script's other lines.
key=$( (cat "$here/kubernetes/go.mod" "$here/kubernetes/go.sum" "$here/etcd/go.mod" "$here/etcd/go.sum"; go version 2>/dev/null; echo "$version_flags") |
  sha256sum | cut -c1-12)
cache=${MANAGEDBOT_CONTROLPLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/managedbot/controlplane}
bin="$cache/kubernetes-$kube_version-etcd-$etcd_version-$key/bin"

if [ -x "$bin/etcd" ] && [ -x "$bin/kube-apiserver" ] && [ -x "$bin/kube-controller-manager" ] && [ -x "$bin/kubectl" ]; then
  echo "$bin"
  exit 0
fi

command -v go >/dev/null || { echo "build.sh: the Go toolchain is needed to build the control plane" >&2; exit 1; }
tmp="$bin.partial.$$"
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp"
start=$SECONDS
progress() { echo "[control plane] $* ($((SECONDS - start))s)" >&2; }

# The go command prints nothing while it compiles; a heartbeat shows the
# first build (several minutes on two cores) is alive.
( while sleep 30; do progress "still building"; done ) &
beat=$!
trap 'kill $beat 2>/dev/null; rm -rf "$tmp"' EXIT


progress "building etcd $etcd_version"
(cd "$here/etcd" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o "$tmp/etcd" .)
progress "building kube-apiserver, kube-controller-manager and kubectl $kube_version (minutes on a cold cache)"
(cd "$here/kubernetes" && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w $version_flags" -o "$tmp/" \
  k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kubectl)
kill $beat 2>/dev/null || true

mkdir -p "$(dirname "$bin")"
rm -rf "$bin"
mv "$tmp" "$bin"
progress "built into $bin"
echo "$bin"
