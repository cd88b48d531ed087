import os
from pathlib import Path

# Under pytest-xdist (pytest.ini's -n) the workers share the cores: each takes its share of threads
# (subprocesses inherit it), so that two workers' torch thread pools do not fight over the same cores.
# Set before any test module imports torch, which reads it once.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
if _WORKERS > 1 and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = str(max(1, _CORES // _WORKERS))

ROOT = Path(__file__).resolve().parents[1]

SHARED = ROOT.parent / "shared"
