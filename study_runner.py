"""The cells of a study (study.py): one combination x seed each, trained by train.py, then evaluated
and profiled; and the launchers that run them (local processes, or Slurm through submitit).

A cell is described by a :class:`Cell` written as ``study_cell.json`` into its folder. Locally,
train.py runs as a child process and the study process evaluates and profiles the result; in a
submitit job ``run_cell`` does both. Either way the cell leaves ``study_result.json`` (its row of the
report) or ``study_failed.json`` (why, and the log to read). Training always runs with
``--resume auto``, so a cell killed or preempted at any moment continues from its last checkpoint.
"""
from __future__ import annotations

import csv
import ctypes
import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fileio import atomic_write

ROOT = Path(__file__).resolve().parent
SPEC, RESULT, FAILED, LOG = "study_cell.json", "study_result.json", "study_failed.json", "study_cell.log"
AMP_PRECISION = {"off": "fp32", "auto": "fp32", "bf16": "bf16", "fp16": "fp16"}  # auto reads in fp32 (runtime.check_amp)


class CellFailed(RuntimeError):
    """A cell that cannot finish (train.py failed, the loss diverged, no checkpoint)."""


@dataclass(frozen=True)
class Cell:
    """Everything one cell needs, as plain JSON types (it crosses processes and Slurm jobs)."""

    name: str  # folder name: <combination>-Seed<seed>, or a checkpoint's file stem
    combination: str
    seed: int | None
    folder: str  # where its files go (train.py's experiment folder for a trained cell)
    kind: str  # "train" | "profile" | "checkpoint"
    model_flags: dict  # the stage and size flags (model.config_from_flags / checkpoint.load_model)
    train_argv: list[str] = dataclasses.field(default_factory=list)  # train.py's command line
    checkpoint: str = ""  # kind "checkpoint": the file to evaluate
    eval_sets: list[list[str]] = dataclasses.field(default_factory=list)  # [[name, folder], ...]
    paper_sets: list[str] = dataclasses.field(default_factory=list)  # with --benchmark_all_eval
    case_insensitive: bool = False
    data_filtering_off: bool = False
    device: str = "auto"
    amp: str = "off"
    batch_size: int = 192
    workers: int = 0
    warmup: int = 10
    repeats: int = 30  # at most, per timed figure
    budget_s: float | None = None  # seconds of timed runs per figure (profiling.profile_model's budget_s)
    gpus: int = 0  # GPUs for training: more than one runs train.py under torchrun
    nodes: int = 1
    plugins: list[str] = dataclasses.field(default_factory=list)  # --plugin modules its stages come from

    @property
    def path(self) -> Path:
        return Path(self.folder)

    def save(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.path / SPEC, "w", what="the cell's description", encoding="utf-8") as f:
            json.dump(dataclasses.asdict(self), f, indent=1)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Cell":
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


# ---------------------------------------------------------------- one cell

def die_with_parent() -> None:
    """In a child before exec: SIGTERM when the parent dies (even by kill -9), so that train.py saves
    last.pth and stops instead of running on as an orphan that holds the experiment's lock."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        pass


RUNNING: dict[str, subprocess.Popen] = {}  # the training process of this process's cell (for checkpoint())


def train_command(cell: Cell) -> list[str]:
    script = str(ROOT / "train.py")
    if cell.gpus <= 1 and cell.nodes <= 1:
        return [sys.executable, script, *cell.train_argv]
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={max(cell.gpus, 1)}"]
    if cell.nodes > 1:  # one task per node (submitit): torchrun's rendezvous on the job's first node
        import submitit
        env = submitit.JobEnvironment()
        launcher += [f"--nnodes={cell.nodes}", f"--node_rank={env.node}", f"--master_addr={env.hostnames[0]}",
                     "--master_port=29533"]
    else:
        launcher.append("--standalone")
    return [*launcher, script, *cell.train_argv]


def start_training(cell: Cell, log: Callable[[str], None], env: dict | None = None) -> subprocess.Popen:
    """train.py for the cell, resuming its last.pth; its output goes to the cell's log."""
    command = train_command(cell)
    log("$ " + " ".join(command))
    with open(cell.path / LOG, "a", encoding="utf-8") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, preexec_fn=die_with_parent)


def trained_checkpoint(cell: Cell, code: int) -> Path:
    """After train.py exited with ``code``: the checkpoint to evaluate, or CellFailed."""
    if code != 0:
        raise CellFailed(f"train.py exited with status {code}")
    check_not_diverged(cell.path / "log_valid.csv")
    best = cell.path / "best_accuracy.pth"
    if not best.is_file():
        raise CellFailed(f"train.py wrote no {best}")
    return best


def train(cell: Cell, log: Callable[[str], None]) -> Path:
    proc = start_training(cell, log)
    RUNNING[cell.name] = proc
    try:
        code = proc.wait()
    finally:
        RUNNING.pop(cell.name, None)
    return trained_checkpoint(cell, code)


def check_not_diverged(history: Path) -> None:
    """A loss that became NaN or infinite fails the cell (its accuracy would mean nothing)."""
    if not history.is_file():
        raise CellFailed(f"train.py wrote no validation history ({history})")
    with open(history, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows[-1:]:
        for key in ("train_loss", "valid_loss"):
            if not math.isfinite(float(row[key])):
                raise CellFailed(f"the loss diverged: {key} {row[key]} at iteration {row['iteration']} ({history})")


def evaluate(cell: Cell, model, config, device, log) -> dict:
    """Accuracy on every evaluation set, the sample-weighted total, and the paper's 7-set total when
    the ten benchmark sets are there (test.py --benchmark_all_eval's figures)."""
    import torch

    from dataset import DataConfig, hierarchical_dataset
    from evaluation import make_eval_loader, total_accuracy, validation
    from runtime import check_amp
    from utils import make_converter

    data = DataConfig.for_model(config, data_filtering_off=cell.data_filtering_off, workers=cell.workers,
                                batch_size=cell.batch_size)
    converter = make_converter(config.Prediction, config.character)
    amp_dtype = check_amp(cell.amp, device)
    accuracies, counts = {}, {}
    model.eval()
    for name, folder in cell.eval_sets:
        dataset, _ = hierarchical_dataset(folder, data)
        with torch.inference_mode():
            result = validation(model, make_eval_loader(dataset, data), converter, config, device,
                                case_insensitive=cell.case_insensitive, amp_dtype=amp_dtype)
        accuracies[name], counts[name] = result.accuracy, result.n_samples
        log(f"{name}: accuracy {result.accuracy:0.3f} ({result.n_samples} samples)")
    out = {"accuracy": accuracies, "samples": counts}
    if accuracies:
        out["total_accuracy"] = total_accuracy(accuracies, counts, list(accuracies))
    if cell.paper_sets and all(n in accuracies for n in cell.paper_sets):
        out["paper_total_accuracy"] = total_accuracy(accuracies, counts, cell.paper_sets)
    return out


def profile(cell: Cell, model, device) -> dict:
    import profiling

    result = profiling.profile_model(model, device=device, precision=AMP_PRECISION[cell.amp],
                                     batch_size=cell.batch_size, warmup=cell.warmup, repeats=cell.repeats,
                                     throughput_repeats=min(5, cell.repeats), train_step=True,
                                     budget_s=cell.budget_s)
    return result.as_dict()


def load_cell_model(cell: Cell, checkpoint: Path | None, device, log):
    """The trained (or given) checkpoint, or a freshly initialised model for a profile-only cell."""
    from checkpoint import load_model
    from model import build_model, config_from_flags

    if checkpoint is None:
        config = config_from_flags(cell.model_flags)
        return build_model(config).to(device).eval(), config
    loaded = load_model(checkpoint, checkpoint_flags(cell, checkpoint), device, log=log, allow_onnx=False)
    return loaded.model, loaded.config


def checkpoint_flags(cell: Cell, checkpoint: Path) -> dict:
    """The flags to load ``checkpoint`` with: the stages its name gives (and --sensitive for a
    ``-case-sensitive`` file) for a bare reference state_dict; none of them for a checkpoint that
    describes its model, whose combination must then be the one its name says."""
    from checkpoint import read_checkpoint
    from model import STAGES, ModelConfig

    ckpt = read_checkpoint(checkpoint)
    if ckpt.get("config") is None:
        return cell.model_flags
    described = ModelConfig.from_dict(ckpt["config"]).name
    if described != cell.combination:
        raise CellFailed(f"{checkpoint} holds a {described} model, not the {cell.combination} its name says")
    return {k: v for k, v in cell.model_flags.items() if k not in (*STAGES, "sensitive")}


def training_summary(cell: Cell) -> dict:
    """Iterations and training seconds from last.pth (a trained cell)."""
    from checkpoint import read_training_state

    state = read_training_state(cell.path / "last.pth")
    return {"iterations": state["iteration"], "train_seconds": state["elapsed"],
            "best_valid_accuracy": state["best_accuracy"]}


def cell_log(cell: Cell) -> Callable[[str], None]:
    """Lines for the cell's log file only (the study's console says one line per cell)."""
    def log(message: str) -> None:
        with open(cell.path / LOG, "a", encoding="utf-8") as f:
            f.write(message.rstrip("\n") + "\n")
    return log


def run_cell(cell: Cell) -> dict:
    """One cell where it stands (a submitit job): train, evaluate, profile; → its row."""
    import plugins

    for name in cell.plugins:  # a fresh process: the stages of the study's plugins register again
        plugins.load(name)
    (cell.path / FAILED).unlink(missing_ok=True)
    log = cell_log(cell)
    try:
        checkpoint = train(cell, log) if cell.kind == "train" else None
    except BaseException as e:
        mark_failed(cell, str(e) or type(e).__name__)
        raise
    if cell.nodes > 1:  # every node trained its share; the first one measures
        import submitit
        if submitit.JobEnvironment().global_rank != 0:
            return {}
    return measure(cell, checkpoint)


def measure(cell: Cell, checkpoint: Path | None, device: str | None = None) -> dict:
    """Evaluate and profile the cell's model (trained ``checkpoint``, the cell's own checkpoint, or a fresh
    model); → its row, also written to study_result.json. A failure writes study_failed.json and raises."""
    from runtime import resolve_device

    log = cell_log(cell)
    checkpoint = checkpoint or (Path(cell.checkpoint) if cell.checkpoint else None)
    try:
        device = resolve_device(device or cell.device)
        model, config = load_cell_model(cell, checkpoint, device, log)
        row = {"cell": cell.name, "combination": cell.combination, "seed": cell.seed, "checkpoint": str(checkpoint or ""),
               "log": str(cell.path / LOG), **evaluate(cell, model, config, device, log)}
        if cell.kind == "train":
            row.update(training_summary(cell))
        row.update(profile(cell, model, device))
        log(f"profile: {json.dumps({k: v for k, v in row.items() if k not in ('accuracy', 'samples')})}")
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        mark_failed(cell, reason)
        log(f"cell failed: {reason}")
        raise
    with atomic_write(cell.path / RESULT, "w", what="the cell's result", encoding="utf-8") as f:
        json.dump(row, f, indent=1)
    return row


def mark_failed(cell: Cell, reason: str) -> None:
    with atomic_write(cell.path / FAILED, "w", what="the cell's failure", encoding="utf-8") as f:
        json.dump({"cell": cell.name, "reason": reason, "log": str(cell.path / LOG)}, f)


def cell_status(cell: Cell) -> tuple[str, dict | None]:
    """("done", row) | ("failed", {reason, log}) | ("todo", None)."""
    for status, name in (("done", RESULT), ("failed", FAILED)):
        path = cell.path / name
        if path.is_file():
            try:
                return status, json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                continue
    return "todo", None


# ---------------------------------------------------------------- launchers

@dataclass
class Outcome:
    cell: Cell
    ok: bool
    reason: str = ""


def run_local(cells: list[Cell], parallel: int, gpus: list[str], gpus_per_cell: int,
              report: Callable[[Outcome], None]) -> list[Outcome]:
    """Up to ``parallel`` cells train at once, each a train.py process (with GPUs, ``gpus_per_cell`` of them
    through CUDA_VISIBLE_DEVICES; a cell waits for free ones). A cell that finished training is evaluated
    and profiled here, one at a time, on its first GPU."""
    queue, running, outcomes, free = list(cells), {}, [], list(range(len(gpus)))
    while queue or running:
        while queue and len(running) < parallel and len(free) >= gpus_per_cell:
            cell = queue.pop(0)
            (cell.path / FAILED).unlink(missing_ok=True)
            if cell.kind != "train":
                outcomes.append(finish(cell, None, None, report))
                continue
            mine, free = free[:gpus_per_cell], free[gpus_per_cell:]
            env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": ",".join(gpus[i] for i in mine)} if gpus else {})}
            running[start_training(cell, cell_log(cell), env)] = (cell, mine)
        if running:
            time.sleep(0.1)
        for proc in [p for p in running if p.poll() is not None]:
            cell, mine = running.pop(proc)
            free = sorted(free + mine)
            outcomes.append(finish(cell, proc.returncode, f"cuda:{mine[0]}" if mine else None, report))
    return outcomes


def finish(cell: Cell, code: int | None, device: str | None, report: Callable[[Outcome], None]) -> Outcome:
    """Measure a cell (after training, if it trained); → its outcome, also reported."""
    try:
        checkpoint = trained_checkpoint(cell, code) if cell.kind == "train" else None
        measure(cell, checkpoint, device)
        outcome = Outcome(cell, True)
    except CellFailed as e:
        mark_failed(cell, str(e))
        outcome = Outcome(cell, False, str(e))
    except Exception:  # measure() marked it
        outcome = Outcome(cell, False, cell_status(cell)[1]["reason"])
    report(outcome)
    return outcome


class CellJob:
    """The submitit job of one cell. On preemption or timeout submitit calls ``checkpoint``: train.py is
    asked to save last.pth (SIGTERM), and the same job is requeued; it resumes with ``--resume auto``."""

    def __call__(self, spec: str) -> dict:
        return run_cell(Cell.load(spec))

    def checkpoint(self, spec: str):
        import submitit

        for proc in list(RUNNING.values()):
            proc.terminate()
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
        return submitit.helpers.DelayedSubmission(CellJob(), spec)


def run_submitit(cells: list[Cell], folder: Path, cluster: str | None, parameters: dict,
                 report: Callable[[Outcome], None]) -> list[Outcome]:
    """The cells as one Slurm job array (``cluster`` None) or as submitit's local jobs ("local")."""
    import submitit

    # The job unpickles CellJob from this folder's modules, wherever submitit starts it.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))
    executor = submitit.AutoExecutor(folder=folder / "%j", cluster=cluster)
    executor.update_parameters(**parameters)
    with executor.batch():
        jobs = [executor.submit(CellJob(), str(cell.path / SPEC)) for cell in cells]
    outcomes = []
    for cell, job in zip(cells, jobs):
        try:
            job.result()
            outcome = Outcome(cell, True)
        except Exception as e:  # submitit's FailedJobState carries the job's traceback
            status, info = cell_status(cell)
            outcome = Outcome(cell, False, info["reason"] if status == "failed" else str(e).splitlines()[0])
            if status != "failed":
                mark_failed(cell, outcome.reason)
        outcomes.append(outcome)
        report(outcome)
    return outcomes
