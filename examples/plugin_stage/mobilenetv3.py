"""A feature stage from outside the tree: torchvision's MobileNetV3-small as --FeatureExtraction MobileNetV3.

    python train.py --plugin examples.plugin_stage.mobilenetv3 --FeatureExtraction MobileNetV3 ...

The backbone is ``mobilenet_v3_small().features`` (random initialisation: nothing is downloaded) with two
changes for word images: the first convolution takes the model's input channels, and the stride-2 steps
after the first two halve the height only ((2, 1)), so that a 32 x 100 crop gives 25 frames of 576 features:
[B, Cin, 32, 100] → [B, 576, 1, 25].
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models import mobilenet_v3_small

from modules.registry import Stage, register

WIDTH = 576  # the channels of MobileNetV3-small's last layer


@register
class MobileNetV3(Stage, nn.Module):
    """MobileNetV3-small's features, strided for text lines: [B, Cin, H, W] → [B, 576, H / 32, W / 4]."""

    kind, name = "FeatureExtraction", "MobileNetV3"
    own_width = f"MobileNetV3-small's {WIDTH} channels"  # --output_channel does not size it: refused with it

    def __init__(self, config, input_size: int):
        super().__init__()
        self.ConvNet = mobilenet_v3_small().features
        first = self.ConvNet[0][0]
        self.ConvNet[0][0] = nn.Conv2d(config.input_channel, first.out_channels, first.kernel_size, first.stride,
                                       first.padding, bias=False)
        strided = [m for m in self.ConvNet.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
        for conv in strided[2:]:  # keep the width: one frame per 4 pixels
            conv.stride = (2, 1)

    @classmethod
    def output_width(cls, config, input_size: int) -> int:
        return WIDTH

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ConvNet(x)
