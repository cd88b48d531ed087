"""How many synthetic word images per second ``create_synth_dataset.py`` renders.

    python -m benchmarks.bench_synth --num_samples 5000 --workers 2

Times rendering, encoding and (by default) writing into a temporary LMDB, worker start-up
included; font discovery and word-list loading are timed apart, as they happen once per
run. Prints a line for people and a JSON line for scripts.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import time

import numpy as np
from PIL import Image

import synth
from lmdb_store import LmdbWriter
from runtime import run_cli
from utils import DEFAULT_CHARACTER


def bench(opt: argparse.Namespace) -> dict:
    start = time.perf_counter()
    fonts = synth.split_fonts(synth.discover_fonts(opt.character), "train")
    texts = synth.TextSource(opt.character, opt.batch_max_length)
    generator = synth.SynthGenerator(fonts, texts, opt.imgH, opt.image_format)
    setup_s = time.perf_counter() - start

    widths, sizes = [], []
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        with LmdbWriter(os.path.join(tmp, "bench")) as writer:
            for image_bytes, label in synth.generate(generator, opt.num_samples, opt.seed, 0, opt.workers):
                if opt.write_lmdb:
                    writer.add(image_bytes, label)
                sizes.append(len(image_bytes))
                if len(widths) < 200:
                    widths.append(Image.open(io.BytesIO(image_bytes)).width)
        elapsed = time.perf_counter() - start
    return {
        "images_per_s": round(opt.num_samples / elapsed, 1),
        "num_samples": opt.num_samples,
        "workers": opt.workers,
        "seconds": round(elapsed, 2),
        "setup_s": round(setup_s, 2),
        "imgH": opt.imgH,
        "mean_width": round(float(np.mean(widths)), 1),
        "mean_bytes": round(float(np.mean(sizes)), 1),
        "fonts": len(fonts),
        "write_lmdb": opt.write_lmdb,
        "cpu_count": os.cpu_count(),
    }


def report(opt: argparse.Namespace) -> None:
    """Run the benchmark and print its result."""
    result = bench(opt)
    print(f"{result['images_per_s']} images/s ({result['num_samples']} images of height {result['imgH']}, "
          f"mean width {result['mean_width']}, {result['workers']} workers, {result['seconds']} s; "
          f"setup {result['setup_s']} s)")
    print(json.dumps(result))


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_samples", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--character", default=DEFAULT_CHARACTER)
    parser.add_argument("--batch_max_length", type=int, default=25)
    parser.add_argument("--imgH", type=int, default=32)
    parser.add_argument("--image_format", choices=tuple(synth.IMAGE_FORMATS), default="jpeg")
    parser.add_argument("--no_lmdb", dest="write_lmdb", action="store_false", help="render and encode only")
    return parser


def main(argv: list[str] | None = None) -> None:
    """bench_synth.py's entry point: ``report`` with user errors reported as one line (exit 2 or 1)."""
    return run_cli(lambda args: report(get_parser().parse_args(args)), argv)


if __name__ == "__main__":
    main()
