# The two commands a newcomer needs: `make test` and `make demo`.
SHELL := bash
.SHELLFLAGS := -euo pipefail -c

.PHONY: test lint unit controlplane demo crd bench

## Everything CI runs: toolchains, the control plane, lint, every test.
test: lint
	export MANAGEDBOT_CONTROLPLANE_BIN="$$(bash tests/controlplane/build.sh)"; \
	cargo test --workspace --locked

lint:
	bash scripts/deps.sh --lint
	cargo fmt --all --check
	cargo clippy --workspace --all-targets --locked -- -D warnings
	cargo deny --locked check licenses bans sources

## Build (once) the pinned etcd, kube-apiserver, kube-controller-manager and kubectl.
controlplane:
	bash scripts/deps.sh
	bash tests/controlplane/build.sh

## Regenerate the committed CRD and its reference (docs/reference.md) from the Rust types.
crd:
	cargo run --quiet -- crd > crds/managedbot.yaml
	cargo run --quiet -- crd --reference > docs/reference.md

## Start a local control plane, install the CRD and the examples; Ctrl-C stops it all.
demo:
	bash scripts/deps.sh
	bash scripts/demo.sh

## Every benchmark (20-30 minutes; see benches/run.py --help for one part); writes docs/benchmarks.md.
bench:
	bash scripts/deps.sh
	bash scripts/bench-deps.sh
	python3 benches/run.py
