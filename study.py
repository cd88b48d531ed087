"""The paper's module-wise study as one command: train every chosen combination for every seed under
one protocol, evaluate and profile each, and write the report with its Pareto frontiers.

    python study.py --name paper --models all --seeds 1111,1112,1113 \\
        --train_data data_lmdb_release/training --valid_data data_lmdb_release/validation \\
        --select_data MJ-ST --batch_ratio 0.5-0.5 --eval_data data_lmdb_release/evaluation --benchmark_all_eval
    python study.py --name costs --models all --profile_only --device cpu
    python study.py --name published --checkpoints pretrained/ --eval_data data_lmdb_release/evaluation \\
        --benchmark_all_eval

Every flag of train.py that this script does not take itself is handed on to train.py (its groups
are listed below). Each cell (combination x seed) is an ordinary train.py experiment in
saved_models/NAME/<combination>-Seed<seed>/, run as its own process; the study folder studies/NAME/
holds the protocol and the report. Running the same command again continues: finished cells are
skipped, interrupted ones resume from their last.pth. A failed cell is reported with its log, the
others go on, and the study exits with status 1.
"""
from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import itertools
import json
import os
import re
import shutil
import sys
from pathlib import Path

import plugins
from errors import UserError
from fileio import atomic_write, check_output_folder
from model import REFERENCE_NAMES, STAGES, add_model_arguments, all_names, inapplicable_options, model_flags
from profiling import DEFAULT_BUDGET_S as DEFAULT_PROFILE_BUDGET_S, MIN_RUNS as MIN_PROFILE_RUNS
from runtime import UsageError, add_runtime_arguments, get_logger, run_cli
from study_report import build_report
from study_runner import Cell, Outcome, cell_status, run_local, run_submitit
from train_options import add_training_arguments, check_training_arguments

# train.py flags a study sets for each cell itself.
PER_CELL_FLAGS = ("exp_name", "manualSeed", "resume", *STAGES)
# train.py flags that change how a run is watched, not what it computes: not part of the protocol.
NOT_PROTOCOL = ("workers", "progress", "log_interval", "tensorboard", "measure_loader")
STUDIES = Path("studies")


def study_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("study")
    g.add_argument("--name", help="the study: its report goes to studies/NAME/, its cells to saved_models/NAME/")
    g.add_argument("--models", default="all",
                   help="all (the paper's 24; with --checkpoints, every file of the folder), a comma list of combination names (None-VGG-BiLSTM-CTC), or "
                        "patterns (TPS-*-BiLSTM-*); a pattern matching none of the 24 matches the combinations "
                        "with the transformer stages (*-SVTR-*)")
    g.add_argument("--seeds", default="1111", help="comma list of seeds; every combination is trained once per seed")
    g.add_argument("--eval_data", action="append", default=[],
                   help="evaluation data: a set (LMDB or gt.txt folder) or a folder of sets; repeatable. With "
                        "--benchmark_all_eval, the folder holding the ten benchmark sets")
    g.add_argument("--benchmark_all_eval", action="store_true",
                   help="evaluate the reference's ten sets and report the paper's 7-set total")
    g.add_argument("--profile_only", action="store_true",
                   help="no training: parameters, GFLOPs, latency and memory of each combination")
    g.add_argument("--checkpoints", default=None,
                   help="evaluate and profile the .pth files of this folder instead of training; each named after "
                        "its combination as the reference names them (TPS-ResNet-BiLSTM-Attn.pth, "
                        "None-VGG-BiLSTM-CTC-case-sensitive.pth)")
    g.add_argument("--report_only", action="store_true", help="rebuild the report from the cells' results")
    g.add_argument("--explain", type=int, default=0, metavar="K",
                   help="after the report: the K worst-read words of each finished cell on the first evaluation set, "
                        "each seen through every cell side by side (studies/NAME/explain/index.html)")
    g.add_argument("--profile_warmup", type=int, default=10, help="profile: untimed runs before timing")
    g.add_argument("--profile_repeats", type=int, default=30,
                   help="profile: at most this many timed runs per figure (the median is reported)")
    g.add_argument("--profile_budget", type=float, default=DEFAULT_PROFILE_BUDGET_S,
                   help="profile: seconds of timed runs per figure (latency, throughput); each stops there once it "
                        f"rests on {MIN_PROFILE_RUNS} runs, or at --profile_repeats. The results record the count")
    g = parser.add_argument_group("launcher")
    g.add_argument("--launcher", choices=["local", "slurm", "submitit_local"], default="local",
                   help="local: processes on this machine; slurm: a job array through submitit; submitit_local: "
                        "submitit's jobs on this machine (checks a Slurm set-up without a cluster)")
    g.add_argument("--parallel", type=int, default=1, help="cells at once (local), or running array tasks (slurm)")
    g.add_argument("--gpus_per_cell", type=int, default=None,
                   help="local: GPUs per cell (default 1 when there are GPUs, else 0); more than 1 runs torchrun")
    g.add_argument("--partition", default=None, help="slurm: partition")
    g.add_argument("--timeout_min", type=int, default=24 * 60,
                   help="slurm: minutes per job; a job that reaches it is requeued and resumes")
    g.add_argument("--gpus_per_node", type=int, default=1, help="slurm: GPUs of each cell's job (torchrun if > 1)")
    g.add_argument("--nodes", type=int, default=1, help="slurm: nodes of each cell's job")
    g.add_argument("--cpus_per_task", type=int, default=8, help="slurm: CPUs of each cell's job")


def make_parser(for_help: bool) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False, add_help=for_help)
    study_arguments(parser)
    if for_help:
        add_training_arguments(parser, data_required=False)
        add_runtime_arguments(parser, batch_help="batch size (training, evaluation, profile throughput)")
        add_model_arguments(parser)
    return parser


def training_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="study.py (flags for train.py)", allow_abbrev=False, add_help=False)
    add_training_arguments(parser, data_required=False)
    add_runtime_arguments(parser)
    add_model_arguments(parser)
    return parser


def parse_args(argv):
    """→ (the study's options, the flags for train.py as given, train.py's parsed view of them)."""
    plugins.load_from_argv(argv)  # their stages join the choices (and the study's combinations) first
    make_parser(for_help=True).parse_args(argv)  # --help, and argparse's own errors, for every flag
    opt, forwarded = make_parser(for_help=False).parse_known_args(argv)
    return opt, forwarded, training_parser().parse_args(forwarded)


# ---------------------------------------------------------------- what the study is

def models_error(item: str) -> UsageError:
    return UsageError(f"--models {item!r} names no combination. The paper's 24: {', '.join(REFERENCE_NAMES)}; "
                      f"any other combination of the stages is named the same way (None-SVTR-None-CTC, "
                      f"None-ViT-None-PARSeq)")


def resolve_models(spec: str, names: list[str] | None = None) -> list[str]:
    """--models → the combination names, in the paper's order, each once."""
    chosen = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        if item == "all":  # the paper's 24; with --checkpoints, every file's combination (transformers too)
            found = [n for n in REFERENCE_NAMES if names is None or n in names]
            found += [n for n in all_names() if names is not None and n in names and n not in REFERENCE_NAMES]
        elif any(ch in item for ch in "*?["):
            found = fnmatch.filter(REFERENCE_NAMES, item) or fnmatch.filter(all_names(), item)
            found = [n for n in found if names is None or n in names]
        else:
            found = [item] if item in (names or all_names()) else []
        if not found:
            raise models_error(item)
        chosen += found
    if not chosen:
        raise models_error(spec)
    return list(dict.fromkeys(chosen))


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",")]
    except ValueError:
        raise UsageError(f"--seeds {text!r}: give whole numbers separated by commas (--seeds 1111,1112,1113)") from None
    if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise UsageError(f"--seeds {text!r}: each seed once, none negative")
    return seeds


CHECKPOINT_NAME = re.compile(r"^(?P<combination>[A-Za-z]+-[A-Za-z]+-[A-Za-z]+-[A-Za-z]+)(?P<sensitive>-case-sensitive)?$")


def find_checkpoints(folder: str) -> dict[str, dict]:
    """{file stem: {combination, sensitive, path}} of --checkpoints (its .pth and .pt files). A file named after
    its combination, as the reference names them, is that combination; any other must describe itself: a
    checkpoint of this toolkit, or another project's release that ``releases.py`` recognises (baudm/parseq's
    ``parseq-bb5792a6.pt``), whose combination is read off it. The rest are refused (their stages would be
    guessed)."""
    root = Path(folder)
    if not root.is_dir():
        raise UsageError(f"--checkpoints {folder} is not a folder")
    found, unfit = {}, []
    for path in sorted([*root.glob("*.pth"), *root.glob("*.pt")]):
        match = CHECKPOINT_NAME.match(path.stem)
        if match and match["combination"] in all_names():
            found[path.stem] = {"combination": match["combination"], "sensitive": bool(match["sensitive"]),
                                "path": str(path)}
            continue
        described = self_described(path)
        if described is None:
            unfit.append(path.name)
        else:
            found[path.stem] = {**described, "path": str(path)}
    if unfit:
        raise UsageError(f"--checkpoints {folder}: {', '.join(unfit)} fit no combination; name each file after "
                         f"its stages as the reference does (TPS-ResNet-BiLSTM-Attn.pth, "
                         f"None-VGG-BiLSTM-CTC-case-sensitive.pth), or give a checkpoint that describes itself")
    if not found:
        raise UsageError(f"--checkpoints {folder} holds no .pth or .pt file")
    return found


def self_described(path: Path) -> dict | None:
    """{combination, sensitive} of a file that says its configuration (this toolkit's checkpoint, a recognised
    release), or None (a bare state_dict, or a file that does not read)."""
    from checkpoint import read_checkpoint
    from releases import ReleaseError

    try:
        config = read_checkpoint(path)["config"]
    except ReleaseError:
        raise  # a release recognised, that needs a flag: its message names it
    except UserError:
        return None
    if not config:
        return None
    return {"combination": "-".join(config[kind] for kind in STAGES), "sensitive": bool(config.get("sensitive"))}


def is_dataset(folder: Path) -> bool:
    return (folder / "data.mdb").is_file() or (folder / "gt.txt").is_file()


def evaluation_sets(eval_data: list[str], benchmark_all_eval: bool) -> list[list[str]]:
    """[[set name, folder], ...]: the ten benchmark sets, or each --eval_data that is a set and each set
    directly inside one that is not."""
    from evaluation import BENCHMARKS

    if benchmark_all_eval:
        if len(eval_data) != 1:
            raise UsageError("--benchmark_all_eval needs one --eval_data: the folder holding the ten sets")
        missing = [n for n in BENCHMARKS if not (Path(eval_data[0]) / n).is_dir()]
        if missing:
            raise UsageError(f"--benchmark_all_eval: {eval_data[0]} lacks {', '.join(missing)} (it expects "
                             f"{', '.join(BENCHMARKS)})")
        return [[n, str(Path(eval_data[0]) / n)] for n in BENCHMARKS]
    sets = []
    for root in map(Path, eval_data):
        inner = [p for p in sorted(root.iterdir()) if p.is_dir() and is_dataset(p)] if root.is_dir() else []
        if is_dataset(root):
            sets.append([root.name, str(root)])
        elif inner:
            sets += [[p.name, str(p)] for p in inner]
        else:
            raise UsageError(f"--eval_data {root}: neither an evaluation set (data.mdb or gt.txt) nor a folder of sets")
    names = [n for n, _ in sets]
    if len(set(names)) != len(names):
        raise UsageError(f"--eval_data: two sets share a name ({', '.join(names)}); each set is a column of the report")
    return sets


def mode_of(opt) -> str:
    chosen = [m for m, on in (("profile_only", opt.profile_only), ("checkpoints", opt.checkpoints)) if on]
    if len(chosen) > 1:
        raise UsageError("--profile_only and --checkpoints each replace training; give one of them")
    return chosen[0] if chosen else "train"


def check_args(opt, train_opt) -> str:
    """Refuse what the study cannot run with (UsageError, exit 2) before any cell starts; → the mode."""
    if not opt.name or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", opt.name):
        raise UsageError(f"--name {opt.name!r}: give a folder name (letters, digits, '_', '-', '.'), e.g. --name paper")
    given = [f"--{k}" for k in PER_CELL_FLAGS if getattr(train_opt, k) not in (None, "", 1111)]
    if given:
        raise UsageError(f"{', '.join(given)}: the study sets these for each cell; choose the combinations with "
                         "--models and the seeds with --seeds")
    for flag in ("parallel", "nodes", "timeout_min", "profile_repeats", "cpus_per_task"):
        if getattr(opt, flag) < 1:
            raise UsageError(f"--{flag} must be at least 1, got {getattr(opt, flag)}")
    if not opt.profile_budget > 0:
        raise UsageError(f"--profile_budget is seconds per timed figure and must be positive, got {opt.profile_budget}")
    for flag in ("profile_warmup", "gpus_per_node", "gpus_per_cell"):
        if getattr(opt, flag) is not None and getattr(opt, flag) < 0:
            raise UsageError(f"--{flag} must be 0 or more, got {getattr(opt, flag)}")
    if opt.launcher == "slurm" and shutil.which("sbatch") is None:  # submitit would run every cell here at once
        raise UsageError("--launcher slurm: Slurm is not installed here (no sbatch on the PATH); run it on the "
                         "cluster's login node, or use --launcher local")
    parse_seeds(opt.seeds)
    mode = mode_of(opt)
    if mode == "train" and not opt.report_only:
        if not (train_opt.train_data and train_opt.valid_data):
            raise UsageError("--train_data and --valid_data are needed to train the cells (or --profile_only, "
                             "--checkpoints DIR, --report_only)")
        check_training_arguments(train_opt)
    if mode != "profile_only" and not opt.eval_data and not opt.report_only:
        raise UsageError("--eval_data is needed: the sets every cell is evaluated on (or --profile_only)")
    return mode


def make_protocol(opt, train_opt, mode: str) -> dict:
    """What the study's numbers depend on: a rerun under another protocol is refused."""
    protocol = {"mode": mode}
    if mode == "checkpoints":
        found = find_checkpoints(opt.checkpoints)
        chosen = resolve_models(opt.models, [f["combination"] for f in found.values()])
        protocol["checkpoints"] = {stem: f for stem, f in found.items() if f["combination"] in chosen}
        protocol["models"] = chosen
    else:
        protocol["models"] = resolve_models(opt.models)
    protocol.update({
        "seeds": parse_seeds(opt.seeds) if mode == "train" else [],
        "eval_data": opt.eval_data if mode != "profile_only" else [],
        "eval_sets": evaluation_sets(opt.eval_data, opt.benchmark_all_eval) if mode != "profile_only" else [],
        "benchmark_all_eval": opt.benchmark_all_eval, "profile_warmup": opt.profile_warmup,
        "profile_repeats": opt.profile_repeats, "profile_budget": opt.profile_budget,
        # --plugin only where given: a study recorded before plugins existed compares equal
        "train": {k: v for k, v in sorted(vars(train_opt).items())
                  if k not in NOT_PROTOCOL and k not in PER_CELL_FLAGS and not (k == "plugin" and not v)}})
    return protocol


def differences(recorded: dict, now: dict) -> list[str]:
    flat = {}
    for source, protocol in (("recorded", recorded), ("now", now)):
        for key, value in protocol.items():
            items = value.items() if key == "train" else [(key, value)]
            for k, v in items:
                flat.setdefault(k, {})[source] = v
    return [f"--{k} (recorded {v.get('recorded')!r}, now {v.get('now')!r})"
            for k, v in flat.items() if v.get("recorded") != v.get("now")]


PROTOCOL_KEYS = ("mode", "models", "seeds", "eval_sets", "benchmark_all_eval", "profile_warmup", "profile_repeats",
                 "train")


def read_protocol(path: Path) -> dict:
    """The protocol recorded in studies/NAME/protocol.json; a damaged file (cut short, not JSON, another
    shape) is a UserError naming it."""
    try:
        protocol = json.loads(path.read_text(encoding="utf-8"))["protocol"]
        missing = [k for k in PROTOCOL_KEYS if k not in protocol]
        if missing or not isinstance(protocol["train"], dict):
            raise KeyError(", ".join(missing) or "train")
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        what = f"{type(e).__name__}: {e}" if not isinstance(e, KeyError) else f"no {e.args[0]} in it"
        raise UserError(f"{path} is damaged ({what}): it is the study's record of its protocol. Restore it, or "
                        f"move it away to start the study again under the flags given now (the finished cells "
                        f"are kept), or choose another --name") from None
    return protocol


def record_protocol(folder: Path, protocol: dict, argv: list[str]) -> None:
    """studies/NAME/protocol.json: written by the first run, compared by every later one."""
    path = folder / "protocol.json"
    if path.is_file():
        changed = differences(read_protocol(path), protocol)
        if changed:
            raise UsageError(f"study {folder.name} was started with another protocol ({path}): "
                             f"{'; '.join(changed)}. Rerun it as it was started, or choose another --name")
        return
    with atomic_write(path, "w", what="the study's protocol", encoding="utf-8") as f:
        json.dump({"protocol": protocol, "command": ["python", "study.py", *argv]}, f, indent=1)


def inapplicable_flags(flags: dict, stages: dict) -> list[str]:
    """The study's model flags that size a stage this combination does not have (``--output_channel`` for an
    extractor whose width is its own, ``--vit_*`` without ViT, ``--parseq_*`` without PARSeq, any stage's own
    options without it): train.py refuses them, so such a cell trains without them (the study's flags are the
    protocol of the cells they fit)."""
    return list(dict.fromkeys(flag for flag, _, _ in inapplicable_options(flags, stages)))


def without_flags(argv: list[str], names: list[str]) -> list[str]:
    """``argv`` less ``--name value`` and ``--name=value`` for each of ``names``."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        flag = arg.split("=", 1)[0]
        if flag.startswith("--") and flag[2:] in names:
            skip = "=" not in arg
            continue
        kept.append(arg)
    return kept


def plan_cells(name: str, protocol: dict, train_argv: list[str], train_opt, gpus: int, nodes: int) -> list[Cell]:
    """The study's cells, in the report's order."""
    flags = {k: v for k, v in model_flags(train_opt).items() if k not in STAGES}
    from evaluation import PAPER_BENCHMARKS

    common = dict(eval_sets=protocol["eval_sets"], paper_sets=PAPER_BENCHMARKS if protocol["benchmark_all_eval"] else [],
                  case_insensitive=train_opt.case_insensitive, data_filtering_off=train_opt.data_filtering_off,
                  device=train_opt.device, amp=train_opt.amp, batch_size=train_opt.batch_size,
                  workers=train_opt.workers, warmup=protocol["profile_warmup"], repeats=protocol["profile_repeats"],
                  budget_s=protocol.get("profile_budget"),
                  gpus=gpus, nodes=nodes, plugins=list(train_opt.plugin or []))
    cells = []
    if protocol["mode"] == "checkpoints":
        for stem, f in protocol["checkpoints"].items():
            stages = dict(zip(STAGES, f["combination"].split("-")))
            cells.append(Cell(stem, f["combination"], None, str(STUDIES / name / "cells" / stem), "checkpoint",
                              {**{k: v for k, v in flags.items() if k not in inapplicable_flags(flags, stages)},
                               **stages, **({"sensitive": True} if f["sensitive"] else {})},
                              checkpoint=f["path"], **common))
        return cells
    for combination in protocol["models"]:
        stages = dict(zip(STAGES, combination.split("-")))
        dropped = inapplicable_flags(flags, stages)
        fitting = {k: v for k, v in flags.items() if k not in dropped}
        if protocol["mode"] == "profile_only":
            cells.append(Cell(combination, combination, None, str(STUDIES / name / "cells" / combination), "profile",
                              {**fitting, **stages}, **{**common, "eval_sets": []}))
            continue
        for seed in protocol["seeds"]:
            cell = f"{combination}-Seed{seed}"
            argv = [*without_flags(train_argv, dropped), "--exp_name", f"{name}/{cell}", "--manualSeed", str(seed),
                    "--resume", "auto", *itertools.chain.from_iterable((f"--{k}", v) for k, v in stages.items())]
            cells.append(Cell(cell, combination, seed, str(Path("saved_models") / name / cell), "train",
                              {**fitting, **stages}, train_argv=argv, **common))
    return cells


# ---------------------------------------------------------------- running it

def visible_gpus(device: str) -> list[str]:
    if device == "cpu":
        return []
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [s for s in listed.split(",") if s] if listed else [str(i) for i in range(torch.cuda.device_count())]
    return ids[:torch.cuda.device_count()]


def check_writable(folders: list[Path]) -> None:
    for folder in folders:
        try:
            check_output_folder(folder, f"study folder {folder}:")
            folder.mkdir(parents=True, exist_ok=True)
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot write the study folder {folder} ({e}); run from a folder you can write "
                             "to, or choose another --name") from None


def gpus_per_cell(opt, cells: list[Cell]) -> int:
    """--gpus_per_cell of the local launcher (default 1 where there are GPUs, else 0): a UsageError if more
    than the visible GPUs. → the GPUs of each cell."""
    gpus = visible_gpus(cells[0].device) if cells and opt.launcher == "local" else []
    per_cell = opt.gpus_per_cell if opt.gpus_per_cell is not None else (1 if gpus else 0)
    if opt.launcher == "local" and per_cell > len(gpus):
        raise UsageError(f"--gpus_per_cell {per_cell}: only {len(gpus)} GPU(s) are visible")
    return per_cell


def launch(opt, cells: list[Cell], log) -> list[Outcome]:
    done = [0]

    def report(outcome: Outcome) -> None:
        done[0] += 1
        head = f"[{done[0]}/{len(cells)}] {outcome.cell.name}"
        if outcome.ok:
            row = cell_status(outcome.cell)[1] or {}
            acc = row.get("paper_total_accuracy", row.get("total_accuracy"))
            log(f"{head}: done" + (f", accuracy {acc:0.2f}" if acc is not None else "")
                + (f", {row['latency_ms']:0.2f} ms/image" if "latency_ms" in row else "")
                + (f" (median of {row['latency_runs']} runs)" if row.get("latency_runs") else ""))
        else:
            log(f"{head}: FAILED: {outcome.reason} (log: {outcome.cell.path / 'study_cell.log'})")

    if opt.launcher == "local":
        gpus = visible_gpus(cells[0].device)
        per_cell = gpus_per_cell(opt, cells)
        cells = [dataclasses.replace(c, gpus=per_cell) for c in cells]
        for cell in cells:
            cell.save()
        return run_local(cells, opt.parallel, gpus, per_cell, report)
    for cell in cells:
        cell.save()
    parameters = {"timeout_min": opt.timeout_min, "gpus_per_node": opt.gpus_per_node, "nodes": opt.nodes,
                  "tasks_per_node": 1, "cpus_per_task": opt.cpus_per_task, "name": f"study-{opt.name}"}
    if opt.launcher == "slurm":
        parameters.update(slurm_array_parallelism=opt.parallel,
                          **({"slurm_partition": opt.partition} if opt.partition else {}))
    else:
        parameters = {k: parameters[k] for k in ("timeout_min", "gpus_per_node", "tasks_per_node", "cpus_per_task")}
        parameters["gpus_per_node"] = 0 if cells[0].device == "cpu" else opt.gpus_per_node
    return run_submitit(cells, STUDIES / opt.name / "submitit", None if opt.launcher == "slurm" else "local",
                        parameters, report)


def write_report(name: str, protocol: dict, cells: list[Cell], log) -> list[dict]:
    """Collect the cells' rows and write the report; → the failed cells."""
    rows, failed = [], []
    for cell in cells:
        status, info = cell_status(cell)
        if status == "done":
            rows.append(info)
        elif status == "failed":
            failed.append(info)
    folder = STUDIES / name
    build_report(folder, name, protocol, rows, failed)
    log(f"report: {folder / 'report.md'} ({len(rows)} of {len(cells)} cells)")
    return failed


def study(argv) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    opt, forwarded, train_opt = parse_args(argv)
    mode = check_args(opt, train_opt)
    log = get_logger("study").info
    folder = STUDIES / opt.name
    if opt.report_only:
        path = folder / "protocol.json"
        if not path.is_file():
            raise UsageError(f"--report_only: {path} does not exist (no study {opt.name} was run here)")
        protocol = read_protocol(path)
        recorded = training_parser().parse_args([])
        vars(recorded).update(protocol["train"])
        cells = plan_cells(opt.name, protocol, [], recorded, 0, 1)
        write_report(opt.name, protocol, cells, log)
        explain_cells(opt.name, cells, opt.explain, log)
        return
    # Everything that can refuse the study comes before its folders are made: a study that never starts
    # leaves no empty studies/NAME behind.
    protocol = make_protocol(opt, train_opt, mode)
    cells = plan_cells(opt.name, protocol, forwarded, train_opt, opt.gpus_per_node, opt.nodes)
    gpus_per_cell(opt, cells)
    check_writable([folder] + ([Path("saved_models") / opt.name] if mode == "train" else []))
    record_protocol(folder, protocol, argv)
    if mode == "checkpoints":
        every = find_checkpoints(opt.checkpoints)
        left_out = sorted(Path(f["path"]).name for stem, f in every.items() if stem not in protocol["checkpoints"])
        if left_out:
            log(f"--checkpoints {opt.checkpoints}: left out {', '.join(left_out)} (not in "
                f"--models {opt.models})")
    todo = [c for c in cells if cell_status(c)[0] != "done"]
    log(f"study {opt.name}: {len(cells)} cells, {len(cells) - len(todo)} finished before, {len(todo)} to run")
    flags = model_flags(train_opt)
    for combination in protocol["models"]:
        dropped = inapplicable_flags(flags, dict(zip(STAGES, combination.split("-"))))
        if dropped:
            log(f"{combination}: without {', '.join('--' + d for d in dropped)} (it sizes a stage this "
                f"combination does not have)")
    outcomes = launch(opt, todo, log) if todo else []
    failed = write_report(opt.name, protocol, cells, log)
    explain_cells(opt.name, cells, opt.explain, log)
    if failed or not all(o.ok for o in outcomes):
        print(f"{len(failed)} cell(s) failed:\n" + "\n".join(f"  {f['cell']}: {f['reason']} (log: {f['log']})"
                                                          for f in failed), file=sys.stderr, flush=True)
        raise SystemExit(1)


def explain_cells(name: str, cells: list[Cell], k: int, log) -> None:
    """--explain K: each finished cell reads the first evaluation set; the K words each reads worst (misread
    first, then the least confident) are explained by every cell, side by side (``explain.write_comparison``)."""
    done = [c for c in cells if c.kind != "profile" and c.eval_sets and cell_status(c)[0] == "done"]
    if k <= 0 or not done:
        if k > 0:
            log("--explain: no finished cell read an evaluation set; nothing to explain")
        return
    from explain import write_comparison

    set_name, set_folder = done[0].eval_sets[0]
    readings = {c.name: read_cell(c, set_folder, log) for c in done}
    sizes = {len(r.result.labels) for r in readings.values()}
    if len(sizes) > 1:  # the cells' label filters differ (character sets, lengths): words cannot be matched
        log(f"--explain: the cells kept different words of {set_name} ({sorted(sizes)}); nothing explained")
        return
    chosen = list(dict.fromkeys(i for r in readings.values() for i in r.worst(k)))
    page = write_comparison(STUDIES / name / "explain", set_name, chosen, readings)
    log(f"--explain {k}: {len(chosen)} words of {set_name} through {len(readings)} cells: {page}")


@dataclasses.dataclass
class CellReading:
    """One cell's model and its reading of a set (images kept), for --explain."""

    model: object
    config: object
    result: object  # evaluation.ValidationResult with keep_all
    device: object
    case_insensitive: bool

    def worst(self, k: int) -> list[int]:
        """The indices of the k words it reads worst: misread first, then by confidence, lowest first."""
        from explain import scored_text
        r = self.result
        ci = self.case_insensitive
        right = [scored_text(gt, ci) == scored_text(p, ci) for gt, p in zip(r.labels, r.preds)]
        return sorted(range(len(r.labels)), key=lambda i: (right[i], r.confidences[i]))[:k]


def read_cell(cell: Cell, folder: str, log) -> CellReading:
    from dataset import DataConfig, hierarchical_dataset
    from evaluation import make_eval_loader, validation
    from runtime import resolve_device
    from study_runner import cell_log, load_cell_model
    from utils import make_converter

    device = resolve_device(cell.device)
    checkpoint = Path(cell.checkpoint) if cell.kind == "checkpoint" else cell.path / "best_accuracy.pth"
    model, config = load_cell_model(cell, checkpoint, device, cell_log(cell))
    data = DataConfig.for_model(config, workers=cell.workers, batch_size=cell.batch_size,
                                data_filtering_off=cell.data_filtering_off)
    dataset, _ = hierarchical_dataset(folder, data)
    result = validation(model, make_eval_loader(dataset, data), make_converter(config.Prediction, config.character),
                        config, device, case_insensitive=cell.case_insensitive, keep_all=True)
    return CellReading(model, config, result, device, cell.case_insensitive)


def main(argv=None):
    """study.py's entry point: user errors are one line (exit 2), failed cells exit 1."""
    return run_cli(study, argv)


if __name__ == "__main__":
    main()
