#!/usr/bin/env bash
# The demo: managedbot end to end on this machine. A local control plane
# (etcd, kube-apiserver, kube-controller-manager), the fake Telegram Bot API
# (Telegram itself cannot be reached from here), the controller, the router
# and an echo backend; then the examples are applied, an update is sent
# through the router the way Telegram sends it, and a bot is rotated.
# Ctrl-C stops everything and removes its files.
#
#   make demo                          # runs until Ctrl-C
#   MANAGEDBOT_DEMO_ONCE=1 make demo   # stops by itself after the walkthrough
#
# With a real bot: MANAGEDBOT_DEMO_TOKEN=<token from @BotFather> and
# MANAGEDBOT_DEMO_PUBLIC_URL=<https:// URL that reaches this machine's port
# MANAGEDBOT_DEMO_ROUTER_PORT (default 8000), e.g. through a tunnel> make the
# controller talk to api.telegram.org and register that bot instead of the
# examples; Telegram then delivers real updates through the router.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
show() { printf '\033[2m$ %s\033[0m\n' "$*"; "$@"; }

step "building the control plane (once; minutes on a cold cache) and managedbot"
bin=$(bash tests/controlplane/build.sh)
cargo build --quiet --locked --workspace --bins
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

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { # what, command...
  local what=$1; shift
  for _ in $(seq 1 150); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "timed out waiting for $what" >&2; exit 1
}

step "starting etcd, kube-apiserver and kube-controller-manager on loopback"
MANAGEDBOT_CONTROLPLANE_BIN=$bin testbed controlplane --kubeconfig-out "$work/kubeconfig" >"$work/controlplane.log" 2>&1 &
pids+=($!)
wait_for "the control plane" test -s "$work/kubeconfig"
KUBECONFIG=$(cat "$work/kubeconfig")
export KUBECONFIG
echo "export KUBECONFIG=$KUBECONFIG   # to look around from another shell"

step "installing the CRD"
show kubectl apply --server-side -k crds/
kubectl wait --for=condition=Established --timeout=60s crd/managedbots.managedbot.dev >/dev/null

real=${MANAGEDBOT_DEMO_TOKEN:+yes}
if [ -n "$real" ] && [ -z "${MANAGEDBOT_DEMO_PUBLIC_URL:-}" ]; then
  echo "MANAGEDBOT_DEMO_TOKEN needs MANAGEDBOT_DEMO_PUBLIC_URL: the https:// URL Telegram reaches the router at" >&2
  exit 1
fi
public_url=${MANAGEDBOT_DEMO_PUBLIC_URL:-https://bots.example.com}
public_url=${public_url%/}
telegram_port=$(free_port); router_metrics=$(free_port)
router_port=${MANAGEDBOT_DEMO_ROUTER_PORT:-$( [ -n "$real" ] && echo 8000 || free_port)}
backend_port=$(free_port); controller_metrics=$(free_port)
if [ -n "$real" ]; then
  telegram_api=https://api.telegram.org
  step "using Telegram's Bot API; $public_url must reach 127.0.0.1:$router_port. Starting an echo backend (:$backend_port), the router and the controller"
else
  telegram_api=http://127.0.0.1:$telegram_port
  step "starting the fake Telegram Bot API (:$telegram_port), an echo backend (:$backend_port), the router (:$router_port) and the controller"
  bots=()
  for example in examples/*.yaml; do
    # Each example's token, accepted by the fake Telegram.
    token=$(grep -Eo '"[0-9]+:[A-Za-z0-9_-]+"' "$example" | tr -d '"')
    name=$(basename "$example" .yaml)
    bots+=(--bot "$token=${name//-/_}_bot")
  done
  testbed fake-telegram --listen "127.0.0.1:$telegram_port" "${bots[@]}" 2>"$work/telegram.log" &
  pids+=($!)
fi
testbed backend --listen "127.0.0.1:$backend_port" \
  --reply '{"method":"sendMessage","chat_id":42,"text":"echo: hello"}' >"$work/backend.log" 2>&1 &
pids+=($!)
# Every Service backend of the examples is this one echo backend.
prefix=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.urlparse(sys.argv[1]).path)' "$public_url")
managedbot router --listen "127.0.0.1:$router_port" --metrics-listen "127.0.0.1:$router_metrics" \
  --path-prefix "$prefix" --namespace demo --service-resolver "http://127.0.0.1:$backend_port" --log-format pretty \
  >"$work/router.log" 2>&1 &
pids+=($!)
managedbot controller --namespace demo --telegram-api-url "$telegram_api" \
  --public-base-url "$public_url" --metrics-listen "127.0.0.1:$controller_metrics" \
  --leader-elect=false --resync-interval 30s --log-format pretty >"$work/controller.log" 2>&1 &
pids+=($!)
wait_for "the router" curl -fsS "http://127.0.0.1:$router_metrics/readyz"
echo "logs: $work/{controller,router,backend,telegram}.log"

kubectl create namespace demo >/dev/null
if [ -n "$real" ]; then
  step "creating your bot's token Secret and a ManagedBot for it in namespace demo"
  kubectl create secret generic echo-bot-token -n demo --from-literal=token="$MANAGEDBOT_DEMO_TOKEN" >/dev/null
  printf '%s\n' 'apiVersion: managedbot.dev/v1alpha1' 'kind: ManagedBot' 'metadata: {name: echo-bot}' \
    'spec: {tokenSecretRef: {name: echo-bot-token}, backend: {service: {name: echo-bot, port: 8080}}}' |
    kubectl apply -n demo -f -
  wait_for "echo-bot to be Ready" kubectl wait -n demo --for=condition=Ready --timeout=1s mbot/echo-bot
else
  step "applying examples/ into namespace demo"
  show kubectl apply -n demo -f examples/
  wait_for "echo-bot to be Ready" kubectl wait -n demo --for=condition=Ready --timeout=1s mbot/echo-bot
  wait_for "support-bot to be Ready" kubectl wait -n demo --for=condition=Ready --timeout=1s mbot/support-bot
  wait_for "seasonal-bot to be Suspended" sh -c \
    "kubectl get mbot -n demo seasonal-bot -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].reason}' | grep -q Suspended"
fi
show kubectl get mbot -n demo

step "the webhook URL holds a random secret, never the token"
url=$(managedbot url echo-bot -n demo)
echo "$url"
show managedbot status echo-bot -n demo

step "Telegram's delivery, played with curl: POST to the router with the secret-token header"
secret_token=$(kubectl get secret -n demo echo-bot-webhook -o jsonpath='{.data.secret-token}' | base64 -d)
local_url=${url/$public_url/http://127.0.0.1:$router_port}
update='{"update_id":1001,"message":{"message_id":1,"date":1764842400,"chat":{"id":42,"type":"private"},"text":"hello"}}'
echo "\$ curl -X POST ${local_url%/*}/<secret> -H 'X-Telegram-Bot-Api-Secret-Token: <secret token>' -d '$update'"
curl -sS -i -X POST "$local_url" -H "X-Telegram-Bot-Api-Secret-Token: $secret_token" \
  -H 'Content-Type: application/json' -d "$update" | tr -d '\r'
echo
sleep 0.5
echo "the echo backend got:"
sed 's/^/  /' "$work/backend.log" | grep "got an update" || true
echo "and a wrong secret token is refused:"
curl -sS -o /dev/null -w '  HTTP %{http_code}\n' -X POST "$local_url" \
  -H 'X-Telegram-Bot-Api-Secret-Token: wrong' -d "$update"

step "rotating echo-bot's secret: a new URL, the old one still routed for the grace period"
show managedbot rotate echo-bot -n demo
new_secret_token=$(kubectl get secret -n demo echo-bot-webhook -o jsonpath='{.data.secret-token}' | base64 -d)
new_url=$(managedbot url echo-bot -n demo)
echo "old URL, old token: $(curl -sS -o /dev/null -w 'HTTP %{http_code}' -X POST "$local_url" \
  -H "X-Telegram-Bot-Api-Secret-Token: $secret_token" -d "$update")  (grace period: 5m)"
echo "new URL, new token: $(curl -sS -o /dev/null -w 'HTTP %{http_code}' -X POST \
  "${new_url/$public_url/http://127.0.0.1:$router_port}" \
  -H "X-Telegram-Bot-Api-Secret-Token: $new_secret_token" -d "$update")"
show kubectl get events -n demo --field-selector involvedObject.name=echo-bot \
  -o custom-columns=REASON:.reason,MESSAGE:.message

if [ -n "${MANAGEDBOT_DEMO_ONCE:-}" ]; then
  exit 0
fi
step "running; try kubectl get mbot -n demo, managedbot rotate --now echo-bot -n demo (KUBECONFIG above). Ctrl-C stops it all."
wait "${pids[0]}"
