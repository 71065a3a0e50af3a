#!/usr/bin/env bash
# Set up everything the tests need on a fresh Debian machine with Python 3.11:
# the client tools from Debian's packages (restic and rclone for the client suite, curl and wrk
# for scripts/bench.py, SoftHSM2 for tests/integration/test_keystores.py), and a virtualenv with
# trios3 and its extras (hsm: python-pkcs11 and PyKMIP, whose server the same tests run).
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    missing=()
    for tool in restic rclone curl wrk; do
        command -v "$tool" >/dev/null || missing+=("$tool")
    done
    command -v softhsm2-util >/dev/null || missing+=(softhsm2)
    if [ "${#missing[@]}" -gt 0 ]; then
        apt-get update -qq
        apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
fi
python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q -e '.[embedded,test,hsm]'
# The other clients of the client suite: restic 0.18, aws cli v2, s3cmd, the JavaScript SDK.
bash scripts/install-clients.sh
