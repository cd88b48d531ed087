"""Render MJSynth-like synthetic word images straight into LMDB datasets.

One LMDB::

    python create_synth_dataset.py --output_dir data/synth --num_samples 10000 --seed 0 --workers 2

A data_lmdb_release-like tree (training on train fonts, validation on train fonts with
another stream of the seed, evaluation on held-out font families)::

    python create_synth_dataset.py --output_dir data/synth_tree --layout tree \\
        --num_train 100000 --num_valid 2000 --num_eval 2000

    data/synth_tree/training/synth/
    data/synth_tree/validation/synth_val/
    data/synth_tree/evaluation/synth_heldout_fonts/

Long labels on request (e.g. for a model with --batch_max_length 40)::

    python create_synth_dataset.py --output_dir data/synth_long --num_samples 2000 --min_len 26 --max_len 40

The same ``--seed`` gives byte-identical datasets, whatever ``--workers`` is.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

from tqdm import tqdm

import synth
from errors import UserError
from fileio import check_output_folder
from lmdb_store import DatasetExistsError, LmdbWriter, lmdb_is_dataset
from runtime import run_cli
from utils import DEFAULT_CHARACTER, load_character


@dataclasses.dataclass(frozen=True)
class SynthSplit:
    """One LMDB of a tree layout: where it goes, which fonts, which RNG stream, how many."""

    subdir: str
    fonts: str
    stream: int
    num_samples: int


def tree_splits(opt: argparse.Namespace) -> list[SynthSplit]:
    return [
        SynthSplit("training/synth", "train", 0, opt.num_train),
        SynthSplit("validation/synth_val", "train", 1, opt.num_valid),
        SynthSplit("evaluation/synth_heldout_fonts", "heldout", 2, opt.num_eval),
    ]


def make_generator(opt: argparse.Namespace, character: str, font_split: str) -> synth.SynthGenerator:
    fonts = synth.discover_fonts(character, tuple(synth.DEFAULT_FONT_DIRS) + tuple(opt.font_dir))
    chosen = synth.split_fonts(fonts, font_split)
    if not chosen:
        raise UserError(f"no {font_split!r} fonts can render {character!r}: run scripts/install_fonts.sh as root, "
                        "or pass --font_dir with fonts that cover the character set")
    texts = synth.TextSource(character, opt.batch_max_length, min_len=opt.min_len, max_len=opt.max_len)
    return synth.SynthGenerator(chosen, texts, opt.imgH, opt.image_format)


def write_lmdb(output_path: Path, generator: synth.SynthGenerator, num_samples: int, seed: int, stream: int,
               workers: int, overwrite: bool) -> None:
    with LmdbWriter(output_path, overwrite=overwrite) as writer:
        samples = synth.generate(generator, num_samples, seed, stream, workers)
        # A bar on a terminal; in a log file, one line at the end instead of thousands of bar redraws.
        bar = tqdm(samples, total=num_samples, desc=str(output_path), unit="img", disable=not sys.stderr.isatty())
        start = time.perf_counter()
        for image_bytes, label in bar:
            writer.add(image_bytes, label)
        seconds = time.perf_counter() - start
        print(f"{output_path}: {num_samples} images in {seconds:.1f} s ({num_samples / max(seconds, 1e-9):.0f} img/s)")


def check_outputs_free(paths: list[Path], overwrite: bool) -> None:
    """Refuse before rendering anything, not after the first of several datasets."""
    taken = [str(p) for p in paths if lmdb_is_dataset(p)]
    if taken and not overwrite:
        raise DatasetExistsError(f"{', '.join(taken)} already hold an LMDB dataset; choose another --output_dir "
                         "or pass --overwrite to replace them")


def generate(opt: argparse.Namespace) -> None:
    """Write one LMDB (``--layout single``) or the training/validation/evaluation tree."""
    character = load_character(opt.character)
    root = Path(opt.output_dir)
    if opt.layout == "single":
        jobs = [SynthSplit("", opt.fonts, 0, opt.num_samples)]
    else:
        jobs = tree_splits(opt)
    for job in jobs:
        check_output_folder(root / job.subdir, "--output_dir")
    check_outputs_free([root / job.subdir for job in jobs], opt.overwrite)

    all_fonts = synth.discover_fonts(character, tuple(synth.DEFAULT_FONT_DIRS) + tuple(opt.font_dir))
    print(f"{len(all_fonts)} fonts render every character of {synth.render_characters(character)!r}")
    print(synth.describe_split(all_fonts))
    for job in jobs:
        generator = make_generator(opt, character, job.fonts)
        print(f"{root / job.subdir}: {job.num_samples} samples, {job.fonts} fonts "
              f"({len(generator.fonts)} fonts, {len(generator.designs)} design families), stream {job.stream}")
        write_lmdb(root / job.subdir, generator, job.num_samples, opt.seed, job.stream, opt.workers, opt.overwrite)


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True, help="LMDB folder (single) or root of the tree (tree)")
    parser.add_argument("--layout", choices=("single", "tree"), default="single",
                        help="single: one LMDB at output_dir; tree: training/, validation/, evaluation/")
    parser.add_argument("--num_samples", type=int, default=1000, help="samples in a single LMDB")
    parser.add_argument("--num_train", type=int, default=100000, help="tree: samples in training/synth")
    parser.add_argument("--num_valid", type=int, default=2000, help="tree: samples in validation/synth_val")
    parser.add_argument("--num_eval", type=int, default=2000, help="tree: samples in evaluation/synth_heldout_fonts")
    parser.add_argument("--seed", type=int, default=0, help="same seed, same bytes")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="rendering processes")
    parser.add_argument("--fonts", choices=synth.FONT_SPLITS, default="train",
                        help="single: font split to render with (heldout = families never used by train)")
    parser.add_argument("--font_dir", action="append", default=[],
                        help=f"extra font folder, scanned after {', '.join(synth.DEFAULT_FONT_DIRS)} (repeatable)")
    parser.add_argument("--character", default=DEFAULT_CHARACTER,
                        help="label characters, or a file of them; a lower-case-only set still renders "
                             "upper and title case and stores lower-case labels")
    parser.add_argument("--batch_max_length", type=int, default=None,
                        help="longest label (default 25, or --max_len when that is longer)")
    parser.add_argument("--min_len", type=int, default=1, help="shortest label in characters")
    parser.add_argument("--max_len", type=int, default=None,
                        help="longest label in characters (default --batch_max_length); with --min_len, "
                             "lengths are drawn uniformly from the range and long labels join words, "
                             "numbers and random strings, e.g. --min_len 26 --max_len 40")
    parser.add_argument("--imgH", type=int, default=32, help="image height; the width follows the text")
    parser.add_argument("--image_format", choices=tuple(synth.IMAGE_FORMATS), default="jpeg")
    parser.add_argument("--overwrite", action="store_true", help="replace existing LMDB datasets")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = get_parser()
    opt = parser.parse_args(argv)
    # An LMDB of 0 samples would look complete and train nothing: each one written needs a sample.
    for name in ("num_samples",) if opt.layout == "single" else ("num_train", "num_valid", "num_eval"):
        if getattr(opt, name) < 1:
            parser.error(f"--{name} must be at least 1, got {getattr(opt, name)}")
    for folder in opt.font_dir:
        if not os.path.isdir(folder):
            parser.error(f"--font_dir {folder} is not a folder; give a folder of .ttf/.otf fonts")
    if opt.batch_max_length is None:  # resolved once, here: --max_len 40 alone means labels up to 40
        opt.batch_max_length = max(25, opt.max_len or 0)
    for name in ("batch_max_length", "imgH", "workers", "min_len"):
        if getattr(opt, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(opt, name)}")
    if opt.max_len is not None and not opt.min_len <= opt.max_len <= opt.batch_max_length:
        parser.error(f"--max_len {opt.max_len} must lie between --min_len {opt.min_len} and "
                     f"--batch_max_length {opt.batch_max_length}")
    if opt.max_len is None and opt.min_len > opt.batch_max_length:
        parser.error(f"--min_len {opt.min_len} exceeds --batch_max_length {opt.batch_max_length}; "
                     "pass --max_len too")
    return opt


def main(argv: list[str] | None = None) -> None:
    """create_synth_dataset.py's entry point: ``generate`` with user errors reported as one line (exit 2 or 1)."""
    run_cli(lambda args: generate(parse_args(args)), argv)


if __name__ == "__main__":
    main()
