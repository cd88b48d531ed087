"""int8 quantisation settings compared: accuracy against fp32, speed, and whether the file can saturate
ONNX Runtime's int8 kernels on x86 CPUs without VNNI.

    python -m benchmarks.bench_int8 --saved_model english_g2 \\
        --eval_data ../shared/data/real/svt_647 ../shared/data/real/ic03_860 \\
        --calib_data ../shared/data/real/iiit5k_train_2000/images [--variants 7bit,8bit]

Exports the model to ONNX fp32 once, quantises it once per variant (calibrated on ``--calib_data``,
never an evaluation set), runs export.py's check (int8 against fp32 on the calibration images), then
reads every ``--eval_data`` folder with fp32 and each int8 file: accuracy (case-insensitive
alphanumeric against gt.txt) and the model's images/s on preprocessed batches (ONNX Runtime only,
no image decoding). "saturates without VNNI" is arithmetic, not a measurement: whether a pair of
uint8 x int8 products can pass the int16 limit, 2 x 255 x max|weight| > 32767.

``--emulate avx2`` also reads the first ``--emulate_images`` evaluation images with every file on an
emulated AVX2-only CPU (``qemu-x86_64 -cpu EPYC-Rome``, see cpu_emulation.py; about a hundred times slower
than native, so it measures readings, not speed): the accuracy there and how many strings equal the native
reading, which is where 8-bit weights show their saturation.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from cpu_emulation import QEMU_CPUS, emulation_unavailable
from real_datasets import real_data_dir
from runtime import UsageError, cpu_description, run_cli

VARIANTS = {  # name → Int8Settings arguments
    "7bit": {"reduce_range": True, "per_channel": True},
    "8bit": {"reduce_range": False, "per_channel": True},
    "7bit-per-tensor": {"reduce_range": True, "per_channel": False},
}
INT16_MAX = 32767


def max_int8_weight(path: Path) -> int:
    """The largest |value| among the file's int8 initialisers (the quantised weights)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    proto = onnx.load(path)
    values = [np.abs(numpy_helper.to_array(t).astype(np.int32)).max() for t in proto.graph.initializer
              if t.data_type == onnx.TensorProto.INT8 and t.dims]
    return int(max(values, default=0))


def labelled_batches(folder: Path, config, batch_size: int):
    """(images [B, C, H, W], labels) batches of a folder with gt.txt and images/, preprocessed as demo.py does."""
    from dataset import parse_gt_file
    from onnx_model import calibration_items

    samples, _ = parse_gt_file(folder / "gt.txt")
    labels = {str((folder / image).resolve()): label for _, image, label in samples}
    for images, paths in calibration_items(folder / "images", config, len(labels) + 1, batch_size):
        yield images, [labels[str(Path(p).resolve())] for p in paths]


def read_folder(model, folder: Path, batch_size: int) -> tuple[list[str], list[str], float]:
    """→ (predictions, labels, seconds in the model) for a folder with gt.txt and images/."""
    from decoding import DecodeOptions, decode_logits

    preds, gts, seconds = [], [], 0.0
    for images, labels in labelled_batches(folder, model.config, batch_size):
        start = time.perf_counter()
        logits = model(images)
        seconds += time.perf_counter() - start
        preds += [d.text for d in decode_logits(logits, model.config, DecodeOptions())]
        gts += labels
    return preds, gts, seconds


def evaluate_emulated(files: dict[str, Path], folders: list[Path], batch_size: int, count: int, cpu: str,
                      native: dict[str, list[str]]) -> dict[str, dict]:
    """Every file read on the emulated ``cpu`` (one qemu child) on the first ``count`` evaluation images →
    name → {"accuracy", "same_as_native" (% of strings equal to the native reading), "images"}."""
    from cpu_emulation import run_emulated
    from decoding import DecodeOptions, decode_logits
    from evaluation import normalize_for_scoring as norm
    from onnx_model import OnnxModel

    config = OnnxModel(files["fp32"], warn=False).config
    batches, gts = [], []
    for folder in folders:
        for images, labels in labelled_batches(folder, config, batch_size):
            if len(gts) >= count:
                break
            keep = count - len(gts)
            batches.append(images[:keep].numpy())
            gts += labels[:keep]
    outputs = run_emulated({name: (path, batches) for name, path in files.items()}, cpu, timeout=24 * 3600)
    results = {}
    for name, logits in outputs.items():
        preds = [d.text for out in logits for d in decode_logits(torch.from_numpy(out), config, DecodeOptions())]
        results[name] = {"images": len(preds),
                         "accuracy": 100 * sum(norm(p) == norm(g) for p, g in zip(preds, gts)) / len(preds),
                         "same_as_native": 100 * sum(a == b for a, b in zip(preds, native[name])) / len(preds)}
    return results


def evaluate(path: Path, folders: list[Path], batch_size: int) -> dict:
    from evaluation import normalize_for_scoring as norm
    from onnx_model import OnnxModel

    model = OnnxModel(path, warn=False)
    preds, gts, seconds = [], [], 0.0
    for folder in folders:
        p, g, s = read_folder(model, folder, batch_size)
        preds, gts, seconds = preds + p, gts + g, seconds + s
    correct = sum(norm(p) == norm(g) for p, g in zip(preds, gts))
    return {"images": len(preds), "accuracy": 100 * correct / len(preds), "images_per_s": len(preds) / seconds,
            "predictions": preds, "labels": gts}


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
    parser.add_argument("--variants", default="7bit,8bit", help="comma-separated, of: " + ", ".join(VARIANTS))
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--emulate", choices=sorted(QEMU_CPUS), default=None,
                        help="also read the images on this CPU emulated by qemu-user (avx2: qemu-x86_64 -cpu "
                             "EPYC-Rome, no VNNI), where 8-bit weights saturate")
    parser.add_argument("--emulate_images", type=int, default=300,
                        help="how many evaluation images --emulate reads (emulation is ~100x slower)")
    args = parser.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",")]
    if unknown := [v for v in variants if v not in VARIANTS]:
        parser.error(f"unknown --variants {unknown}; choose from {list(VARIANTS)}")
    if args.emulate and (reason := emulation_unavailable(args.emulate)):
        raise UsageError(f"--emulate {args.emulate}: {reason}")
    if args.emulate_images < 1:
        raise UsageError(f"--emulate_images must be at least 1, got {args.emulate_images}")

    from checkpoint import load_model
    from onnx_model import Int8Settings, compare_int8, export_onnx, quantize_int8

    print(cpu_description(), f"(torch threads {torch.get_num_threads()})", flush=True)
    folders = [Path(f) for f in args.eval_data]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = export_onnx(load_model(args.saved_model, {}, "cpu", allow_onnx=False).model, Path(tmp) / "fp32.onnx")
        results["fp32"] = evaluate(fp32, folders, args.batch_size)
        files = {"fp32": fp32}
        for name in variants:
            path = quantize_int8(fp32, Path(tmp) / f"{name}.onnx", args.calib_data, args.calib_size,
                                 Int8Settings(**VARIANTS[name]))
            check = compare_int8(fp32, path, args.calib_data, args.calib_size)
            weight = max_int8_weight(path)
            results[name] = {**evaluate(path, folders, args.batch_size), "calib_drop": check.drop,
                             "calib_labelled": check.labelled, "calib_confident_changed": check.confident_changed,
                             "max_weight": weight, "saturates_without_vnni": 2 * 255 * weight > INT16_MAX}
            files[name] = path
            print(name, {k: v for k, v in results[name].items() if k not in ("predictions", "labels")}, flush=True)
        if args.emulate:
            print(f"reading {args.emulate_images} images on an emulated {args.emulate} CPU (qemu-user; slow)", flush=True)
            native = {name: r["predictions"] for name, r in results.items()}
            for name, r in evaluate_emulated(files, folders, args.batch_size, args.emulate_images, args.emulate,
                                             native).items():
                results[name]["emulated"] = {"cpu": args.emulate, **r}
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_description(), "results": results}, indent=1))
    return results


def print_table(results: dict) -> None:
    from evaluation import normalize_for_scoring as norm

    base = results["fp32"]
    print("\n| model | accuracy (%) | vs fp32 (points) | same strings as fp32 | model images/s | check on calib "
          "(points) | max abs weight | saturates without VNNI |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        same = sum(a == b for a, b in zip(r["predictions"], base["predictions"])) / r["images"] * 100
        extra = (f"{r['calib_drop']:.2f} | {r['max_weight']} | {'yes' if r['saturates_without_vnni'] else 'no'}"
                 if name != "fp32" else " | | ")
        print(f"| {name} | {r['accuracy']:.2f} | {r['accuracy'] - base['accuracy']:+.2f} | {same:.1f} % | "
              f"{r['images_per_s']:.0f} | {extra} |")
    if "emulated" not in base:
        return
    cpu, count = base["emulated"]["cpu"], base["emulated"]["images"]
    print(f"\n| model | accuracy on {count} images, native (%) | emulated {cpu} (%) | vs fp32 emulated (points) | "
          "same strings as native |")
    print("|---|---|---|---|---|")
    for name, r in results.items():
        e = r["emulated"]
        native = sum(norm(p) == norm(g) for p, g in zip(r["predictions"][:count], base["labels"][:count])) / count * 100
        print(f"| {name} | {native:.2f} | {e['accuracy']:.2f} | {e['accuracy'] - base['emulated']['accuracy']:+.2f} | "
              f"{e['same_as_native']:.1f} % |")


def main(argv: list[str] | None = None) -> dict:
    """bench_int8.py's entry point: ``benchmark`` with user errors reported as one line (exit 2 or 1)."""
    return run_cli(benchmark, argv)


if __name__ == "__main__":
    main()
