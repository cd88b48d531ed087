"""train.py's flags, defined once: train.py parses them, study.py takes them and hands them on to train.py.

``add_training_arguments`` adds the training group (with ``add_runtime_arguments`` and
``add_model_arguments`` it is train.py's whole command line); ``check_training_arguments`` refuses
the values a run cannot use (UsageError, exit 2) before any data is read.
"""
from __future__ import annotations

import argparse
import math

from augment import AUGMENTATIONS, make_augment
from runtime import UsageError, check_runtime_arguments


def add_training_arguments(parser: argparse.ArgumentParser, data_required: bool = True) -> None:
    """train.py's own flags (the runtime and model groups are added by their modules)."""
    g = parser.add_argument_group("training")
    g.add_argument("--exp_name", help="folder under ./saved_models/ (default <Trans>-<Feat>-<Seq>-<Pred>-Seed<seed>)")
    g.add_argument("--train_data", required=data_required, help="root folder of the training LMDBs")
    g.add_argument("--valid_data", required=data_required, help="root folder of the validation LMDB(s)")
    g.add_argument("--manualSeed", type=int, default=1111, help="random seed")
    g.add_argument("--num_iter", type=int, default=300000, help="number of iterations to train for")
    g.add_argument("--time_budget", type=float, default=0, metavar="MINUTES",
                   help="train for about MINUTES of wall time: a short timed warm-up measures this machine's "
                        "iterations per second, then fixes --num_iter (at most the one given) and the schedule's "
                        "horizon before the schedule starts; opt.txt and the log record the number, so "
                        "--num_iter N repeats the run")
    g.add_argument("--measure_loader", action="store_true",
                   help="time the training loop with 0 and 1 loader workers (and, with a worker, torch threads on "
                        "every core or one fewer) and train with the fastest; cached per machine and model, recorded "
                        "in opt.txt and the log (--workers N with OMP_NUM_THREADS=T repeats it)")
    g.add_argument("--valInterval", type=int, default=2000, help="validate (and write last.pth) every N iterations")
    g.add_argument("--saveInterval", type=int, default=100000, help="also keep iter_N.pth every N iterations")
    g.add_argument("--saved_model", default="", help="checkpoint (path or pretrained name) to continue from")
    g.add_argument("--FT", action="store_true", help="fine-tune --saved_model (a new --character set is remapped)")
    g.add_argument("--freeze", default="", help="'-'-separated stages kept fixed (no gradient, eval mode), "
                                                "e.g. FeatureExtraction to fine-tune only the sequence and prediction")
    g.add_argument("--resume", default="", help="exact resume from last.pth: a path, or 'auto' for the experiment's")
    g.add_argument("--adam", action="store_true", help="Adam instead of Adadelta")
    g.add_argument("--lr", type=float, default=1, help="learning rate (1.0 for Adadelta)")
    g.add_argument("--beta1", type=float, default=0.9, help="Adam beta1")
    g.add_argument("--rho", type=float, default=0.95, help="Adadelta rho")
    g.add_argument("--eps", type=float, default=1e-8, help="Adadelta eps")
    g.add_argument("--grad_clip", type=float, default=5, help="gradient clipping (max L2 norm)")
    g.add_argument("--schedule", choices=["constant", "cosine", "onecycle"], default="constant",
                   help="learning-rate schedule (the reference's is constant); cosine and onecycle are planned "
                        "over --num_iter, so --resume refuses a different --num_iter for them")
    g.add_argument("--warmup_iters", type=int, default=0, help="linear warm-up for --schedule cosine")
    g.add_argument("--accum_steps", type=int, default=1, help="gradient accumulation: batches per optimizer step")
    g.add_argument("--baiduCTC", action="store_true", help=argparse.SUPPRESS)  # dropped: torch's CTC is used
    g.add_argument("--select_data", default="MJ-ST", help="'-'-separated dataset name fragments")
    g.add_argument("--batch_ratio", default="0.5-0.5", help="'-'-separated share of the batch for each dataset")
    g.add_argument("--total_data_usage_ratio", default="1.0", help="fraction of each dataset to use")
    g.add_argument("--augment", choices=sorted(AUGMENTATIONS), default="none",
                   help="training-image augmentation: 'rand' = RandAugment for word images (augment.py)")
    g.add_argument("--augment_n", type=int, default=3, help="--augment rand: ops per image")
    g.add_argument("--augment_m", type=float, default=5, help="--augment rand: magnitude, 0-10")
    g.add_argument("--data_filtering_off", action="store_true", help="keep samples with out-of-set characters")
    g.add_argument("--case_insensitive", action="store_true", help="validate with case-insensitive alphanumeric scoring")
    g.add_argument("--deterministic", action="store_true", help="deterministic algorithms (exactly repeatable on CPU)")
    g.add_argument("--progress", choices=["auto", "on", "off"], default="auto",
                   help="progress bar (auto: only when the output is a terminal)")
    g.add_argument("--log_interval", type=int, default=0, help="also print a loss line every N iterations")
    g.add_argument("--tensorboard", action="store_true", help="log to saved_models/<exp>/tensorboard")


def check_training_arguments(opt) -> None:
    """Refuse the flags a run cannot use (UsageError, exit 2) before any data is read or folder made.
    The model's sizes (--imgH for the feature extractor, ...) are checked by ModelConfig itself."""
    check_runtime_arguments(opt)
    make_augment(opt.augment, opt.augment_n, opt.augment_m)  # --augment_n / --augment_m in range
    if not 0 <= opt.time_budget < math.inf:
        raise UsageError(f"--time_budget must be 0 (off) or a number of minutes, got {opt.time_budget}")
    at_least = {"num_iter": 1, "valInterval": 1, "saveInterval": 1, "accum_steps": 1, "log_interval": 0,
                "warmup_iters": 0}
    for name, low in at_least.items():
        if getattr(opt, name) < low:
            raise UsageError(f"--{name} must be at least {low}, got {getattr(opt, name)}")
    ranges = {"lr": (lambda v: 0 < v < math.inf, "greater than 0"),
              "grad_clip": (lambda v: v >= 0, "0 or more"),  # NaN fails every comparison, so it is refused
              "beta1": (lambda v: 0 <= v < 1, "in [0, 1)"), "rho": (lambda v: 0 <= v <= 1, "in [0, 1]"),
              "eps": (lambda v: 0 < v < math.inf, "greater than 0")}
    for name, (ok, allowed) in ranges.items():
        if not ok(getattr(opt, name)):
            raise UsageError(f"--{name} must be {allowed}, got {getattr(opt, name)}")
    check_data_shares(opt)


def check_data_shares(opt) -> None:
    """--batch_ratio: one positive number per --select_data entry, summing to 1; --total_data_usage_ratio in (0, 1]."""
    names, shares = opt.select_data.split("-"), opt.batch_ratio.split("-")
    if len(names) != len(shares):
        raise UsageError(f"--batch_ratio {opt.batch_ratio} has {len(shares)} entries but --select_data "
                         f"{opt.select_data} has {len(names)}: give one share per dataset (e.g. --select_data "
                         "MJ-ST --batch_ratio 0.5-0.5)")
    try:
        values = [float(v) for v in shares]
        usage = float(opt.total_data_usage_ratio)
    except ValueError:
        raise UsageError(f"--batch_ratio {opt.batch_ratio} and --total_data_usage_ratio "
                         f"{opt.total_data_usage_ratio} must be numbers ('-'-separated for --batch_ratio)") from None
    if not all(0 < v <= 1 for v in values) or not abs(sum(values) - 1) <= 0.01:
        raise UsageError(f"--batch_ratio {opt.batch_ratio}: each share must be in (0, 1] and together they must "
                         f"sum to 1 (within 0.01), got a sum of {sum(values):g}")
    if not 0 < usage <= 1:
        raise UsageError(f"--total_data_usage_ratio must be in (0, 1], got {opt.total_data_usage_ratio}")
