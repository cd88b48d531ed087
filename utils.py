"""Character sets, label converters, edit distance and Averager (what the original's utils.py holds).

torch is imported inside the functions that use it, not at the top: the tools that never touch a
tensor (``create_synth_dataset.py``, ``lmdb_store.py``) import this module and start without
paying torch's import (over a second on a small CPU).
"""
from __future__ import annotations

import os
import string
from pathlib import Path
from typing import TYPE_CHECKING

from errors import UserError
from runtime import UsageError

if TYPE_CHECKING:
    import torch

DEFAULT_CHARACTER = "0123456789abcdefghijklmnopqrstuvwxyz"
SENSITIVE_CHARACTER = string.printable[:-6]  # the reference's --sensitive set (94 characters)


def looks_like_a_path(value: str) -> bool:
    """The rule that tells a missing ``--character`` file from a set of characters: it ends in .txt, or the
    part before its last separator is an existing folder (``charsets/latin.txt``, ``data/chars``)."""
    folder = os.path.dirname(value)
    return value.lower().endswith(".txt") or (bool(folder) and os.path.isdir(folder))


def load_character(value: str) -> str:
    """``--character`` is either the set itself or a path to a UTF-8 file holding it (see ``looks_like_a_path``
    for a path that does not exist).

    The file holds one character per line, or the whole set on one line. Lines are taken
    verbatim (only the newline is removed), so a line holding a single space is the space.
    """
    if value and os.path.isfile(value):
        data = Path(value).read_bytes()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data.count(b"\n", 0, e.start) + 1
            raise UsageError(f"--character {value}: the file is not UTF-8 (byte {data[e.start]:#04x} on line "
                             f"{line}); save it as UTF-8") from None
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        # One character per line and the whole set on one line both come down to joining the lines.
        chars = "".join(line.rstrip("\r") for line in lines)
    elif looks_like_a_path(value):
        raise UsageError(f"--character {value}: no such file. A value ending in .txt, or whose part before the "
                         "last '/' is an existing folder, is read as a file of characters; give an existing file "
                         "(or, for a set of characters that looks like a path, write it to a file and give that)")
    else:
        chars = value
    if not chars:
        raise UserError("the character set is empty: pass --character with the characters "
                        "(or a file of them) the model should read")
    seen: set[str] = set()
    duplicates = sorted({c for c in chars if c in seen or seen.add(c)})
    if duplicates:
        raise UserError(f"the character set repeats {''.join(duplicates)!r}: every character must appear once, "
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
            raise UserError(f"label {t!r} has the character {e.args[0]!r}, which is not in the character set; "
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


class PARSeqLabelConverter:
    """Text ↔ class indices for PARSeq (baudm/parseq's tokenizer): ``[E]`` is 0, character i is i + 1,
    then ``[B]`` and ``[P]``, which the decoder reads but never predicts (``character`` lists the head's classes)."""

    num_special = 1  # [E]

    def __init__(self, character: str):
        self.character = ["[E]"] + list(character)
        self.dict = {char: i + self.num_special for i, char in enumerate(character)}
        self.bos_index, self.pad_index = len(self.character), len(self.character) + 1

    def encode(self, text: list[str], batch_max_length: int = 25, device: torch.device | str = "cpu"):
        """→ (LongTensor [B, batch_max_length + 2]: [B] label [E] [P]..., IntTensor [B] = len + 1)."""
        import torch

        for t in text:
            _check_length(t, batch_max_length)
        rows = [[self.bos_index, *self._indices(t), 0] for t in text]
        return (_pad_rows(rows, batch_max_length + 2, self.pad_index).to(device),
                torch.IntTensor([len(s) + 1 for s in text]).to(device))

    _indices = CTCLabelConverter._indices


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
        raise UserError(f"label {label!r} has {len(label)} characters, more than --batch_max_length "
                        f"{batch_max_length}; raise --batch_max_length or leave data filtering on")


def make_converter(prediction: str, character: str):
    """The label converter of the registered head ``prediction`` (its ``converter``) for ``character``."""
    from modules.registry import head  # the heads name their converters, which are defined here

    return head(prediction).converter(character)


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


def printable(text: str) -> str:
    """``text`` safe to print and log as UTF-8: the undecodable bytes of a file name (``os.fsdecode``
    turns them into lone surrogates) become U+FFFD replacement characters."""
    try:
        data = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # surrogates that do not stand for a byte
        data = text.encode("utf-8", "surrogatepass")
    return data.decode("utf-8", "replace")
