"""Deployment paths compared end to end through demo.py: PyTorch fp32 / bf16, ONNX Runtime fp32 / int8, and
demo.py's defaults (--runtime auto: what this machine measured faster, printed under the table).

    python -m benchmarks.bench_inference --saved_model english_g2 \\
        --eval_data ../shared/data/real/svt_647 ../shared/data/real/ic03_860 \\
        --calib_data ../shared/data/real/iiit5k_train_2000/images [--batch_size 64] [--json out.json]

Exports the model to ONNX (fp32, and int8 calibrated on ``--calib_data``, which must not be an
evaluation set), then runs ``demo.read_decoded`` (image files → Pillow → AlignCollate → model →
decode, model loading included) once per path, each in its own process so that its peak memory
(VmHWM: imports, model, data and activations) is its own. Accuracy is case-insensitive alphanumeric against each folder's gt.txt.
Prints the CPU (model, cores, AVX2, AVX-512, VNNI, AVX512-BF16, AMX) above a Markdown table, and
writes a JSON object with ``--json``.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from real_datasets import real_data_dir
from runtime import run_cli

ROOT = Path(__file__).resolve().parents[1]

PATHS = {  # name → (what --saved_model is, --amp, --runtime)
    "PyTorch fp32": ("model", "off", "torch"),
    "PyTorch bf16": ("model", "bf16", "torch"),
    "ONNX Runtime fp32": ("onnx", "off", "torch"),
    "ONNX Runtime int8": ("int8", "off", "torch"),
    # demo.py with no precision or runtime flags: --runtime auto's measured choice (its export and timing are
    # paid on the first run on a machine and cached: run the benchmark twice and report the second)
    "demo.py defaults": ("model", "off", "auto"),
}
FEATURES = ("avx512_bf16", "amx_bf16", "amx_tile", "amx_int8", "avx512_vnni", "avx_vnni", "avx512f", "avx2")


def labels_of(folders: list[str]) -> dict[str, str]:
    """Image path (as demo.py lists it) → label, from each folder's gt.txt."""
    from dataset import parse_gt_file

    labels = {}
    for folder in map(Path, folders):
        samples, _ = parse_gt_file(folder / "gt.txt")
        for _, image, label in samples:
            labels[str(folder / image)] = label
    return labels


def run_one(args) -> dict:
    """One path in this process: demo.read_decoded timed end to end, accuracy, peak memory."""
    import torch

    from demo import parse_args, read_decoded
    from evaluation import normalize_for_scoring

    opt = parse_args(["--image_folder", *(str(Path(f) / "images") for f in args.eval_data), "--saved_model",
                      args.model, "--workers", str(args.workers), "--batch_size", str(args.batch_size),
                      "--device", "cpu", "--amp", args.amp, "--runtime", args.runtime]
                     + (["--dynamic_width"] if args.dynamic_width else []))
    notes: list[str] = []
    start = time.perf_counter()
    results = [(path, d.text, d.confidence) for path, d in read_decoded(opt, notes)]
    seconds = time.perf_counter() - start
    labels = labels_of(args.eval_data)
    correct = sum(normalize_for_scoring(labels[path]) == normalize_for_scoring(pred) for path, pred, _ in results)
    return {"images": len(results), "seconds": seconds, "images_per_s": len(results) / seconds,
            "accuracy": 100 * correct / len(results), "peak_rss_mib": peak_rss_mib(),
            "torch_threads": torch.get_num_threads(), "predictions": [pred for _, pred, _ in results],
            "chosen": " ".join(notes)}


def peak_rss_mib() -> float:
    """This process's peak resident memory (VmHWM: reset at exec, unlike getrusage's ru_maxrss, which a
    child inherits from the parent that forked it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_features() -> dict:
    import torch

    from runtime import cpu_description, cpu_flags

    flags = cpu_flags()
    return {"description": cpu_description(), "flags": {f: f in flags for f in FEATURES},
            "torch_capability": torch.backends.cpu.get_cpu_capability()}


def export_models(args, out_dir: Path) -> dict[str, str]:
    from export import export

    models = {"model": args.saved_model, "onnx": str(out_dir / "model.onnx"), "int8": str(out_dir / "model_int8.onnx")}
    timings = {}
    for key, extra in (("onnx", []), ("int8", ["--quantize", "int8", "--calib_data", args.calib_data,
                                               "--calib_size", str(args.calib_size)])):
        start = time.perf_counter()
        export(["--saved_model", args.saved_model, "--format", "onnx", "--output", models[key], *extra])
        timings[key] = time.perf_counter() - start
    print(f"export: fp32 {timings['onnx']:.1f} s, int8 (with calibration) {timings['int8']:.1f} s", flush=True)
    return models


def benchmark(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--saved_model", default="english_g2")
    parser.add_argument("--eval_data", nargs="+", default=[str(real_data_dir() / "svt_647"),
                                                           str(real_data_dir() / "ic03_860")],
                        help="folders holding gt.txt and images/")
    parser.add_argument("--calib_data", default=str(real_data_dir() / "iiit5k_train_2000" / "images"),
                        help="int8 calibration images (never an evaluation set)")
    parser.add_argument("--calib_size", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--dynamic_width", action="store_true")
    parser.add_argument("--paths", default=",".join(PATHS), help="comma-separated, of: " + ", ".join(PATHS))
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--run_one", default=None, help=argparse.SUPPRESS)  # internal: one path, JSON on stdout
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--amp", default="off", help=argparse.SUPPRESS)
    parser.add_argument("--runtime", default="torch", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.run_one:
        print(json.dumps(run_one(args)))
        return {}

    paths = [p.strip() for p in args.paths.split(",")]
    unknown = [p for p in paths if p not in PATHS]
    if unknown:
        parser.error(f"unknown --paths {unknown}; choose from {list(PATHS)}")
    features = cpu_features()
    print(f"{features['description']} (torch: {features['torch_capability']})", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        models = export_models(args, Path(tmp))
        results = {}
        for name in paths:
            kind, amp, runtime = PATHS[name]
            cmd = [sys.executable, "-m", "benchmarks.bench_inference", "--run_one", name, "--model", models[kind],
                   "--amp", amp, "--runtime", runtime, "--batch_size", str(args.batch_size),
                   "--workers", str(args.workers),
                   "--eval_data", *args.eval_data]
            cmd += ["--dynamic_width"] if args.dynamic_width else []
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            if proc.returncode != 0:
                results[name] = {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
            else:
                results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
            print(name, {k: v for k, v in results[name].items() if k != "predictions"}, flush=True)
    report = {"cpu": features, "batch_size": args.batch_size, "eval_data": args.eval_data, "results": results}
    print(f"\n{features['description']}, batch size {args.batch_size}, {len(args.eval_data)} folder(s)")
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return report


def print_table(results: dict) -> None:
    """Markdown; the CPU line is printed above it by the caller."""
    base = results.get("PyTorch fp32", {})
    print("\n| path | images/s | vs PyTorch fp32 | peak RSS (MiB) | accuracy (%) | same strings as fp32 |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        if "error" in r:
            print(f"| {name} | not run: {r['error']} | | | | |")
            continue
        speedup = f"{r['images_per_s'] / base['images_per_s']:.2f}x" if "images_per_s" in base else ""
        same = (f"{sum(a == b for a, b in zip(r['predictions'], base['predictions'])) / r['images'] * 100:.1f} %"
                if "predictions" in base else "")
        print(f"| {name} | {r['images_per_s']:.1f} | {speedup} | {r['peak_rss_mib']:.0f} | {r['accuracy']:.2f} | {same} |")
    for name, r in results.items():
        if r.get("chosen"):
            print(f"\n{name}: {r['chosen']}")


def main(argv: list[str] | None = None) -> dict:
    """bench_inference.py's entry point: ``benchmark`` with user errors reported as one line (exit 2 or 1)."""
    return run_cli(benchmark, argv)


if __name__ == "__main__":
    main()
