"""Evaluate a trained model: one LMDB tree (or gt.txt folder), or the ten benchmark sets.

    python test.py --eval_data data_lmdb_release/evaluation --benchmark_all_eval \\
        --saved_model saved_models/None-VGG-BiLSTM-CTC-Seed1111/best_accuracy.pth

A checkpoint written by this toolkit carries its architecture; a bare reference state_dict needs
the stage flags (``--Transformation ... --Prediction ...``) as with the original.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from checkpoint import model_from_checkpoint, read_checkpoint
from modules.prediction import EOS_INDEX
from model import ModelConfig, add_model_arguments, config_from_args, count_parameters
from utils import Averager, edit_distance, get_logger, make_converter, resolve_device, run_cli

BENCHMARKS = ["IIIT5k_3000", "SVT", "IC03_860", "IC03_867", "IC13_857", "IC13_1015",
              "IC15_1811", "IC15_2077", "SVTP", "CUTE80"]
PAPER_BENCHMARKS = ["IIIT5k_3000", "SVT", "IC03_867", "IC13_1015", "IC15_2077", "SVTP", "CUTE80"]
NON_ALNUM = re.compile("[^0-9a-z]")


@dataclass
class ValidationResult:
    loss: float
    accuracy: float  # percent
    norm_ED: float  # ICDAR2019 normalised edit distance, mean over samples
    n_samples: int
    infer_time: float  # seconds spent in the model forward (device synchronised)
    labels: list[str] = field(default_factory=list)
    preds: list[str] = field(default_factory=list)
    confidences: list[float] = field(default_factory=list)
    images: list = field(default_factory=list)  # only with keep_all (error analysis)


def data_options(config: ModelConfig, opt) -> SimpleNamespace:
    """What the data code needs: the model's input options plus the run's loader options."""
    return SimpleNamespace(
        character=config.character, sensitive=config.sensitive, batch_max_length=config.batch_max_length,
        imgH=config.imgH, imgW=config.imgW, rgb=config.rgb, PAD=config.PAD,
        data_filtering_off=getattr(opt, "data_filtering_off", False), workers=getattr(opt, "workers", 0),
        batch_size=getattr(opt, "batch_size", 192), manualSeed=getattr(opt, "manualSeed", 1111),
        dynamic_width=getattr(opt, "dynamic_width", False),
    )


def normalize_for_scoring(text: str) -> str:
    """Case-insensitive alphanumeric protocol: lower-case, drop everything outside [0-9a-z]."""
    return NON_ALNUM.sub("", text.lower())


def predict(model, image: torch.Tensor, converter, config: ModelConfig, amp_dtype=None):
    """Forward + greedy decode → (logits, strings, confidences). Attn strings are cut at the first [s]."""
    batch_size = image.size(0)
    text_for_pred = torch.zeros(batch_size, config.batch_max_length + 1, dtype=torch.long, device=image.device)
    with torch.autocast(image.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        preds = model(image, text_for_pred, is_train=False)
    preds = preds.float()
    probs = F.softmax(preds, dim=2)
    max_probs, preds_index = probs.max(dim=2)
    if config.Prediction == "CTC":
        strings = converter.decode(preds_index, [preds.size(1)] * batch_size)
        confidences = max_probs.prod(dim=1).tolist()  # over all T frames, blanks included (reference)
        return preds, strings, confidences
    # Cut at the first [s]; without one keep every step (the reference dropped the last character).
    is_eos = preds_index == EOS_INDEX  # [B, steps]
    first_eos = torch.where(is_eos.any(dim=1), is_eos.int().argmax(dim=1), preds_index.size(1))  # [B]
    # An empty prediction's confidence is that of its [s] at the first step.
    within = torch.arange(preds_index.size(1), device=image.device) < first_eos.clamp(min=1)[:, None]
    confidences = max_probs.masked_fill(~within, 1.0).prod(dim=1).tolist()  # one copy, not one per sample
    strings = ["".join(converter.character[i] for i in row[:n])
               for row, n in zip(preds_index.tolist(), first_eos.tolist())]
    return preds, strings, confidences


def validation(model, criterion, loader, converter, config: ModelConfig, device,
               case_insensitive: bool = False, amp_dtype=None, keep_all: bool = False) -> ValidationResult:
    """Accuracy, normalised edit distance and loss over ``loader`` (model must be in eval mode)."""
    n_correct = 0
    norm_ED = 0.0
    length_of_data = 0
    infer_time = 0.0
    loss_avg = Averager()
    result = ValidationResult(0.0, 0.0, 0.0, 0, 0.0)
    for image_tensors, labels in loader:
        batch_size = image_tensors.size(0)
        if batch_size == 0:
            continue
        length_of_data += batch_size
        image = image_tensors.to(device, non_blocking=True)
        text_for_loss, length_for_loss = converter.encode(list(labels), config.batch_max_length, device=device)

        _synchronize(device)
        start = time.perf_counter()
        preds, preds_str, confidences = predict(model, image, converter, config, amp_dtype)
        _synchronize(device)
        infer_time += time.perf_counter() - start

        if config.Prediction == "CTC":
            preds_size = torch.full((batch_size,), preds.size(1), dtype=torch.int32)
            cost = criterion(preds.log_softmax(2).permute(1, 0, 2), text_for_loss, preds_size, length_for_loss)
        else:
            target = text_for_loss[:, 1:]  # without [GO]
            cost = criterion(preds.contiguous().view(-1, preds.shape[-1]), target.contiguous().view(-1))
        loss_avg.add(cost)

        for gt, pred in zip(labels, preds_str):
            if case_insensitive:
                gt, pred = normalize_for_scoring(gt), normalize_for_scoring(pred)
            n_correct += pred == gt
            if len(gt) and len(pred):  # ICDAR2019 normalised edit distance
                norm_ED += 1 - edit_distance(pred, gt) / max(len(gt), len(pred))
        if keep_all:
            result.images += list(image_tensors)
            result.labels += list(labels)
            result.preds += preds_str
            result.confidences += confidences
        else:  # the last batch, for the training log's examples
            result.labels, result.preds, result.confidences = list(labels), preds_str, confidences

    if length_of_data == 0:
        raise ValueError("the evaluation data produced no samples (all filtered or unreadable); see the "
                         "per-dataset counts above")
    result.loss = loss_avg.val()
    result.accuracy = n_correct / length_of_data * 100
    result.norm_ED = norm_ED / length_of_data
    result.n_samples = length_of_data
    result.infer_time = infer_time
    return result


def _synchronize(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def make_criterion(config: ModelConfig, device):
    if config.Prediction == "CTC":
        return torch.nn.CTCLoss(zero_infinity=True).to(device)
    return torch.nn.CrossEntropyLoss(ignore_index=0).to(device)  # ignore [GO] padding


def load_model_for_eval(opt, device):
    """Resolve ``--saved_model`` (path or registered name), build its model, load it; → (model, config)."""
    from pretrained import resolve_saved_model

    path, registered = resolve_saved_model(opt.saved_model)
    ckpt = read_checkpoint(path)
    base = None
    if ckpt.get("config") is not None:
        base = ModelConfig.from_dict(ckpt["config"])
    elif registered is not None:
        base = ModelConfig.from_dict(registered)
    config = config_from_args(opt, base)
    model = model_from_checkpoint(ckpt, config).to(device).eval()
    return model, config, path


def make_loader(dataset, data_opt, shuffle: bool = False):
    from dataset import AlignCollate

    collate = AlignCollate(imgH=data_opt.imgH, imgW=data_opt.imgW, keep_ratio_with_pad=data_opt.PAD,
                           dynamic_width=data_opt.dynamic_width)
    return torch.utils.data.DataLoader(dataset, batch_size=data_opt.batch_size, shuffle=shuffle,
                                       num_workers=data_opt.workers, collate_fn=collate,
                                       pin_memory=torch.cuda.is_available())


def evaluate_folder(root: str, model, criterion, converter, config, data_opt, opt, device, log):
    from dataset import hierarchical_dataset

    dataset, dataset_log = hierarchical_dataset(root, data_opt)
    log(dataset_log.rstrip("\n"))
    result = validation(model, criterion, make_loader(dataset, data_opt), converter, config, device,
                        case_insensitive=opt.case_insensitive, amp_dtype=amp_dtype(opt, device),
                        keep_all=bool(getattr(opt, "save_errors", False)))
    return result


def benchmark_all_eval(model, criterion, converter, config, data_opt, opt, device, log) -> dict:
    """The reference's ten sets, its 10-set total, and the paper's 7-set total."""
    missing = [name for name in BENCHMARKS if not (Path(opt.eval_data) / name).is_dir()]
    if missing:
        raise FileNotFoundError(f"--benchmark_all_eval expects the folders {', '.join(BENCHMARKS)} under "
                                f"{opt.eval_data}; missing: {', '.join(missing)} (get data_lmdb_release from "
                                "the deep-text-recognition-benchmark README, or evaluate one tree without "
                                "--benchmark_all_eval)")
    accuracies, counts, total_time = {}, {}, 0.0
    log("-" * 80)
    for name in BENCHMARKS:
        result = evaluate_folder(os.path.join(opt.eval_data, name), model, criterion, converter, config,
                                 data_opt, opt, device, log)
        accuracies[name], counts[name] = result.accuracy, result.n_samples
        total_time += result.infer_time
        log(f"Acc {result.accuracy:0.3f}\t normalized_ED {result.norm_ED:0.3f}")
        log("-" * 80)

    def weighted(names):
        return sum(accuracies[n] * counts[n] for n in names) / sum(counts[n] for n in names)

    total = weighted(BENCHMARKS)
    paper_total = weighted(PAPER_BENCHMARKS)
    ms_per_image = total_time / sum(counts.values()) * 1000
    params = count_parameters(model) / 1e6
    line = "accuracy: " + "".join(f"{n}: {accuracies[n]:0.3f}\t" for n in BENCHMARKS)
    line += f"total_accuracy: {total:0.3f}\taveraged_infer_time: {ms_per_image:0.3f}\t# parameters: {params:0.3f}"
    log(line)
    log(f"paper 7-set total ({', '.join(PAPER_BENCHMARKS)}): {paper_total:0.3f}")
    return {"accuracy": accuracies, "total_accuracy": total, "paper_total_accuracy": paper_total,
            "averaged_infer_time": ms_per_image, "params_M": params}


def amp_dtype(opt, device):
    amp = getattr(opt, "amp", "off")
    if amp == "off":
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def result_dir(saved_model: str) -> Path:
    """./result/<path components after the first, joined by '_'> as the reference, or the file stem."""
    parts = Path(saved_model).parts
    name = "_".join(parts[1:]) if len(parts) > 1 else Path(saved_model).name
    return Path("result") / name


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval_data", required=True,
                        help="LMDB root (or a folder with gt.txt); with --benchmark_all_eval the folder holding the ten sets")
    parser.add_argument("--benchmark_all_eval", action="store_true", help="evaluate the ten benchmark sets")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=192)
    parser.add_argument("--saved_model", required=True, help="checkpoint path or pretrained model name")
    parser.add_argument("--data_filtering_off", action="store_true")
    parser.add_argument("--case_insensitive", action="store_true",
                        help="score case-insensitively on [0-9a-z] only (lower-case prediction and label, drop "
                             "other characters): the usual protocol for a case-sensitive model on the benchmarks")
    parser.add_argument("--dynamic_width", action="store_true",
                        help="with --PAD: batch width follows the widest image (multiple of imgH, at most imgW)")
    parser.add_argument("--save_errors", type=str, default=None,
                        help="write wrong predictions (image, label, prediction, confidence) and an HTML gallery here")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off", help="autocast precision")
    parser.add_argument("--baiduCTC", action="store_true", help=argparse.SUPPRESS)  # accepted, has no effect
    add_model_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    opt = parse_args(argv)
    device = resolve_device(opt.device)
    model, config, path = load_model_for_eval(opt, device)
    out_dir = result_dir(opt.saved_model if Path(opt.saved_model).exists() else str(path))
    out_dir.mkdir(parents=True, exist_ok=True)
    if path.resolve() != (out_dir / path.name).resolve():
        shutil.copy2(path, out_dir / path.name)  # the reference keeps a copy beside its results
    log_name = "log_all_evaluation.txt" if opt.benchmark_all_eval else "log_evaluation.txt"
    logger = get_logger("test", out_dir / log_name)
    log = logger.info
    log(f"model {config.name} from {path}: {count_parameters(model) / 1e6:0.3f}M parameters, "
        f"{len(config.character)} characters, input {config.imgH}x{config.imgW}{' PAD' if config.PAD else ''}")
    converter = make_converter(config.Prediction, config.character)
    criterion = make_criterion(config, device)
    data_opt = data_options(config, opt)
    with torch.inference_mode():
        if opt.benchmark_all_eval:
            return benchmark_all_eval(model, criterion, converter, config, data_opt, opt, device, log)
        result = evaluate_folder(opt.eval_data, model, criterion, converter, config, data_opt, opt, device, log)
    ms = result.infer_time / result.n_samples * 1000
    log(f"{result.accuracy:0.3f}")
    log(f"accuracy: {result.accuracy:0.3f}\tnormalized_ED: {result.norm_ED:0.3f}\tsamples: {result.n_samples}\t"
        f"averaged_infer_time: {ms:0.3f}")
    if opt.save_errors:
        from error_analysis import write_errors
        n = write_errors(result, opt.save_errors, opt.case_insensitive)
        log(f"wrote {n} wrong predictions to {opt.save_errors}")
    return {"accuracy": result.accuracy, "norm_ED": result.norm_ED, "n_samples": result.n_samples,
            "averaged_infer_time": ms}


if __name__ == "__main__":
    run_cli(main)
