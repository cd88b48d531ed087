"""Reading padded batches without computing their padding again and again: exact, faster.

A ``--PAD`` image is resized to keep its aspect ratio and padded to ``imgW`` by repeating its last
column (the reference's NormalizePAD): english_g2 reads IIIT5K words whose text ends, on average, at
158 of its 256 columns. A convolutional feature extractor whose output column ``j`` depends only on the
input columns ``stride*j - left`` to ``stride*j + right`` (its ``column_window``, modules/registry.py)
gives the same feature column wherever that window lies wholly in the repeated columns and away from the
right edge. So the reading removes ``k * stride`` of those columns from the images, runs the extractor
on the narrower batch, and repeats one such feature column ``k`` times where they were: the sequence
model and the head then see exactly the features of the full batch. The images of a batch are grouped
by where their padding starts, each group cut as far as its widest text allows.

    columns j < cut      : windows left of the cut, or over repeated columns on both sides: unchanged
    cut ≤ j < cut + k    : windows wholly in repeated columns, clear of the right edge: equal to column ``cut``
    j ≥ cut + k          : the same windows, shifted by the removed k * stride columns

The readings are those of the full batch (tests/test_trimming.py: equal features, logits within
float rounding); only Transformation None qualifies (TPS resamples the whole image).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from dataset import IMAGE_ERRORS
from modules.registry import stage

# A group costs as much as this many full-width images more than its columns (one more call of the model):
# fewer, larger groups below it.
GROUP_COST_IMAGES = 4


def column_window(config) -> tuple[int, int, int] | None:
    """The feature extractor's (stride, left, right) when ``config``'s readings can be trimmed, else None."""
    if config.Transformation != "None":
        return None
    return stage("FeatureExtraction", config.FeatureExtraction).column_window


def padding_starts(image: torch.Tensor) -> torch.Tensor:
    """[B] the first column from which every column of each image [B, C, H, W] equals its last one."""
    same = (image == image[..., -1:]).flatten(1, 2).all(1)  # [B, W]: column equals the last column
    trailing = same.flip(1).int().cumprod(1).sum(1)  # the run of equal columns at the right end (≥ 1)
    return image.size(3) - trailing


@dataclass(frozen=True)
class Cut:
    """Remove ``removed`` image columns from ``start``; then repeat feature column ``column`` ``repeats``
    times (``repeats * stride == removed``)."""

    start: int
    removed: int
    column: int
    repeats: int

    def narrow(self, image: torch.Tensor) -> torch.Tensor:
        return torch.cat([image[..., :self.start], image[..., self.start + self.removed:]], dim=3)


def plan_cut(padding_start: int, width: int, window: tuple[int, int, int], min_width: int) -> Cut | None:
    """The widest cut for images whose repeated columns start at ``padding_start`` (None: nothing to gain)."""
    stride, left, right = window
    column = -(-(padding_start + left) // stride)  # the first column whose window is all repeated columns
    repeats = (width - right - 1) // stride - column  # windows up to column + repeats stay clear of the edge
    if repeats <= 0 or width - repeats * stride < min_width:
        return None
    return Cut(padding_start, repeats * stride, column, repeats)


def plan_groups(starts: list[int], width: int, window: tuple[int, int, int], min_width: int,
                group_cost: int = GROUP_COST_IMAGES) -> list[tuple[list[int], Cut | None]]:
    """Group the images (by index) whose padding starts at ``starts[i]``: sorted by start, split where the
    columns computed plus ``group_cost`` full images per group are fewest → [(indices, cut)]."""
    order = sorted(range(len(starts)), key=lambda i: starts[i])
    n = len(order)
    # a group order[a:b] is cut as its widest text, order[b - 1], allows
    cuts = [None] + [plan_cut(starts[order[b - 1]], width, window, min_width) for b in range(1, n + 1)]
    widths = [width - (cut.removed if cut else 0) for cut in cuts]
    best = [0.0] + [float("inf")] * n  # best[b]: the cost of grouping order[:b]
    split = [0] * (n + 1)
    for b in range(1, n + 1):
        for a in range(b):
            cost = best[a] + (b - a) * widths[b] + group_cost * width
            if cost < best[b]:
                best[b], split[b] = cost, a
    groups, b = [], n
    while b > 0:
        a = split[b]
        groups.append(([order[i] for i in range(a, b)], cuts[b]))
        b = a
    return groups[::-1]


def trimmed_reader(model, config):
    """``model`` as a TrimmedReader where its reading can be trimmed, else ``model`` itself: an ONNX Runtime
    graph exported with the cut's inputs (the --runtime onnx cache) whose feature extractor declares its
    column window. PyTorch models read whole batches: oneDNN's convolutions do not get faster in proportion
    to the width (english_g2's VGG on 192 images: 2.2 s at 256 columns, 2.5 s at 200, on AMD EPYC)."""
    window = column_window(config)
    if window is None or not getattr(model, "trimmed", False):
        return model
    return TrimmedReader(model, config, window)


def by_aspect_ratio(paths: list[str]) -> list[str]:
    """``paths`` ordered by their images' width / height (read from the headers, not decoded; an unreadable
    file last, reported when it is read): batches of alike widths, whose padding trims alike."""
    def ratio(path: str) -> float:
        try:
            with Image.open(path) as image:
                width, height = image.size
            return width / max(height, 1)
        except IMAGE_ERRORS:
            return float("inf")

    return sorted(paths, key=ratio)


class TrimmedReader:
    """``model(image, text, is_train=False)`` → the logits of the full batch, computing each group's repeated
    padding once. ``model`` is a PyTorch ``Model`` or an ``OnnxModel`` exported with the cut's inputs
    (``onnx_model.export_onnx(..., trimmed=True)``); other attributes are the model's."""

    def __init__(self, model, config, window: tuple[int, int, int]):
        self.model, self.config, self.window = model, config, window
        self.min_width = stage("FeatureExtraction", config.FeatureExtraction).min_input[1]
        self.onnx = hasattr(model, "session")

    def __getattr__(self, name):
        return getattr(self.model, name)

    def groups(self, image: torch.Tensor) -> list[tuple[list[int], Cut | None]]:
        return plan_groups(padding_starts(image).tolist(), image.size(3), self.window, self.min_width)

    @property
    def encode(self):
        """PyTorch: image → the contextual features [B, T, C] of the full batch (the attention beam search's
        input). An ONNX graph has none (AttributeError): decoding.decode then refuses the beam search."""
        if self.onnx:
            raise AttributeError("encode")
        return lambda image: self._run(image, self.model.encode)

    def __call__(self, image: torch.Tensor, text: torch.Tensor | None = None, is_train: bool = False):
        if is_train:
            raise ValueError("TrimmedReader reads; train the model itself")
        return self._run(image, lambda part, cut: self.model(part, None if text is None else text[:part.size(0)],
                                                              False, cut=cut))

    def _run(self, image: torch.Tensor, forward) -> torch.Tensor:
        """``forward(images, (column, repeats))`` over each group, the results put back in the batch's order."""
        groups = self.groups(image)
        if len(groups) == 1 and groups[0][1] is None:
            return forward(image, (0, 0))
        out = None
        for indices, cut in groups:
            index = torch.tensor(indices, device=image.device)
            part = image.index_select(0, index)
            result = forward(part, (0, 0)) if cut is None else forward(cut.narrow(part), (cut.column, cut.repeats))
            if out is None:
                out = result.new_empty((image.size(0), *result.shape[1:]))
            out[index] = result
        return out
