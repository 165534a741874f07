#!/usr/bin/env bash
# The demo: a local control plane with the ManagedBot CRD and the examples.
# Ctrl-C stops everything and removes the control plane's files.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "building the control plane (once; minutes on a cold cache) and the tools"
bin=$(bash tests/controlplane/build.sh)
cargo build --quiet --workspace --bins
export PATH="$bin:$PWD/target/debug:$PATH"

work=$(mktemp -d)
pids=()
cleanup() {
  trap - EXIT INT TERM
  step "stopping"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

step "starting etcd, kube-apiserver and kube-controller-manager on loopback"
MANAGEDBOT_CONTROLPLANE_BIN=$bin testbed controlplane --kubeconfig-out "$work/kubeconfig" &
pids+=($!)
while [ ! -s "$work/kubeconfig" ]; do
  kill -0 "${pids[0]}" 2>/dev/null || { echo "the control plane did not start" >&2; exit 1; }
  sleep 0.5
done
KUBECONFIG=$(cat "$work/kubeconfig")
export KUBECONFIG
echo "KUBECONFIG=$KUBECONFIG"

step "installing the ManagedBot CRD"
managedbot crd | kubectl apply --server-side -f -
kubectl wait --for=condition=Established --timeout=60s crd/managedbots.managedbot.dev

step "applying examples/ into namespace demo"
kubectl create namespace demo
kubectl apply -n demo -f examples/

step "kubectl get mbot -n demo"
kubectl get mbot -n demo

step "the control plane keeps running; in another shell: export KUBECONFIG=$KUBECONFIG. Ctrl-C stops it."
wait "${pids[0]}"
