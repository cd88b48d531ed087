"""Stage 2: FeatureExtraction. VGG (CRNN), RCNN (GRCNN) or ResNet (FAN), each → [B, C, H', W'];
the transformers ViT (modules/vit.py) and SVTR (modules/svtr.py) → [B, C, 1, T] register in their files."""
from __future__ import annotations

import torch
import torch.nn as nn

from modules.registry import Stage, register


class ConvNetStage(Stage):
    """The reference's convolutional extractors: built from (input_channel, output_channel) alone, their width
    is --output_channel, and their weights show both (the first and the last convolution)."""

    kind, reference = "FeatureExtraction", True

    @classmethod
    def from_config(cls, config, input_size: int):
        return cls(config.input_channel, config.output_channel)

    @classmethod
    def output_width(cls, config, input_size: int) -> int:
        return config.output_channel

    @classmethod
    def read_sizes(cls, state_dict: dict) -> dict:
        convs = [v for k, v in state_dict.items() if k.endswith("weight") and v.dim() == 4]
        return {"input_channel": convs[0].shape[1], "output_channel": convs[-1].shape[0]}


@register
class VGG_FeatureExtractor(ConvNetStage, nn.Module):
    """CRNN's VGG: [B, Cin, 32, 100] → [B, output_channel, 1, 24]."""

    name = "VGG"
    min_input = (32, 8)  # found by running it on ever smaller inputs (tests/test_arguments.py checks both sides)
    column_window = (4, 19, 26)  # its receptive field: 46 pixels
    min_output_channel = 8

    def __init__(self, input_channel: int, output_channel: int = 512):
        super().__init__()
        oc = [output_channel // 8, output_channel // 4, output_channel // 2, output_channel]
        self.ConvNet = nn.Sequential(
            nn.Conv2d(input_channel, oc[0], 3, 1, 1), nn.ReLU(True), nn.MaxPool2d(2, 2),
            nn.Conv2d(oc[0], oc[1], 3, 1, 1), nn.ReLU(True), nn.MaxPool2d(2, 2),
            nn.Conv2d(oc[1], oc[2], 3, 1, 1), nn.ReLU(True),
            nn.Conv2d(oc[2], oc[2], 3, 1, 1), nn.ReLU(True), nn.MaxPool2d((2, 1), (2, 1)),
            nn.Conv2d(oc[2], oc[3], 3, 1, 1, bias=False), nn.BatchNorm2d(oc[3]), nn.ReLU(True),
            nn.Conv2d(oc[3], oc[3], 3, 1, 1, bias=False), nn.BatchNorm2d(oc[3]), nn.ReLU(True),
            nn.MaxPool2d((2, 1), (2, 1)),
            nn.Conv2d(oc[3], oc[3], 2, 1, 0), nn.ReLU(True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ConvNet(x)


@register
class RCNN_FeatureExtractor(ConvNetStage, nn.Module):
    """GRCNN: gated recurrent convolution layers; [B, Cin, 32, 100] → [B, output_channel, 1, 26]."""

    name = "RCNN"
    min_input = (32, 4)
    min_output_channel = 8

    def __init__(self, input_channel: int, output_channel: int = 512):
        super().__init__()
        oc = [output_channel // 8, output_channel // 4, output_channel // 2, output_channel]
        self.ConvNet = nn.Sequential(
            nn.Conv2d(input_channel, oc[0], 3, 1, 1), nn.ReLU(True), nn.MaxPool2d(2, 2),
            GRCL(oc[0], oc[0], num_iteration=5, kernel_size=3, pad=1), nn.MaxPool2d(2, 2),
            GRCL(oc[0], oc[1], num_iteration=5, kernel_size=3, pad=1), nn.MaxPool2d(2, (2, 1), (0, 1)),
            GRCL(oc[1], oc[2], num_iteration=5, kernel_size=3, pad=1), nn.MaxPool2d(2, (2, 1), (0, 1)),
            nn.Conv2d(oc[2], oc[3], 2, 1, 0, bias=False), nn.BatchNorm2d(oc[3]), nn.ReLU(True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ConvNet(x)


class GRCL(nn.Module):
    """Gated recurrent convolution layer: the two recurrent convs are shared, BNs are per iteration."""

    def __init__(self, input_channel: int, output_channel: int, num_iteration: int, kernel_size: int, pad: int):
        super().__init__()
        self.wgf_u = nn.Conv2d(input_channel, output_channel, 1, 1, 0, bias=False)
        self.wgr_x = nn.Conv2d(output_channel, output_channel, 1, 1, 0, bias=False)
        self.wf_u = nn.Conv2d(input_channel, output_channel, kernel_size, 1, pad, bias=False)
        self.wr_x = nn.Conv2d(output_channel, output_channel, kernel_size, 1, pad, bias=False)
        self.BN_x_init = nn.BatchNorm2d(output_channel)
        self.num_iteration = num_iteration
        self.GRCL = nn.Sequential(*[GRCL_unit(output_channel) for _ in range(num_iteration)])

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        wgf_u = self.wgf_u(input)  # computed once, reused by every iteration
        wf_u = self.wf_u(input)
        x = torch.relu(self.BN_x_init(wf_u))
        for unit in self.GRCL:
            x = unit(wgf_u, self.wgr_x(x), wf_u, self.wr_x(x))
        return x


class GRCL_unit(nn.Module):
    def __init__(self, output_channel: int):
        super().__init__()
        self.BN_gfu = nn.BatchNorm2d(output_channel)
        self.BN_grx = nn.BatchNorm2d(output_channel)
        self.BN_fu = nn.BatchNorm2d(output_channel)
        self.BN_rx = nn.BatchNorm2d(output_channel)
        self.BN_Gx = nn.BatchNorm2d(output_channel)

    def forward(self, wgf_u, wgr_x, wf_u, wr_x):
        G = torch.sigmoid(self.BN_gfu(wgf_u) + self.BN_grx(wgr_x))
        return torch.relu(self.BN_fu(wf_u) + self.BN_Gx(self.BN_rx(wr_x) * G))


@register
class ResNet_FeatureExtractor(ConvNetStage, nn.Module):
    """FAN's ResNet, layers [1, 2, 5, 3]; [B, Cin, 32, 100] → [B, output_channel, 1, 26]."""

    name = "ResNet"
    min_input = (32, 4)
    min_output_channel = 16

    def __init__(self, input_channel: int, output_channel: int = 512):
        super().__init__()
        self.ConvNet = ResNet(input_channel, output_channel, BasicBlock, [1, 2, 5, 3])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ConvNet(x)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + residual)


class ResNet(nn.Module):
    def __init__(self, input_channel: int, output_channel: int, block: type[BasicBlock], layers: list[int]):
        super().__init__()
        self.output_channel_block = [output_channel // 4, output_channel // 2, output_channel, output_channel]
        self.inplanes = output_channel // 8

        self.conv0_1 = nn.Conv2d(input_channel, output_channel // 16, 3, 1, 1, bias=False)
        self.bn0_1 = nn.BatchNorm2d(output_channel // 16)
        self.conv0_2 = nn.Conv2d(output_channel // 16, self.inplanes, 3, 1, 1, bias=False)
        self.bn0_2 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)

        self.maxpool1 = nn.MaxPool2d(2, 2, 0)
        self.layer1 = self._make_layer(block, self.output_channel_block[0], layers[0])
        self.conv1 = nn.Conv2d(self.output_channel_block[0], self.output_channel_block[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.output_channel_block[0])

        self.maxpool2 = nn.MaxPool2d(2, 2, 0)
        self.layer2 = self._make_layer(block, self.output_channel_block[1], layers[1])
        self.conv2 = nn.Conv2d(self.output_channel_block[1], self.output_channel_block[1], 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(self.output_channel_block[1])

        self.maxpool3 = nn.MaxPool2d(2, (2, 1), (0, 1))
        self.layer3 = self._make_layer(block, self.output_channel_block[2], layers[2])
        self.conv3 = nn.Conv2d(self.output_channel_block[2], self.output_channel_block[2], 3, 1, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(self.output_channel_block[2])

        self.layer4 = self._make_layer(block, self.output_channel_block[3], layers[3])
        self.conv4_1 = nn.Conv2d(self.output_channel_block[3], self.output_channel_block[3], 2, (2, 1), (0, 1), bias=False)
        self.bn4_1 = nn.BatchNorm2d(self.output_channel_block[3])
        self.conv4_2 = nn.Conv2d(self.output_channel_block[3], self.output_channel_block[3], 2, 1, 0, bias=False)
        self.bn4_2 = nn.BatchNorm2d(self.output_channel_block[3])

    def _make_layer(self, block: type[BasicBlock], planes: int, blocks: int) -> nn.Sequential:
        downsample = None
        if self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, 1, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, 1, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn0_1(self.conv0_1(x)))
        x = self.relu(self.bn0_2(self.conv0_2(x)))
        x = self.layer1(self.maxpool1(x))
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer2(self.maxpool2(x))
        x = self.relu(self.bn2(self.conv2(x)))
        x = self.layer3(self.maxpool3(x))
        x = self.relu(self.bn3(self.conv3(x)))
        x = self.layer4(x)
        x = self.relu(self.bn4_1(self.conv4_1(x)))
        return self.relu(self.bn4_2(self.conv4_2(x)))

