"""Stage 2 (transformer): ``ViT``, a plain vision transformer over rectangular patches (PARSeq's encoder).

The layout and key names follow timm's ``VisionTransformer`` (class token off, global pooling off),
which is what baudm/parseq's ``Encoder`` is, so its weights load through a prefix change
(``modules.parseq.from_parseq_state_dict``). The tokens are returned as one row, [B, C, 1, N]:
the model's mean over the feature map's height is then exact, and the later stages see all
N = (imgH / patch_h) x (imgW / patch_w) tokens in row-major order, as PARSeq's decoder does.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from modules.registry import Option, Preset, Stage, register
from runtime import UsageError

# --vit_size: (embedding width, depth, heads), PARSeq's configs/model/parseq.yaml and experiment/parseq-tiny.yaml.
VIT_SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6)}


def init_linear_layers(module: nn.Module) -> None:
    """The transformers' initialisation (timm's): Linear weights truncated-normal with std 0.02, biases zero."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# Shared by ViT and SVTR (one flag, one configuration field): stochastic depth, as timm's drop_path_rate and
# OpenOCR's. It changes no weight, so it may differ from a checkpoint's (fine-tuning with another rate).
DROP_PATH = Option("drop_path", 0.0, "ViT, SVTR: stochastic depth in training, the last block's rate (the blocks' "
                                     "rates rise linearly from 0, as timm and OpenOCR); 0 = none",
                   low=0.0, high=1.0, input_only=True)


class DropPath(nn.Module):
    """Stochastic depth (timm's ``DropPath``): in training, each sample's residual branch is dropped with
    probability ``rate`` and kept ones are scaled by 1 / (1 - rate); the identity in eval. No parameters, so the
    state_dict keys are those without it."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.size(0),) + (1,) * (x.dim() - 1)).bernoulli_(keep)  # [B, 1, ...]: one draw per sample
        return x * mask / keep if keep > 0 else x * mask

    def extra_repr(self) -> str:
        return f"rate={self.rate:g}"


def drop_path_rates(rate: float, blocks: int) -> list[float]:
    """Each block's rate, rising linearly from 0 to ``rate`` (timm's and OpenOCR's ``linspace(0, rate, depth)``)."""
    return torch.linspace(0, rate, blocks).tolist() if blocks > 1 else [rate] * blocks


class PatchEmbed(nn.Module):
    """[B, Cin, H, W] → [B, N, C]: one strided convolution, a patch per output position."""

    def __init__(self, input_channel: int, embed_dim: int, patch: tuple[int, int]):
        super().__init__()
        self.proj = nn.Conv2d(input_channel, embed_dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused qkv projection (timm's ``Attention``)."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)  # [B, heads, N, C / heads]
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class Mlp(nn.Sequential):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm1(x)), then x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int = 4, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SelfAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, dim * mlp_ratio)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


@register
class ViT(Stage, nn.Module):
    """Vision transformer encoder: [B, Cin, imgH, imgW] → [B, embed_dim, 1, N] (N patch tokens as a row).

    Patches are ``patch_h`` x ``patch_w`` (PARSeq: 4 x 8 on 32 x 128); the position embedding is
    learned, so the model runs at the image size it was built for.
    """

    kind, name = "FeatureExtraction", "ViT"
    options = (
        Option("vit_embed_dim", 384, "ViT: token width (--vit_size small 384, tiny 192)", low=1),
        Option("vit_depth", 12, "ViT: transformer blocks (12)", low=1),
        Option("vit_heads", 6, "ViT: attention heads (small 6, tiny 3)", low=1),
        Option("vit_patch_h", 4, "ViT: patch height in pixels (PARSeq 4); must divide --imgH", low=1),
        Option("vit_patch_w", 8, "ViT: patch width in pixels (PARSeq 8); must divide --imgW", low=1),
        Option("vit_class_token", False, "ViT: a learned class token before the patch tokens, as timm's default "
                                         "(ViTSTR's; PARSeq has none)"),
        DROP_PATH,
    )
    presets = (Preset("vit_size", {k: dict(zip(("vit_embed_dim", "vit_depth", "vit_heads"), v))
                                   for k, v in VIT_SIZES.items()},
                      "ViT: " + ", ".join(f"{k} = width {w}, depth {d}, heads {h}" for k, (w, d, h) in VIT_SIZES.items())
                      + " (default small; --vit_embed_dim/--vit_depth/--vit_heads override)"),)
    own_width = "--vit_size or --vit_embed_dim"
    fixed_input = ("imgH", "imgW")  # the learned position embedding
    fixed_width = "its position embedding is"
    name_defaults = {"imgW": 128}  # PARSeq's 4 x 8 patches tile 32 x 128
    has_own_init = True  # model.init_weights leaves it alone (trunc-normal 0.02, as timm)

    def __init__(self, input_channel: int, imgH: int, imgW: int, patch: tuple[int, int] = (4, 8),
                 embed_dim: int = 384, depth: int = 12, num_heads: int = 6, mlp_ratio: int = 4,
                 class_token: bool = False, drop_path: float = 0.0):
        super().__init__()
        self.patch_embed = PatchEmbed(input_channel, embed_dim, patch)
        num_patches = (imgH // patch[0]) * (imgW // patch[1])
        if class_token:  # timm: the class token first, the position embedding over it and the patches
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.class_token = class_token
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + class_token, embed_dim))
        self.blocks = nn.Sequential(*[Block(embed_dim, num_heads, mlp_ratio, rate)
                                      for rate in drop_path_rates(drop_path, depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.output_size = embed_dim
        self.reset_parameters()

    @classmethod
    def from_config(cls, config, input_size: int) -> "ViT":
        return cls(config.input_channel, config.imgH, config.imgW, (config.vit_patch_h, config.vit_patch_w),
                   config.vit_embed_dim, config.vit_depth, config.vit_heads, class_token=config.vit_class_token,
                   drop_path=config.drop_path)

    @classmethod
    def output_width(cls, config, input_size: int) -> int:
        return config.vit_embed_dim

    @classmethod
    def token_grid(cls, config, tokens: int) -> tuple[int, int]:
        """Its patches, row-major: imgH / patch_h rows of imgW / patch_w."""
        return config.imgH // config.vit_patch_h, config.imgW // config.vit_patch_w

    @classmethod
    def check(cls, config, input_size: int) -> None:
        """Patches that tile the image, heads that divide the width."""
        for flag, patch in (("imgH", "vit_patch_h"), ("imgW", "vit_patch_w")):
            size, step = getattr(config, flag), getattr(config, patch)
            if size % step:
                raise UsageError(f"--{patch} {step} does not divide --{flag} {size}: ViT's patches must tile the "
                                 f"image (PARSeq: 4 x 8 patches on 32 x 128)")
        if config.vit_embed_dim % config.vit_heads:
            raise UsageError(f"--vit_heads {config.vit_heads} must divide --vit_embed_dim {config.vit_embed_dim}")

    @classmethod
    def recognise(cls, state_dict: dict):
        if "pos_embed" not in state_dict or "patch_embed.proj.weight" not in state_dict:
            return None
        return cls.read_sizes(state_dict)

    @classmethod
    def read_sizes(cls, state_dict: dict) -> dict:
        proj = state_dict["patch_embed.proj.weight"]  # [embed_dim, Cin, patch_h, patch_w]
        blocks = {k.split(".")[1] for k in state_dict if k.startswith("blocks.")}
        class_token = "cls_token" in state_dict
        return {"input_channel": proj.shape[1], "vit_embed_dim": proj.shape[0], "vit_depth": len(blocks),
                "vit_patch_h": proj.shape[2], "vit_patch_w": proj.shape[3], "vit_class_token": class_token,
                "patches": state_dict["pos_embed"].shape[1] - class_token}

    @classmethod
    def mismatch(cls, found: dict, config) -> list[str]:
        problems = super().mismatch({k: v for k, v in found.items() if k != "patches"}, config)
        ph, pw = found["vit_patch_h"], found["vit_patch_w"]
        patches = (config.imgH // ph) * (config.imgW // pw)
        if not problems and found["patches"] != patches:
            problems.append(f"its position embedding has {found['patches']} patches of {ph} x {pw} pixels, but "
                            f"--imgH {config.imgH} x --imgW {config.imgW} gives {patches}: use the image size it "
                            f"was trained with (PARSeq: --imgH 32 --imgW 128)")
        return problems

    def reset_parameters(self) -> None:
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        if self.class_token:
            nn.init.normal_(self.cls_token, std=1e-6)  # timm's
        init_linear_layers(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)  # [B, N, C]
        if self.class_token:
            x = torch.cat([self.cls_token.expand(x.size(0), -1, -1), x], dim=1)  # [B, 1 + N, C]
        x = x + self.pos_embed
        x = self.norm(self.blocks(x))
        return x.transpose(1, 2).unsqueeze(2)  # [B, C, 1, N] (1 + N with the class token)
