#!/usr/bin/env bash
# setup.sh - installs what building and testing dsv4 needs on a fresh Debian machine:
# the Debian packages (compiler, CMake, cJSON, PCRE2, clang for the fuzzers) and a Python
# virtual environment in .venv with the test tooling (tools/requirements.txt).
# Safe to run again: it skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

pkgs=(build-essential cmake ninja-build pkg-config libcjson-dev libpcre2-dev clang python3 python3-venv)
missing=()
for p in "${pkgs[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
# python3 may come from elsewhere (pyenv); only ask apt for it when there is none.
if command -v python3 >/dev/null 2>&1 && python3 -m venv --help >/dev/null 2>&1; then
    missing=("${missing[@]/python3-venv}"); missing=("${missing[@]/python3}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
if ((${#missing[@]})); then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "setup: installing ${missing[*]}"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
if ! .venv/bin/python -c 'import sys; sys.exit(0)' 2>/dev/null; then
    rm -rf .venv && python3 -m venv .venv
fi
stamp=.venv/.requirements.stamp
if [ ! -f "$stamp" ] || ! cmp -s tools/requirements.txt "$stamp"; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -r tools/requirements.txt
    cp tools/requirements.txt "$stamp"
fi
echo "setup: ok"
