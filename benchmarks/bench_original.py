"""demo.py against the original deep-text-recognition-benchmark's demo.py, whole commands timed, one after
the other, on the same images and weights.

    python -m benchmarks.bench_original --original ~/deep-text-recognition-benchmark \\
        --folder ../shared/data/real/iiit5k_train_2000 [--saved_model english_g2] [--runs 3]

``--original`` is a checkout of clovaai/deep-text-recognition-benchmark (nothing is downloaded). Its
demo.py runs unchanged, with its defaults, on the model saved in its layout (``export.py --format
reference``) and the flags its model needs; two things stand between it and current PyTorch, and the
wrapper that runs it restores them before the import, changing none of its files: ``torch._utils._accumulate``
(removed in PyTorch 2.3, imported by its dataset.py for the training split) as ``itertools.accumulate``, and,
where the ``six`` package is not installed, a ``six`` module holding the one name its dataset.py uses
(``BytesIO``, for LMDB images). This toolkit's demo.py runs with no flag but the folder and the model.

Each run is a fresh process, timed from start to exit (imports, model loading, reading, the table), the two
alternating ``--runs`` times; the first run of this toolkit's demo.py on a machine measures its runtimes and
exports the model once (cached), so a ``--warmup`` run of it comes first, untimed. Prints the CPU, each run's
seconds, the medians and their ratio, each side's accuracy against ``--folder``'s gt.txt (case-insensitive
alphanumeric), and how many images the two read differently.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from runtime import UsageError, run_cli

ROOT = Path(__file__).resolve().parents[1]

# Runs the original's demo.py unchanged: argv[1] is its checkout, the rest its flags.
WRAPPER = """
import importlib.util, io, itertools, runpy, sys, types
import torch._utils
torch._utils._accumulate = itertools.accumulate  # removed in PyTorch 2.3; its training split imports it
if importlib.util.find_spec("six") is None:
    sys.modules["six"] = types.SimpleNamespace(BytesIO=io.BytesIO)  # the one name its dataset.py uses
original = sys.argv[1]
sys.path.insert(0, original)
sys.argv = [original + "/demo.py", *sys.argv[2:]]
runpy.run_path(original + "/demo.py", run_name="__main__")
"""


def original_flags(config, weights: Path, folder: Path) -> list[str]:
    """The original demo.py's command line for ``config`` (a ModelConfig of its 24 combinations)."""
    flags = ["--image_folder", str(folder), "--saved_model", str(weights),
             "--Transformation", config.Transformation, "--FeatureExtraction", config.FeatureExtraction,
             "--SequenceModeling", config.SequenceModeling, "--Prediction", config.Prediction,
             "--imgH", str(config.imgH), "--imgW", str(config.imgW), "--output_channel", str(config.output_channel),
             "--hidden_size", str(config.hidden_size), "--batch_max_length", str(config.batch_max_length),
             "--character", config.character, "--num_fiducial", str(config.num_fiducial)]
    return flags + (["--PAD"] if config.PAD else []) + (["--rgb"] if config.rgb else [])


def check_original(original: Path, config) -> None:
    if not (original / "demo.py").is_file() or not (original / "modules").is_dir():
        raise UsageError(f"--original {original}: no demo.py and modules/ there; give a checkout of "
                         "clovaai/deep-text-recognition-benchmark")
    from modules.registry import combination_stages

    if not all(cls.reference for cls in combination_stages(config)) or config.resize != "bicubic" \
            or config.channel_order != "RGB":
        raise UsageError(f"--saved_model is {config.name}: the original runs its own 24 combinations with its "
                         "own preprocessing only; give one of those")


def read_table(stdout: str, folder: Path) -> dict[str, str]:
    """The demo table's rows (either demo.py's: path, prediction, confidence) → {path under folder: text}."""
    rows = {}
    for line in stdout.splitlines():
        parts = line.split("\t")
        if len(parts) == 3 and parts[0].strip() != "image_path":
            rows[os.path.relpath(parts[0].strip(), folder)] = parts[1].strip()
    return rows


def timed(cmd: list[str], cwd: Path) -> tuple[float, str]:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed (exit {proc.returncode}):\n{tail}")
    return seconds, proc.stdout


def accuracy(rows: dict[str, str], labels: dict[str, str]) -> float:
    from evaluation import normalize_for_scoring

    return 100 * sum(normalize_for_scoring(rows.get(k, "")) == normalize_for_scoring(v)
                     for k, v in labels.items()) / max(len(labels), 1)


def benchmark(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--original", required=True, help="a checkout of clovaai/deep-text-recognition-benchmark")
    parser.add_argument("--folder", required=True, help="a folder with gt.txt and the images it names")
    parser.add_argument("--images", default="images", help="the images' folder under --folder (default images)")
    parser.add_argument("--saved_model", default="english_g2", help="one of the original's 24 combinations")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each (default 3)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs of this toolkit's demo.py first")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.warmup < 0:
        raise UsageError("--runs must be at least 1 and --warmup 0 or more")
    from checkpoint import export_reference, load_model
    from dataset import parse_gt_file
    from runtime import cpu_description

    folder, original = Path(args.folder).resolve(), Path(args.original).resolve()
    images = folder / args.images
    if not (folder / "gt.txt").is_file() or not images.is_dir():
        raise FileNotFoundError(f"--folder {folder}: needs gt.txt and {args.images}/")
    loaded = load_model(args.saved_model, {}, "cpu")
    check_original(original, loaded.config)
    samples, _ = parse_gt_file(folder / "gt.txt")
    labels = {str(Path(image).relative_to(args.images)) if image.startswith(args.images + "/") else image: label
              for _, image, label in samples}
    print(cpu_description(), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        weights = tmp / "reference.pth"
        export_reference(weights, loaded.model)
        theirs = [sys.executable, "-c", WRAPPER, str(original), *original_flags(loaded.config, weights, images)]
        ours = [sys.executable, str(ROOT / "demo.py"), "--image_folder", str(images), "--saved_model",
                args.saved_model, "--log_file", str(tmp / "log.txt")]
        for _ in range(args.warmup):
            timed(ours, tmp)
        seconds = {"original": [], "this toolkit": []}
        tables = {}
        for run in range(args.runs):
            for name, cmd in (("original", theirs), ("this toolkit", ours)):
                took, stdout = timed(cmd, tmp)
                seconds[name].append(took)
                tables[name] = read_table(stdout, images)
                print(f"run {run + 1}: {name} {took:.1f} s", flush=True)
    medians = {name: statistics.median(s) for name, s in seconds.items()}
    differ = sum(tables["original"].get(k) != tables["this toolkit"].get(k) for k in labels)
    report = {"cpu": cpu_description(), "saved_model": args.saved_model, "images": len(labels), "seconds": seconds,
              "median_s": medians, "speedup": medians["original"] / medians["this toolkit"],
              "accuracy": {name: accuracy(rows, labels) for name, rows in tables.items()},
              "readings_differ": differ}
    print(f"\n{report['cpu']}; {args.saved_model}, {len(labels)} images of {folder.name}\n")
    print("| demo.py | seconds per run | median | accuracy |\n|---|---|---|---|")
    for name in seconds:
        runs = ", ".join(f"{s:.1f}" for s in seconds[name])
        print(f"| {name} | {runs} | {medians[name]:.1f} | {report['accuracy'][name]:.2f} % |")
    print(f"\nspeed-up {report['speedup']:.2f}x; {differ} of {len(labels)} images read differently")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return report


def main(argv: list[str] | None = None) -> dict:
    """bench_original.py's entry point: ``benchmark`` with user errors reported as one line (exit 2 or 1)."""
    return run_cli(benchmark, argv)


if __name__ == "__main__":
    main()
