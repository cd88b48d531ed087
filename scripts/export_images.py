"""Write the first N samples of an LMDB as image files plus a gt.txt (the create_lmdb_dataset input format).

    python scripts/export_images.py --lmdb data/evaluation/synth_heldout_fonts --output demo_images --count 8
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import lmdb
from PIL import Image


def export_images(lmdb_path: str, output: str, count: int) -> int:
    out = Path(output)
    (out).mkdir(parents=True, exist_ok=True)
    env = lmdb.open(lmdb_path, readonly=True, lock=False, readahead=False, meminit=False)
    lines = []
    with env.begin() as txn:
        n = int(txn.get(b"num-samples") or 0)
        if n == 0:
            raise SystemExit(f"error: {lmdb_path} holds no samples (missing or incomplete LMDB)")
        for i in range(1, min(count, n) + 1):
            image = Image.open(io.BytesIO(txn.get(f"image-{i:09d}".encode())))
            name = f"sample_{i:03d}.png"
            image.save(out / name)
            lines.append(f"{name}\t{txn.get(f'label-{i:09d}'.encode()).decode('utf-8')}")
    env.close()
    (out / "gt.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lmdb", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--count", type=int, default=8)
    a = p.parse_args()
    print(f"wrote {export_images(a.lmdb, a.output, a.count)} images to {a.output}")
