"""Train a four-stage STR model on LMDB data.

    python train.py --train_data data_lmdb_release/training --valid_data data_lmdb_release/validation \\
        --select_data MJ-ST --batch_ratio 0.5-0.5 \\
        --Transformation None --FeatureExtraction VGG --SequenceModeling BiLSTM --Prediction CTC

Several GPUs or processes: ``torchrun --nproc_per_node N train.py ...`` (DistributedDataParallel).
Interrupted runs continue exactly with ``--resume auto`` (or a path to ``last.pth``); SIGINT/SIGTERM
save last.pth first (under DDP within 10 iterations). A constant schedule may be resumed with a larger
``--num_iter``; a cosine or one-cycle curve is fixed by the first run's ``--num_iter``.
``--time_budget MINUTES`` chooses ``--num_iter`` from a timed warm-up on the machine it runs on.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import csv
import dataclasses
import math
import os
import random
import re
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.distributed as dist

import plugins
from checkpoint import load_model, load_state, read_training_state, save_checkpoint, unwrap
from dataset import BatchBalancedDataset, DataConfig, TrainDataConfig, hierarchical_dataset
from errors import UserError
from evaluation import make_eval_loader, validation
from fileio import FolderLock, atomic_write
from model import STAGES, ModelConfig, add_model_arguments, build_model, compute_loss, config_from_args, model_flags
from runtime import UsageError, add_compile_argument, add_runtime_arguments, check_amp, compile_model, get_logger, \
    native_bf16, resolve_device, run_cli
from train_options import add_training_arguments, check_training_arguments
from utils import Averager, make_converter


def parse_args(argv=None):
    plugins.load_from_argv(argv)  # their stages join the choices before the parser is built
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_training_arguments(p)
    add_runtime_arguments(p, batch_help="batch size per process")
    add_compile_argument(p)
    add_model_arguments(p)
    opt = p.parse_args(argv)
    if opt.baiduCTC:
        print("--baiduCTC is not supported: warp-ctc is replaced by torch.nn.CTCLoss (same model, same checkpoints)")
    return opt


# ---------------------------------------------------------------- set-up

def setup_distributed(opt):
    """torchrun sets RANK/WORLD_SIZE/LOCAL_RANK; → (rank, world_size, device)."""
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    if world_size == 1:
        return 0, 1, resolve_device(opt.device)
    local_rank = int(os.environ["LOCAL_RANK"])
    use_cuda = opt.device != "cpu" and torch.cuda.is_available()
    device = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return dist.get_rank(), world_size, device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {k: (torch.from_numpy(v.astype(np.int64)) if isinstance(v, np.ndarray) else v)
                       for k, v in zip(("name", "key", "pos", "has_gauss", "cached"), np.random.get_state())}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    n = state["numpy"]
    np.random.set_state((n["name"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def build_config_and_model(opt, log):
    """The model to train: fresh, continued from --saved_model, or fine-tuned (--FT) to a new charset."""
    if not opt.saved_model:
        config = config_from_args(opt)
        model = build_model(config)
        freeze_stages(model, opt.freeze, log)  # a fresh model's stages too: the flag is never ignored
        return config, model, None
    log(f"loading pretrained model from {opt.saved_model}")
    loaded = load_model(opt.saved_model, model_flags(opt), "cpu", fine_tune=opt.FT, log=log, allow_onnx=False)
    freeze_stages(loaded.model, opt.freeze, log)
    return loaded.config, loaded.model, loaded.source


def frozen_stages(stages: str) -> list[str]:
    """--freeze → the stage names; a name that is not a stage is a UsageError (exit 2), checked at the door."""
    names = [s for s in stages.split("-") if s]
    unknown = [s for s in names if s not in STAGES]
    if unknown:
        raise UsageError(f"--freeze {stages!r}: {unknown} are not stages; use '-'-separated names of {list(STAGES)}")
    if set(names) >= set(STAGES):
        raise UsageError(f"--freeze {stages!r} names every stage: nothing would train; leave at least one out")
    return names


def freeze_stages(model, stages: str, log) -> None:
    """Keep the named stages fixed: no gradients, and always in eval mode (BatchNorm keeps its statistics)."""
    names = frozen_stages(stages)
    model.freeze(names)
    if names:
        log(f"frozen stages: {', '.join(names)}")


def start_iteration(opt) -> int:
    """The reference's rule for --saved_model without --resume: the iteration in a name like iter_100000.pth."""
    if not opt.saved_model or opt.FT:
        return 0
    match = re.search(r"_(\d+)\.pth$", opt.saved_model)
    return int(match.group(1)) if match else 0


def make_optimizer(opt, params):
    if opt.adam:
        return torch.optim.Adam(params, lr=opt.lr, betas=(opt.beta1, 0.999))
    return torch.optim.Adadelta(params, lr=opt.lr, rho=opt.rho, eps=opt.eps)


def make_scheduler(opt, optimizer):
    steps = max(opt.num_iter, 1)
    if opt.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=opt.lr, total_steps=steps)
    if opt.schedule == "cosine":
        warm = max(opt.warmup_iters, 0)

        def factor(step):
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, steps - warm))))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def schedule_spec(opt) -> dict:
    """What fixes the learning-rate curve: a cosine or one-cycle curve is planned over --num_iter."""
    if opt.schedule == "constant":
        return {"schedule": "constant"}
    spec = {"schedule": opt.schedule, "num_iter": opt.num_iter}
    if opt.schedule == "cosine":
        spec["warmup_iters"] = opt.warmup_iters
    return spec


def check_schedule(opt, saved: dict | None, path: Path) -> None:
    """Refuse a resume that would bend the learning-rate curve mid-run (one-cycle cannot even step past its end)."""
    now = schedule_spec(opt)
    if saved is None or saved == now:
        return
    flags = " ".join(f"--{k} {v}" for k, v in saved.items())
    raise UserError(f"{path} was trained with {flags}; resuming with "
                    f"{' '.join(f'--{k} {v}' for k, v in now.items())} would change its learning-rate curve "
                    f"mid-run. Resume with {flags}, or start a new run from its weights with "
                    f"--saved_model {path} (a fresh optimizer and schedule)")


def write_options(opt, config: ModelConfig, exp_dir: Path, extra: dict) -> str:
    lines = ["------------ Options -------------"]
    values = {**vars(opt), **config.to_dict(), **extra}
    lines += [f"{k}: {v}" for k, v in values.items()]
    lines.append("-" * 39)
    text = "\n".join(lines) + "\n"
    with open(exp_dir / "opt.txt", "a", encoding="utf-8") as f:
        f.write(text)
    return text


def quiet(message: str) -> None:
    """The log of ranks other than 0."""


def check_device_options(opt, device: torch.device) -> torch.dtype | None:
    """Device settings; → the autocast dtype of --amp (a UsageError before any data is read)."""
    if opt.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not opt.deterministic
    if opt.amp == "auto":
        return None  # chosen by timing once the model and its data are in place (choose_amp)
    return check_amp(opt.amp, device, training=True)


def choose_amp(run: TrainRun) -> TrainRun:
    """``--amp auto``: fp32 against native bf16, each timed over a few training iterations of a throwaway copy
    of the model with the real loader (rewound after), or taken from the cache of this machine's decisions. →
    the run with the faster precision; its opt records the choice (--amp off|bf16 repeats it)."""
    from measured import decide

    opt = run.opt
    candidates = {"off": None}
    reason = ""
    if native_bf16(run.device):
        candidates["bf16"] = check_amp("bf16", run.device, training=True)
    else:
        reason = "bf16 is emulated on this device, not a candidate"
    work = {"config": run.config.to_dict(), "batch_size": opt.batch_size, "accum_steps": opt.accum_steps,
            "workers": opt.workers, "augment": getattr(opt, "augment", None), "device": run.device.type,
            "world_size": run.world_size}
    decision = decide("--amp auto (training)", work,
                      {name: (lambda dtype=dtype: time_training_steps(run, dtype)) for name, dtype in candidates.items()},
                      reason=reason)
    choice = "bf16" if rank0_says(decision.choice == "bf16", run) else "off"  # every rank trains the same way
    run.train_log(decision.line())
    run.opt = argparse.Namespace(**{**vars(opt), "amp": choice, "amp_auto": decision.line()})
    return dataclasses.replace(run, opt=run.opt, amp_dtype=candidates[choice])


def loader_candidates(cores: int) -> dict[str, tuple[int, int]]:
    """``--measure_loader``'s settings, name → (loader workers, torch threads): the loader in the training process,
    or one worker beside torch's threads on every core, or on one core fewer (so they need not share one)."""
    candidates = {f"workers 0, threads {cores}": (0, cores), f"workers 1, threads {cores}": (1, cores)}
    if cores > 1:
        candidates[f"workers 1, threads {cores - 1}"] = (1, cores - 1)
    return candidates


def choose_loader(run: TrainRun) -> TrainRun:
    """``--measure_loader``: the training loop timed with each of ``loader_candidates`` (the real loader and its
    augmentation, rebuilt per setting, rewound after), or the cached choice; → the run with the fastest."""
    from measured import decide

    opt = run.opt
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    candidates = loader_candidates(cores)
    if run.world_size > 1:  # each rank's loader and threads: set them by hand (--workers, OMP_NUM_THREADS)
        candidates = {f"workers {opt.workers}, threads {torch.get_num_threads()}": (opt.workers, torch.get_num_threads())}

    def timed(workers: int, threads: int) -> float:
        use_loader(run, workers, threads)
        return time_training_steps(run, run.amp_dtype)

    work = {"config": run.config.to_dict(), "batch_size": opt.batch_size, "accum_steps": opt.accum_steps,
            "augment": getattr(opt, "augment", None), "amp": str(run.amp_dtype), "device": run.device.type}
    decision = decide("--measure_loader", work, {name: (lambda s=s: timed(*s)) for name, s in candidates.items()},
                      reason="under torchrun: as given" if run.world_size > 1 else "")
    workers, threads = candidates[decision.choice]
    use_loader(run, workers, threads)
    run.train_log(decision.line())
    run.opt = argparse.Namespace(**{**vars(opt), "workers": workers, "torch_threads": threads,
                                    "measure_loader_choice": decision.line()})
    return dataclasses.replace(run, opt=run.opt)


def use_loader(run: TrainRun, workers: int, threads: int) -> None:
    """Rebuild the training loader with ``workers`` at the same place in its stream; torch on ``threads``."""
    torch.set_num_threads(threads)
    if run.train_data.workers != workers:
        run.train_data.workers = workers
        run.train_data.load_state_dict(run.train_data.state_dict())


def time_training_steps(run: TrainRun, amp_dtype) -> float:
    """Seconds per training iteration in ``amp_dtype`` (measured.time_per_step) of a throwaway copy of the
    model, reading the real loader; the data stream and the random states are rewound after."""
    from measured import time_per_step

    data_state, rng = run.train_data.state_dict(), rng_state()
    model = copy.deepcopy(unwrap(run.model))
    optimizer = make_optimizer(run.opt, [p for p in model.parameters() if p.requires_grad])
    probe = dataclasses.replace(run, model=wrap_ddp(model, run.device) if run.world_size > 1 else model,
                                optimizer=optimizer, scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
                                scaler=torch.amp.GradScaler(run.device.type, enabled=False), amp_dtype=amp_dtype)
    try:
        return time_per_step(lambda: train_iteration(probe), warmup=WARMUP_ITERS)
    finally:
        run.train_data.load_state_dict(data_state)
        set_rng_state(rng)


def experiment_dir(exp_name: str) -> Path:
    exp_dir = Path("saved_models") / exp_name
    exp_dir.mkdir(parents=True, exist_ok=True)
    return exp_dir


def lock_experiment(exp_dir: Path, rank: int, console) -> contextlib.AbstractContextManager:
    """Rank 0 holds ``exp_dir/train.lock`` for the whole run: a second train.py on the same folder is
    refused instead of interleaving checkpoints (the other ranks belong to the same run)."""
    if rank != 0:
        return contextlib.nullcontext()
    lock = FolderLock(exp_dir, hint=", or choose another --exp_name").acquire()
    if lock.previous_owner:
        console(f"{lock.path}: taking over the lock of {lock.previous_owner}, which ended without releasing it")
    return lock


def train_data_config(opt, data: DataConfig) -> TrainDataConfig:
    """The training-data flags (checked by ``check_data_shares``) as a frozen configuration."""
    return TrainDataConfig(data, opt.train_data, tuple(opt.select_data.split("-")),
                           tuple(float(r) for r in opt.batch_ratio.split("-")), float(opt.total_data_usage_ratio),
                           opt.augment, opt.augment_n, opt.augment_m)


def make_train_data(opt, data: DataConfig, rank: int, world_size: int, console, dataset_log
                    ) -> BatchBalancedDataset:
    if not data.data_filtering_off:
        console("Filtering the images containing characters which are not in opt.character")
        console("Filtering the images whose label is longer than opt.batch_max_length")
    train_data = BatchBalancedDataset(train_data_config(opt, data), log=dataset_log, rank=rank, world_size=world_size)
    effective = train_data.batch_size * world_size * opt.accum_steps
    dataset_log(f"effective batch size: {train_data.batch_size} per process x {world_size} "
                f"process(es) x {opt.accum_steps} accumulation step(s) = {effective}")
    return train_data


def make_valid_loader(valid_data: str, data: DataConfig, batch_size: int, dataset_log):
    """The validation set, read in batches of the summed training batch size, as the reference."""
    valid = dataclasses.replace(data, batch_size=batch_size)
    valid_dataset, valid_log = hierarchical_dataset(valid_data, valid)
    dataset_log(valid_log.rstrip("\n"))
    dataset_log("-" * 80)
    return make_eval_loader(valid_dataset, valid)


def prepare_model(model, config: ModelConfig, device: torch.device, world_size: int, console,
                  opt_compile: bool = False):
    console(f"model input parameters {config.imgH} {config.imgW} {config.num_fiducial} {config.input_channel} "
            f"{config.output_channel} {config.hidden_size} {config.num_class} {config.batch_max_length} "
            f"{config.Transformation} {config.FeatureExtraction} {config.SequenceModeling} {config.Prediction}")
    model = compile_model(model.to(device).train(), opt_compile, console)
    return wrap_ddp(model, device) if world_size > 1 else model


def wrap_ddp(model, device: torch.device):
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


# ---------------------------------------------------------------- the run

@dataclass
class TrainRun:
    """Everything a training run holds, passed to the named steps below (rank 0 logs and saves)."""

    opt: argparse.Namespace
    rank: int
    world_size: int
    device: torch.device
    config: ModelConfig
    exp_dir: Path
    model: torch.nn.Module  # DistributedDataParallel-wrapped when world_size > 1
    train_data: BatchBalancedDataset
    valid_loader: Any  # DataLoader on rank 0, None elsewhere
    converter: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None
    console: Callable[[str], None]
    train_log: Callable[[str], None]
    tb: Any = None  # SummaryWriter on rank 0 with --tensorboard
    budget: BudgetPlan | None = None  # what --time_budget chose
    best_accuracy: float = -1.0
    best_norm_ED: float = -1.0
    loss_avg: Averager = field(default_factory=Averager)
    elapsed: float = 0.0  # seconds trained before this process (restored on resume)
    start_time: float = field(default_factory=time.time)


def train_iteration(run) -> float:
    """One optimizer step over --accum_steps batches; → the mean loss."""
    model, opt = run.model, run.opt
    total = 0.0
    for micro in range(opt.accum_steps):
        image, labels = run.train_data.get_batch()
        image = image.to(run.device, non_blocking=True)
        last = micro == opt.accum_steps - 1
        sync = model.no_sync() if (run.world_size > 1 and not last) else contextlib.nullcontext()
        with sync:
            loss = compute_loss(model, image, list(labels), run.converter, run.config, run.amp_dtype)
            run.scaler.scale(loss / opt.accum_steps).backward()
        total += float(loss.detach())
    run.scaler.unscale_(run.optimizer)  # clip the real gradients, not the scaled ones
    torch.nn.utils.clip_grad_norm_(model.parameters(), opt.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.scheduler.step()
    return total / opt.accum_steps


def validate_and_log(run: TrainRun, done: int) -> None:
    """The reference's validation block after ``done`` finished iterations, plus last.pth, the CSV history
    and the plot."""
    opt, model = run.opt, run.model
    elapsed = run.elapsed + time.time() - run.start_time
    model.eval()
    with torch.inference_mode():
        r = validation(unwrap(model), run.valid_loader, run.converter, run.config, run.device,
                       case_insensitive=opt.case_insensitive, amp_dtype=run.amp_dtype)
    model.train()
    train_loss = run.loss_avg.val()
    run.train_log(f"[{done}/{opt.num_iter}] Train loss: {train_loss:0.5f}, Valid loss: {r.loss:0.5f}, "
                  f"Elapsed_time: {elapsed:0.5f}")
    run.loss_avg.reset()
    save_best(run, r, done)
    run.train_log(prediction_examples(r))
    row = {"iteration": done, "train_loss": train_loss, "valid_loss": r.loss, "accuracy": r.accuracy,
           "norm_ED": r.norm_ED, "lr": run.optimizer.param_groups[0]["lr"], "elapsed": elapsed}
    append_history(run.exp_dir / "log_valid.csv", row)
    plot_history(run.exp_dir / "log_valid.csv", run.exp_dir / "curves.png")
    if run.tb is not None:
        for k in ("train_loss", "valid_loss", "accuracy", "norm_ED", "lr"):
            run.tb.add_scalar(k, row[k], done)
    save_last(run, done)


def save_best(run: TrainRun, r, iteration: int) -> None:
    if r.accuracy > run.best_accuracy:
        run.best_accuracy = r.accuracy
        save_checkpoint(run.exp_dir / "best_accuracy.pth", run.model, iteration=iteration, accuracy=r.accuracy)
    if r.norm_ED > run.best_norm_ED:
        run.best_norm_ED = r.norm_ED
        save_checkpoint(run.exp_dir / "best_norm_ED.pth", run.model, iteration=iteration, norm_ED=r.norm_ED)
    run.train_log(f"{'Current_accuracy':17s}: {r.accuracy:0.3f}, {'Current_norm_ED':17s}: {r.norm_ED:0.2f}")
    run.train_log(f"{'Best_accuracy':17s}: {run.best_accuracy:0.3f}, {'Best_norm_ED':17s}: {run.best_norm_ED:0.2f}")


def prediction_examples(r) -> str:
    """The reference's table of five validation predictions."""
    dashed = "-" * 80
    lines = [dashed, f"{'Ground Truth':25s} | {'Prediction':25s} | Confidence Score & T/F", dashed]
    for gt, pred, conf in list(zip(r.labels, r.preds, r.confidences))[:5]:
        lines.append(f"{gt:25s} | {pred:25s} | {conf:0.4f}\t{pred == gt}")
    lines.append(dashed)
    return "\n".join(lines)


def append_history(path: Path, row: dict) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)


def plot_history(csv_path: Path, png_path: Path) -> None:
    """Loss and accuracy over iterations, rewritten at every validation."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path) as f:
        rows = list(csv.DictReader(f))
    it = [int(r["iteration"]) for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.5))
    ax1.plot(it, [float(r["train_loss"]) for r in rows], label="train")
    ax1.plot(it, [float(r["valid_loss"]) for r in rows], label="valid")
    ax1.set_xlabel("iteration"), ax1.set_ylabel("loss"), ax1.legend()
    ax2.plot(it, [float(r["accuracy"]) for r in rows], color="tab:green")
    ax2.set_xlabel("iteration"), ax2.set_ylabel("validation accuracy (%)")
    fig.tight_layout()
    try:
        with atomic_write(png_path, what="the training curves") as f:
            fig.savefig(f, format="png", dpi=80)
    finally:
        plt.close(fig)


def save_last(run: TrainRun, next_iteration: int) -> None:
    """Everything needed to continue exactly where this run is (rank 0 only, atomic)."""
    if run.rank != 0:
        return
    save_checkpoint(
        run.exp_dir / "last.pth", run.model, iteration=next_iteration,
        optimizer=run.optimizer.state_dict(), scheduler=run.scheduler.state_dict(),
        scaler=run.scaler.state_dict(), data=run.train_data.state_dict(), rng=rng_state(),
        schedule=schedule_spec(run.opt), budget=dataclasses.asdict(run.budget) if run.budget else None,
        best_accuracy=run.best_accuracy, best_norm_ED=run.best_norm_ED,
        loss_avg=[run.loss_avg.sum, run.loss_avg.n_count], elapsed=run.elapsed + time.time() - run.start_time)


def restore(run: TrainRun, ckpt: dict, path: Path) -> int:
    check_schedule(run.opt, ckpt.get("schedule"), path)
    load_state(unwrap(run.model), ckpt["model"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    run.scaler.load_state_dict(ckpt["scaler"])
    run.train_data.load_state_dict(ckpt["data"])
    set_rng_state(ckpt["rng"])
    run.best_accuracy, run.best_norm_ED = ckpt["best_accuracy"], ckpt["best_norm_ED"]
    run.loss_avg.sum, run.loss_avg.n_count = ckpt["loss_avg"]
    run.elapsed = ckpt["elapsed"]
    if run.rank == 0:
        trim_history(run.exp_dir / "log_valid.csv", ckpt["iteration"])
    return ckpt["iteration"]


def trim_history(path: Path, last_iteration: int) -> None:
    """Drop CSV rows written after ``last_iteration`` (a run killed between the CSV and last.pth), and
    a row cut short by a kill in the middle of its write."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    kept = [r for r in rows if None not in r.values() and str(r["iteration"]).isdigit()
            and int(r["iteration"]) <= last_iteration]
    if len(kept) == len(rows) or not rows:
        return
    with atomic_write(path, "w", what="the validation history", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(kept)


class StopRequest:
    """SIGINT/SIGTERM ask the loop to save last.pth and stop after the current iteration.

    Under DDP the ranks agree by an all-reduce, done only every ``check_every`` iterations (the
    same iterations on every rank, so none waits for a collective the others skip): a signal is
    honoured within that many iterations. Used as a context manager, it restores the handlers.
    """

    def __init__(self, world_size: int = 1, check_every: int = 10):
        self.signum = 0
        self.world_size = world_size
        self.check_every = 1 if world_size == 1 else check_every
        self._previous = {}

    def __enter__(self) -> "StopRequest":
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False

    def _handle(self, signum, frame):
        if self.signum:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signum = signum

    def requested(self, iteration: int) -> bool:
        """Whether to stop after ``iteration`` (the count of finished iterations)."""
        if self.world_size == 1:
            return bool(self.signum)
        if iteration % self.check_every:
            return False
        flag = torch.tensor([self.signum], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # every rank stops at the same iteration
        self.signum = int(flag.item())
        return bool(self.signum)


def progress_bar(opt, start: int, rank: int):
    enabled = rank == 0 and (opt.progress == "on" or (opt.progress == "auto" and sys.stderr.isatty()))
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=opt.num_iter, initial=start, dynamic_ncols=True, unit="it")


def resume_file(opt, exp_dir: Path) -> Path | None:
    return exp_dir / "last.pth" if opt.resume == "auto" else Path(opt.resume) if opt.resume else None


def resume_or_start(run: TrainRun) -> int:
    """The iteration to start at: from last.pth with --resume, else the reference's file-name rule."""
    opt = run.opt
    start = start_iteration(opt)
    resume_path = resume_file(opt, run.exp_dir)
    if resume_path is not None:
        if resume_path.is_file():
            start = restore(run, read_training_state(resume_path), resume_path)
            run.console(f"resumed from {resume_path} at iteration {start}")
        elif opt.resume != "auto":
            raise FileNotFoundError(f"--resume {resume_path} does not exist (use --resume auto to continue the "
                                    f"experiment in {run.exp_dir} if there is one)")
        elif run.rank == 0:
            # No last.pth yet: a run killed before its first one may have logged validations; it starts over.
            trim_history(run.exp_dir / "log_valid.csv", start)
    elif start:
        run.console(f"continue to train, start_iter: {start}")
    return start


def tensorboard_class():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as e:
        raise UsageError("--tensorboard needs the tensorboard package: pip install tensorboard "
                         "(or leave --tensorboard off: log_valid.csv and curves.png are always written)") from e
    return SummaryWriter


def run_loop(run: TrainRun, start: int) -> dict:
    opt = run.opt
    if start >= opt.num_iter:
        run.console(f"nothing to do: the run is already at iteration {start} of --num_iter {opt.num_iter} "
                    "(raise --num_iter to train further)")
        return {"iteration": start, "best_accuracy": run.best_accuracy, "best_norm_ED": run.best_norm_ED}
    with StopRequest(run.world_size) as stop:
        iteration = train_until(run, start, stop)
    save_last(run, iteration)
    wait_for_all_ranks(run)
    run.console("end the training")
    return {"iteration": iteration, "best_accuracy": run.best_accuracy, "best_norm_ED": run.best_norm_ED}


def wait_for_all_ranks(run: TrainRun) -> None:
    """Ranks leave together: one tearing Gloo down while rank 0 still saves can abort the other."""
    if run.world_size > 1:
        dist.barrier()


def train_until(run: TrainRun, start: int, stop: StopRequest) -> int:
    """Iterations ``start`` .. ``--num_iter``; on a signal, saves last.pth and exits with 128 + signum."""
    opt = run.opt
    bar = progress_bar(opt, start, run.rank)
    run.start_time = time.time()
    done = start  # finished iterations
    while done < opt.num_iter:
        loss = train_iteration(run)
        done += 1
        run.loss_avg.add(torch.tensor(loss))
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", best_acc=f"{max(run.best_accuracy, 0):.2f}")
        elif opt.log_interval and done % opt.log_interval == 0:
            run.console(f"[{done}/{opt.num_iter}] loss {loss:.5f}, {time.time() - run.start_time:.0f}s")
        if run.rank == 0 and (done % opt.valInterval == 0 or done == 1):
            validate_and_log(run, done)
        if run.rank == 0 and done % opt.saveInterval == 0:
            save_checkpoint(run.exp_dir / f"iter_{done}.pth", run.model, iteration=done)
        if stop.requested(done):
            if bar is not None:
                bar.close()
            save_last(run, done)
            wait_for_all_ranks(run)
            run.console(f"stopped by signal {stop.signum} after iteration {done}; "
                        f"{run.exp_dir / 'last.pth'} holds the full state: continue with --resume auto")
            raise SystemExit(128 + stop.signum)
    if bar is not None:
        bar.close()
    return done


# ---------------------------------------------------------------- the time budget

WARMUP_ITERS = 3  # untimed: the first iterations allocate memory and choose kernels
PREFETCHED_PER_WORKER = 2  # DataLoader's prefetch_factor: batches a worker has ready before the timing starts
CALIBRATION_SECONDS = 20.0  # the timed window (at most 5 % of the budget): long enough for a steady median


@dataclass(frozen=True)
class BudgetPlan:
    """What ``--time_budget`` chose from the timed warm-up; last.pth keeps it, so a resume trains to the same end."""

    minutes: float
    num_iter: int
    seconds_per_iter: float
    seconds_per_validation: float
    timed_iters: int

    def describe(self) -> str:
        return (f"--time_budget {self.minutes:g} min: {1 / self.seconds_per_iter:.2f} iterations/s over "
                f"{self.timed_iters} timed warm-up iterations, {self.seconds_per_validation:.1f} s per validation "
                f"-> --num_iter {self.num_iter} (--num_iter {self.num_iter} repeats this run)")


def plan_iterations(run: TrainRun) -> BudgetPlan | None:
    """--num_iter under --time_budget: the resumed run's own plan, or a new one timed on this machine."""
    opt = run.opt
    if not opt.time_budget:
        return None
    path = resume_file(opt, run.exp_dir)
    ckpt = read_training_state(path) if path is not None and path.is_file() else None
    if ckpt is not None and ckpt.get("budget"):
        plan = BudgetPlan(**ckpt["budget"])
        run.console(f"resuming keeps the first run's plan: {plan.describe()}")
        return plan
    return time_iterations(run, ckpt["iteration"] if ckpt is not None else start_iteration(opt))


def time_iterations(run: TrainRun, start: int) -> BudgetPlan:
    """Train a throwaway copy of the model for a few timed iterations and time one validation (rank 0),
    then rewind the data stream and the random states: the run that follows is the run --num_iter N gives."""
    opt = run.opt
    data_state, rng = run.train_data.state_dict(), rng_state()
    model = copy.deepcopy(unwrap(run.model))
    optimizer = make_optimizer(opt, [p for p in model.parameters() if p.requires_grad])
    constant = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    probe = dataclasses.replace(run, model=wrap_ddp(model, run.device) if run.world_size > 1 else model,
                                optimizer=optimizer, scheduler=constant,
                                scaler=torch.amp.GradScaler(run.device.type, enabled=run.scaler.is_enabled()))
    budget = opt.time_budget * 60
    began = time.time()
    # Batches the loader workers prefetched come for free: the timing starts once they are used up, so that it
    # measures the loop as it runs (augmentation in the workers, sharing the cores with torch's threads).
    for _ in range(WARMUP_ITERS + PREFETCHED_PER_WORKER * opt.workers):
        train_iteration(probe)
    window, timed, t0 = min(CALIBRATION_SECONDS, 0.05 * budget), 0, time.time()
    while not rank0_says(timed >= 2 and time.time() - t0 >= window, run):  # ranks time the same iterations
        train_iteration(probe)
        timed += 1
    per_iter = (time.time() - t0) / timed
    per_validation = 0.0
    if run.rank == 0:
        t0 = time.time()
        model.eval()
        with torch.inference_mode():
            validation(model, run.valid_loader, run.converter, run.config, run.device,
                       case_insensitive=opt.case_insensitive, amp_dtype=run.amp_dtype)
        per_validation = time.time() - t0
    run.train_data.load_state_dict(data_state)
    set_rng_state(rng)
    # The loop validates after its first iteration and every --valInterval: n iterations take about
    # n * per_iter + (1 + n / valInterval) * per_validation seconds.
    left = budget - (time.time() - began)
    fitted = int((left - per_validation) / (per_iter + per_validation / opt.valInterval))
    plan = BudgetPlan(opt.time_budget, min(opt.num_iter, start + max(fitted, 1)), per_iter, per_validation, timed)
    return broadcast_plan(plan, run)


def rank0_says(flag: bool, run: TrainRun) -> bool:
    if run.world_size == 1:
        return flag
    value = torch.tensor([int(flag)], device=run.device)
    dist.broadcast(value, src=0)
    return bool(value.item())


def broadcast_plan(plan: BudgetPlan, run: TrainRun) -> BudgetPlan:
    """Every rank trains rank 0's plan (its timing includes the validations only rank 0 runs)."""
    if run.world_size == 1:
        return plan
    values = torch.tensor([plan.num_iter, plan.seconds_per_iter, plan.seconds_per_validation, plan.timed_iters],
                          dtype=torch.float64, device=run.device)
    dist.broadcast(values, src=0)
    num_iter, per_iter, per_validation, timed = values.tolist()
    return BudgetPlan(plan.minutes, int(num_iter), per_iter, per_validation, int(timed))


def train(opt) -> dict:
    """A training run, top to bottom: set-up, model, data, optimizer, resume, the loop."""
    check_training_arguments(opt)
    frozen_stages(opt.freeze)
    rank, world_size, device = setup_distributed(opt)
    dtype = check_device_options(opt, device)
    seed_everything(opt.manualSeed)
    summary_writer = tensorboard_class() if opt.tensorboard else None  # every rank: fail before any collective
    console = get_logger("train.console").info if rank == 0 else quiet
    config, model, _ = build_config_and_model(opt, console)
    exp_name = opt.exp_name or f"{config.name}-Seed{opt.manualSeed}"
    exp_dir = experiment_dir(exp_name)
    with lock_experiment(exp_dir, rank, console):
        train_log = get_logger("train.log", exp_dir / "log_train.txt").info if rank == 0 else quiet
        dataset_log = get_logger("train.dataset", exp_dir / "log_dataset.txt").info if rank == 0 else quiet
        data = DataConfig.for_model(config, dynamic_width=opt.dynamic_width, data_filtering_off=opt.data_filtering_off,
                                    workers=opt.workers, batch_size=opt.batch_size, seed=opt.manualSeed)
        train_data = make_train_data(opt, data, rank, world_size, console, dataset_log)
        valid_loader = make_valid_loader(opt.valid_data, data, train_data.batch_size, dataset_log) if rank == 0 else None
        model = prepare_model(model, config, device, world_size, console, opt.compile)
        params = [p for p in model.parameters() if p.requires_grad]
        console(f"Trainable params num :  {sum(p.numel() for p in params)}")
        optimizer = make_optimizer(opt, params)
        console(f"Optimizer:\n{optimizer}")
        run = TrainRun(opt, rank, world_size, device, config, exp_dir, model, train_data, valid_loader,
                       make_converter(config.Prediction, config.character), optimizer, None,
                       torch.amp.GradScaler(device.type, enabled=opt.amp == "fp16"), dtype,
                       console, train_log)
        if opt.amp == "auto":
            run = choose_amp(run)
            opt = run.opt
        if opt.measure_loader:
            run = choose_loader(run)
            opt = run.opt
        run.budget = plan_iterations(run)
        if run.budget is not None:  # the chosen --num_iter, before the schedule is planned over it
            opt = run.opt = argparse.Namespace(**{**vars(opt), "num_iter": run.budget.num_iter})
            train_log(run.budget.describe())  # log_train.txt and the console
        run.scheduler = make_scheduler(opt, optimizer)
        start = resume_or_start(run)
        if rank == 0:
            effective = train_data.batch_size * world_size * opt.accum_steps
            extra = {"time_budget_plan": run.budget.describe()} if run.budget else {}
            console(write_options(opt, config, exp_dir, {"exp_name": exp_name, "num_class": config.num_class,
                                                        "world_size": world_size,
                                                        "effective_batch_size": effective, **extra}).rstrip())
            if summary_writer is not None:  # purge_step: a resumed run replaces what a killed run logged later
                run.tb = summary_writer(str(exp_dir / "tensorboard"), purge_step=start + 1)
        try:
            return run_loop(run, start)
        finally:
            if run.tb is not None:
                run.tb.close()


def main(argv=None):
    try:
        return run_cli(lambda args: train(parse_args(args)), argv)
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
