"""Character sets, label converters and small shared helpers."""
from __future__ import annotations

import logging
import os
import string
import sys
from pathlib import Path

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

    def __init__(self, character: str):
        self.character = ["[CTCblank]"] + list(character)
        self.dict = {char: i + 1 for i, char in enumerate(character)}

    def encode(self, text: list[str], batch_max_length: int = 25, device: torch.device | str = "cpu"):
        """→ (LongTensor [B, batch_max_length] zero-padded, IntTensor [B] lengths)."""
        length = [len(s) for s in text]
        batch_text = torch.zeros(len(text), batch_max_length, dtype=torch.long)
        for i, t in enumerate(text):
            _check_length(t, batch_max_length)
            batch_text[i, :len(t)] = torch.tensor(self._indices(t), dtype=torch.long)
        return batch_text.to(device), torch.IntTensor(length).to(device)

    def _indices(self, t: str) -> list[int]:
        try:
            return [self.dict[char] for char in t]
        except KeyError as e:
            raise ValueError(f"label {t!r} has the character {e.args[0]!r}, which is not in the character set; "
                             "add it with --character, or leave data filtering on") from None

    def decode(self, text_index: torch.Tensor, length) -> list[str]:
        """Greedy CTC collapse: merge repeats, drop blanks."""
        rows = text_index.tolist()
        texts = []
        for t, l in zip(rows, [int(x) for x in length]):
            chars = [self.character[t[i]] for i in range(l)
                     if t[i] != 0 and not (i > 0 and t[i - 1] == t[i])]
            texts.append("".join(chars))
        return texts


class AttnLabelConverter:
    """Text ↔ class indices for attention: ``[GO]`` is 0 (also padding), ``[s]`` is 1, character i is i + 2."""

    def __init__(self, character: str):
        self.character = ["[GO]", "[s]"] + list(character)
        self.dict = {char: i + 2 for i, char in enumerate(character)}

    def encode(self, text: list[str], batch_max_length: int = 25, device: torch.device | str = "cpu"):
        """→ (LongTensor [B, batch_max_length + 2]: [GO] label [s] [GO]..., IntTensor [B] = len + 1)."""
        length = [len(s) + 1 for s in text]
        batch_text = torch.zeros(len(text), batch_max_length + 2, dtype=torch.long)
        for i, t in enumerate(text):
            _check_length(t, batch_max_length)
            batch_text[i, 1:1 + len(t)] = torch.tensor(self._indices(t), dtype=torch.long)
            batch_text[i, 1 + len(t)] = 1
        return batch_text.to(device), torch.IntTensor(length).to(device)

    _indices = CTCLabelConverter._indices

    def decode(self, text_index: torch.Tensor, length=None) -> list[str]:
        """Joins every token, ``[s]``/``[GO]`` included (callers cut at the first ``[s]``)."""
        return ["".join(self.character[i] for i in row) for row in text_index.tolist()]


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
        fh = logging.FileHandler(log_file, mode=mode, encoding="utf-8")
        fh.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(fh)
    return logger


def resolve_device(name: str = "auto") -> torch.device:
    """``--device auto`` picks CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} asked for CUDA but no CUDA GPU is visible; use --device cpu")
    return device
