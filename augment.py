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
from PIL import Image, ImageEnhance, ImageFilter, ImageOps, ImageStat

from runtime import UsageError

Op = Callable[[Image.Image, float, random.Random], Image.Image]  # (image, level in [0, 1], rng)


def _signed(level: float, rng: random.Random) -> float:
    return level if rng.random() < 0.5 else -level


def _fill(img: Image.Image) -> int | tuple[int, ...]:
    """The image's mean colour: what geometric ops paint into the uncovered corners."""
    mean = tuple(round(v) for v in ImageStat.Stat(img).mean)
    return mean[0] if len(mean) == 1 else mean


def _warp(img: Image.Image, method: Image.Transform, coefficients) -> Image.Image:
    """``img`` resampled (bilinear) through ``coefficients``, which map output to input pixels."""
    return img.transform(img.size, method, tuple(coefficients), Image.Resampling.BILINEAR, fillcolor=_fill(img))


# --- geometry (PIL) -----------------------------------------------------------------------
# Plain PIL rather than torchvision: the same warps at a fraction of the cost, and no torch import
# (the loader worker shares two cores with training, where every millisecond here stalls both).

def rotate(img: Image.Image, level: float, rng: random.Random) -> Image.Image:
    return img.rotate(_signed(30 * level, rng), Image.Resampling.BILINEAR, fillcolor=_fill(img))


def shear_x(img: Image.Image, level: float, rng: random.Random) -> Image.Image:
    """Shear about the centre line, so the word stays where it was."""
    t = math.tan(math.radians(_signed(30 * level, rng)))
    return _warp(img, Image.Transform.AFFINE, (1, t, -t * (img.height - 1) / 2, 0, 1, 0))


def shear_y(img: Image.Image, level: float, rng: random.Random) -> Image.Image:
    t = math.tan(math.radians(_signed(10 * level, rng)))
    return _warp(img, Image.Transform.AFFINE, (1, 0, 0, t, 1, -t * (img.width - 1) / 2))


def perspective_coefficients(output: list[list[float]], source: list[list[float]]) -> list[float]:
    """The 8 coefficients of PIL's PERSPECTIVE transform that send each ``output`` corner to its
    ``source`` corner (x = (a u + b v + c) / (g u + h v + 1), y likewise with d, e, f)."""
    rows, rhs = [], []
    for (u, v), (x, y) in zip(output, source):
        rows.append([u, v, 1, 0, 0, 0, -x * u, -x * v])
        rows.append([0, 0, 0, u, v, 1, -y * u, -y * v])
        rhs += [x, y]
    return np.linalg.solve(np.array(rows, dtype=np.float64), np.array(rhs, dtype=np.float64)).tolist()


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
    return _warp(img, Image.Transform.PERSPECTIVE, perspective_coefficients(end, start))


# --- blur and noise -----------------------------------------------------------------------

def gaussian_blur(img: Image.Image, level: float, rng: random.Random) -> Image.Image:
    """Sigma up to 4 px (level 1) for a 32-px-high word, in proportion for others."""
    sigma = max(0.1, rng.uniform(0.5, 1.0) * 4 * level * img.height / 32)
    return img.filter(ImageFilter.GaussianBlur(sigma))


def motion_blur(img: Image.Image, level: float, rng: random.Random) -> Image.Image:
    """The mean along a line of up to 20 px (level 1) for a 32-px-high word, in proportion for
    others, at a random angle (PIL has no such filter: a sum of shifted copies)."""
    length = max(3, round(20 * level * rng.uniform(0.5, 1.0) * img.height / 32)) | 1  # odd
    angle = rng.uniform(0, math.pi)
    steps = np.linspace(-(length // 2), length // 2, length)
    shifts = sorted({(round(s * math.sin(angle)), round(s * math.cos(angle))) for s in steps})
    r = length // 2
    array = np.asarray(img, dtype=np.float32)
    pad = [(r, r), (r, r)] + [(0, 0)] * (array.ndim - 2)
    padded = np.pad(array, pad, mode="edge")
    h, w = array.shape[:2]
    out = sum(padded[r + dy:r + dy + h, r + dx:r + dx + w] for dy, dx in shifts) / len(shifts)
    return Image.fromarray(np.clip(np.round(out), 0, 255).astype(np.uint8), mode=img.mode)


def gaussian_noise(img: Image.Image, level: float, rng: random.Random) -> Image.Image:
    std = 0.1 * 255 * level * rng.uniform(0.5, 1.0)
    array = np.asarray(img, dtype=np.float32)
    noise = np.random.default_rng(rng.getrandbits(64)).normal(0.0, std, array.shape)
    return Image.fromarray(np.clip(array + noise, 0, 255).round().astype(np.uint8), mode=img.mode)


# --- colour (PIL's ImageEnhance and ImageOps) ---------------------------------------------

def color(img: Image.Image, level: float, rng: random.Random) -> Image.Image:
    return ImageEnhance.Color(img).enhance(1 + _signed(0.9 * level, rng))  # a no-op on 'L'


def contrast(img: Image.Image, level: float, rng: random.Random) -> Image.Image:
    return ImageEnhance.Contrast(img).enhance(1 + _signed(0.9 * level, rng))


def brightness(img: Image.Image, level: float, rng: random.Random) -> Image.Image:
    return ImageEnhance.Brightness(img).enhance(1 + _signed(0.9 * level, rng))


def sharpness(img: Image.Image, level: float, rng: random.Random) -> Image.Image:
    return ImageEnhance.Sharpness(img).enhance(1 + _signed(0.9 * level, rng))


def posterize(img: Image.Image, level: float, rng: random.Random) -> Image.Image:
    return ImageOps.posterize(img, max(1, 8 - round(6 * level)))  # 8 bits at level 0, 2 at level 1


def invert(img: Image.Image, level: float, rng: random.Random) -> Image.Image:
    return ImageOps.invert(img)


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
            raise UsageError(f"--augment_n {n} must be between 1 and the number of ops ({len(self.ops)}).")
        if not 0 <= m <= 10:
            raise UsageError(f"--augment_m {m} must be between 0 and 10 (PARSeq trains with 5).")
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
        raise UsageError(f"--augment {name!r} is not one of {sorted(AUGMENTATIONS)}.")
    policy = AUGMENTATIONS[name]
    return None if policy is None else policy(n, m)


def sample_rng(seed: int, stream: int, position: int) -> random.Random:
    """The generator of one training sample: a function of the run's seed, the dataset's number in
    --select_data and the sample's position in the endless sampler stream (string seeds are
    hashed with SHA-512, so this is the same in every process)."""
    return random.Random(f"augment:{seed}:{stream}:{position}")
