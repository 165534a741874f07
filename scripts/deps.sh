#!/usr/bin/env bash
# Checks, and where it can installs, what the tests and the demo need on a
# fresh machine: the Rust toolchain with rustfmt and clippy, cargo-deny (with
# --lint), and Go (to build the control plane from its modules). Prints what
# it does.
set -euo pipefail

need() { command -v "$1" >/dev/null 2>&1; }

if ! need cargo; then
  echo "deps: cargo is missing; install Rust (rustup) first" >&2
  exit 1
fi
if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  echo "deps: adding rustfmt and clippy" >&2
  rustup component add rustfmt clippy
fi
if [ "${1:-}" = --lint ] && ! cargo deny --version >/dev/null 2>&1; then
  echo "deps: installing cargo-deny 0.20.2 (licenses, bans and sources of the dependencies; about 3 minutes)" >&2
  cargo install cargo-deny --version 0.20.2 --locked
fi
if ! need go; then
  echo "deps: Go (1.21 or newer) is needed to build the control plane; it fetches the Go 1.26 toolchain that Kubernetes 1.37 needs from the module proxy by itself" >&2
  exit 1
fi
