"""Datasets, label filtering, batching and image preprocessing.

Training reads LMDB folders written by ``create_lmdb_dataset.py`` (keys ``num-samples``,
``image-%09d``, ``label-%09d``, 1-based) or plain folders with a ``gt.txt``; ``demo.py``
reads image files (``RawDataset``). Every loader collates with ``AlignCollate``.
"""
from __future__ import annotations

import codecs
import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
from pathlib import Path
from typing import Callable, Iterator, Sequence

import lmdb
import numpy as np
import torch
import torch.nn.functional as F
from natsort import natsorted
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader, Dataset, Sampler, Subset

from augment import make_augment, sample_rng
from errors import UserError
from fileio import atomic_write, cache_root, special_kind
from modules.registry import combination_stages
from runtime import UsageError
from utils import DEFAULT_CHARACTER, printable


logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
# What PIL raises on bad image data: OSError (incl. UnidentifiedImageError), SyntaxError
# (some plugins, e.g. broken PNG chunks), ValueError, and DecompressionBombError.
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
CACHE_VERSION = 2  # 2: FilterStats counts labels that are not UTF-8


def image_problem(data: bytes) -> str | None:
    """Why PIL cannot use these bytes as an image, or None. Replaces the reference's OpenCV check."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()  # structure and checksums; the image is unusable afterwards
        with Image.open(io.BytesIO(data)) as img:
            # A real decode (catches truncated pixel data that verify() misses) through the conversion
            # training uses, so a mode it cannot read is refused here, not found at training time.
            to_model_image(img, rgb=False)
            width, height = img.size
    except Image.UnidentifiedImageError:
        return "not a valid image (unrecognised format)"
    except IMAGE_ERRORS as e:
        return f"not a valid image ({type(e).__name__}: {e})"
    if width == 0 or height == 0:
        return "not a valid image (zero size)"
    return None


# --- gt.txt ---------------------------------------------------------------------------------

GtSample = tuple[int, str, str]   # (line number, relative image path, label)
GtProblem = tuple[int, str, str]  # (line number, line text, reason)


def parse_gt_file(path: str | os.PathLike) -> tuple[list[GtSample], list[GtProblem]]:
    """Read a ``relative/image/path<TAB>label`` file (UTF-8); line numbers are 1-based.

    The label is everything after the first tab, so it may contain spaces and tabs.
    The reference split on every tab and crashed on a line with two or more; taking the
    rest of the line is the fix. Lines end at ``\n`` only (a ``\r\n`` ending loses its ``\r``):
    a lone ``\r`` inside a label stays in it instead of cutting the line, so the line numbers
    in the messages are the editor's. A line without a tab, with an empty image path, that is
    not UTF-8, or an empty line (other than the trailing one) is reported, not fatal.
    """
    path = Path(path)
    data = path.read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise UserError(f"{path} is UTF-16 text; re-save it as UTF-8.")
    data = data.removeprefix(codecs.BOM_UTF8)  # a BOM from Windows editors
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()  # the newline that ends the last line
    samples: list[GtSample] = []
    problems: list[GtProblem] = []
    for lineno, raw in enumerate(lines, start=1):
        raw = raw.removesuffix(b"\r")  # CRLF files: the reference kept the '\r' in the label
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            problems.append((lineno, raw.decode("utf-8", "replace"),
                             f"not UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1}); re-save the file as UTF-8"))
            continue
        if not line:
            problems.append((lineno, line, "empty line"))
            continue
        relpath, tab, label = line.partition("\t")
        if not tab:
            problems.append((lineno, line, "no tab between image path and label"))
        elif not relpath.strip():
            problems.append((lineno, line, "empty image path"))
        else:
            samples.append((lineno, relpath, label))
    return samples, problems


# --- options -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DataConfig:
    """How images and labels are read for one model; a script builds it once (``DataConfig.for_model``).

    The model's input options (character set, case, label length, image size, PAD, colour) and the
    loader's (dynamic width, filtering, workers, batch size, seed). Library code reads this, never the
    parsed arguments.
    """

    character: str = DEFAULT_CHARACTER
    sensitive: bool = False
    batch_max_length: int = 25
    imgH: int = 32
    imgW: int = 100
    PAD: bool = False
    rgb: bool = False
    channel_order: str = "RGB"  # "BGR": colour channels reversed after the resize (OpenOCR's models)
    resize: str = "bicubic"  # "bilinear": cv2's INTER_LINEAR (OpenOCR's models)
    dynamic_width: bool = False
    data_filtering_off: bool = False
    workers: int = 0
    batch_size: int = 192
    seed: int = 1111

    @classmethod
    def for_model(cls, config, **loader) -> "DataConfig":
        """The data options of ``config`` (a ModelConfig) plus the loader's (``workers=``, ``batch_size=`` ...)."""
        fixed = [cls for cls in combination_stages(config) if "imgW" in cls.fixed_input]
        if loader.get("dynamic_width") and fixed:
            raise UsageError(f"--dynamic_width cannot feed --{fixed[0].kind} {fixed[0].name}: its weights are built "
                             f"for --imgW {config.imgW}; drop --dynamic_width")
        return cls(character=config.character, sensitive=config.sensitive, batch_max_length=config.batch_max_length,
                   imgH=config.imgH, imgW=config.imgW, PAD=config.PAD, rgb=config.rgb,
                   channel_order=config.channel_order, resize=config.resize, **loader)


@dataclasses.dataclass(frozen=True)
class TrainDataConfig:
    """train.py's training data: which LMDBs under ``train_data``, their batch shares, augmentation."""

    data: DataConfig
    train_data: str
    select_data: tuple[str, ...] = ("MJ", "ST")
    batch_ratio: tuple[float, ...] = (0.5, 0.5)
    total_data_usage_ratio: float = 1.0
    augment: str = "none"
    augment_n: int = 3
    augment_m: float = 5

    def __post_init__(self):
        if len(self.select_data) != len(self.batch_ratio):
            raise UserError(f"--select_data {list(self.select_data)} and --batch_ratio {list(self.batch_ratio)} "
                            "must have the same number of entries (e.g. --select_data MJ-ST --batch_ratio 0.5-0.5).")


# --- labels -------------------------------------------------------------------------------

@dataclasses.dataclass
class FilterStats:
    """What filtering kept and dropped; ``unreadable`` grows as bad images are met."""
    total: int = 0
    kept: int = 0
    too_long: int = 0
    out_of_charset: int = 0
    unreadable: int = 0
    bad_label: int = 0  # LMDB labels that are not UTF-8 (or missing): skipped, as unreadable images are
    filtering: bool = True

    def __str__(self) -> str:
        if self.filtering:
            dropped = (f"{self.too_long} too long, "
                       f"{self.out_of_charset} with characters outside the set")
        else:
            # Too-long labels would crash the label converter (#12 in docs/differences.md).
            dropped = (f"{self.too_long} too long even with --data_filtering_off; "
                       "characters outside the set are removed from the labels")
        line = f"kept {self.kept} of {self.total} (dropped: {dropped})"
        if self.bad_label:
            line += f"; {self.bad_label} labels not UTF-8 skipped"
        if self.unreadable:
            line += f"; {self.unreadable} unreadable images skipped so far"
        return line


class LabelFilter:
    """The reference's filtering and normalisation, with a set instead of a regex class.

    The reference pasted the charset into ``[^...]`` (#13 in docs/differences.md: ``\\``, ``]``, ``^``, ``-``
    change the class). Membership in a Python set has no such trap.
    """

    def __init__(self, character: str, sensitive: bool, batch_max_length: int, filtering: bool = True):
        self.character = character
        self.charset = frozenset(character)
        self.sensitive = sensitive
        self.batch_max_length = batch_max_length
        self.filtering = filtering

    @classmethod
    def from_data(cls, data: DataConfig) -> "LabelFilter":
        return cls(data.character, data.sensitive, data.batch_max_length, not data.data_filtering_off)

    def normalise(self, label: str) -> str:
        """Lower-case unless sensitive, then delete every character outside the set."""
        if not self.sensitive:
            label = label.lower()
        charset = self.charset
        return "".join(c for c in label if c in charset)

    def reason(self, label: str) -> str | None:
        """``'too_long'``, ``'out_of_charset'`` or None (keep)."""
        if self.filtering:
            if len(label) > self.batch_max_length:
                return "too_long"
            # Reference semantics: the set test is on the lower-cased label unless sensitive,
            # so uppercase letters pass with the default lowercase set.
            text = label if self.sensitive else label.lower()
            if not self.charset.issuperset(text):
                return "out_of_charset"
            if len(text) > self.batch_max_length:  # lower() can lengthen, e.g. 'İ'
                return "too_long"
            return None
        # Filtering off: the label is kept after normalisation unless it is still too long.
        if len(self.normalise(label)) > self.batch_max_length:
            return "too_long"
        return None

    def filter(self, labels: Iterator[tuple[int, str | None]]) -> tuple[np.ndarray, FilterStats]:
        """Keep the indices whose label passes; returns (int32 indices, stats). A None label
        (bytes that are not UTF-8, see :func:`iter_lmdb_labels`) is dropped and counted."""
        stats = FilterStats(filtering=self.filtering)
        kept: list[int] = []
        for index, label in labels:
            stats.total += 1
            if label is None:
                stats.bad_label += 1
                continue
            why = self.reason(label)
            if why is None:
                kept.append(index)
            elif why == "too_long":
                stats.too_long += 1
            else:
                stats.out_of_charset += 1
        stats.kept = len(kept)
        return np.asarray(kept, dtype=np.int32), stats

    def check_not_empty(self, stats: FilterStats, source: str) -> None:
        if stats.kept or not stats.total:
            return
        raise UserError(
            f"every sample of {source} was filtered out: {stats.too_long} labels longer than "
            f"--batch_max_length {self.batch_max_length}, {stats.out_of_charset} with characters "
            f"outside the set {self.character!r} (sensitive={self.sensitive}), {stats.bad_label} "
            "not UTF-8. Pass the right "
            "--character, --sensitive for case-sensitive labels, a larger --batch_max_length, "
            "or --data_filtering_off.")


# --- LMDB ----------------------------------------------------------------------------------

# One environment per LMDB file per process: lmdb refuses to open the same files twice in
# a process (#3 in docs/differences.md). After a fork the child closes what it inherited and
# reopens, so DataLoader workers never share the parent's handle.
_ENVS: dict[str, tuple[lmdb.Environment, int]] = {}  # realpath -> (env, inode of data.mdb)
_ENVS_PID = os.getpid()


def open_lmdb(root: str | os.PathLike, recheck: bool = False) -> lmdb.Environment:
    """The read-only environment of ``root`` for this process, opened on first use.

    ``recheck`` reopens it if data.mdb was replaced since (e.g. re-created with --overwrite).
    """
    global _ENVS_PID
    if os.getpid() != _ENVS_PID:
        for env, _ in _ENVS.values():
            env.close()  # closes the child's copy only; the parent's stays usable
        _ENVS.clear()
        _ENVS_PID = os.getpid()
    key = os.path.realpath(root)
    cached = _ENVS.get(key)
    if cached is not None and not recheck:
        return cached[0]
    data = os.path.join(key, "data.mdb")
    try:
        st = os.stat(data)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"{root} is not an LMDB dataset (no data.mdb). Create one with create_lmdb_dataset.py, "
            "or point at a folder holding LMDB folders or a gt.txt.") from None
    if st.st_size == 0:
        raise UserError(f"{root} is not an LMDB dataset: its data.mdb is empty (0 bytes), as an interrupted "
                        "or failed write leaves it. Re-create it with create_lmdb_dataset.py ... --overwrite, "
                        "or remove the folder.")
    if cached is not None:
        if cached[1] == st.st_ino:
            return cached[0]
        cached[0].close()
    try:
        env = lmdb.open(key, max_readers=32, readonly=True, lock=False, readahead=False, meminit=False)
    except lmdb.Error as e:
        raise UserError(f"{root} is not a readable LMDB dataset ({type(e).__name__}: {e}). Re-create it with "
                        "create_lmdb_dataset.py ... --overwrite.") from None
    _ENVS[key] = (env, st.st_ino)
    return env


def read_num_samples(txn: lmdb.Transaction, root: str | os.PathLike) -> int:
    value = txn.get(b"num-samples")
    if value is None:
        raise UserError(
            f"{root} has no 'num-samples' key: the LMDB is incomplete (was create_lmdb_dataset.py "
            "interrupted?). Re-create it: python create_lmdb_dataset.py <inputPath> <gtFile> "
            f"{root} --overwrite")
    return int(value)


def iter_lmdb_labels(txn: lmdb.Transaction, num_samples: int, root: str | os.PathLike = "the LMDB"
                     ) -> Iterator[tuple[int, str | None]]:
    """(index, label) for every ``label-`` key, in order, with one cursor walk; the label is None
    when its bytes are not UTF-8 (warned about, with ``root`` and the index, for the first few).

    The label keys sort together, so this reads a few leaf pages instead of doing
    ``num_samples`` separate B-tree look-ups.
    """
    cursor = txn.cursor()
    if not cursor.set_range(b"label-"):
        return
    bad = 0
    for key, value in cursor:
        if not key.startswith(b"label-"):
            break
        index = int(key[6:])
        if 1 <= index <= num_samples:
            label = decode_label(value)
            if label is None:
                bad += 1
                if bad <= 5:
                    logger.warning("label of %s at index %d (key %s) is not UTF-8 (%r); skipped",
                                   root, index, key.decode("ascii", "replace"), bytes(value[:40]))
            yield index, label


def decode_label(value: bytes | None) -> str | None:
    """An LMDB label as text, or None if it is missing or not UTF-8."""
    try:
        return None if value is None else bytes(value).decode("utf-8")
    except UnicodeDecodeError:
        return None


def read_lmdb_samples(root: str | os.PathLike, count: int | None = None) -> Iterator[tuple[int, bytes, str]]:
    """(1-based index, encoded image bytes, label) of the first ``count`` samples (all when None).

    For looking at data: a label that is not UTF-8 comes back with U+FFFD replacement characters.
    """
    env = open_lmdb(root, recheck=True)
    with env.begin(write=False) as txn:
        num_samples = read_num_samples(txn, root)
        for index in range(1, min(num_samples, count if count is not None else num_samples) + 1):
            image = txn.get(f"image-{index:09d}".encode())
            label = txn.get(f"label-{index:09d}".encode())
            yield index, bytes(image or b""), (label or b"").decode("utf-8", "replace")


def filter_cache_path(root: str | os.PathLike, key: dict) -> Path:
    digest = hashlib.sha1(f"{os.path.abspath(root)}\0{json.dumps(key, sort_keys=True)}".encode()).hexdigest()
    return cache_root() / "filter" / f"{digest}.npz"


def load_filter_cache(path: Path, key: dict) -> tuple[np.ndarray, FilterStats] | None:
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["key"]) != json.dumps(key, sort_keys=True):
                return None
            total, kept, too_long, out, bad_label = (int(v) for v in data["stats"])
            index = data["index"].astype(np.int32, copy=False)
    except (OSError, KeyError, ValueError):
        return None
    return index, FilterStats(total, kept, too_long, out, bad_label=bad_label, filtering=key["filtering"])


def save_filter_cache(path: Path, key: dict, index: np.ndarray, stats: FilterStats) -> None:
    try:
        with atomic_write(path, what="the filter cache") as f:  # a concurrent reader sees the old file or the new
            np.savez(f, key=np.array(json.dumps(key, sort_keys=True)), index=index,
                     stats=np.array([stats.total, stats.kept, stats.too_long, stats.out_of_charset, stats.bad_label]))
    except OSError as e:
        logger.warning("could not write the filter cache %s (%s); the next run rescans", path, e)


class LmdbDataset(Dataset):
    """One LMDB folder; items are ``(PIL image 'L'/'RGB', normalised label)`` or None.

    Filtering (reference section 3.3) runs once per (LMDB file, charset, options) and is
    cached as an index array, so a 1M-sample LMDB starts in milliseconds the second time.
    The environment is opened lazily in each process and never pickled.
    """

    def __init__(self, root: str | os.PathLike, data: DataConfig):
        self.root = str(root)
        self.rgb = data.rgb
        self.label_filter = LabelFilter.from_data(data)
        self._env: lmdb.Environment | None = None
        self.filtered_index_list, self.stats = self._filtered_index()
        self.nSamples = len(self.filtered_index_list)
        self.label_filter.check_not_empty(self.stats, self.root)

    def _filtered_index(self) -> tuple[np.ndarray, FilterStats]:
        env = open_lmdb(self.root, recheck=True)
        with env.begin(write=False) as txn:
            num_samples = read_num_samples(txn, self.root)
            st = os.stat(os.path.join(self.root, "data.mdb"))
            lf = self.label_filter
            key = {"version": CACHE_VERSION, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                   "num_samples": num_samples, "character": lf.character, "sensitive": lf.sensitive,
                   "batch_max_length": lf.batch_max_length, "filtering": lf.filtering}
            cache = filter_cache_path(self.root, key)
            cached = load_filter_cache(cache, key)
            if cached is not None:
                return cached
            index, stats = lf.filter(iter_lmdb_labels(txn, num_samples, self.root))
        save_filter_cache(cache, key, index, stats)
        return index, stats

    def __len__(self) -> int:
        return self.nSamples

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_env"] = None  # lmdb environments cannot be pickled (spawn workers)
        return state

    def __getitem__(self, index: int) -> tuple[Image.Image, str] | None:
        lmdb_index = int(self.filtered_index_list[index])  # IndexError past the end
        env = open_lmdb(self.root)
        with env.begin(write=False) as txn:
            label = decode_label(txn.get(f"label-{lmdb_index:09d}".encode()))
            imgbuf = txn.get(f"image-{lmdb_index:09d}".encode())
        if label is None:  # filtering drops these; here if the LMDB changed after the filter ran
            self.stats.bad_label += 1
            logger.warning("label in %s at index %d (key label-%09d) is missing or not UTF-8; skipped",
                           self.root, index, lmdb_index)
            return None
        try:
            if imgbuf is None:
                raise OSError("no image stored under this key")
            img = to_model_image(Image.open(io.BytesIO(imgbuf)), self.rgb)
        except IMAGE_ERRORS as e:
            # The reference substituted a blank image labelled '[dummy_label]' (#17 in docs/differences.md).
            self.stats.unreadable += 1
            logger.warning("unreadable image in %s at index %d (key image-%09d): %s; skipped",
                           self.root, index, lmdb_index, e)
            return None
        return img, self.label_filter.normalise(label)


class GtFolderDataset(Dataset):
    """A folder with a ``gt.txt`` (``relative/path<TAB>label``) read without an LMDB."""

    def __init__(self, root: str | os.PathLike, data: DataConfig):
        self.root = Path(root)
        gt = self.root / "gt.txt"
        if not gt.is_file():
            raise FileNotFoundError(f"{gt} does not exist; a gt folder needs a gt.txt.")
        self.rgb = data.rgb
        self.label_filter = LabelFilter.from_data(data)
        samples, self.problems = parse_gt_file(gt)
        for lineno, _, reason in self.problems[:5]:
            logger.warning("%s line %d: %s; skipped", gt, lineno, reason)
        index, self.stats = self.label_filter.filter((i, label) for i, (_, _, label) in enumerate(samples))
        self.samples = [samples[i][1:] for i in index]  # [(relpath, label)]
        self.nSamples = len(self.samples)
        self.label_filter.check_not_empty(self.stats, str(gt))

    def __len__(self) -> int:
        return self.nSamples

    def __getitem__(self, index: int) -> tuple[Image.Image, str] | None:
        relpath, label = self.samples[index]
        path = self.root / relpath
        try:
            img = to_model_image(Image.open(path), self.rgb)
        except IMAGE_ERRORS as e:
            self.stats.unreadable += 1
            logger.warning("unreadable image %s (%s at index %d): %s; skipped", path, self.root, index, e)
            return None
        return img, self.label_filter.normalise(label)


# --- discovery -----------------------------------------------------------------------------

def hierarchical_dataset(root: str | os.PathLike, data: DataConfig, select_data: str | Sequence[str] = "/",
                         log: Callable[[str], None] | None = None) -> tuple[ConcatDataset, str]:
    """Every LMDB leaf folder (or gt.txt folder) under ``root`` whose path relative to root,
    e.g. ``/MJ/MJ_train``, contains an entry of ``select_data``; ``'/'`` selects all.

    Returns ``(ConcatDataset, log text)``; each line also goes to ``log`` if given (the
    reference printed them; callers here log the returned text once). Folders are
    visited in sorted order, so the concatenation is the same on every machine.
    """
    root = str(root)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"dataset root {root} does not exist or is not a folder.")
    if isinstance(select_data, str):
        select_data = [select_data]
    lines = [f"dataset_root:    {root}\t dataset: {select_data[0]}"]
    datasets, found = [], []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel = "/" + os.path.relpath(dirpath, root)
        if "gt.txt" in filenames:
            dirnames.clear()  # its sub-folders hold the images
            make = GtFolderDataset
        elif not dirnames and "data.mdb" in filenames:
            make = LmdbDataset
        else:
            continue
        found.append(rel)
        # Matched against the relative path only: the reference also matched the root path (#14 in docs/differences.md).
        if any(s in rel for s in select_data):
            dataset = make(dirpath, data)
            lines += [f"sub-directory:\t{rel}\t num samples: {len(dataset)}", f"\t{dataset.stats}"]
            datasets.append(dataset)
    if not datasets:
        raise FileNotFoundError(
            f"no dataset under {root} matches select_data {list(select_data)}; found "
            f"{found or 'no LMDB folder (data.mdb) and no gt.txt folder'}.")
    if log is not None:
        for line in lines:
            log(line)
    return ConcatDataset(datasets), "\n".join(lines) + "\n"


# --- batching ------------------------------------------------------------------------------

class InfiniteBatchSampler(Sampler[list[int]]):
    """An endless, resumable, rank-sharded stream of batches over ``range(n)``.

    The stream is the concatenation of epochs; epoch ``e`` is a permutation drawn from
    ``torch.Generator().manual_seed(seed * 1000003 + e)``. Global batch ``j`` is stream
    positions ``[(j * world_size + rank) * batch, ... + batch)``: every rank sees the same
    stream, ranks never overlap, and ``start=k`` resumes at global batch ``k``.
    ``with_positions`` yields ``(index, position)`` pairs instead, for ``AugmentedDataset``.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world_size: int = 1,
                 start: int = 0, with_positions: bool = False):
        if n <= 0:
            raise UserError(f"cannot sample batches from an empty dataset (n={n}).")
        if batch_size <= 0 or not 0 <= rank < world_size or start < 0:
            raise ValueError(f"bad sampler arguments: batch_size={batch_size}, rank={rank}, "
                             f"world_size={world_size}, start={start}.")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size, self.start = rank, world_size, start
        self.with_positions = with_positions  # yield (index, stream position) pairs (AugmentedDataset)

    def permutation(self, epoch: int) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1000003 + epoch)
        return torch.randperm(self.n, generator=generator).tolist()

    def __iter__(self) -> Iterator[list[int]]:
        epoch, perm = -1, []
        j = self.start
        while True:
            first = (j * self.world_size + self.rank) * self.batch_size
            batch = []
            for position in range(first, first + self.batch_size):
                e, offset = divmod(position, self.n)
                if e != epoch:
                    epoch, perm = e, self.permutation(e)
                batch.append((perm[offset], position) if self.with_positions else perm[offset])
            yield batch
            j += 1


class AugmentedDataset(Dataset):
    """Items of ``dataset`` with ``augment`` applied, keyed by ``(index, stream position)``.

    Each sample's generator is ``augment.sample_rng(seed, stream, position)``: the same
    augmentation for the same run position whichever worker loads it, a new one each time
    the sample comes round again.
    """

    def __init__(self, dataset: Dataset, augment: Callable, seed: int, stream: int = 0):
        self.dataset, self.augment, self.seed, self.stream = dataset, augment, seed, stream

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> tuple[Image.Image, str] | None:
        index, position = key
        item = self.dataset[index]
        if item is None:
            return None
        img, label = item
        return self.augment(img, sample_rng(self.seed, self.stream, position)), label


class BatchBalancedDataset:
    """One DataLoader per ``select_data`` entry; ``get_batch()`` concatenates one batch of each.

    Batch shares follow ``batch_ratio`` (reference section 3.6). The batch order is a
    function of (seed, batches consumed), so ``state_dict()``/``load_state_dict()`` resume
    exactly, and ``rank``/``world_size`` shard it for DDP. ``self.batch_size`` is the
    summed batch size (the reference overwrote ``opt.batch_size`` instead). ``train.augment``
    (``'none'`` by default; ``augment_n``, ``augment_m``) augments every training image in
    the loader workers (``AugmentedDataset``); validation loaders never see it.
    """

    def __init__(self, train: TrainDataConfig, log: Callable[[str], None] = print, rank: int = 0,
                 world_size: int = 1):
        data = train.data
        self.workers, self.rank, self.world_size = data.workers, rank, world_size
        self.seed = data.seed
        self.collate = AlignCollate.for_data(data)
        dashed_line = "-" * 80
        log(dashed_line)
        log(f"dataset_root: {train.train_data}\nopt.select_data: {list(train.select_data)}\n"
            f"opt.batch_ratio: {[str(r) for r in train.batch_ratio]}")
        self.datasets: list[Dataset] = []
        self.batch_sizes: list[int] = []
        ratio = train.total_data_usage_ratio
        for name, share in zip(train.select_data, train.batch_ratio):
            batch = max(round(data.batch_size * share), 1)
            log(dashed_line)
            dataset, dataset_log = hierarchical_dataset(train.train_data, data, select_data=[name])
            log(dataset_log.rstrip("\n"))
            total = len(dataset)
            used = int(total * ratio)  # the first samples, as the reference (#15 in docs/differences.md)
            if used == 0:
                raise UserError(f"--total_data_usage_ratio {ratio} leaves no sample of {name} ({total} in all).")
            log(f"num total samples of {name}: {total} x {ratio} (total_data_usage_ratio) = {used}\n"
                f"num samples of {name} per batch: {data.batch_size} x {share} (batch_ratio) = {batch}")
            self.datasets.append(Subset(dataset, range(used)))
            self.batch_sizes.append(batch)
        self.batch_size = sum(self.batch_sizes)
        self.augment = make_augment(train.augment, train.augment_n, train.augment_m)
        if self.augment is not None:
            log(f"augmentation: {self.augment}")
            self.datasets = [AugmentedDataset(dataset, self.augment, self.seed, stream=i)
                             for i, dataset in enumerate(self.datasets)]
        log(f"{dashed_line}\nTotal_batch_size: {'+'.join(map(str, self.batch_sizes))} = {self.batch_size}\n{dashed_line}")
        self._batches = 0
        self._make_loaders()

    def _make_loaders(self) -> None:
        workers = self.workers
        self.data_loader_list = [
            DataLoader(dataset, num_workers=workers, collate_fn=self.collate,
                       pin_memory=torch.cuda.is_available(), persistent_workers=workers > 0,
                       batch_sampler=InfiniteBatchSampler(len(dataset), batch, self.seed + i,
                                                          self.rank, self.world_size, start=self._batches,
                                                          with_positions=self.augment is not None))
            for i, (dataset, batch) in enumerate(zip(self.datasets, self.batch_sizes))]
        self.dataloader_iter_list = [iter(loader) for loader in self.data_loader_list]

    def get_batch(self) -> tuple[torch.Tensor, list[str]]:
        """``(images [B, C, H, W], labels)``; B may fall short by the unreadable images."""
        for _ in range(100):
            images, labels = [], []
            for iterator in self.dataloader_iter_list:
                image, label = next(iterator)
                if len(label):
                    images.append(image)
                    labels.extend(label)
            self._batches += 1
            if images:
                break
        else:
            raise RuntimeError("100 consecutive batches held only unreadable images; see the warnings above.")
        width = max(image.shape[-1] for image in images)  # differs only with dynamic_width
        images = [F.pad(x, (0, width - x.shape[-1]), mode="replicate") if x.shape[-1] < width else x
                  for x in images]
        return torch.cat(images), labels

    def state_dict(self) -> dict:
        """Where the stream is, and the augmentation if any (a resume reads only ``batches``)."""
        if self.augment is None:
            return {"batches": self._batches}
        return {"batches": self._batches, "augment": {"policy": type(self.augment).__name__,
                                                      "n": self.augment.n, "m": self.augment.m}}

    def load_state_dict(self, state: dict) -> None:
        self._batches = int(state["batches"])
        self.dataloader_iter_list = []  # shuts the old workers down before new ones start
        self._make_loaders()


# --- images --------------------------------------------------------------------------------

def to_model_image(img: Image.Image, rgb: bool) -> Image.Image:
    """The one conversion of a Pillow image of any mode for the model: 'RGB' if ``rgb``, else 'L'.

    The result is the picture a person sees. Pillow's own ``convert('L')`` clips 16- and 32-bit
    samples at 255 (a 16-bit PNG turns white) and drops alpha (a transparent background turns
    black); here wide samples are scaled by their range (:func:`_wide_to_l`), transparency is
    composited on white, and palettes are expanded. A mode Pillow cannot convert raises
    ValueError, one of ``IMAGE_ERRORS``, so the sample is skipped as unreadable.
    """
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        img = _wide_to_l(img)
    elif img.mode in ("LA", "La", "PA", "RGBA", "RGBa") or "transparency" in img.info:  # or a transparent colour
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    if img.mode not in ("1", "L", "P", "RGB"):
        img = img.convert("RGB")  # RGBA, CMYK, YCbCr, LAB, HSV: Pillow converts all to RGB, not all to L
    target = "RGB" if rgb else "L"
    return img if img.mode == target else img.convert(target)


def _wide_to_l(img: Image.Image) -> Image.Image:
    """16-bit ('I;16', 'I;16B', 'I;16L', ...) and 32-bit ('I', 'F') grey → 'L', scaled, not clipped.

    16-bit samples span 0-65535. 32-bit ones have no fixed white, so the white point is the
    smallest usual range that holds every sample: 0-1 (float only), 0-255 (what Pillow makes from
    'L'), 0-65535 (16-bit files Pillow widens to 'I'), else the largest sample. Data with negative
    values is stretched from its minimum to its maximum.
    """
    a = np.nan_to_num(np.asarray(img, dtype=np.float64))  # [H, W]; any byte order
    low, high = 0.0, float(a.max(initial=0.0))
    if img.mode.startswith("I;16"):
        white = 65535.0
    elif a.size and a.min() < 0:
        low = float(a.min())
        white = max(high, low + 1e-12)
    else:
        usual = ([1.0] if img.mode == "F" else []) + [255.0, 65535.0]
        white = next((w for w in usual if high <= w), high)
    scaled = np.rint((a - low) / (white - low) * 255.0)
    return Image.fromarray(np.clip(scaled, 0, 255).astype(np.uint8))  # clip: only float rounding


def _to_uint8(img: Image.Image) -> np.ndarray:
    """[H, W, C] uint8; C = 3 for 'RGB', else 1 (other modes go through to_model_image as grey)."""
    if img.mode not in ("L", "RGB"):
        img = to_model_image(img, rgb=False)
    array = np.asarray(img, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def _resized(img: Image.Image, width: int, height: int, method: str = "bicubic") -> np.ndarray:
    """[height, width, C] uint8: Pillow's bicubic (the reference's), or cv2's bilinear (``resize_bilinear``)."""
    if method == "bilinear":
        return resize_bilinear(_to_uint8(img), width, height)
    return _to_uint8(img.resize((width, height), Image.BICUBIC))


def resize_bilinear(array: np.ndarray, width: int, height: int) -> np.ndarray:
    """[H, W, C] uint8 → [height, width, C] uint8 as cv2.resize(..., INTER_LINEAR) computes it: samples at
    half-pixel centres, edges clamped, no antialiasing when shrinking; in floating point where cv2 uses 11-bit
    fixed-point weights, so a value may differ from cv2's by one grey level. (onnx_infer.py keeps a copy.)"""
    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        low = np.floor(pos).astype(np.int64)
        frac = pos - low
        frac[low < 0] = 0
        low = np.clip(low, 0, n_in - 1)
        frac[low >= n_in - 1] = 0
        return low, np.minimum(low + 1, n_in - 1), frac

    x0, x1, fx = axis(array.shape[1], width)
    y0, y1, fy = axis(array.shape[0], height)
    a = array.astype(np.float64)
    rows = a[:, x0] * (1 - fx)[None, :, None] + a[:, x1] * fx[None, :, None]  # [H, width, C]
    out = rows[y0] * (1 - fy)[:, None, None] + rows[y1] * fy[:, None, None]  # [height, width, C]
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def _resize_pad(img: Image.Image, imgH: int, width: int, method: str = "bicubic") -> np.ndarray:
    """Reference NormalizePAD: keep the ratio, left-align, replicate the last column."""
    w, h = img.size
    resized_w = min(width, math.ceil(imgH * w / h))
    array = _resized(img, resized_w, imgH, method)
    return np.pad(array, ((0, 0), (0, width - resized_w), (0, 0)), mode="edge")


class AlignCollate:
    """Collate ``(PIL image, label)`` items into ``(images [B, C, imgH, W] in [-1, 1], labels)``.

    Default: BICUBIC resize to (imgW, imgH). ``keep_ratio_with_pad``: the reference's
    NormalizePAD. ``dynamic_width`` (with pad, EasyOCR style): the batch width is
    ``ceil(max(max w/h, 1)) * imgH`` capped at imgW. None items (unreadable images) are dropped.
    ``resize`` "bilinear" and ``channel_order`` "BGR": a released model's own preprocessing (OpenOCR's).
    """

    def __init__(self, imgH: int = 32, imgW: int = 100, keep_ratio_with_pad: bool = False,
                 dynamic_width: bool = False, rgb: bool | None = None, channel_order: str = "RGB",
                 resize: str = "bicubic"):
        self.imgH, self.imgW = imgH, imgW
        self.keep_ratio_with_pad = keep_ratio_with_pad
        self.dynamic_width = dynamic_width
        self.rgb = rgb  # None: 'RGB' items stay colour, every other mode becomes grey
        self.channel_order, self.resize = channel_order, resize

    @classmethod
    def for_data(cls, data: DataConfig) -> "AlignCollate":
        return cls(data.imgH, data.imgW, keep_ratio_with_pad=data.PAD, dynamic_width=data.dynamic_width,
                   rgb=data.rgb, channel_order=data.channel_order, resize=data.resize)

    def __call__(self, batch: Sequence[tuple[Image.Image, str] | None]) -> tuple[torch.Tensor, tuple]:
        batch = [item for item in batch if item is not None]
        if not batch:
            return torch.empty(0, 1, self.imgH, self.imgW), ()
        images, labels = zip(*batch)
        # Before the resize: a palette or 16-bit image must not be resampled in its own mode.
        images = [to_model_image(img, img.mode == "RGB" if self.rgb is None else self.rgb) for img in images]
        if self.keep_ratio_with_pad:
            width = self.imgW
            if self.dynamic_width:
                max_ratio = max(w / h for w, h in (img.size for img in images))
                width = min(self.imgW, math.ceil(max(max_ratio, 1)) * self.imgH)
            arrays = [_resize_pad(img, self.imgH, width, self.resize) for img in images]
        else:
            arrays = [_resized(img, self.imgW, self.imgH, self.resize) for img in images]
        stacked = np.stack(arrays)  # [B, H, W, C] uint8
        if self.channel_order == "BGR" and stacked.shape[3] == 3:
            stacked = stacked[..., ::-1]
        stacked = np.ascontiguousarray(stacked.transpose(0, 3, 1, 2))  # [B, C, H, W] uint8
        # Same float ops as ToTensor then (x - 0.5) / 0.5, so results are bit-identical.
        return torch.from_numpy(stacked).to(torch.float32).div_(255).sub_(0.5).div_(0.5), labels


# --- demo input ----------------------------------------------------------------------------

def count_samples(paths: Sequence[str | os.PathLike]) -> int | None:
    """About how many samples the evaluation data holds (the LMDBs' ``num-samples`` and the gt.txt lines
    under ``paths``), for choosing how to read them; None where nothing could be counted. Reads no image."""
    total, found = 0, False
    for root in map(str, paths):
        for dirpath, _, names in os.walk(root):
            if "data.mdb" in names:
                try:
                    with lmdb.open(dirpath, readonly=True, lock=False, readahead=False) as env, env.begin() as txn:
                        value = txn.get(b"num-samples")
                except lmdb.Error:
                    continue  # the evaluation reports it
                total, found = total + int(value or 0), found or value is not None
            if "gt.txt" in names:
                with contextlib.suppress(OSError):
                    with open(os.path.join(dirpath, "gt.txt"), "rb") as f:
                        total, found = total + sum(1 for line in f if line.strip()), True
    return total if found else None


def list_images(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Image files of the given folders (recursive, natsorted) and files, in argument order.

    A FIFO, device or socket (among the folder's files or given by name) is reported and skipped
    without being opened: reading one would block or never end.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[str] = []
    for path in map(str, paths):
        if os.path.isdir(path):
            found = [os.path.join(dirpath, name) for dirpath, _, names in os.walk(path)
                     for name in names if name.lower().endswith(IMAGE_EXTENSIONS)]
            if not found:
                raise UserError(f"no image ({', '.join(IMAGE_EXTENSIONS)}) found in {path}.")
            files += natsorted(found)
        elif os.path.lexists(path):
            files.append(path)
        else:
            raise FileNotFoundError(f"{path} does not exist.")
    files = [path for path in files if regular_or_reported(path)]
    if not files:
        raise UserError("no image paths given." if not paths else "none of the given paths is a readable image file.")
    return files


def regular_or_reported(path: str) -> bool:
    """Whether ``path`` is a regular file to read; a special file or a dangling link is logged, not opened."""
    try:
        kind = special_kind(path)
    except OSError as e:
        kind = f"unreadable ({e.strerror})"
    if kind is not None:
        logger.warning("skipped %s: it is %s, not a regular image file", printable(path), kind)
    return kind is None


class RawDataset(Dataset):
    """Image files for demo.py; items are ``(PIL image 'L'/'RGB', path)`` or None if unreadable."""

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike], data: DataConfig):
        self.rgb = data.rgb
        self.image_path_list = list_images(paths)
        self.nSamples = len(self.image_path_list)
        self.unreadable: list[str] = []

    def __len__(self) -> int:
        return self.nSamples

    def __getitem__(self, index: int) -> tuple[Image.Image, str] | None:
        path = self.image_path_list[index]
        try:
            return to_model_image(Image.open(path), self.rgb), path
        except IMAGE_ERRORS as e:
            self.unreadable.append(path)
            logger.warning("unreadable image %s: %s; skipped", printable(path), e)
            return None
