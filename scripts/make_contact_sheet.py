"""A contact sheet of the first samples of an LMDB dataset, each with its label under it.

    python scripts/make_contact_sheet.py --lmdb data/synth_sheet --output docs/synth_samples.png

Works on any dataset in the reference LMDB layout (synthetic or real). ``--augment rand`` draws
what training with ``train.py --augment rand`` feeds the model: each sample augmented with the
generator of its position (``--augment_n``, ``--augment_m``, ``--seed`` as in train.py)::

    python scripts/make_contact_sheet.py --lmdb data/real_lmdb --augment rand --output docs/augmented.png
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

import _root  # noqa: F401  (the repository root on the import path)
from augment import AUGMENTATIONS, make_augment, sample_rng
from dataset import read_lmdb_samples
from runtime import run_cli

LABEL_FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSansMono.ttf"


def read_samples(root: str, count: int) -> list[tuple[Image.Image, str]]:
    return [(Image.open(io.BytesIO(image_bytes)).convert("RGB"), label)
            for _, image_bytes, label in read_lmdb_samples(root, count)]


def label_font(size: int) -> ImageFont.ImageFont:
    if Path(LABEL_FONT).is_file():
        return ImageFont.truetype(LABEL_FONT, size)
    return ImageFont.load_default(size)


def contact_sheet(samples: list[tuple[Image.Image, str]], columns: int, cell_w: int, cell_h: int) -> Image.Image:
    """Each cell: the image scaled to fit ``cell_w x cell_h`` (aspect kept), its label below."""
    font = label_font(14)
    label_h = 20
    rows = (len(samples) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * (cell_w + 8) + 8, rows * (cell_h + label_h + 8) + 8), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (image, label) in enumerate(samples):
        scale = min(cell_w / image.width, cell_h / image.height)
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.BICUBIC)
        x = 8 + (i % columns) * (cell_w + 8)
        y = 8 + (i // columns) * (cell_h + label_h + 8)
        sheet.paste(image, (x + (cell_w - image.width) // 2, y + (cell_h - image.height) // 2))
        draw.text((x + cell_w // 2, y + cell_h + 2), label, fill="black", font=font, anchor="mt")
    return sheet


def make_sheet(argv: list[str] | None = None) -> None:
    """Write the contact sheet of ``--lmdb`` to ``--output``."""
    opt = get_parser().parse_args(argv)
    samples = read_samples(opt.lmdb, opt.columns * opt.rows)
    policy = make_augment(opt.augment, opt.augment_n, opt.augment_m)
    if policy is not None:
        samples = [(policy(image, sample_rng(opt.seed, 0, i)), label) for i, (image, label) in enumerate(samples)]
    sheet = contact_sheet(samples, opt.columns, opt.cell_width, opt.cell_height)
    if opt.colors:  # a palette keeps the PNG small enough to commit
        sheet = sheet.quantize(opt.colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    Path(opt.output).parent.mkdir(parents=True, exist_ok=True)
    sheet.save(opt.output, optimize=True)
    print(f"wrote {opt.output}: {len(samples)} samples, {sheet.width}x{sheet.height}")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lmdb", required=True, help="LMDB dataset folder")
    parser.add_argument("--output", default="docs/synth_samples.png")
    parser.add_argument("--columns", type=int, default=6)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--cell_width", type=int, default=200, help="pixels; images are scaled to fit")
    parser.add_argument("--cell_height", type=int, default=64)
    parser.add_argument("--colors", type=int, default=256, help="palette size of the PNG; 0 keeps full RGB")
    parser.add_argument("--augment", choices=sorted(AUGMENTATIONS), default="none",
                        help="draw the samples as train.py --augment NAME feeds them")
    parser.add_argument("--augment_n", type=int, default=3, help="--augment rand: ops per image")
    parser.add_argument("--augment_m", type=float, default=5, help="--augment rand: magnitude, 0-10")
    parser.add_argument("--seed", type=int, default=1111, help="augmentation seed (train.py's --manualSeed)")
    return parser


def main(argv: list[str] | None = None) -> None:
    """make_contact_sheet.py's entry point: ``make_sheet`` with user errors reported as one line (exit 2 or 1)."""
    return run_cli(make_sheet, argv)


if __name__ == "__main__":
    main()
