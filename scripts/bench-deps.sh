#!/usr/bin/env bash
# What the benchmarks need beyond the tests: nginx (Debian's package, the
# proxy the router is measured against) and oha (the load generator, from
# crates.io at a pinned version). Prints what it installs.
set -euo pipefail

if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  echo "bench-deps: installing nginx (apt-get)" >&2
  sudo_=""; [ "$(id -u)" -ne 0 ] && sudo_=sudo
  $sudo_ apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq nginx >/dev/null
fi
if ! command -v oha >/dev/null && [ ! -x "$HOME/.cargo/bin/oha" ]; then
  echo "bench-deps: installing oha 1.16.0 (cargo install; a few minutes)" >&2
  cargo install oha --version 1.16.0 --locked
fi
