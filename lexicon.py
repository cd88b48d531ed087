"""Word lists for decoding: a prefix tree (trie) over the words, file loading, nearest word.

A lexicon file is UTF-8 text, one word per line (surrounding whitespace and blank lines ignored).
Words are matched case-insensitively when ``ignore_case`` is set (a lower-case model, or a
case-insensitive protocol); a word holding a character the model cannot write is dropped and
reported, never silently kept (it could not be produced).

Kept apart from ``decoding.py`` because it knows nothing about models or tensors: the trie is
plain Python, and ``nearest`` (the "snap" baseline) is useful on its own.
"""
from __future__ import annotations

import bisect
import os
from dataclasses import dataclass, field
from pathlib import Path

from errors import UserError


class Trie:
    """Prefix tree over strings, built lazily over the sorted list of its words.

    A node is the range of sorted words sharing a prefix; a node's children are found by binary
    search the first time they are asked for, then kept. Building is one sort (a 100k-word list
    in well under a second), and decoding only ever expands the few nodes its beams visit.
    Node 0 is the root (the empty prefix).
    """

    def __init__(self, words: list[str]):
        order = sorted(range(len(words)), key=words.__getitem__)
        self.keys = [words[i] for i in order]  # sorted; each word once (callers deduplicate)
        self.key_index = order  # position in sorted keys → index in ``words``
        self.prefix: list[str] = [""]
        self.span: list[tuple[int, int]] = [(0, len(self.keys))]  # [lo, hi) in keys
        self.word_index: list[int] = [self._word_at(0, "")]  # the word ending at the node, else -1
        self._children: dict[int, dict[str, int]] = {}

    def _word_at(self, lo: int, prefix: str) -> int:
        return self.key_index[lo] if lo < len(self.keys) and self.keys[lo] == prefix else -1

    def children(self, node: int) -> dict[str, int]:
        """{next character: child node} of ``node`` (expanded on first use)."""
        kids = self._children.get(node)
        if kids is None:
            kids = self._children[node] = self._expand(node)
        return kids

    def _expand(self, node: int) -> dict[str, int]:
        prefix, (lo, hi) = self.prefix[node], self.span[node]
        depth, keys, kids = len(prefix), self.keys, {}
        i = lo + (self.word_index[node] >= 0)  # the word equal to the prefix sorts first
        while i < hi:
            char = keys[i][depth]
            child_prefix = prefix + char
            end = bisect.bisect_left(keys, prefix + chr(ord(char) + 1), i, hi) if ord(char) < 0x10FFFF else hi
            kids[char] = len(self.prefix)
            self.prefix.append(child_prefix)
            self.span.append((i, end))
            self.word_index.append(self._word_at(i, child_prefix))
            i = end
        return kids

    def child(self, node: int, char: str) -> int:
        """The node after ``char``, or -1 when no word continues that way."""
        return self.children(node).get(char, -1)

    def is_word(self, node: int) -> bool:
        return self.word_index[node] >= 0

    def nearest(self, text: str) -> tuple[int, int]:
        """(word index, edit distance) of the word nearest to ``text`` (ties: the earlier of those met).

        Walks the trie carrying one Levenshtein row per node and skips a subtree once the row's
        minimum cannot beat the best distance found (the classic trie search: far fewer cells
        than one full table per word).
        """
        best_distance, best_index = len(text) + 10**9, -1
        stack = [(0, list(range(len(text) + 1)))]
        while stack:
            node, row = stack.pop()
            index = self.word_index[node]
            if index >= 0 and (row[-1], index) < (best_distance, best_index if best_index >= 0 else 10**12):
                best_distance, best_index = row[-1], index
            if min(row) >= best_distance:
                continue  # every word below is at least this far
            for char, nxt in self.children(node).items():
                stack.append((nxt, _next_row(row, char, text)))
        return best_index, best_distance


def _next_row(row: list[int], char: str, text: str) -> list[int]:
    current = [row[0] + 1]
    for j, tc in enumerate(text, 1):
        current.append(min(row[j] + 1, current[j - 1] + 1, row[j - 1] + (tc != char)))
    return current


def fold_char(char: str, ignore_case: bool) -> str:
    """The character used for matching: lower-cased when ignoring case (unless lowering changes its length)."""
    if not ignore_case:
        return char
    lowered = char.lower()
    return lowered if len(lowered) == 1 else char


def fold(text: str, ignore_case: bool) -> str:
    if not ignore_case:
        return text
    lowered = text.lower()
    if len(lowered) == len(text):  # the usual case: one character for one (else fold one by one)
        return lowered
    return "".join(fold_char(c, ignore_case) for c in text)


@dataclass
class Lexicon:
    """A word list ready for decoding: the kept words as written, the dropped ones, the trie of the folded words."""

    words: list[str]
    ignore_case: bool
    trie: Trie
    dropped: list[str] = field(default_factory=list)  # words with characters outside the model's set
    source: Path | None = None

    def fold(self, text: str) -> str:
        return fold(text, self.ignore_case)

    def __contains__(self, text: str) -> bool:
        node = 0
        for char in self.fold(text):
            node = self.trie.child(node, char)
            if node < 0:
                return False
        return self.trie.is_word(node)

    def nearest(self, text: str) -> tuple[str, int]:
        """(list word as written, edit distance) nearest to ``text`` in the folded alphabet."""
        index, distance = self.trie.nearest(self.fold(text))
        return self.words[index], distance

    def describe_dropped(self, limit: int = 5) -> str:
        """One line for the user, or '' when nothing was dropped."""
        if not self.dropped:
            return ""
        shown = ", ".join(repr(w) for w in self.dropped[:limit]) + (" ..." if len(self.dropped) > limit else "")
        where = f" of {self.source}" if self.source else ""
        return (f"lexicon{where}: dropped {len(self.dropped)} word(s) with characters outside the model's "
                f"character set ({shown}); kept {len(self.words)}")


def build_lexicon(words, character: str, ignore_case: bool, source: Path | None = None) -> Lexicon:
    """Lexicon over ``words`` for a model writing ``character``; out-of-set words are dropped and listed."""
    allowed = {fold_char(c, ignore_case) for c in character}
    kept: dict[str, str] = {}  # folded → first spelling, in list order
    dropped = []
    for word in words:
        key = fold(word, ignore_case)
        if not set(key) <= allowed:
            dropped.append(word)
        elif key not in kept:
            kept[key] = word
    where = f" {source}" if source else ""
    if not kept:
        raise UserError(f"--lexicon{where}: none of its {len(dropped)} word(s) can be written with the model's "
                        f"character set ({character!r}); give a word list in the model's characters")
    return Lexicon(list(kept.values()), ignore_case, Trie(list(kept)), dropped, source)


_CACHE: dict[tuple, Lexicon] = {}


def load_lexicon(path: str | os.PathLike, character: str, ignore_case: bool) -> Lexicon:
    """Read a UTF-8 word list (one word a line) and build its trie; cached per (path, size, mtime, options)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"--lexicon {path}: no such file (give a UTF-8 text file, one word per line)")
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, character, ignore_case)
    if key not in _CACHE:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise UserError(f"--lexicon {path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        words = [line.strip() for line in text.splitlines()]
        words = [w for w in words if w]
        if not words:
            raise UserError(f"--lexicon {path}: the file holds no words (one word per line expected)")
        _CACHE[key] = build_lexicon(words, character, ignore_case, source=path)
    return _CACHE[key]
