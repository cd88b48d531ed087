"""Stage 2 (transformer): ``SVTR``, the SVTR-Tiny backbone (Du et al., IJCAI 2022) for a CTC head.

A two-convolution patch embedding (stride 4), three stages of mixing blocks (local attention within
a 7 x 11 window, then global attention) with convolutional merging between them (height halved,
width kept), and SVTR's last stage: mean over the height, a 1x1 convolution to 192 channels,
hard-swish. [B, Cin, imgH, imgW] → [B, 192, 1, imgW / 4]: one frame per 4 pixels of width, as the
reference's ``out_char_num`` (25 on 32 x 100).

Key names follow OpenOCR's ``openrec/modeling/encoders/svtrnet.py`` (the PyTorch port of PaddleOCR's
``rec_svtrnet``); ``from_openocr_svtr_state_dict`` maps its weights to ours.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from modules.registry import Stage, register
from modules.vit import DROP_PATH, DropPath, Mlp, drop_path_rates, init_linear_layers
from runtime import UsageError

# SVTR-Tiny (the paper's Table 1 and OpenOCR's configs/rec/svtrs/svtrnet_ctc_syn.yml).
EMBED_DIMS = (64, 128, 256)
DEPTHS = (3, 6, 3)
HEADS = (2, 4, 8)
MIXERS = ("Local",) * 6 + ("Global",) * 6
LOCAL_WINDOW = (7, 11)
OUT_CHANNELS = 192
DOWNSAMPLE = 16  # imgH: 4 in the patch embedding, 2 in each merging
FRAME_WIDTH = 4  # imgW pixels per output frame


class ConvBNLayer(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.norm(self.conv(x)))


class PatchEmbed(nn.Module):
    """[B, Cin, H, W] → [B, H/4 * W/4, C]: two stride-2 3x3 convolutions (C/2, then C channels)."""

    def __init__(self, input_channel: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Sequential(ConvBNLayer(input_channel, embed_dim // 2), ConvBNLayer(embed_dim // 2, embed_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Global or local (each token sees a window around it) multi-head self-attention on an H x W grid."""

    def __init__(self, dim: int, num_heads: int, mixer: str, HW: tuple[int, int]):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.mixer = mixer
        if mixer == "Local":
            self.register_buffer("mask", local_mask(HW, LOCAL_WINDOW), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        attn = (q * self.scale) @ k.transpose(-2, -1)  # [B, heads, N, N]
        if self.mixer == "Local":
            attn = attn + self.mask.to(attn.dtype)
        x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


def local_mask(HW: tuple[int, int], window: tuple[int, int]) -> torch.Tensor:
    """[1, 1, N, N]: 0 where key (h', w') is within the window centred on query (h, w), else -inf."""
    H, W = HW
    hs, ws = torch.arange(H).repeat_interleave(W), torch.arange(W).repeat(H)  # each token's row, column
    near = ((hs[:, None] - hs[None, :]).abs() <= window[0] // 2) & ((ws[:, None] - ws[None, :]).abs() <= window[1] // 2)
    return torch.zeros(H * W, H * W).masked_fill(~near, float("-inf"))[None, None]


class Block(nn.Module):
    """Mixing block: x + mixer(norm1(x)), then x + mlp(norm2(x)); what the reference computes with SVTR-Tiny's
    ``prenorm: False`` (its ``prenorm: True`` normalises after each residual sum instead)."""

    def __init__(self, dim: int, num_heads: int, mixer: str, HW: tuple[int, int], drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.mixer = Attention(dim, num_heads, mixer, HW)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, dim * 4)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.mixer(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class SubSample(nn.Module):
    """Merging: a stride-(2, 1) 3x3 convolution on the token grid, then LayerNorm → [B, H/2 * W, C_out]."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, stride=(2, 1), padding=1)
        self.norm = nn.LayerNorm(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x).flatten(2).transpose(1, 2))


@register
class SVTR(Stage, nn.Module):
    """SVTR-Tiny: [B, Cin, imgH, imgW] → [B, 192, 1, imgW / 4]; imgH a multiple of 16, imgW of 4.

    The stage sizes are arguments (SVTR-Tiny's by default, which is what ``--FeatureExtraction SVTR``
    builds) so that a reduced model can be checked against the reference in tests.
    """

    kind, name = "FeatureExtraction", "SVTR"
    options = (DROP_PATH,)
    own_width = f"SVTR-Tiny's {OUT_CHANNELS}"
    min_input = (DOWNSAMPLE, FRAME_WIDTH)
    fixed_input = ("imgH", "imgW")  # the learned position embedding
    fixed_width = "its position embedding is"
    has_own_init = True  # model.init_weights leaves it alone (the reference's trunc-normal / Kaiming init)

    def __init__(self, input_channel: int, imgH: int, imgW: int, embed_dims: tuple[int, ...] = EMBED_DIMS,
                 depths: tuple[int, ...] = DEPTHS, heads: tuple[int, ...] = HEADS, mixers: tuple[str, ...] = MIXERS,
                 out_channels: int = OUT_CHANNELS, drop_path: float = 0.0):
        super().__init__()
        self.HW = (imgH // 4, imgW // 4)
        grids = [self.HW, (self.HW[0] // 2, self.HW[1]), (self.HW[0] // 4, self.HW[1])]
        self.patch_embed = PatchEmbed(input_channel, embed_dims[0])
        self.pos_embed = nn.Parameter(torch.zeros(1, self.HW[0] * self.HW[1], embed_dims[0]))
        mixer = iter(mixers)  # one per block, in order through the three stages
        rates = iter(drop_path_rates(drop_path, sum(depths)))  # rising through all three stages, as OpenOCR's
        self.blocks1, self.blocks2, self.blocks3 = (
            nn.ModuleList(Block(embed_dims[s], heads[s], next(mixer), grids[s], next(rates)) for _ in range(depths[s]))
            for s in range(3))
        self.sub_sample1 = SubSample(embed_dims[0], embed_dims[1])
        self.sub_sample2 = SubSample(embed_dims[1], embed_dims[2])
        self.grids = grids
        self.last_conv = nn.Conv2d(embed_dims[2], out_channels, 1, bias=False)
        self.hardswish = nn.Hardswish()
        self.dropout = nn.Dropout(0.1)
        self.norm = nn.LayerNorm(embed_dims[2], eps=1e-6)
        self.output_size = out_channels
        self.reset_parameters()

    @classmethod
    def from_config(cls, config, input_size: int) -> "SVTR":
        return cls(config.input_channel, config.imgH, config.imgW, drop_path=config.drop_path)

    @classmethod
    def output_width(cls, config, input_size: int) -> int:
        return OUT_CHANNELS

    @classmethod
    def check(cls, config, input_size: int) -> None:
        if config.imgH % DOWNSAMPLE or config.imgW % FRAME_WIDTH:
            raise UsageError(f"--FeatureExtraction SVTR needs --imgH a multiple of {DOWNSAMPLE} and --imgW a multiple "
                             f"of {FRAME_WIDTH}, got {config.imgH} x {config.imgW} (SVTR-Tiny: 32 x 100)")

    @classmethod
    def recognise(cls, state_dict: dict):
        return cls.read_sizes(state_dict) if "blocks1.0.norm1.weight" in state_dict else None

    @classmethod
    def read_sizes(cls, state_dict: dict) -> dict:
        return {"input_channel": state_dict["patch_embed.proj.0.conv.weight"].shape[1],
                "tokens": state_dict["pos_embed"].shape[1]}

    @classmethod
    def mismatch(cls, found: dict, config) -> list[str]:
        problems = super().mismatch({k: v for k, v in found.items() if k != "tokens"}, config)
        tokens = (config.imgH // 4) * (config.imgW // 4)
        if not problems and found["tokens"] != tokens:
            problems.append(f"its position embedding has {found['tokens']} positions (one per 4 x 4 pixels), but "
                            f"--imgH {config.imgH} x --imgW {config.imgW} gives {tokens}: use the image size it "
                            "was trained with (SVTR-Tiny: --imgH 32 --imgW 100)")
        return problems

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        init_linear_layers(self)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x) + self.pos_embed  # [B, N, 64]
        for blocks, merge, (H, W) in ((self.blocks1, self.sub_sample1, self.grids[0]),
                                      (self.blocks2, self.sub_sample2, self.grids[1]),
                                      (self.blocks3, None, self.grids[2])):
            for block in blocks:
                x = block(x)
            if merge is not None:
                x = merge(x.transpose(1, 2).reshape(x.size(0), -1, H, W))  # tokens as a grid, then merged
        x = self.norm(x)
        H, W = self.grids[2]
        x = x.transpose(1, 2).reshape(x.size(0), -1, H, W).mean(dim=2, keepdim=True)  # [B, 256, 1, W]
        return self.dropout(self.hardswish(self.last_conv(x)))  # [B, 192, 1, imgW / 4]


def from_openocr_svtr_state_dict(state_dict: dict, head_prefix: str = "decoder.fc.") -> dict:
    """OpenOCR's SVTR-Tiny + CTC state_dict (``encoder.*`` = SVTRNet, ``head_prefix`` = the CTC linear layer)
    → this toolkit's keys for ``None-SVTR-None-CTC``. The local-attention masks are recomputed, not loaded."""
    out = {}
    for key, value in state_dict.items():
        if key.endswith(".mixer.mask"):
            continue
        if key.startswith("encoder."):
            out["FeatureExtraction." + key.removeprefix("encoder.")] = value
        elif key.startswith(head_prefix):
            out["Prediction." + key.removeprefix(head_prefix)] = value
    return out
