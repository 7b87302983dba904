#!/usr/bin/env bash
# Create .venv with the pinned requirements. torch is installed first and pinned, so no other
# requirement can pull a multi-GB CUDA build in its place. On Debian/Ubuntu, as root, it also
# installs the chromium package that the browser test (tests/test_ui_browser.py) drives; that step
# is optional and never fails the setup.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -r requirements.txt -r requirements-dev.txt
.venv/bin/python -m pip install -q --no-deps --no-build-isolation -e .
# DeepSpeed for the 2-process ZeRO-2 training test on the CPU (its build imports torch, hence no isolation).
.venv/bin/python -m pip install -q --no-build-isolation deepspeed==0.19.8

if [ ! -x /usr/bin/chromium ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        export DEBIAN_FRONTEND=noninteractive
        { apt-get update -qq >/dev/null && apt-get install -y -qq chromium >/dev/null; } ||
            echo "note: could not install chromium now (the browser test needs it): apt-get install chromium" >&2
    else
        echo "note: the browser test needs Debian's chromium at /usr/bin/chromium: sudo apt-get install chromium" >&2
    fi
fi
