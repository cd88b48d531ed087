"""Training-time augmentation of word images (``train.py --augment rand``).

``RandAugment`` is the policy PARSeq and ABINet-style recognisers train with: for every
sample, ``n`` different operations are drawn from ``OPS`` and each is applied with
probability 0.5 at magnitude ``m`` (0-10; PARSeq trains with n=3, m=5). The geometric ops
are small (rotation up to 3 degrees per magnitude step) because a word crop that loses its
ends is a wrong label; blur sizes follow the image height, since every word is resized to the
model's height afterwards. Each op keeps the image's size and mode ('L' or 'RGB').

Randomness comes only from the ``random.Random`` passed in, never from a global generator:
``dataset.AugmentedDataset`` seeds one per sample from (``--manualSeed``, dataset, stream
position), so a run draws the same augmentations whatever ``--workers`` is, and a resumed run
continues with the ones it would have drawn.
"""
from __future__ import annotations

import math
import random
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as TF
from PIL import Image, ImageDraw, ImageStat
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as F

Op = Callable[[Image.Image, float, random.Random], Image.Image]  # (image, level in [0, 1], rng)


def _signed(level: float, rng: random.Random) -> float:
    return level if rng.random() < 0.5 else -level


def _fill(img: Image.Image) -> list[float]:
    """The image's mean colour: what geometric ops paint into the uncovered corners."""
    return [round(v) for v in ImageStat.Stat(img).mean]


# --- geometry (torchvision) ---------------------------------------------------------------

def rotate(img: Image.Image, level: float, rng: random.Random) -> Image.Image:
    return F.rotate(img, _signed(30 * level, rng), InterpolationMode.BILINEAR, fill=_fill(img))


def shear_x(img: Image.Image, level: float, rng: random.Random) -> Image.Image:
    return F.affine(img, angle=0.0, translate=[0, 0], scale=1.0, shear=[_signed(30 * level, rng), 0.0],
                    interpolation=InterpolationMode.BILINEAR, fill=_fill(img))


def shear_y(img: Image.Image, level: float, rng: random.Random) -> Image.Image:
    return F.affine(img, angle=0.0, translate=[0, 0], scale=1.0, shear=[0.0, _signed(10 * level, rng)],
                    interpolation=InterpolationMode.BILINEAR, fill=_fill(img))


def perspective(img: Image.Image, level: float, rng: random.Random) -> Image.Image:
    """Each corner moves inwards by up to 30% (level 1) of the width and height."""
    w, h = img.size
    if min(w, h) < 2:
        return img  # a corner cannot move inwards (and the warp is singular)
    dx, dy = 0.3 * level * (w - 1), 0.3 * level * (h - 1)
    start = [[0, 0], [w - 1, 0], [w - 1, h - 1], [0, h - 1]]
    inward = [(1, 1), (-1, 1), (-1, -1), (1, -1)]
    end = [[x + sx * rng.uniform(0, dx), y + sy * rng.uniform(0, dy)]
           for (x, y), (sx, sy) in zip(start, inward)]
    return F.perspective(img, start, end, InterpolationMode.BILINEAR, fill=_fill(img))


# --- blur and noise -----------------------------------------------------------------------

def gaussian_blur(img: Image.Image, level: float, rng: random.Random) -> Image.Image:
    """Sigma up to 4 px (level 1) for a 32-px-high word, in proportion for others."""
    sigma = max(0.1, rng.uniform(0.5, 1.0) * 4 * level * img.height / 32)
    # torchvision pads by reflection, which needs kernel // 2 < each side: clip for tiny images
    largest = min(img.size) - 1 if min(img.size) % 2 == 0 else min(img.size)
    kernel = max(1, min(2 * math.ceil(3 * sigma) + 1, largest))
    return F.gaussian_blur(img, [kernel, kernel], [sigma, sigma])


def motion_blur(img: Image.Image, level: float, rng: random.Random) -> Image.Image:
    """A line kernel of up to 20 px (level 1) for a 32-px-high word, in proportion for others, at a
    random angle (torchvision has no such op on PIL images)."""
    length = max(3, round(20 * level * rng.uniform(0.5, 1.0) * img.height / 32)) | 1  # odd
    line = Image.new("L", (length, length), 0)
    angle = rng.uniform(0, math.pi)
    c, r = length // 2, length / 2
    ImageDraw.Draw(line).line([(c - r * math.cos(angle), c - r * math.sin(angle)),
                               (c + r * math.cos(angle), c + r * math.sin(angle))], fill=255, width=1)
    kernel = torch.from_numpy(np.asarray(line, dtype=np.float32))
    kernel = kernel / kernel.sum()
    x = F.pil_to_tensor(img).float()[None]  # [1, C, H, W]
    channels = x.shape[1]
    x = TF.pad(x, [c, c, c, c], mode="replicate")
    y = TF.conv2d(x, kernel.expand(channels, 1, length, length), groups=channels)[0]
    return F.to_pil_image(y.round_().clamp_(0, 255).to(torch.uint8), mode=img.mode)


def gaussian_noise(img: Image.Image, level: float, rng: random.Random) -> Image.Image:
    std = 0.1 * 255 * level * rng.uniform(0.5, 1.0)
    array = np.asarray(img, dtype=np.float32)
    noise = np.random.default_rng(rng.getrandbits(64)).normal(0.0, std, array.shape)
    return Image.fromarray(np.clip(array + noise, 0, 255).round().astype(np.uint8), mode=img.mode)


# --- colour (torchvision) -----------------------------------------------------------------

def color(img: Image.Image, level: float, rng: random.Random) -> Image.Image:
    return F.adjust_saturation(img, 1 + _signed(0.9 * level, rng))  # a no-op on 'L'


def contrast(img: Image.Image, level: float, rng: random.Random) -> Image.Image:
    return F.adjust_contrast(img, 1 + _signed(0.9 * level, rng))


def brightness(img: Image.Image, level: float, rng: random.Random) -> Image.Image:
    return F.adjust_brightness(img, 1 + _signed(0.9 * level, rng))


def sharpness(img: Image.Image, level: float, rng: random.Random) -> Image.Image:
    return F.adjust_sharpness(img, 1 + _signed(0.9 * level, rng))


def posterize(img: Image.Image, level: float, rng: random.Random) -> Image.Image:
    return F.posterize(img, max(1, 8 - round(6 * level)))  # 8 bits at level 0, 2 at level 1


def invert(img: Image.Image, level: float, rng: random.Random) -> Image.Image:
    return F.invert(img)


OPS: dict[str, Op] = {
    "rotate": rotate, "shear_x": shear_x, "shear_y": shear_y, "perspective": perspective,
    "gaussian_blur": gaussian_blur, "motion_blur": motion_blur, "gaussian_noise": gaussian_noise,
    "color": color, "contrast": contrast, "brightness": brightness, "sharpness": sharpness,
    "posterize": posterize, "invert": invert,
}


class RandAugment:
    """``n`` distinct ops of ``OPS`` per image, each applied with probability ``prob`` at magnitude ``m``."""

    def __init__(self, n: int = 3, m: float = 5, prob: float = 0.5, ops: dict[str, Op] | None = None):
        self.ops = dict(OPS if ops is None else ops)
        if not 1 <= n <= len(self.ops):
            raise ValueError(f"--augment_n {n} must be between 1 and the number of ops ({len(self.ops)}).")
        if not 0 <= m <= 10:
            raise ValueError(f"--augment_m {m} must be between 0 and 10 (PARSeq trains with 5).")
        self.n, self.m, self.prob = n, m, prob

    def __call__(self, img: Image.Image, rng: random.Random) -> Image.Image:
        for name in rng.sample(sorted(self.ops), self.n):
            if rng.random() < self.prob:
                img = self.ops[name](img, self.m / 10, rng)
        return img

    def __repr__(self) -> str:
        return f"RandAugment(n={self.n}, m={self.m}, prob={self.prob}, ops={sorted(self.ops)})"


AUGMENTATIONS = {"none": None, "rand": RandAugment}  # --augment choices


def make_augment(name: str, n: int = 3, m: float = 5) -> RandAugment | None:
    """The policy for ``--augment NAME`` (None for 'none')."""
    if name not in AUGMENTATIONS:
        raise ValueError(f"--augment {name!r} is not one of {sorted(AUGMENTATIONS)}.")
    policy = AUGMENTATIONS[name]
    return None if policy is None else policy(n, m)


def sample_rng(seed: int, stream: int, position: int) -> random.Random:
    """The generator of one training sample: a function of the run's seed, the dataset's number in
    --select_data and the sample's position in the endless sampler stream (string seeds are
    hashed with SHA-512, so this is the same in every process)."""
    return random.Random(f"augment:{seed}:{stream}:{position}")
