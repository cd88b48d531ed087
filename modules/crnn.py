"""Shi et al.'s CRNN as crnn.pytorch and baudm/parseq build it (``strhub/models/crnn/model.py``): a seven-layer
VGG with batch normalisation on every other layer and width-padded pooling (``--FeatureExtraction CRNN``), then two
bidirectional LSTM layers of which only the first is projected (``--SequenceModeling CRNNLSTM``): the second's
2 x hidden_size outputs go to the CTC head, whose linear layer is the second layer's projection there.

The reference's VGG (``--FeatureExtraction VGG``) is a different network of the same family: batch normalisation
on layers 5 and 6, pooling without padding, so 24 frames from 100 pixels where this gives 26 (33 from 128).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from modules.feature_extraction import ConvNetStage
from modules.registry import Stage, register
from modules.sequence_modeling import BidirectionalLSTM


@register
class CRNN_FeatureExtractor(ConvNetStage, nn.Module):
    """[B, Cin, 32, W] → [B, output_channel, 1, W / 4 + 1]; the keys are crnn.pytorch's (``cnn.conv0`` ...)."""

    name, reference = "CRNN", False
    min_input = (32, 4)
    column_window = (4, 27, 26)  # its receptive field: 54 pixels
    min_output_channel = 8

    def __init__(self, input_channel: int, output_channel: int = 512):
        super().__init__()
        oc = output_channel
        widths = [oc // 8, oc // 4, oc // 2, oc // 2, oc, oc, oc]  # crnn.pytorch's 64 ... 512 at 512
        kernels, paddings = [3, 3, 3, 3, 3, 3, 2], [1, 1, 1, 1, 1, 1, 0]
        self.cnn = nn.Sequential()

        def conv_relu(i: int, batch_norm: bool = False) -> None:
            self.cnn.add_module(f"conv{i}", nn.Conv2d(widths[i - 1] if i else input_channel, widths[i], kernels[i],
                                                      1, paddings[i], bias=not batch_norm))
            if batch_norm:
                self.cnn.add_module(f"batchnorm{i}", nn.BatchNorm2d(widths[i]))
            self.cnn.add_module(f"relu{i}", nn.ReLU(True))

        conv_relu(0)
        self.cnn.add_module("pooling0", nn.MaxPool2d(2, 2))
        conv_relu(1)
        self.cnn.add_module("pooling1", nn.MaxPool2d(2, 2))
        conv_relu(2, True)
        conv_relu(3)
        self.cnn.add_module("pooling2", nn.MaxPool2d((2, 2), (2, 1), (0, 1)))
        conv_relu(4, True)
        conv_relu(5)
        self.cnn.add_module("pooling3", nn.MaxPool2d((2, 2), (2, 1), (0, 1)))
        conv_relu(6, True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cnn(x)


class UnprojectedLSTM(BidirectionalLSTM):
    """A bidirectional LSTM layer without the projection: [B, T, input_size] → [B, T, 2 * hidden_size]. A
    ``BidirectionalLSTM`` whose ``linear`` is the identity, so that whatever handles that layer (the ONNX
    export's LSTM node) handles this one too."""

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(input_size, hidden_size, 2 * hidden_size)
        self.linear = nn.Identity()


@register
class CRNNLSTM(Stage, nn.Sequential):
    """CRNN's two bidirectional LSTM layers (keys ``0.rnn``, ``0.linear``, ``1.rnn``); its width is 2 x hidden_size."""

    kind, name = "SequenceModeling", "CRNNLSTM"

    @classmethod
    def from_config(cls, config, input_size: int) -> "CRNNLSTM":
        return cls(input_size, config.hidden_size)

    @classmethod
    def output_width(cls, config, input_size: int) -> int:
        return 2 * config.hidden_size

    @classmethod
    def read_sizes(cls, state_dict: dict) -> dict:
        return {"hidden_size": state_dict["0.rnn.weight_hh_l0"].shape[1]}

    def __init__(self, input_size: int, hidden_size: int):
        super().__init__(BidirectionalLSTM(input_size, hidden_size, hidden_size),
                         UnprojectedLSTM(hidden_size, hidden_size))
