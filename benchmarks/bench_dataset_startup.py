"""Time LmdbDataset start-up on a 1,000,000-label LMDB: first open (cursor scan) vs cached.

    python -m benchmarks.bench_dataset_startup [--num_samples 1000000]

Writes the LMDB (the same tiny PNG under every key) and the filter cache in a temporary
folder, prints one JSON line and one human line. For comparison it also times the
reference's scan (one ``txn.get`` per label plus its regex filter).
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import re
import string
import tempfile
import time
import types
from pathlib import Path

from PIL import Image

from lmdb_store import LmdbWriter
from runtime import run_cli


def tiny_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (8, 4), 128).save(buffer, format="PNG")
    return buffer.getvalue()


def make_lmdb(path: Path, num_samples: int) -> None:
    rng = random.Random(0)
    # ~3% have an apostrophe or space (out of set) and ~1% are too long, as in real data.
    alphabet = string.ascii_letters + string.digits
    image = tiny_png()
    with LmdbWriter(path, commit_every=100_000) as writer:
        for _ in range(num_samples):
            label = "".join(rng.choices(alphabet, k=rng.randint(1, 12)))
            roll = rng.random()
            if roll < 0.03:
                label += "'s"
            elif roll < 0.04:
                label *= 4
            writer.add(image, label)


def reference_scan(path: Path, opt) -> int:
    """The reference's start-up: a get per label and a regex built from the charset."""
    from dataset import open_lmdb  # the process's one handle (lmdb refuses a second open)
    env = open_lmdb(path)
    kept = 0
    with env.begin(write=False) as txn:
        n = int(txn.get(b"num-samples"))
        for index in range(1, n + 1):
            label = txn.get(f"label-{index:09d}".encode()).decode("utf-8")
            if len(label) > opt.batch_max_length:
                continue
            if re.search(f"[^{opt.character}]", label.lower()):
                continue
            kept += 1
    return kept


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def benchmark(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_samples", type=int, default=1_000_000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["STR_CACHE_DIR"] = str(Path(tmp) / "cache")
        from dataset import LmdbDataset  # after STR_CACHE_DIR is set

        opt = types.SimpleNamespace(character=string.digits + string.ascii_lowercase, sensitive=False,
                                    batch_max_length=25, data_filtering_off=False, rgb=False)
        path = Path(tmp) / "lmdb"
        _, create_s = timed(lambda: make_lmdb(path, args.num_samples))
        first, first_s = timed(lambda: LmdbDataset(path, opt))
        cached, cached_s = timed(lambda: LmdbDataset(path, opt))
        assert len(first) == len(cached) and (first.filtered_index_list == cached.filtered_index_list).all()
        kept_ref, reference_s = timed(lambda: reference_scan(path, opt))
        assert kept_ref == len(first), (kept_ref, len(first))
        result = {"num_samples": args.num_samples, "kept": len(first), "create_s": round(create_s, 2),
                  "first_open_s": round(first_s, 3), "cached_open_s": round(cached_s, 4),
                  "reference_scan_s": round(reference_s, 3),
                  "data_mdb_mib": round(os.path.getsize(path / "data.mdb") / 2**20, 1)}
        print(json.dumps(result))
        print(f"{args.num_samples:,} labels ({first.stats}): first open {first_s:.2f} s, "
              f"cached open {cached_s * 1000:.1f} ms, reference-style scan {reference_s:.2f} s")


def main(argv: list[str] | None = None) -> None:
    """bench_dataset_startup.py's entry point: ``benchmark`` with user errors reported as one line (exit 2 or 1)."""
    return run_cli(benchmark, argv)


if __name__ == "__main__":
    main()
