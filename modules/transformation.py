"""Stage 1: Transformation. ``None`` (identity) or ``TPS`` (RARE's thin-plate-spline STN)."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from modules.registry import Stage, record_view, register
from runtime import UsageError


@register
class NoTransformation(Stage, nn.Identity):
    """``--Transformation None``: the image as it is."""

    kind, name, reference = "Transformation", "None", True


@register
class TPS_SpatialTransformerNetwork(Stage, nn.Module):
    """Rectifies the input with a thin-plate spline whose F fiducial points are regressed.

    Attribute names (``LocalizationNetwork``, ``GridGenerator``) match the reference
    checkpoints.
    """

    kind, name, reference = "Transformation", "TPS", True
    min_input = (8, 8)  # the localisation network's three 2x2 poolings
    fixed_width = "its sampling grid is"
    min_opset = (16, "samples the image with GridSample")
    views = ("rectified", "fiducials")

    @classmethod
    def from_config(cls, config, input_size: int) -> "TPS_SpatialTransformerNetwork":
        size = (config.imgH, config.imgW)
        return cls(F=config.num_fiducial, I_size=size, I_r_size=size, I_channel_num=config.input_channel)

    @classmethod
    def check(cls, config, input_size: int) -> None:
        if config.num_fiducial < 4 or config.num_fiducial % 2:
            raise UsageError(f"--num_fiducial must be an even number of at least 4 for TPS, got {config.num_fiducial}")

    @classmethod
    def read_sizes(cls, state_dict: dict) -> dict:
        return {"input_channel": state_dict["LocalizationNetwork.conv.0.weight"].shape[1],
                "num_fiducial": state_dict["LocalizationNetwork.localization_fc2.bias"].shape[0] // 2,
                "grid_points": state_dict["GridGenerator.P_hat"].shape[0]}

    @classmethod
    def mismatch(cls, found: dict, config) -> list[str]:
        problems = super().mismatch({k: v for k, v in found.items() if k != "grid_points"}, config)
        if found["grid_points"] != config.imgH * config.imgW:
            problems.append(f"its TPS grid has {found['grid_points']} points, but --imgH {config.imgH} × --imgW "
                            f"{config.imgW} = {config.imgH * config.imgW}: use the image size it was trained with")
        return problems

    def extra_flops(self, args: tuple, kwargs: dict) -> int:
        """The sampling grid P' = (P_hat inv(delta_C))[:, :F] C': the constant [n, F] matrix (n = the output's
        pixels) times each image's fiducials [F, 2], 2 * B * n * F * 2 FLOPs, written as elementwise products
        (``GridGenerator.build_P_prime``) that no operator count sees. The constants (P_hat, inv(delta_C)) are
        computed once when the model is built, not per image (the maintainers' hand count adds their
        ~17 k multiply-accumulates: 20 x 20 distances, a 23 x 23 inversion)."""
        return 2 * args[0].size(0) * self.I_r_size[0] * self.I_r_size[1] * self.F * 2

    def explain_hooks(self, record: dict) -> list:
        def fiducials(module, args, batch_C_prime):  # [B, F, 2]
            record_view(record, "fiducials", batch_C_prime)
            grid = self.GridGenerator.build_P_prime(batch_C_prime)  # [B, H*W, 2], as forward computes it
            record_view(record, "sampling_grid", grid.reshape(-1, self.I_r_size[0], self.I_r_size[1], 2))

        return [self.LocalizationNetwork.register_forward_hook(fiducials),
                self.register_forward_hook(lambda module, args, rectified: record_view(record, "rectified", rectified))]

    def __init__(self, F: int, I_size: tuple[int, int], I_r_size: tuple[int, int], I_channel_num: int = 1):
        super().__init__()
        if F < 4 or F % 2:
            raise ValueError(f"--num_fiducial must be an even number >= 4, got {F}")
        self.F = F
        self.I_r_size = I_r_size
        self.LocalizationNetwork = LocalizationNetwork(F, I_channel_num)
        self.GridGenerator = GridGenerator(F, I_r_size)

    def forward(self, batch_I: torch.Tensor) -> torch.Tensor:
        batch_C_prime = self.LocalizationNetwork(batch_I)  # [B, F, 2]
        build_P_prime = self.GridGenerator.build_P_prime(batch_C_prime)  # [B, H*W, 2]
        grid = build_P_prime.reshape(-1, self.I_r_size[0], self.I_r_size[1], 2)
        # align_corners=True is what the reference uses on every torch > 1.2.
        return F.grid_sample(batch_I, grid.to(batch_I.dtype), padding_mode="border", align_corners=True)


class LocalizationNetwork(nn.Module):
    """Regresses the F fiducial points C' ([B, F, 2], normalised x, y) from the image."""

    def __init__(self, F: int, I_channel_num: int):
        super().__init__()
        self.F = F
        layers: list[nn.Module] = []
        channels = [I_channel_num, 64, 128, 256, 512]
        for i in range(4):
            layers += [nn.Conv2d(channels[i], channels[i + 1], 3, 1, 1, bias=False),
                       nn.BatchNorm2d(channels[i + 1]), nn.ReLU(True)]
            layers.append(nn.MaxPool2d(2, 2) if i < 3 else nn.AdaptiveAvgPool2d(1))
        self.conv = nn.Sequential(*layers)
        self.localization_fc1 = nn.Sequential(nn.Linear(512, 256), nn.ReLU(True))
        self.localization_fc2 = nn.Linear(256, F * 2)
        # Start from RARE's initial fiducials (Fig. 6(a)): the weight is zero, the bias holds them.
        self.localization_fc2.weight.data.fill_(0)
        self.localization_fc2.bias.data = torch.from_numpy(initial_fiducials(F)).float().view(-1)

    def forward(self, batch_I: torch.Tensor) -> torch.Tensor:
        features = self.conv(batch_I).flatten(1)  # [B, 512]
        return self.localization_fc2(self.localization_fc1(features)).view(-1, self.F, 2)


def initial_fiducials(F: int) -> np.ndarray:
    """The reference's initial C': top row y 0→-1, bottom row y 1→0, x evenly in [-1, 1]."""
    x = np.linspace(-1.0, 1.0, F // 2)
    top = np.stack([x, np.linspace(0.0, -1.0, F // 2)], axis=1)
    bottom = np.stack([x, np.linspace(1.0, 0.0, F // 2)], axis=1)
    return np.concatenate([top, bottom], axis=0)  # [F, 2]


class GridGenerator(nn.Module):
    """Maps fiducials C' to the sampling grid P'. Constants are float64 maths stored as float32 buffers."""

    def __init__(self, F: int, I_r_size: tuple[int, int]):
        super().__init__()
        self.eps = 1e-6
        self.I_r_height, self.I_r_width = I_r_size
        self.F = F
        C = self._build_C(F)  # [F, 2]
        P = self._build_P(self.I_r_width, self.I_r_height)  # [n, 2]
        self.register_buffer("inv_delta_C", torch.tensor(self._build_inv_delta_C(F, C)).float())  # [F+3, F+3]
        P_hat = self._build_P_hat(F, C, P)
        self.register_buffer("P_hat", torch.tensor(P_hat).float())  # [n, F+3]
        # P' = P_hat @ inv_delta_C @ [C'; 0] = (P_hat @ inv_delta_C[:, :F]) @ C'. The product of the two
        # constants, taken in float64, is 40x closer to exact in float32 than the two float32 matmuls
        # (max error 3e-7 against 1.2e-5 on a 32x100 grid). Not persistent: derived from the others,
        # and checkpoints keep the reference keys.
        self.register_buffer("P_hat_inv_delta_C", torch.tensor(P_hat @ self._build_inv_delta_C(F, C)[:, :F]).float(),
                             persistent=False)  # [n, F]

    @staticmethod
    def _build_C(F: int) -> np.ndarray:
        x = np.linspace(-1.0, 1.0, F // 2)
        top = np.stack([x, -np.ones(F // 2)], axis=1)
        bottom = np.stack([x, np.ones(F // 2)], axis=1)
        return np.concatenate([top, bottom], axis=0)

    @staticmethod
    def _build_inv_delta_C(F: int, C: np.ndarray) -> np.ndarray:
        hat_C = np.zeros((F, F), dtype=float)
        for i in range(F):
            for j in range(i, F):
                r = np.linalg.norm(C[i] - C[j])
                hat_C[i, j] = hat_C[j, i] = r
        np.fill_diagonal(hat_C, 1)
        hat_C = (hat_C ** 2) * np.log(hat_C)
        delta_C = np.concatenate([
            np.concatenate([np.ones((F, 1)), C, hat_C], axis=1),      # [F, F+3]
            np.concatenate([np.zeros((2, 3)), C.T], axis=1),           # [2, F+3]
            np.concatenate([np.zeros((1, 3)), np.ones((1, F))], axis=1),  # [1, F+3]
        ], axis=0)
        return np.linalg.inv(delta_C)

    @staticmethod
    def _build_P(I_r_width: int, I_r_height: int) -> np.ndarray:
        grid_x = (np.arange(-I_r_width, I_r_width, 2) + 1.0) / I_r_width  # pixel centres
        grid_y = (np.arange(-I_r_height, I_r_height, 2) + 1.0) / I_r_height
        P = np.stack(np.meshgrid(grid_x, grid_y), axis=2)  # [H, W, 2] as (x, y)
        return P.reshape([-1, 2])

    def _build_P_hat(self, F: int, C: np.ndarray, P: np.ndarray) -> np.ndarray:
        n = P.shape[0]
        P_diff = np.tile(np.expand_dims(P, axis=1), (1, F, 1)) - np.expand_dims(C, axis=0)  # [n, F, 2]
        rbf_norm = np.linalg.norm(P_diff, ord=2, axis=2)  # [n, F]
        rbf = np.square(rbf_norm) * np.log(rbf_norm + self.eps)
        return np.concatenate([np.ones((n, 1)), P, rbf], axis=1)

    def build_P_prime(self, batch_C_prime: torch.Tensor) -> torch.Tensor:
        """[B, F, 2] fiducials → [B, n, 2] sampling points."""
        # The sum over the F fiducials is written out term by term instead of a matmul: elementwise
        # products and additions in a fixed order round the same way in every runtime, so an exported
        # graph (ONNX Runtime) samples the image at the same points to the last bit; a matmul's
        # summation order is the library's, and TPS amplifies a 1e-7 grid difference into 1e-3 logits.
        weights = self.P_hat_inv_delta_C.to(batch_C_prime.dtype)  # [n, F]
        grid = weights[:, 0, None] * batch_C_prime[:, None, 0]  # [B, n, 2]
        for k in range(1, self.F):
            grid = grid + weights[:, k, None] * batch_C_prime[:, None, k]
        return grid

