"""Inference and scoring shared by test.py, demo.py, train.py's validation and error analysis.

``predict`` runs a model and decodes greedily; ``score_batch`` applies the reference's accuracy and
ICDAR2019 normalised edit distance; ``make_eval_loader`` is the evaluation DataLoader.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from dataset import AlignCollate
from decoding import forward_logits, greedy_attention, greedy_ctc
from utils import edit_distance

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


def predict(model, image: torch.Tensor, converter, config, amp_dtype: torch.dtype | None = None):
    """Forward + greedy decode → (logits, strings, confidences). Attn strings are cut at the first [s].

    The greedy decoders live in ``decoding.py`` with the beam searches (one implementation each);
    ``decoding.decode`` gives the per-character confidences and the other decoders.
    """
    logits = forward_logits(model, image, config, amp_dtype)  # [B, T or steps, num_class]
    greedy = greedy_ctc if config.Prediction == "CTC" else greedy_attention
    results = greedy(logits, converter.character)
    return logits, [r.text for r in results], [r.confidence for r in results]


def make_eval_loader(dataset, data_opt, shuffle: bool = False) -> torch.utils.data.DataLoader:
    """Batches of ``(images [B, C, imgH, W], labels or paths)`` collated as the model expects."""
    collate = AlignCollate(imgH=data_opt.imgH, imgW=data_opt.imgW, keep_ratio_with_pad=data_opt.PAD,
                           dynamic_width=data_opt.dynamic_width, rgb=getattr(data_opt, "rgb", None))
    return torch.utils.data.DataLoader(dataset, batch_size=data_opt.batch_size, shuffle=shuffle,
                                       num_workers=data_opt.workers, collate_fn=collate,
                                       pin_memory=torch.cuda.is_available())


def synchronize(device) -> None:
    """Wait for the GPU, so that a timer around a forward pass measures the forward pass."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
