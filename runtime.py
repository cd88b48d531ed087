"""How a script starts and ends: the runtime flags, the device, the precision check, logging, and the
one exit for user errors (``run_cli``).

torch is imported inside the functions that use it: the tools that never touch a tensor
(``create_synth_dataset.py``, ``create_lmdb_dataset.py``) start without paying torch's import.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from errors import UsageError, UserError
from fileio import DiskFullError, disk_errno

if TYPE_CHECKING:
    import torch


def get_logger(name: str, log_file: str | os.PathLike | None = None, mode: str = "a") -> logging.Logger:
    """One logger, console + optional file, plain messages (the reference's line formats)."""
    logger = logging.getLogger(name)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(console)
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        fh = logging.FileHandler(log_file, mode=mode, encoding="utf-8", errors="replace")  # odd file names
        fh.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(fh)
    return logger


def resolve_device(name: str = "auto") -> torch.device:
    """``--device auto`` picks CUDA when present, else CPU."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name} asked for CUDA but no CUDA GPU is visible; use --device cpu")
    return device


AMP_CHOICES = ("off", "bf16", "fp16")
# --amp auto: training times fp32 against bf16 where bf16 is native (measured.py) and keeps the faster; reading
# (test.py, demo.py) keeps to fp32, the path that reads exactly as the model was checked, unless bf16 is asked.
AMP_FLAGS = ("auto", *AMP_CHOICES)


READING_WORKERS_HELP = ("data loading workers; auto (the default): 4 on a GPU, and on a CPU the cores the model's "
                        "threads leave free, at most 4 (0 on 2 cores: loader processes would take turns with the "
                        "model's threads; docs/cpus.md)")


def workers_flag(text: str) -> int | str:
    """``--workers``' type for reading: a count, or ``auto`` (``reading_workers``)."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count of workers or 'auto', got {text!r}") from None


def add_runtime_arguments(parser: argparse.ArgumentParser, batch_help: str = "batch size",
                          reading: bool = False) -> None:
    """How a script runs (not what model it runs): the same flags and defaults in every script. ``reading``
    (test.py, demo.py): ``--workers`` defaults to ``auto`` (``reading_workers``); training keeps 4."""
    g = parser.add_argument_group("runtime")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    if reading:
        g.add_argument("--workers", type=workers_flag, default="auto", help=READING_WORKERS_HELP)
    else:
        g.add_argument("--workers", type=int, default=4, help="data loading workers")
    g.add_argument("--batch_size", type=int, default=192, help=batch_help)
    g.add_argument("--amp", choices=AMP_FLAGS, default="off",
                   help="autocast precision (fp16 needs CUDA; bf16 on recent GPUs, and on CPUs with AVX512-BF16 or AMX). "
                        "auto: training times fp32 and native bf16 on this model and batch and keeps the faster "
                        "(cached per machine); reading keeps fp32")
    g.add_argument("--dynamic_width", action="store_true",
                   help="with --PAD: batch width follows the widest image (multiple of imgH, at most imgW)")


COMPILE_HELP = ("torch.compile the model (nn.Module.compile: same weights and checkpoints). Off by default: "
                "on a 2-core CPU its compile time exceeded what it saved (docs/cpus.md); try it on a GPU or for "
                "long runs")


def add_compile_argument(parser: argparse.ArgumentParser) -> None:
    """``--compile`` for the scripts that run a PyTorch model many times (train.py, test.py)."""
    parser.add_argument("--compile", action="store_true", help=COMPILE_HELP)


def compile_model(model, enabled: bool, log: Callable[[str], None] = lambda message: None):
    """``--compile``: compile ``model`` in place (its state_dict keys do not change) → the model."""
    import torch

    if not enabled:
        return model
    if not isinstance(model, torch.nn.Module):
        raise UsageError("--compile applies to PyTorch models; an .onnx model runs in ONNX Runtime")
    log("--compile: torch.compile on the first batches (each new input shape compiles once more)")
    model.compile()
    return model


def check_runtime_arguments(opt) -> None:
    """The runtime flags every script shares (``add_runtime_arguments``): a UsageError naming the flag
    and its range. The decoding flags (``--beam_size`` ...) are decoding.check_decoding_flags'."""
    if opt.batch_size < 1:
        raise UsageError(f"--batch_size must be at least 1, got {opt.batch_size}")
    if opt.workers != "auto" and opt.workers < 0:
        raise UsageError(f"--workers must be 0 (load in the main process) or more, got {opt.workers}")


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, e.g. a Slurm or taskset allocation)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def reading_workers(workers: int | str, device: torch.device | str, threads: int | None = None,
                    cores: int | None = None) -> tuple[int, str]:
    """``--workers`` for reading images (test.py, demo.py) → (loader worker processes, the line saying why).

    ``auto``: the reference's 4 where a GPU computes; on a CPU the loader's processes and the model's
    ``threads`` (torch's and ONNX Runtime's intra-op threads, one per core) share the ``cores``, so the loader
    gets the cores the threads leave free, at most 4. On 2 cores that is 0: english_g2 read 2,000 crops in
    21.9 s with 0 workers, 22.7 s with 1, 23.6 s with 4 (docs/cpus.md)."""
    import torch

    if workers != "auto":
        return int(workers), f"--workers {workers}"
    if torch.device(device).type == "cuda":
        return 4, "--workers auto: 4 (the GPU computes; the CPU's cores load the images)"
    cores = usable_cores() if cores is None else cores
    threads = torch.get_num_threads() if threads is None else threads
    chosen = max(0, min(4, cores - threads))
    return chosen, (f"--workers auto: {chosen} (this CPU's {cores} cores less the model's {threads} threads, "
                    "at most 4: loader processes on the model's cores slow it)")


# What the user can fix: the toolkit's own user errors (UsageError, CheckpointError, ... are UserErrors), a
# missing file, an output in the way, a full disk. Python's own ValueError, KeyError ... are bugs: traceback.
USER_ERRORS = (UserError, FileNotFoundError, FileExistsError, DiskFullError)
REPORT_BUG = ("this is a bug in the toolkit, not a mistake in your command: please report it with the "
              "traceback above and the command that raised it")


class UserErrorExit(SystemExit):
    """How a user error leaves a script: its message (``str(e)``) and exit status 2 or 1."""

    def __init__(self, message: str, code: int):
        super().__init__(code)
        self.message = message

    def __str__(self) -> str:
        return self.message


def run_cli(main: Callable, argv: list[str] | None = None):
    """The one exit for user errors of every script: ``error: <message>`` on stderr, no traceback,
    status 2 for bad usage (:class:`UsageError`), 1 for work that failed. Any other exception is a bug:
    it keeps its traceback, followed by a line asking to report it. → ``main(argv)``'s result."""
    try:
        return main(argv)
    except Exception as e:
        # Any write that a full or failing disk broke (a log, a CSV, a plot) is a user error too.
        disk = not isinstance(e, USER_ERRORS) and disk_errno(e) is not None
        if not (disk or isinstance(e, USER_ERRORS)):
            e.add_note(REPORT_BUG)
            raise
        message = f"error: {e}" + ("; the disk is full or failing: free some space (or write to another disk) "
                                   "and run again" if disk else "")
        print(message, file=sys.stderr, flush=True)
        raise UserErrorExit(message, 2 if isinstance(e, UsageError) else 1) from None


BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")  # native bf16 dot products (AVX512-BF16, AMX)


def cpu_flags() -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none, e.g. not Linux)."""
    return set(_read_cpu_flags())


@functools.lru_cache(maxsize=1)
def _read_cpu_flags() -> frozenset[str]:
    """/proc/cpuinfo is read once per process (check_amp asks again for every evaluated set)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    return frozenset(flag for line in text.splitlines() if line.startswith("flags")
                     for flag in line.split(":", 1)[1].split())


# What the int8 and bf16 paths depend on, as /proc/cpuinfo names it (any of the flags counts).
CPU_FEATURES = {"AVX2": ("avx2",), "AVX-512": ("avx512f",), "VNNI": ("avx512_vnni", "avx_vnni"),
                "AVX512-BF16": ("avx512_bf16",), "AMX": ("amx_tile",)}


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo ('unknown' where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    names = [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")]
    return names[0] if names else "unknown"


def cpu_description() -> str:
    """One line: model, cores, and the features of CPU_FEATURES with yes/no, e.g. for a benchmark's header."""
    flags = cpu_flags()
    features = ", ".join(f"{name} {'yes' if flags & set(names) else 'no'}" for name, names in CPU_FEATURES.items())
    return f"CPU: {cpu_model()}, {os.cpu_count()} cores; {features}"


def native_bf16(device: torch.device | str) -> bool:
    """Whether ``device`` computes bf16 natively: a CUDA GPU that supports it, a CPU with AVX512-BF16 or AMX."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool(cpu_flags() & set(BF16_CPU_FLAGS))


def check_amp(amp: str, device: torch.device | str, training: bool = False) -> torch.dtype | None:
    """``--amp off|bf16|fp16`` → the autocast dtype (None: full precision); every script's one door. ``auto``
    reads in fp32 (None); a training script resolves it by timing (measured.py) before calling here.

    fp16 needs CUDA. bf16 on a CPU without AVX512-BF16 or AMX is emulated, many times slower than
    fp32: refused for reading images (demo.py, test.py), allowed for training (a bf16 run on a small
    CPU checks a recipe meant for a GPU), with a warning there.
    """
    import torch

    device = torch.device(device)
    if amp == "off" or (amp == "auto" and not training):  # training resolves auto by timing first
        return None
    if amp not in AMP_CHOICES:
        raise UsageError(f"--amp {amp!r} is not one of {', '.join(AMP_CHOICES)}")
    if amp == "fp16":
        if device.type != "cuda":
            raise UsageError("--amp fp16 needs a CUDA GPU; on a CPU use --amp bf16 (with AVX512-BF16/AMX) or off")
        return torch.float16
    if device.type == "cpu" and not cpu_flags() & set(BF16_CPU_FLAGS):
        problem = (f"--amp bf16 is slower than fp32 on this CPU: it has neither AVX512-BF16 nor AMX (/proc/cpuinfo "
                   f"flags {', '.join(BF16_CPU_FLAGS)}; torch reports {torch.backends.cpu.get_cpu_capability()}), "
                   "so bf16 is emulated")
        if not training:
            raise UsageError(f"{problem}. Use --amp off, or a GPU")
        get_logger("amp").warning(f"warning: {problem}; training goes on in bf16 as asked")
    return torch.bfloat16
