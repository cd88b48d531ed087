"""How well a model trained only on this toolkit's synthetic words reads real photographs.

Generates a fresh synthetic tree (``create_synth_dataset.py``), trains a narrow CRNN on it
(None-VGG-BiLSTM-CTC, output_channel 128, hidden 128, Adam one-cycle 2e-3, batch 64, on the CPU)
and scores the checkpoint on the real word crops beside the repository, case-insensitive
alphanumeric, printing one table. The defaults are the first real-image recipe (40,000
images, 3,500 fp32 iterations); ``quickstart.sh``'s recipe today is::

    flock /tmp/cpu_heavy.lock python -m benchmarks.real_image_eval --tag quickstart \\
        --num_train 100000 --num_iter 6000 --amp bf16 --augment rand --augment_m 3

    | run        | train images | iterations | amp  | SVT 647 | IC03 860 | IIIT5K train 2000 | held-out fonts | training minutes | minutes |
    |------------|--------------|------------|------|---------|----------|-------------------|----------------|------------------|---------|
    | quickstart | 100000       | 6000       | bf16 | 57.2    | 77.7     | 76.9              | 76.6           | 8.6              | 8.8     |

Seeds are fixed (``--seed`` for the generator, ``--train_seed`` for training), so a rerun
differs only by the CPU's non-determinism; ``--num_iter 1500`` is a cheaper proxy for comparing
two generators against each other. The real sets are only evaluated here, never trained on.
Results are appended as JSON lines to ``<out>/results.jsonl``.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from real_datasets import real_data_dir
from runtime import run_cli

ROOT = Path(__file__).resolve().parents[1]
REAL_SETS = (("svt_647", "SVT 647"), ("ic03_860", "IC03 860"), ("iiit5k_train_2000", "IIIT5K train 2000"))
ACCURACY = re.compile(r"accuracy: ([0-9.]+)\s")


def default_real_dir() -> Path:
    return real_data_dir()


def run(cmd: list[str], log_path: Path) -> str:
    """Run a step of the recipe from the repository root; its output goes to ``log_path``."""
    print("$", " ".join(cmd), flush=True)
    result = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log_path.write_text(result.stdout)
    if result.returncode != 0:
        raise RuntimeError(f"{cmd[1]} failed (exit {result.returncode}); see {log_path}:\n{result.stdout[-2000:]}")
    return result.stdout


def generate(opt: argparse.Namespace, data: Path, logs: Path) -> None:
    shutil.rmtree(data, ignore_errors=True)
    run([sys.executable, "create_synth_dataset.py", "--output_dir", str(data), "--layout", "tree",
         "--num_train", str(opt.num_train), "--num_valid", "500", "--num_eval", "1000", "--seed", str(opt.seed),
         "--workers", str(opt.gen_workers)], logs / "generate.log")


def train(opt: argparse.Namespace, data: Path, exp_name: str, logs: Path) -> Path:
    shutil.rmtree(ROOT / "saved_models" / exp_name, ignore_errors=True)
    run([sys.executable, "train.py", "--train_data", str(data / "training"), "--valid_data", str(data / "validation"),
         "--select_data", "/", "--batch_ratio", "1", "--exp_name", exp_name, "--manualSeed", str(opt.train_seed),
         "--Transformation", "None", "--FeatureExtraction", "VGG", "--SequenceModeling", "BiLSTM",
         "--Prediction", "CTC", "--output_channel", str(opt.output_channel), "--hidden_size", str(opt.hidden_size),
         "--adam", "--lr", str(opt.lr), "--schedule", opt.schedule, "--warmup_iters", str(opt.warmup_iters),
         *(["--time_budget", str(opt.time_budget)] if opt.time_budget else ["--num_iter", str(opt.num_iter)]),
         "--valInterval", str(min(250, opt.num_iter)), "--batch_size", "64", "--workers", "1",
         "--log_interval", "250", "--progress", "off", "--amp", opt.amp, "--augment", opt.augment,
         "--augment_n", str(opt.augment_n), "--augment_m", str(opt.augment_m)], logs / "train.log")
    return ROOT / "saved_models" / exp_name / "best_accuracy.pth"


def trained_iterations(model: Path) -> int:
    """The run's --num_iter as its opt.txt records it (chosen by train.py under --time_budget)."""
    values = re.findall(r"^num_iter: (\d+)$", (model.parent / "opt.txt").read_text(), re.M)
    return int(values[-1])


def evaluate(model: Path, eval_data: Path, log_path: Path) -> float:
    """Case-insensitive alphanumeric word accuracy in percent."""
    out = run([sys.executable, "test.py", "--eval_data", str(eval_data), "--saved_model", str(model),
               "--case_insensitive", "--batch_size", "64", "--workers", "0"], log_path)
    matches = ACCURACY.findall(out)
    if not matches:
        raise RuntimeError(f"no accuracy line in the output of test.py; see {log_path}")
    return float(matches[-1])


def print_table(rows: list[dict], real_names: list[str]) -> None:
    header = ["run", "train images", "iterations", "amp", *real_names, "held-out fonts", "training minutes",
              "minutes"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---" for _ in header) + "|")
    for row in rows:
        cells = [row["tag"], str(row["num_train"]), str(row["num_iter"]), row.get("amp", "off"),
                 *(f"{row['real'].get(name, float('nan')):.1f}" for name in real_names),
                 f"{row['heldout_fonts']:.1f}", f"{row.get('train_minutes', float('nan')):.1f}", f"{row['minutes']:.1f}"]
        print("| " + " | ".join(cells) + " |")


def compare_runs(opt: argparse.Namespace) -> None:
    """Generate, train, evaluate on real crops; print the table of every run in ``--out``."""
    real_dir = Path(opt.real)
    present = [(folder, name) for folder, name in REAL_SETS if (real_dir / folder / "gt.txt").is_file()]
    if not present:
        raise FileNotFoundError(f"no real evaluation sets ({', '.join(f for f, _ in REAL_SETS)}) under {real_dir}; "
                                "pass --real or set REAL")
    out = Path(opt.out).resolve()
    data, logs = out / opt.tag / "data", out / opt.tag / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if not opt.reuse_data or not (data / "training" / "synth" / "data.mdb").is_file():
        generate(opt, data, logs)
    train_start = time.perf_counter()
    model = train(opt, data, f"real_eval_{opt.tag}", logs)
    row = {"tag": opt.tag, "num_train": opt.num_train, "num_iter": trained_iterations(model),
           "time_budget": opt.time_budget, "amp": opt.amp, "augment": opt.augment,
           "augment_n": opt.augment_n, "augment_m": opt.augment_m, "lr": opt.lr,
           "output_channel": opt.output_channel, "hidden_size": opt.hidden_size,
           "schedule": opt.schedule, "warmup_iters": opt.warmup_iters, "seed": opt.seed,
           "train_seed": opt.train_seed, "train_minutes": (time.perf_counter() - train_start) / 60, "real": {}}
    for folder, name in present:
        row["real"][name] = evaluate(model, real_dir / folder, logs / f"test_{folder}.log")
    row["heldout_fonts"] = evaluate(model, data / "evaluation", logs / "test_heldout_fonts.log")
    row["minutes"] = (time.perf_counter() - start) / 60
    with open(out / "results.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines() if line.strip()]
    print_table(rows, [name for _, name in REAL_SETS])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tag", default="run", help="name of this run in the table (e.g. the generator change)")
    parser.add_argument("--out", default=str(ROOT / "real_eval_out"), help="data, logs and results.jsonl go here")
    parser.add_argument("--real", default=str(default_real_dir()),
                        help="folder holding svt_647/, ic03_860/, iiit5k_train_2000/ (default $REAL or ../shared/data/real)")
    parser.add_argument("--num_train", type=int, default=40000, help="synthetic training images")
    parser.add_argument("--num_iter", type=int, default=3500, help="training iterations of 64 (1500: a cheaper proxy)")
    parser.add_argument("--time_budget", type=float, default=0, metavar="MINUTES",
                        help="train.py --time_budget instead of --num_iter (the table shows the iterations it chose)")
    parser.add_argument("--seed", type=int, default=0, help="generator seed")
    parser.add_argument("--train_seed", type=int, default=1111, help="train.py --manualSeed")
    parser.add_argument("--gen_workers", type=int, default=2, help="rendering processes")
    parser.add_argument("--reuse_data", action="store_true", help="keep <out>/<tag>/data when it exists")
    parser.add_argument("--output_channel", type=int, default=128, help="train.py --output_channel (CNN width)")
    parser.add_argument("--hidden_size", type=int, default=128, help="train.py --hidden_size (BiLSTM width)")
    parser.add_argument("--lr", type=float, default=0.002, help="train.py --lr (Adam)")
    parser.add_argument("--schedule", choices=["onecycle", "cosine"], default="onecycle", help="train.py --schedule")
    parser.add_argument("--warmup_iters", type=int, default=0, help="train.py --warmup_iters (with --schedule cosine)")
    parser.add_argument("--augment", choices=["none", "rand"], default="none", help="train.py --augment")
    parser.add_argument("--augment_n", type=int, default=3, help="train.py --augment_n (ops per image)")
    parser.add_argument("--augment_m", type=float, default=5, help="train.py --augment_m (magnitude, 0-10)")
    parser.add_argument("--amp", choices=["off", "bf16"], default="off",
                        help="train.py --amp: bf16 trains about 1.5x faster on a CPU with AVX512-BF16 or AMX")
    opt = parser.parse_args(argv)
    if opt.num_train < 1 or opt.num_iter < 1 or opt.time_budget < 0:
        parser.error("--num_train and --num_iter must be >= 1, --time_budget >= 0")
    return opt


def main(argv: list[str] | None = None) -> None:
    """real_image_eval.py's entry point: ``compare_runs`` with user errors reported as one line (exit 2 or 1)."""
    return run_cli(lambda args: compare_runs(parse_args(args)), argv)


if __name__ == "__main__":
    main()
