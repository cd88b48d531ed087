"""Scoring shared by test.py, train.py's validation, the benchmarks and error analysis.

``validation`` reads every batch of a loader with ``decoding.decode`` and scores it; ``score_batch``
applies the reference's accuracy and ICDAR2019 normalised edit distance; ``make_eval_loader`` is the
evaluation DataLoader; ``BENCHMARKS`` and the other lists name the standard evaluation sets.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import torch

from dataset import AlignCollate, DataConfig
from decoding import DecodeOptions, decode
from errors import UserError
from model import ModelConfig, sequence_loss
from utils import Averager, edit_distance

NON_ALNUM = re.compile("[^0-9a-z]")

# The reference's ten evaluation sets (data_lmdb_release/evaluation), and the paper's seven.
BENCHMARKS = ["IIIT5k_3000", "SVT", "IC03_860", "IC03_867", "IC13_857", "IC13_1015",
              "IC15_1811", "IC15_2077", "SVTP", "CUTE80"]
PAPER_BENCHMARKS = ["IIIT5k_3000", "SVT", "IC03_867", "IC13_1015", "IC15_2077", "SVTP", "CUTE80"]
# Union14M-Benchmark's challenge subsets, named as its Union14M-Benchmarks/ folder ships them
# (MAERec's configs also evaluate incomplete_ori, the uncropped variant of incomplete).
UNION14M_BENCHMARKS = ["curve", "multi_oriented", "artistic", "contextless", "salient", "multi_words", "general",
                       "incomplete"]


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


def normalize_for_scoring(text: str) -> str:
    """Case-insensitive alphanumeric protocol: lower-case, drop everything outside [0-9a-z]."""
    return NON_ALNUM.sub("", text.lower())


def score_batch(labels, preds, case_insensitive: bool = False) -> tuple[int, float]:
    """→ (number of exact matches, sum of ICDAR2019 normalised edit distances) over one batch."""
    n_correct, norm_ED = 0, 0.0
    for gt, pred in zip(labels, preds):
        if case_insensitive:
            gt, pred = normalize_for_scoring(gt), normalize_for_scoring(pred)
        n_correct += pred == gt
        if len(gt) and len(pred):
            norm_ED += 1 - edit_distance(pred, gt) / max(len(gt), len(pred))
    return n_correct, norm_ED


def make_eval_loader(dataset, data: DataConfig, shuffle: bool = False) -> torch.utils.data.DataLoader:
    """Batches of ``(images [B, C, imgH, W], labels or paths)`` collated as the model expects."""
    collate = AlignCollate.for_data(data)
    return torch.utils.data.DataLoader(dataset, batch_size=data.batch_size, shuffle=shuffle,
                                       num_workers=data.workers, collate_fn=collate,
                                       pin_memory=torch.cuda.is_available())


def total_accuracy(accuracies: dict[str, float], counts: dict[str, int], names: list[str]) -> float:
    """The accuracy over the sets ``names`` taken together (each weighted by its samples), as the
    reference's total and the paper's 7-set total."""
    return sum(accuracies[n] * counts[n] for n in names) / sum(counts[n] for n in names)


def synchronize(device) -> None:
    """Wait for the GPU, so that a timer around a forward pass measures the forward pass."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def validation(model, loader, converter, config: ModelConfig, device,
               case_insensitive: bool = False, amp_dtype=None, keep_all: bool = False,
               options: DecodeOptions | None = None) -> ValidationResult:
    """Accuracy, normalised edit distance and loss over ``loader`` (model must be in eval mode).

    ``options`` picks another decoder than greedy (``decoding.py``); the time it takes counts as
    inference time. After an attention beam search there are no logits, so the loss is NaN.
    """
    options = options or DecodeOptions()
    n_correct, norm_ED, length_of_data = 0, 0.0, 0
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

        synchronize(device)
        start = time.perf_counter()
        decoded = decode(model, image, config, options, amp_dtype)
        synchronize(device)
        infer_time += time.perf_counter() - start

        if decoded.logits is not None:
            loss_avg.add(sequence_loss(decoded.logits, text_for_loss, length_for_loss, config.Prediction, config))
        preds_str, confidences = decoded.texts, decoded.confidences
        correct, ed = score_batch(labels, preds_str, case_insensitive)
        n_correct += correct
        norm_ED += ed
        if keep_all:
            result.images += list(image_tensors)
            result.labels += list(labels)
            result.preds += preds_str
            result.confidences += confidences
        else:  # the last batch, for the training log's examples
            result.labels, result.preds, result.confidences = list(labels), preds_str, confidences

    if length_of_data == 0:
        raise UserError("the evaluation data produced no samples (all filtered or unreadable); see the "
                        "per-dataset counts above")
    result.loss = loss_avg.val() if loss_avg.n_count else float("nan")
    result.accuracy = n_correct / length_of_data * 100
    result.norm_ED = norm_ED / length_of_data
    result.n_samples = length_of_data
    result.infer_time = infer_time
    return result
