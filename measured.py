"""Choices made by timing on the machine that runs them, once per machine (``--amp auto``, ``--runtime auto``).

A CPU's flags do not say which path is fast: bf16 is the slow one on some AVX512-BF16 CPUs without AMX.
``decide`` times each candidate (a callable running one step) for a few steps and keeps the fastest. The
decision is cached in the toolkit's cache folder (``fileio.cache_folder("measured")``), keyed by the
question, the CPU model, the torch and onnxruntime versions, the thread count and what the caller says
the work is (the model's configuration, the batch size ...), so the next run with the same key chooses
at once and the same way. ``Decision.line()`` is the one line a script prints and records.
"""
from __future__ import annotations

import hashlib
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from fileio import atomic_write, cache_folder

CACHE_FILE = "decisions.json"
TIMING_BUDGET_S = 3.0  # seconds of timed steps per candidate, once MIN_STEPS are done
MIN_STEPS, MAX_STEPS = 3, 50


@dataclass(frozen=True)
class Decision:
    """What a measured choice chose: ``choice`` among the candidates, the seconds per step each took (empty
    where nothing needed timing), why, and whether it came from the cache."""

    question: str  # "--amp auto (training)", "--runtime auto"
    choice: str
    seconds: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    cached: bool = False

    def line(self) -> str:
        """One line: what was chosen and why, e.g. for the console, the run's log and opt.txt."""
        if self.seconds:
            times = "; ".join(f"{name} {1 / s:.2f} steps/s" for name, s in self.seconds.items())
            why = f"measured {times}" + (f"; {self.reason}" if self.reason else "")
        else:
            why = self.reason
        return f"{self.question}: {self.choice} ({why}{'; cached decision for this machine' if self.cached else ''})"


def machine() -> dict:
    """What a decision depends on besides the work: the CPU model, the libraries, the threads."""
    import torch

    from runtime import cpu_model

    try:
        import onnxruntime
        ort = onnxruntime.__version__
    except ImportError:
        ort = None
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "onnxruntime": ort}


def cache_key(question: str, work: dict) -> str:
    text = json.dumps({"question": question, "work": work, "machine": machine()}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def read_cache() -> dict:
    path = cache_folder("measured") / CACHE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # absent or damaged: the toolkit's own file, measured again
        return {}
    return data if isinstance(data, dict) else {}


def write_cache(key: str, decision: Decision) -> None:
    entries = read_cache()
    entries[key] = {k: v for k, v in asdict(decision).items() if k != "cached"}
    with atomic_write(cache_folder("measured") / CACHE_FILE, "w", what="the measured decisions' cache",
                      encoding="utf-8") as f:
        json.dump(entries, f, indent=1)


def time_per_step(step: Callable[[], object], warmup: int = 2, budget_s: float | None = None,
                  min_steps: int = MIN_STEPS, max_steps: int = MAX_STEPS,
                  clock: Callable[[], float] = time.perf_counter) -> float:
    """The median seconds of one ``step()`` after ``warmup`` untimed ones: timed until ``budget_s`` has
    passed (None: TIMING_BUDGET_S) and ``min_steps`` are done, or ``max_steps``."""
    budget_s = TIMING_BUDGET_S if budget_s is None else budget_s
    for _ in range(warmup):
        step()
    times: list[float] = []
    while len(times) < max_steps:
        start = clock()
        step()
        times.append(clock() - start)
        if sum(times) >= budget_s and len(times) >= min_steps:
            break
    return statistics.median(times)


def decide(question: str, work: dict, candidates: dict[str, Callable[[], float]], *, use_cache: bool = True,
           reason: str = "") -> Decision:
    """The fastest of ``candidates`` (name → a callable that returns its seconds per step, e.g. by
    ``time_per_step``), from the cache where this machine answered the same question for the same ``work``;
    ties go to the first candidate. One candidate is chosen without timing, for ``reason``."""
    if len(candidates) == 1:
        return Decision(question, next(iter(candidates)), reason=reason)
    key = cache_key(question, work)
    if use_cache and isinstance(entry := read_cache().get(key), dict) and entry.get("choice") in candidates:
        return Decision(**{**entry, "cached": True})
    seconds = {name: measure() for name, measure in candidates.items()}
    choice = min(seconds, key=lambda name: (seconds[name], list(candidates).index(name)))
    decision = Decision(question, choice, seconds, reason)
    if use_cache:
        write_cache(key, decision)
    return decision


# --- --runtime auto: PyTorch fp32 or ONNX Runtime fp32, for reading -----------------------------------

# Below this many images the export (seconds to a minute, once per checkpoint) and the timing cost more than
# a faster runtime saves: PyTorch reads them, unless this machine has already decided for the model.
MIN_IMAGES_FOR_ONNX = 500
RUNTIME_QUESTION = "--runtime auto"


def choose_runtime(saved_model, flags: dict, model, device, amp: str, images: int | None, batch_size: int,
                   log: Callable[[str], None] = lambda message: None) -> Decision:
    """``--runtime auto`` for reading ``images`` (None: unknown, counted as many): PyTorch or ONNX Runtime, both
    fp32 (they read alike: tests/test_onnx.py's parity gate), by their measured speed on this model at
    ``batch_size``. ``model`` is ``saved_model`` as ``--runtime torch`` loaded it (its checks passed). ONNX
    Runtime is a candidate on the CPU, for a PyTorch checkpoint read in fp32, when onnxruntime is installed
    and the work pays for the export (cached, as --runtime onnx)."""
    from pathlib import Path

    import torch

    if Path(str(saved_model)).suffix.lower() == ".onnx":
        return Decision(RUNTIME_QUESTION, "onnx", reason="an .onnx model runs in ONNX Runtime")
    if torch.device(device).type != "cpu":
        return Decision(RUNTIME_QUESTION, "torch", reason=f"ONNX Runtime's fp32 is chosen on CPUs only, not {device}")
    if amp not in ("off", "auto"):
        return Decision(RUNTIME_QUESTION, "torch", reason=f"--amp {amp} runs in PyTorch")
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None:
        return Decision(RUNTIME_QUESTION, "torch", reason="onnxruntime is not installed")
    if images is not None and images < MIN_IMAGES_FOR_ONNX:
        return Decision(RUNTIME_QUESTION, "torch", reason=f"{images} images: too few to pay for an ONNX export "
                                                          f"(measured from {MIN_IMAGES_FOR_ONNX})")
    batch = max(1, min(batch_size, images or batch_size))
    work = {"config": model.config.to_dict(), "batch_size": batch}
    return decide(RUNTIME_QUESTION, work, {"torch": lambda: time_reading(model, batch),
                                          "onnx": lambda: time_reading(onnx_for(saved_model, flags, log), batch)})


def onnx_for(saved_model, flags: dict, log: Callable[[str], None]):
    """The checkpoint's ONNX Runtime model through --runtime onnx's cache (exported once)."""
    from checkpoint import load_model_for_runtime

    return load_model_for_runtime(saved_model, flags, "cpu", "onnx", log=log).model


def time_reading(model, batch_size: int) -> float:
    """Seconds of one inference forward of a random batch at the model's input size (time_per_step)."""
    import torch

    from decoding import forward_logits

    config = model.config
    image = torch.rand(batch_size, config.input_channel, config.imgH, config.imgW) * 2 - 1
    with torch.inference_mode():
        return time_per_step(lambda: forward_logits(model, image, config))
