"""Where demo.py's time goes, stage by stage, for one model and runtime.

    python -m benchmarks.profile_demo --saved_model english_g2 \\
        --image_folder ../shared/data/real/svt_647/images ../shared/data/real/ic03_860/images \\
        [--runtime torch|onnx] [--amp bf16] [--batch_size 64]

Runs demo.py's steps in this process, in order, and times each: loading the model (for ``--runtime
onnx`` the cached export; the first run also exports), listing the images, reading them (Pillow
open + convert), resizing and batching (AlignCollate), the model's forward, decoding, and writing
the table. One pass, single process (``--workers 0``: demo.py's loader workers would hide the reading
time in other processes). Prints a Markdown table of seconds and shares with the CPU above it.
"""
from __future__ import annotations

import argparse
import io
import time
from contextlib import contextmanager

import torch

from real_datasets import real_data_dir
from runtime import cpu_description, run_cli


class Timer:
    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        yield
        self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - start


def profile(opt) -> tuple[dict[str, float], int]:
    """→ ({stage: seconds}, images read): demo.read_decoded's work, split into timed stages."""
    from checkpoint import load_model_for_runtime
    from dataset import AlignCollate, DataConfig, RawDataset
    from decoding import DecodeOptions, decode_logits, forward_logits
    from demo import format_table
    from model import model_flags
    from runtime import check_amp

    timer, device = Timer(), torch.device("cpu")
    with timer("load model"):
        dtype = check_amp(opt.amp, device)
        loaded = load_model_for_runtime(opt.saved_model, model_flags(opt), device, opt.runtime, amp=opt.amp)
    config = loaded.config
    with timer("list images"):
        dataset = RawDataset(opt.image_folder, DataConfig.for_model(config, dynamic_width=opt.dynamic_width))
    collate = AlignCollate(imgH=config.imgH, imgW=config.imgW, keep_ratio_with_pad=config.PAD,
                           dynamic_width=opt.dynamic_width, rgb=config.rgb)
    results = []
    with torch.inference_mode():
        for start in range(0, len(dataset), opt.batch_size):
            with timer("read images (Pillow)"):
                items = [dataset[i] for i in range(start, min(start + opt.batch_size, len(dataset)))]
            with timer("resize + batch (AlignCollate)"):
                images, paths = collate(items)
            with timer("model forward"):
                logits = forward_logits(loaded.model, images, config, dtype)
            with timer("decode (greedy)"):
                decoded = decode_logits(logits, config, DecodeOptions())
            results += [(p, d.text, d.confidence) for p, d in zip(paths, decoded)]
    with timer("write table"):
        io.StringIO().write(format_table(results))
    return timer.seconds, len(results)


def main_profile(argv=None) -> dict[str, float]:
    from model import add_model_arguments

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--saved_model", default="english_g2")
    parser.add_argument("--image_folder", nargs="+", default=[str(real_data_dir() / "svt_647" / "images"),
                                                              str(real_data_dir() / "ic03_860" / "images")])
    parser.add_argument("--runtime", choices=["torch", "onnx"], default="torch")
    parser.add_argument("--amp", choices=["off", "bf16"], default="off")
    parser.add_argument("--batch_size", type=int, default=192, help="demo.py's default")
    parser.add_argument("--dynamic_width", action="store_true")
    add_model_arguments(parser)
    opt = parser.parse_args(argv)
    seconds, images = profile(opt)
    total = sum(seconds.values())
    print(f"{cpu_description()}; torch threads {torch.get_num_threads()}")
    print(f"{opt.saved_model}, --runtime {opt.runtime}, --amp {opt.amp}, batch {opt.batch_size}: {images} images "
          f"in {total:.1f} s ({images / total:.1f} images/s)\n")
    print("| stage | seconds | share |\n|---|---|---|")
    for stage, s in seconds.items():
        print(f"| {stage} | {s:.2f} | {100 * s / total:.0f} % |")
    return seconds


def main(argv: list[str] | None = None) -> dict[str, float]:
    """profile_demo.py's entry point: user errors reported as one line (exit 2 or 1)."""
    return run_cli(main_profile, argv)


if __name__ == "__main__":
    main()
