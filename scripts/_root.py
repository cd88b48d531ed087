"""The repository root on the import path, for ``python scripts/<name>.py``.

Python puts only scripts/ on the path of a script run as a file; the scripts here import the
toolkit's modules (``dataset``, ``runtime`` ...) from the folder above. This module is the one
place that says so: every script imports it before the toolkit.
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(1, str(ROOT))
