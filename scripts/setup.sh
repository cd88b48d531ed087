#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with requirements.txt, and (as root on
# Debian/Ubuntu) the font packages that the synthetic data generator renders words with.
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
else
  echo "setup: not root or no apt-get: skipping Debian font packages (synth.py uses the fonts it finds)"
fi
.venv/bin/python -c "import torch, torchvision, lmdb, PIL, nltk, natsort, fire; print('setup: torch', torch.__version__, 'ready')"
