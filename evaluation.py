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
# The six common benchmarks in both their sizes, as baudm/parseq's data/test folders name them
# (strhub/data/module.py: TEST_BENCHMARK_SUB and TEST_BENCHMARK); IIIT5k is IIIT5k_3000 in data_lmdb_release.
COMMON_BENCHMARKS = ["IIIT5k", "SVT", "IC13_857", "IC13_1015", "IC15_1811", "IC15_2077", "SVTP", "CUTE80"]
COMMON_GROUPS = {"6 sets, smaller (IC13 857, IC15 1811)": ["IIIT5k", "SVT", "IC13_857", "IC15_1811", "SVTP", "CUTE80"],
                 "6 sets, larger (IC13 1015, IC15 2077)": ["IIIT5k", "SVT", "IC13_1015", "IC15_2077", "SVTP", "CUTE80"]}
# OpenOCR's Long Text Benchmark, as its tools/eval_rec_all_long_simple.py reads it: ltb/ultra_long_<band>_list.txt
# (SimpleDataSet label lists, ``img/...<TAB>label``); one folder per list here (create_lmdb_dataset.py --gtFile).
LTB_BANDS = ["ultra_long_26_35", "ultra_long_36_55", "ultra_long_56"]
FOLDER_ALIASES = {"IIIT5k": ("IIIT5k", "IIIT5k_3000")}


@dataclass(frozen=True)
class Suite:
    """A ``test.py --benchmark`` preset: the sets (folders under --eval_data), the groups reported with their
    combined (sample-weighted, as parseq's "Combined") and average accuracy, and the scoring protocol."""

    sets: tuple[str, ...]  # () : every sub-folder (long_text)
    help: str
    groups: tuple[tuple[str, tuple[str, ...]], ...] = ()
    protocol: str = ""  # "36": lower-cased alphanumerics only (--case_insensitive); "94": exact; "": the flags'
    complete: bool = False  # every set is needed (else the sets found are read, the missing ones named)


def _groups(groups: dict) -> tuple:
    return tuple((name, tuple(sets)) for name, sets in groups.items())


SUITES = {
    "common36": Suite(tuple(COMMON_BENCHMARKS), "the six common benchmarks (IIIT5K 3000, SVT 647, IC13 857 and 1015, "
                      "IC15 1811 and 2077, SVTP 645, CUTE 288), 36-character protocol (lower-cased, [0-9a-z] only)",
                      _groups(COMMON_GROUPS), protocol="36", complete=True),
    "common94": Suite(tuple(COMMON_BENCHMARKS), "the same sets, 94-character protocol (case and punctuation kept)",
                      _groups(COMMON_GROUPS), protocol="94", complete=True),
    "union14m": Suite(tuple(UNION14M_BENCHMARKS), "the Union14M-Benchmark subsets found (curve, multi_oriented, "
                      "artistic, contextless, salient, multi_words, general, incomplete)"),
    "ltb": Suite(tuple(LTB_BANDS), "OpenOCR's long-text benchmark in its three length bands (ultra_long_26_35, "
                 "ultra_long_36_55, ultra_long_56; labels longer than the model's batch_max_length refused)"),
    "ost": Suite(("weak", "heavy"), "OpenOCR's occluded scene text, the folders weak and heavy (of OST)"),
    "long_text": Suite((), "every set under --eval_data, refusing labels longer than the model's batch_max_length"),
}
LONG_SUITES = ("long_text", "ltb")  # a label the model cannot hold is refused, not filtered


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


def group_scores(rows: dict[str, tuple[float, int]], names) -> tuple[float, float]:
    """(combined, average) accuracy of the sets ``names`` from ``rows`` {set: (accuracy, samples)}: the combined
    weighs each set by its samples (parseq's "Combined", the reference's total), the average does not."""
    combined = sum(rows[n][0] * rows[n][1] for n in names) / sum(rows[n][1] for n in names)
    return combined, sum(rows[n][0] for n in names) / len(names)


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
