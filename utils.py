"""Character sets, label converters and small shared helpers.

torch is imported inside the functions that use it, not at the top: the tools that never touch a
tensor (``create_synth_dataset.py``, ``lmdb_store.py``) import this module and start without
paying torch's import (over a second on a small CPU).
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import string
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from fileio import DiskFullError, disk_errno

if TYPE_CHECKING:
    import torch

DEFAULT_CHARACTER = "0123456789abcdefghijklmnopqrstuvwxyz"
SENSITIVE_CHARACTER = string.printable[:-6]  # the reference's --sensitive set (94 characters)


def load_character(value: str) -> str:
    """``--character`` is either the set itself or a path to a UTF-8 file holding it.

    The file holds one character per line, or the whole set on one line. Lines are taken
    verbatim (only the newline is removed), so a line holding a single space is the space.
    """
    if value and os.path.isfile(value):
        text = Path(value).read_text(encoding="utf-8")
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        # One character per line and the whole set on one line both come down to joining the lines.
        chars = "".join(line.rstrip("\r") for line in lines)
    else:
        chars = value
    if not chars:
        raise ValueError("the character set is empty: pass --character with the characters "
                         "(or a file of them) the model should read")
    seen: set[str] = set()
    duplicates = sorted({c for c in chars if c in seen or seen.add(c)})
    if duplicates:
        raise ValueError(f"the character set repeats {''.join(duplicates)!r}: every character must appear once, "
                         "because its position is its class index")
    return chars


def resolve_character(character: str, sensitive: bool) -> str:
    """The reference's rule: ``--sensitive`` replaces the set with the 94 printable characters,
    unless the user gave a set of their own (then it keeps case as it is)."""
    if sensitive and character == DEFAULT_CHARACTER:
        return SENSITIVE_CHARACTER
    return load_character(character)


class CTCLabelConverter:
    """Text ↔ class indices for CTC: ``[CTCblank]`` is 0, character i is i + 1."""

    num_special = 1  # [CTCblank]

    def __init__(self, character: str):
        self.character = ["[CTCblank]"] + list(character)
        self.dict = {char: i + self.num_special for i, char in enumerate(character)}

    def encode(self, text: list[str], batch_max_length: int = 25, device: torch.device | str = "cpu"):
        """→ (LongTensor [B, batch_max_length] zero-padded, IntTensor [B] lengths)."""
        import torch

        for t in text:
            _check_length(t, batch_max_length)
        rows = [self._indices(t) for t in text]
        return _pad_rows(rows, batch_max_length, 0).to(device), torch.IntTensor([len(s) for s in text]).to(device)

    def _indices(self, t: str) -> list[int]:
        try:
            return [self.dict[char] for char in t]
        except KeyError as e:
            raise ValueError(f"label {t!r} has the character {e.args[0]!r}, which is not in the character set; "
                             "add it with --character, or leave data filtering on") from None

    def decode(self, text_index: torch.Tensor, length) -> list[str]:
        """Greedy CTC collapse of the first ``length[b]`` frames of row b: merge repeats, drop blanks."""
        import torch

        text_index = text_index.cpu()  # [B, T]; one copy, then tensor ops instead of a loop per frame
        keep = text_index != 0
        keep[:, 1:] &= text_index[:, 1:] != text_index[:, :-1]
        lengths = torch.as_tensor([int(x) for x in length], dtype=torch.long)
        keep &= torch.arange(text_index.size(1)) < lengths[:, None]
        chars = [self.character[i] for i in text_index[keep].tolist()]  # kept frames, row by row
        texts, start = [], 0
        for n in keep.sum(dim=1).tolist():
            texts.append("".join(chars[start:start + n]))
            start += n
        return texts


class AttnLabelConverter:
    """Text ↔ class indices for attention: ``[GO]`` is 0 (also padding), ``[s]`` is 1, character i is i + 2."""

    num_special = 2  # [GO], [s]

    def __init__(self, character: str):
        self.character = ["[GO]", "[s]"] + list(character)
        self.dict = {char: i + self.num_special for i, char in enumerate(character)}

    def encode(self, text: list[str], batch_max_length: int = 25, device: torch.device | str = "cpu"):
        """→ (LongTensor [B, batch_max_length + 2]: [GO] label [s] [GO]..., IntTensor [B] = len + 1)."""
        import torch

        for t in text:
            _check_length(t, batch_max_length)
        rows = [[0, *self._indices(t), 1] for t in text]  # [GO] label [s]
        return (_pad_rows(rows, batch_max_length + 2, 0).to(device),
                torch.IntTensor([len(s) + 1 for s in text]).to(device))

    _indices = CTCLabelConverter._indices

    def decode(self, text_index: torch.Tensor, length=None) -> list[str]:
        """Joins every token, ``[s]``/``[GO]`` included (callers cut at the first ``[s]``)."""
        return ["".join(self.character[i] for i in row) for row in text_index.tolist()]


def _pad_rows(rows: list[list[int]], width: int, pad: int) -> torch.Tensor:
    """LongTensor [len(rows), width]: each row left-aligned, then ``pad`` (one tensor built, not one per row)."""
    import torch

    out = torch.full((len(rows), width), pad, dtype=torch.long)
    lengths = torch.tensor([len(r) for r in rows], dtype=torch.long)
    out[torch.arange(width) < lengths[:, None]] = torch.tensor([i for r in rows for i in r], dtype=torch.long)
    return out


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (insert, delete, substitute all cost 1), as ``nltk.edit_distance(a, b)``.

    Two rows instead of nltk's full table and per-cell function calls: several times faster,
    which matters when scoring runs once per validation sample.
    """
    if a == b:
        return 0
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def _check_length(label: str, batch_max_length: int) -> None:
    if len(label) > batch_max_length:
        raise ValueError(f"label {label!r} has {len(label)} characters, more than --batch_max_length "
                         f"{batch_max_length}; raise --batch_max_length or leave data filtering on")


CONVERTERS = {"CTC": CTCLabelConverter, "Attn": AttnLabelConverter}


def make_converter(prediction: str, character: str):
    return CONVERTERS[prediction](character)


class Averager:
    """Running mean of tensors (train loss, validation loss)."""

    def __init__(self):
        self.reset()

    def add(self, v: torch.Tensor) -> None:
        v = v.detach()
        self.sum += float(v.sum())
        self.n_count += v.numel()

    def reset(self) -> None:
        self.n_count = 0
        self.sum = 0.0

    def val(self) -> float:
        return self.sum / self.n_count if self.n_count else 0.0


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


def printable(text: str) -> str:
    """``text`` safe to print and log as UTF-8: the undecodable bytes of a file name (``os.fsdecode``
    turns them into lone surrogates) become U+FFFD replacement characters."""
    try:
        data = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # surrogates that do not stand for a byte
        data = text.encode("utf-8", "surrogatepass")
    return data.decode("utf-8", "replace")


def resolve_device(name: str = "auto") -> torch.device:
    """``--device auto`` picks CUDA when present, else CPU."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asked for CUDA but no CUDA GPU is visible; use --device cpu")
    return device


AMP_CHOICES = ("off", "bf16", "fp16")


def add_runtime_arguments(parser: argparse.ArgumentParser, batch_help: str = "batch size") -> None:
    """How a script runs (not what model it runs): the same flags and defaults in every script."""
    g = parser.add_argument_group("runtime")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--workers", type=int, default=4, help="data loading workers")
    g.add_argument("--batch_size", type=int, default=192, help=batch_help)
    g.add_argument("--amp", choices=AMP_CHOICES, default="off",
                   help="autocast precision (fp16 needs CUDA; bf16 on recent GPUs, and on CPUs with AVX512-BF16 or AMX)")
    g.add_argument("--dynamic_width", action="store_true",
                   help="with --PAD: batch width follows the widest image (multiple of imgH, at most imgW)")


class UsageError(ValueError):
    """A flag or argument the script cannot run with: exit status 2, like argparse's own errors."""


def check_runtime_arguments(opt) -> None:
    """The runtime flags every script shares (``add_runtime_arguments``): a UsageError naming the flag
    and its range. The decoding flags (``--beam_size`` ...) are decoding.check_decoding_flags'."""
    if opt.batch_size < 1:
        raise UsageError(f"--batch_size must be at least 1, got {opt.batch_size}")
    if opt.workers < 0:
        raise UsageError(f"--workers must be 0 (load in the main process) or more, got {opt.workers}")


USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, DiskFullError)  # CheckpointError is a ValueError


class UserErrorExit(SystemExit):
    """How a user error leaves a script: its message (``str(e)``) and exit status 2 or 1."""

    def __init__(self, message: str, code: int):
        super().__init__(code)
        self.message = message

    def __str__(self) -> str:
        return self.message


def run_cli(main: Callable, argv: list[str] | None = None):
    """The one exit for user errors of every script: ``error: <message>`` on stderr, no traceback,
    status 2 for bad usage (:class:`UsageError`), 1 for work that failed. → ``main(argv)``'s result."""
    try:
        return main(argv)
    except Exception as e:
        # Any write that a full or failing disk broke (a log, a CSV, a plot) is a user error too.
        disk = not isinstance(e, USER_ERRORS) and disk_errno(e) is not None
        if not (disk or isinstance(e, USER_ERRORS)):
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


def check_amp(amp: str, device: torch.device | str, training: bool = False) -> torch.dtype | None:
    """``--amp off|bf16|fp16`` → the autocast dtype (None: full precision); every script's one door.

    fp16 needs CUDA. bf16 on a CPU without AVX512-BF16 or AMX is emulated, many times slower than
    fp32: refused for reading images (demo.py, test.py), allowed for training (a bf16 run on a small
    CPU checks a recipe meant for a GPU), with a warning there.
    """
    import torch

    device = torch.device(device)
    if amp == "off":
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
