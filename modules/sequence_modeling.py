"""Stage 3: SequenceModeling. ``None`` (identity) or two stacked ``BiLSTM`` layers."""
from __future__ import annotations

import torch
import torch.nn as nn


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


class BiLSTM(nn.Sequential):
    """The reference's two-layer stack (keys ``0.rnn...``, ``1.rnn...``); its output width is hidden_size."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(
            BidirectionalLSTM(input_size, hidden_size, hidden_size),
            BidirectionalLSTM(hidden_size, hidden_size, hidden_size),
        )
        self.output_size = hidden_size


SEQUENCE_MODELS = {
    "None": nn.Identity,  # output width = input width
    "BiLSTM": BiLSTM,
}
