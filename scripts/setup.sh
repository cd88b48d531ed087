#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with requirements.txt, and (as root on
# Debian/Ubuntu) the font packages that the synthetic data generator renders words with, and qemu-user
# (tests/test_int8.py and benchmarks/bench_int8.py --emulate avx2 run int8 models on an emulated AVX2-only CPU).
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.txt

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  bash scripts/install_fonts.sh
  if ! command -v qemu-x86_64 >/dev/null 2>&1; then
    # The package lists are refreshed only when apt does not know the package yet.
    apt-cache policy qemu-user 2>/dev/null | grep -q "Candidate: [0-9]" || apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-user >/dev/null \
      || echo "setup: qemu-user did not install: the emulated-CPU int8 tests will skip"
  fi
else
  echo "setup: not root or no apt-get: skipping Debian font packages (synth.py uses the fonts it finds) and" \
       "qemu-user (the emulated-CPU int8 tests skip)"
fi
.venv/bin/python -c "import torch, torchvision, lmdb, PIL, nltk, natsort, fire; print('setup: torch', torch.__version__, 'ready')"
