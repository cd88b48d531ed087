"""A sequence stage from outside the tree: a temporal convolution network as --SequenceModeling TCN.

    python train.py --plugin examples.plugin_stage.tcn --SequenceModeling TCN --tcn_kernel 5 --tcn_dropout 0.2 ...

A linear projection to --hidden_size, then two residual blocks of a dilated 1-D convolution over the frames
(dilation 1, then 2), layer norm and GELU: [B, T, input_size] → [B, T, hidden_size]. Its two options show how a
stage declares flags of its own: an int and a float, each with its range and help, in one place.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from modules.registry import Option, Stage, register
from runtime import UsageError


class TemporalBlock(nn.Module):
    """x + dropout(GELU(norm(conv(x)))) over the frames; [B, T, C] → [B, T, C]."""

    def __init__(self, width: int, kernel: int, dilation: int, dropout: float):
        super().__init__()
        self.conv = nn.Conv1d(width, width, kernel, padding=dilation * (kernel // 2), dilation=dilation)
        self.norm = nn.LayerNorm(width)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x.transpose(1, 2)).transpose(1, 2)  # the convolution runs over T: [B, C, T]
        return x + self.dropout(self.act(self.norm(y)))


@register
class TCN(Stage, nn.Module):
    """Temporal convolutions with a receptive field of 1 + 3 (kernel - 1) frames."""

    kind, name = "SequenceModeling", "TCN"
    options = (
        Option("tcn_kernel", 3, "TCN: the convolutions' width in frames, an odd number (3)", low=1, high=15),
        Option("tcn_dropout", 0.1, "TCN: dropout after each block (0.1)", low=0.0, high=0.9),
    )

    def __init__(self, config, input_size: int):
        super().__init__()
        self.proj = nn.Linear(input_size, config.hidden_size)
        self.blocks = nn.Sequential(*[TemporalBlock(config.hidden_size, config.tcn_kernel, d, config.tcn_dropout)
                                      for d in (1, 2)])

    @classmethod
    def output_width(cls, config, input_size: int) -> int:
        return config.hidden_size

    @classmethod
    def check(cls, config, input_size: int) -> None:
        if config.tcn_kernel % 2 == 0:
            raise UsageError(f"--tcn_kernel {config.tcn_kernel} must be odd: the frames keep their positions")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(self.proj(x))
