"""Convert a public real word-image dataset, in the format it ships in, to an LMDB for train.py.

    python scripts/convert_real_dataset.py --format iiit5k --annotation IIIT5K/traindata.mat --images IIIT5K --output data/real/train/iiit5k
    python scripts/convert_real_dataset.py --format svt --annotation svt1/train.xml --images svt1 --output data/real/train/svt
    python scripts/convert_real_dataset.py --format ic13 --annotation Challenge2_Training_Task3_Images_GT/gt.txt --output data/real/train/ic13
    python scripts/convert_real_dataset.py --format ic15 --annotation ch4_training_word_images_gt/gt.txt --output data/real/train/ic15
    python scripts/convert_real_dataset.py --format cocotext --annotation cocotext.v2.json --images train2014 --output data/real/train/coco
    python scripts/convert_real_dataset.py --format textocr --annotation TextOCR_0.1_train.json --images train_val_images --output data/real/train/textocr
    python scripts/convert_real_dataset.py --format union14m --annotation Union14M-L/train_annos/mmocr1.0/train_easy.json --images Union14M-L --output data/real/train/u14m_easy

``--images`` defaults to the annotation file's folder. The LMDB layout is create_lmdb_dataset.py's.
Every annotation not written is counted by reason (do-not-care, illegible, missing image, ...).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import _root  # noqa: F401  (the repository root on the import path)
from errors import UserError
from fileio import special_kind
from lmdb_store import check_output_path
from real_datasets import READERS, convert, read_cocotext
from runtime import run_cli


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--format", required=True, choices=sorted(READERS), help="the dataset's own format")
    parser.add_argument("--annotation", required=True, help="the dataset's label file (.mat, .xml, gt.txt, .json, .jsonl)")
    parser.add_argument("--images", help="the folder the annotation's image paths are relative to "
                                         "(default: the annotation's folder)")
    parser.add_argument("--output", required=True, help="the LMDB folder to write")
    parser.add_argument("--split", default="train", help="cocotext only: the 'set' to take (train or val)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing LMDB at --output")
    return parser


def convert_dataset(argv: list[str] | None = None) -> None:
    """Convert one dataset; a user error ends as ``error: ...`` with exit status 1 (runtime.run_cli).

    The output is checked and the annotation file read before anything is written; with
    ``--overwrite`` the old dataset is replaced only once the new one is complete.
    """
    opt = get_parser().parse_args(argv)
    annotation = Path(opt.annotation)
    images = Path(opt.images) if opt.images else annotation.parent
    if not annotation.exists():
        raise FileNotFoundError(f"--annotation {annotation} does not exist.")
    if special_kind(annotation) is not None:
        raise UserError(f"--annotation {annotation} is {special_kind(annotation)}, not a regular file.")
    if not images.is_dir():
        raise FileNotFoundError(f"--images {images} is not a folder; point it at the folder the "
                                "annotation's image paths are relative to.")
    check_output_path(opt.output, opt.overwrite, "--output")
    if opt.format == "cocotext":
        items = read_cocotext(annotation, images, split=opt.split)
    else:
        items = READERS[opt.format](annotation, images)
    report = convert(items, opt.output, overwrite=opt.overwrite)
    print(f"{opt.format} {annotation} -> {opt.output}: {report}")


def main(argv: list[str] | None = None) -> None:
    """convert_real_dataset.py's entry point: ``convert_dataset`` with user errors reported as one line (exit 2 or 1)."""
    return run_cli(convert_dataset, argv)


if __name__ == "__main__":
    main()
