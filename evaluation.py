"""Inference and scoring shared by test.py, demo.py, train.py's validation and error analysis.

``predict`` runs a model and decodes greedily; ``score_batch`` applies the reference's accuracy and
ICDAR2019 normalised edit distance; ``make_eval_loader`` is the evaluation DataLoader.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from dataset import AlignCollate
from modules.prediction import EOS_INDEX
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


def make_eval_loader(dataset, data_opt, shuffle: bool = False) -> torch.utils.data.DataLoader:
    """Batches of ``(images [B, C, imgH, W], labels or paths)`` collated as the model expects."""
    collate = AlignCollate(imgH=data_opt.imgH, imgW=data_opt.imgW, keep_ratio_with_pad=data_opt.PAD,
                           dynamic_width=data_opt.dynamic_width)
    return torch.utils.data.DataLoader(dataset, batch_size=data_opt.batch_size, shuffle=shuffle,
                                       num_workers=data_opt.workers, collate_fn=collate,
                                       pin_memory=torch.cuda.is_available())


def synchronize(device) -> None:
    """Wait for the GPU, so that a timer around a forward pass measures the forward pass."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
