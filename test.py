"""Evaluate a trained model: one LMDB tree (or gt.txt folder), the ten benchmark sets, or a newer suite.

    python test.py --eval_data data_lmdb_release/evaluation --benchmark_all_eval \\
        --saved_model saved_models/None-VGG-BiLSTM-CTC-Seed1111/best_accuracy.pth
    python test.py --eval_data data/test --benchmark common36 --saved_model parseq
    python test.py --eval_data Union14M-Benchmarks --benchmark union14m --saved_model <model>
    python test.py --eval_data long_text_sets --benchmark long_text --saved_model <a long-text CTC model>

``--explain DIR`` writes a panel per image of what each stage did, with its label (DIR/index.html sorts
and filters by confidence, correct / wrong, error kind and set: docs/explain.md); ``--save_errors DIR``
writes the misread ones, with the same panels.

A checkpoint written by this toolkit carries its architecture; a bare reference state_dict needs
the stage flags (``--Transformation ... --Prediction ...``) as with the original.
"""
from __future__ import annotations

import argparse
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

import plugins
from checkpoint import RUNTIME_FLAGS, RUNTIME_HELP, load_model_for_runtime
from dataset import DataConfig, count_samples, hierarchical_dataset
from decoding import DecodeOptions, add_decoding_arguments, check_decoding_flags, options_from_args
from error_analysis import write_errors
from explain import can_explain, explain_results, write_explanations
from errors import UserError
from evaluation import (BENCHMARKS, FOLDER_ALIASES, LONG_SUITES, PAPER_BENCHMARKS, SUITES, ValidationResult,
                        group_scores, make_eval_loader, total_accuracy, validation)
from fileio import check_output_folder
from model import ModelConfig, add_model_arguments, count_parameters, model_flags
from runtime import (UsageError, add_compile_argument, add_runtime_arguments, check_amp, check_runtime_arguments,
                     compile_model, get_logger, reading_workers, resolve_device, run_cli)
from trimming import trimmed_reader
from utils import AttnLabelConverter, CTCLabelConverter, make_converter


@dataclass(frozen=True)
class Evaluation:
    """What every set of one run is read and scored with (the precision is checked once, at the start)."""

    model: torch.nn.Module
    converter: CTCLabelConverter | AttnLabelConverter
    config: ModelConfig
    data: DataConfig
    device: torch.device
    amp_dtype: torch.dtype | None
    case_insensitive: bool
    options: DecodeOptions
    log: Callable[[str], None]
    keep: bool = False  # keep every set's images and readings (--save_errors, --explain) in ``kept``
    kept: list = field(default_factory=list)  # [(set name, ValidationResult)]

    def run(self, dataset, keep_all: bool = False, name: str = "") -> ValidationResult:
        result = validation(self.model, make_eval_loader(dataset, self.data), self.converter, self.config,
                            self.device, case_insensitive=self.case_insensitive, amp_dtype=self.amp_dtype,
                            keep_all=keep_all or self.keep, options=self.options)
        if self.keep:
            self.kept.append((name, result))
        return result


def evaluate_folder(ev: Evaluation, root: str | Path, keep_all: bool = False) -> ValidationResult:
    dataset, dataset_log = hierarchical_dataset(root, ev.data)
    ev.log(dataset_log.rstrip("\n"))
    return ev.run(dataset, keep_all, name=Path(root).name)


def benchmark_all_eval(ev: Evaluation, eval_data: str) -> dict:
    """The reference's ten sets, its 10-set total, and the paper's 7-set total."""
    log = ev.log
    missing = [name for name in BENCHMARKS if not (Path(eval_data) / name).is_dir()]
    if missing:
        raise FileNotFoundError(f"--benchmark_all_eval expects the folders {', '.join(BENCHMARKS)} under "
                                f"{eval_data}; missing: {', '.join(missing)} (get data_lmdb_release from "
                                "the deep-text-recognition-benchmark README, or evaluate one tree without "
                                "--benchmark_all_eval)")
    accuracies, counts, total_time = {}, {}, 0.0
    log("-" * 80)
    for name in BENCHMARKS:
        result = evaluate_folder(ev, os.path.join(eval_data, name))
        accuracies[name], counts[name] = result.accuracy, result.n_samples
        total_time += result.infer_time
        log(f"Acc {result.accuracy:0.3f}\t normalized_ED {result.norm_ED:0.3f}")
        log("-" * 80)

    total = total_accuracy(accuracies, counts, BENCHMARKS)
    paper_total = total_accuracy(accuracies, counts, PAPER_BENCHMARKS)
    ms_per_image = total_time / sum(counts.values()) * 1000
    params = count_parameters(ev.model) / 1e6
    line = "accuracy: " + "".join(f"{n}: {accuracies[n]:0.3f}\t" for n in BENCHMARKS)
    line += f"total_accuracy: {total:0.3f}\taveraged_infer_time: {ms_per_image:0.3f}\t# parameters: {params:0.3f}"
    log(line)
    log(f"paper 7-set total ({', '.join(PAPER_BENCHMARKS)}): {paper_total:0.3f}")
    return {"accuracy": accuracies, "total_accuracy": total, "paper_total_accuracy": paper_total,
            "averaged_infer_time": ms_per_image, "params_M": params}


def suite_sets(suite: str, root: Path) -> tuple[dict[str, Path], list[str]]:
    """({set: its folder} found, sets missing) of ``--benchmark suite`` under ``root`` (a set's folder may have
    another name: ``FOLDER_ALIASES``); long_text takes every sub-folder. A preset that needs all its sets
    (``complete``) is refused with the missing ones named."""
    preset = SUITES[suite]
    if preset.sets:
        names = list(preset.sets)
    else:
        names = sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    found = {}
    for name in names:
        folder = next((root / alias for alias in FOLDER_ALIASES.get(name, (name,)) if (root / alias).is_dir()), None)
        if folder is not None:
            found[name] = folder
    missing = [n for n in names if n not in found]
    if preset.complete and missing:
        shown = ", ".join("/".join(FOLDER_ALIASES.get(n, (n,))) for n in missing)
        raise FileNotFoundError(f"--benchmark {suite} needs the folders {', '.join(names)} under {root}; missing: "
                                f"{shown} (baudm/parseq's data/test layout)")
    for name, folder in found.items():
        if (folder / "annotation.json").is_file() and not any(
                f.name in ("data.mdb", "gt.txt") for f in folder.rglob("*")):
            raise FileNotFoundError(
                f"{folder} holds the benchmark's annotation.json but no LMDB; convert it once: python "
                f"scripts/convert_real_dataset.py --format union14m --annotation {folder}/annotation.json "
                f"--images {folder} --output {folder}/lmdb")
    if not found:
        raise FileNotFoundError(f"--benchmark {suite}: no set found under {root}"
                                + (f" (expected folders {', '.join(names)})" if names else ""))
    return found, missing


def benchmark_suite(ev: Evaluation, suite: str, eval_data: str) -> dict:
    """``--benchmark NAME`` (``evaluation.SUITES``): each set found, a table, the mean over the sets found and the
    combined (sample-weighted) accuracy, and those of the preset's groups (the six common benchmarks' two sizes)."""
    log = ev.log
    root = Path(eval_data)
    found, missing = suite_sets(suite, root)
    rows = {}
    for name, folder in found.items():
        dataset, dataset_log = hierarchical_dataset(folder, ev.data)
        log(dataset_log.rstrip("\n"))
        too_long = sum(d.stats.too_long for d in dataset.datasets)
        if suite in LONG_SUITES and too_long:
            # Filtering them out would score the long-text set on its short words only.
            raise UserError(f"{folder}: {too_long} labels are longer than the model's batch_max_length "
                            f"{ev.config.batch_max_length}; a long-text benchmark needs them all. Train with a larger "
                            "--batch_max_length (CTC: and an --imgW of about 4-5 px per character).")
        result = ev.run(dataset, name=name)
        rows[name] = (result.accuracy, result.norm_ED, result.n_samples)
    counts = {name: (acc, n) for name, (acc, _, n) in rows.items()}
    weighted, mean = group_scores(counts, list(rows))
    log("-" * 80)
    log(f"{'set':16s} {'samples':>8s} {'accuracy':>9s} {'norm_ED':>8s}")
    for name, (acc, ed, n) in rows.items():
        log(f"{name:16s} {n:8d} {acc:9.3f} {ed:8.3f}")
    for name in missing:
        log(f"{name:16s} {'missing':>8s} (not under {root}; not in the average)")
    log(f"{'average':16s} {'':8s} {mean:9.3f}   (mean of the {len(rows)} sets found; weighted by samples "
        f"{weighted:0.3f})")
    groups = {}
    for group, names in SUITES[suite].groups:
        combined, average = group_scores(counts, names)
        groups[group] = {"combined": combined, "average": average, "samples": sum(counts[n][1] for n in names)}
        log(f"{group}: combined {combined:0.3f} (weighted by samples, {groups[group]['samples']}), "
            f"average {average:0.3f}")
    if missing:
        log(f"missing from --benchmark {suite}: {', '.join(missing)}")
    log("accuracy: " + "".join(f"{name}: {acc:0.3f}\t" for name, (acc, _, _) in rows.items())
        + f"average: {mean:0.3f}\tweighted: {weighted:0.3f}")
    return {"accuracy": {name: acc for name, (acc, _, _) in rows.items()}, "average": mean,
            "weighted_accuracy": weighted, "groups": groups, "missing": missing}


def result_dir(saved_model: str) -> Path:
    """./result/<path components after the first, joined by '_'> as the reference, or the file stem."""
    parts = Path(saved_model).parts
    name = "_".join(parts[1:]) if len(parts) > 1 else Path(saved_model).name
    return Path("result") / name


def parse_args(argv=None):
    plugins.load_from_argv(argv)  # their stages join the choices before the parser is built
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval_data", required=True,
                        help="LMDB root (or a folder with gt.txt); with --benchmark_all_eval the folder holding the ten sets")
    parser.add_argument("--benchmark_all_eval", action="store_true", help="evaluate the ten benchmark sets")
    parser.add_argument("--benchmark", choices=list(SUITES), default=None,
                        help="; ".join(f"{name}: {suite.help}" for name, suite in SUITES.items()))
    parser.add_argument("--saved_model", required=True, help="checkpoint path or pretrained model name")
    parser.add_argument("--data_filtering_off", action="store_true")
    parser.add_argument("--case_insensitive", action="store_true",
                        help="score case-insensitively on [0-9a-z] only (lower-case prediction and label, drop "
                             "other characters): the usual protocol for a case-sensitive model on the benchmarks")
    parser.add_argument("--save_errors", type=str, default=None,
                        help="write wrong predictions (image, label, prediction, confidence) and an HTML gallery here, "
                             "with a panel per image of what each stage did (a PyTorch model)")
    parser.add_argument("--explain", default=None, metavar="DIR",
                        help="write a panel per image of what each stage did, with its label, DIR/spans.json and "
                             "DIR/index.html (sort / filter by confidence, correct / wrong, error kind, set)")
    parser.add_argument("--baiduCTC", action="store_true", help=argparse.SUPPRESS)  # accepted, has no effect
    parser.add_argument("--runtime", choices=RUNTIME_FLAGS, default="auto", help=RUNTIME_HELP)
    add_runtime_arguments(parser, reading=True)
    add_compile_argument(parser)
    add_decoding_arguments(parser)
    add_model_arguments(parser)
    return parser.parse_args(argv)


def check_args(opt) -> None:
    """Refuse unusable flags (UsageError, exit 2) before a model or data is read; sizes: ModelConfig."""
    check_runtime_arguments(opt)
    check_decoding_flags(opt)
    if opt.benchmark and opt.benchmark_all_eval:
        raise UsageError("--benchmark and --benchmark_all_eval each choose the sets; give one of them.")
    if opt.benchmark and SUITES[opt.benchmark].protocol == "94" and opt.case_insensitive:
        raise UsageError(f"--benchmark {opt.benchmark} scores case and punctuation; drop --case_insensitive, or use "
                         "--benchmark common36")
    if opt.save_errors:
        check_output_folder(opt.save_errors, "--save_errors")  # written after the evaluation: fail before it
    if opt.explain:
        check_output_folder(opt.explain, "--explain")


def load_for_runtime(opt, device):
    """The model in ``--runtime``'s choice: as given, or auto's measured choice for the samples under
    --eval_data → (checkpoint.LoadedModel, measured.Decision)."""
    from measured import Decision, choose_runtime

    log, flags = get_logger("test.load").info, model_flags(opt)
    amp = "off" if opt.amp == "auto" else opt.amp
    loaded = load_model_for_runtime(opt.saved_model, flags, device, "torch" if opt.runtime == "auto" else opt.runtime,
                                    log=log, amp=amp)
    if opt.runtime != "auto":
        return loaded, Decision("--runtime", opt.runtime, reason="as given")
    if opt.compile:
        return loaded, Decision("--runtime auto", "torch", reason="--compile compiles a PyTorch model")
    if opt.explain or opt.save_errors:
        return loaded, Decision("--runtime auto", "torch", reason="--explain and --save_errors watch the PyTorch "
                                                                 "model's stages")
    decision = choose_runtime(opt.saved_model, flags, loaded.model, device, opt.amp, count_samples([opt.eval_data]),
                              opt.batch_size, log)
    if decision.choice == "onnx" and not hasattr(loaded.model, "session"):
        loaded = load_model_for_runtime(opt.saved_model, flags, device, "onnx", log=log)
    return loaded, decision


def evaluate(argv=None) -> dict:
    opt = parse_args(argv)
    check_args(opt)
    device = resolve_device(opt.device)
    amp_dtype = check_amp(opt.amp, device)  # before the model is read, once for every set
    loaded, runtime = load_for_runtime(opt, device)
    model, config, path = compile_model(loaded.model, opt.compile), loaded.config, loaded.source
    out_dir = result_dir(opt.saved_model if Path(opt.saved_model).exists() else str(path))
    out_dir.mkdir(parents=True, exist_ok=True)
    if path.resolve() != (out_dir / path.name).resolve():
        shutil.copy2(path, out_dir / path.name)  # the reference keeps a copy beside its results
    log_name = "log_all_evaluation.txt" if opt.benchmark_all_eval or opt.benchmark else "log_evaluation.txt"
    log = get_logger("test", out_dir / log_name).info
    log(runtime.line())  # --runtime {choice} repeats it
    if opt.explain and not can_explain(loaded.model):
        raise UsageError(f"--explain watches the PyTorch model's stages; {path} is an exported graph: give its "
                         "PyTorch checkpoint")
    log(f"model {config.name} from {path}: {count_parameters(model) / 1e6:0.3f}M parameters, "
        f"{len(config.character)} characters, input {config.imgH}x{config.imgW}{' PAD' if config.PAD else ''}")
    case_insensitive = opt.case_insensitive or bool(opt.benchmark and SUITES[opt.benchmark].protocol == "36")
    options = options_from_args(opt, config, log, case_insensitive=case_insensitive)
    if not options.plain_greedy:
        log(f"decoder: {options.describe()}")
    workers, why = reading_workers(opt.workers, device)
    if opt.workers == "auto":
        log(why)
    data = DataConfig.for_model(config, dynamic_width=opt.dynamic_width, data_filtering_off=opt.data_filtering_off,
                                workers=workers, batch_size=opt.batch_size)
    ev = Evaluation(trimmed_reader(model, config), make_converter(config.Prediction, config.character), config, data,
                    device, amp_dtype, case_insensitive, options, log, keep=bool(opt.save_errors or opt.explain))
    with torch.inference_mode():
        if opt.benchmark_all_eval:
            scores = benchmark_all_eval(ev, opt.eval_data)
        elif opt.benchmark:
            scores = benchmark_suite(ev, opt.benchmark, opt.eval_data)
        else:
            scores = evaluate_one(ev, opt.eval_data)
    write_galleries(ev, loaded.model, opt)
    return scores


def evaluate_one(ev: Evaluation, eval_data: str) -> dict:
    result = evaluate_folder(ev, eval_data)
    ms = result.infer_time / result.n_samples * 1000
    ev.log(f"{result.accuracy:0.3f}")
    ev.log(f"accuracy: {result.accuracy:0.3f}\tnormalized_ED: {result.norm_ED:0.3f}\tsamples: {result.n_samples}\t"
           f"averaged_infer_time: {ms:0.3f}")
    return {"accuracy": result.accuracy, "norm_ED": result.norm_ED, "n_samples": result.n_samples,
            "averaged_infer_time": ms}


def write_galleries(ev: Evaluation, model: torch.nn.Module, opt) -> None:
    """--save_errors (the misread images of every set, with panels when the model is PyTorch's) and --explain
    (every image's panel); ``model`` is the uncompiled one, whose stages can be watched."""
    if opt.save_errors:
        result = merged(ev.kept)
        explained = (explain_results(model, ev.kept, ev.config, ev.options, ev.device, ev.amp_dtype,
                                     ev.case_insensitive, wrong_only=True) if can_explain(model) else None)
        n = write_errors(result, opt.save_errors, ev.case_insensitive, explained)
        ev.log(f"wrote {n} wrong predictions to {opt.save_errors}")
    if opt.explain:
        explained = explain_results(model, ev.kept, ev.config, ev.options, ev.device, ev.amp_dtype, ev.case_insensitive)
        page = write_explanations(explained, opt.explain, f"test.py: {opt.saved_model} on {opt.eval_data}",
                                  case_insensitive=ev.case_insensitive)
        ev.log(f"wrote {len(explained)} panels and {page}")


def merged(kept: list[tuple[str, ValidationResult]]) -> ValidationResult:
    """The kept results of several sets as one (their images, labels and readings, in order)."""
    if len(kept) == 1:
        return kept[0][1]
    out = ValidationResult(0.0, 0.0, 0.0, 0, 0.0)
    for _, result in kept:
        out.images += result.images
        out.labels += result.labels
        out.preds += result.preds
        out.confidences += result.confidences
    return out


def main(argv=None) -> dict:
    """test.py's entry point: ``evaluate`` with user errors reported as one line (exit 2 or 1)."""
    return run_cli(evaluate, argv)


if __name__ == "__main__":
    main()
