"""Stage 4 (transformer): ``ViTSTR``, one linear layer over a vision transformer's tokens (Atienza, ICDAR 2021).

ViTSTR reads every position at once: the encoder's first ``batch_max_length + 2`` tokens go through one
``nn.Linear`` to the classes, and the first of them (the class token with ``--vit_class_token``, which the
original ignores) is dropped, leaving ``batch_max_length + 1`` positions: the characters, then [E]. Its classes
are PARSeq's tokenizer's (baudm/parseq's ``CrossEntropySystem``): [E] (0) and the characters (1..N); [B] and [P]
are never predicted. ``releases.read_vitstr`` reads baudm/parseq's released ``vitstr`` file.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from modules.parseq import EOS_INDEX
from modules.prediction import CONFIDENCE_WITH_END
from modules.registry import Head, register
from runtime import UsageError
from utils import PARSeqLabelConverter


@register
class ViTSTR(Head, nn.Module):
    """[B, T, input_size] → logits [B, batch_max_length + 1, num_class]; T must be at least batch_max_length + 2."""

    name = "ViTSTR"
    options = (CONFIDENCE_WITH_END,)
    has_own_init = True  # trunc-normal 0.02, as baudm/parseq's init_weights
    fixed_width = "its reading (the first batch_max_length + 2 frames) is"  # an exported graph: one width
    converter = PARSeqLabelConverter
    end_index, end_layer, class_rows = EOS_INDEX, "head", ("head",)
    beam_hint = ("ViTSTR reads every position at once; use --decoder greedy, with --lexicon_mode snap for a "
                 "word list")

    def __init__(self, input_size: int, num_class: int):
        super().__init__()
        self.head = nn.Linear(input_size, num_class)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_config(cls, config, input_size: int) -> "ViTSTR":
        return cls(input_size, config.num_class)

    @classmethod
    def recognise(cls, state_dict: dict):
        return cls.read_sizes(state_dict) if set(state_dict) == {"head.weight", "head.bias"} else None

    @classmethod
    def read_sizes(cls, state_dict: dict) -> dict:
        return {"num_class": state_dict["head.weight"].shape[0]}

    @staticmethod
    def loss(preds, text, length):
        """Cross-entropy over label [E], [P] ignored (``text``: [B] label [E] [P]...)."""
        target = text[:, 1:preds.size(1) + 1]
        return F.cross_entropy(preds.flatten(end_dim=1), target.flatten(), ignore_index=preds.size(-1) + 1)

    def forward(self, batch_H: torch.Tensor, text: torch.Tensor | None = None, is_train: bool = True,
                batch_max_length: int = 25, perms: torch.Tensor | None = None) -> torch.Tensor:
        steps = batch_max_length + 2
        if batch_H.size(1) < steps:
            raise UsageError(f"--Prediction ViTSTR reads one position per feature frame: --batch_max_length "
                             f"{batch_max_length} needs {steps} frames, and the stages before it give "
                             f"{batch_H.size(1)}; lower --batch_max_length or widen the image")
        return self.head(batch_H[:, :steps])[:, 1:]  # [B, batch_max_length + 1, num_class]
