#!/usr/bin/env bash
# Installs what easel needs to build and test, only what is missing; quiet
# when everything is there. Debian 12 (apt) + a Python venv for the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS=(build-essential cmake pkg-config libmicrohttpd-dev libcjson-dev libpng-dev
          libsqlite3-dev libopenblas-dev libdnnl-dev libssl-dev libjpeg62-turbo-dev libwebp-dev
          libcurl4-openssl-dev libpq-dev python3-venv python3-pip curl)
# what `make test` drives besides the build (EASEL_DEPS_TEST=1: make test-deps, CI):
# fuzzing, load, the browser, the seed's PHP client, a PostgreSQL server (the multi-node
# tests start their own in a temp dir: tools/pgtmp.sh)
APT_TEST_PKGS=(clang libclang-rt-dev wrk sqlite3 chromium chromium-driver php-cli php-curl
               postgresql)

missing=()
for p in "${APT_PKGS[@]}" ${EASEL_DEPS_TEST:+"${APT_TEST_PKGS[@]}"}; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Python test tools in .venv, reinstalled only when requirements-dev.txt changes.
PY=${PYTHON:-python3}
stamp=.venv/.requirements-dev.sha
want=$(sha256sum requirements-dev.txt | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "deps: setting up .venv from requirements-dev.txt"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt
  echo "$want" > "$stamp"
fi
