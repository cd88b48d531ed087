"""Stage 3: SequenceModeling. ``None`` (identity) or two stacked ``BiLSTM`` layers."""
from __future__ import annotations

import torch
import torch.nn as nn

from modules.registry import Stage, register


class BidirectionalLSTM(nn.Module):
    """[B, T, input_size] → [B, T, output_size]."""

    def __init__(self, input_size: int, hidden_size: int, output_size: int):
        super().__init__()
        self.rnn = nn.LSTM(input_size, hidden_size, bidirectional=True, batch_first=True)
        self.linear = nn.Linear(hidden_size * 2, output_size)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if input.is_cuda:
            self.rnn.flatten_parameters()  # weights may be non-contiguous after DataParallel/loading
        recurrent, _ = self.rnn(input)  # [B, T, 2 * hidden_size]
        return self.linear(recurrent)


@register
class NoSequenceModeling(Stage, nn.Identity):
    """``--SequenceModeling None``: the visual features go to the head as they are."""

    kind, name, reference = "SequenceModeling", "None", True


@register
class BiLSTM(Stage, nn.Sequential):
    """The reference's two-layer stack (keys ``0.rnn...``, ``1.rnn...``); its output width is hidden_size."""

    kind, name, reference = "SequenceModeling", "BiLSTM", True

    @classmethod
    def from_config(cls, config, input_size: int) -> "BiLSTM":
        return cls(input_size, config.hidden_size)

    @classmethod
    def output_width(cls, config, input_size: int) -> int:
        return config.hidden_size

    @classmethod
    def read_sizes(cls, state_dict: dict) -> dict:
        return {"hidden_size": state_dict["0.rnn.weight_hh_l0"].shape[1]}

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(
            BidirectionalLSTM(input_size, hidden_size, hidden_size),
            BidirectionalLSTM(hidden_size, hidden_size, hidden_size),
        )
        self.output_size = hidden_size

