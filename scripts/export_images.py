"""Write the first N samples of an LMDB as image files plus a gt.txt (the create_lmdb_dataset input format).

    python scripts/export_images.py --lmdb data/evaluation/synth_heldout_fonts --output demo_images --count 8
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

from PIL import Image

import _root  # noqa: F401  (the repository root on the import path)
from dataset import read_lmdb_samples
from errors import UserError
from runtime import run_cli


def export_images(lmdb_path: str, output: str, count: int) -> int:
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    for index, image_bytes, label in read_lmdb_samples(lmdb_path, count):
        name = f"sample_{index:03d}.png"
        Image.open(io.BytesIO(image_bytes)).save(out / name)
        lines.append(f"{name}\t{label}")
    if not lines:
        raise UserError(f"{lmdb_path} holds no samples")
    (out / "gt.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)


def export(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lmdb", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--count", type=int, default=8)
    a = p.parse_args(argv)
    print(f"wrote {export_images(a.lmdb, a.output, a.count)} images to {a.output}")


def main(argv: list[str] | None = None) -> None:
    """export_images.py's entry point: ``export`` with user errors reported as one line (exit 2 or 1)."""
    return run_cli(export, argv)


if __name__ == "__main__":
    main()
