"""Write a model's wrong predictions out for a person to look at (``test.py --save_errors DIR``).

    DIR/errors.tsv    index, image, label, prediction, confidence (one row per wrong prediction)
    DIR/images/*.png  the images as the model saw them (after resizing and padding)
    DIR/index.html    a gallery of the same, images linked by relative path
"""
from __future__ import annotations

import csv
import html
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from evaluation import ValidationResult, normalize_for_scoring


def to_pil(image: torch.Tensor) -> Image.Image:
    """[C, H, W] in [-1, 1] (the loader's normalisation) → a grey or RGB PIL image."""
    array = ((image.detach().float().cpu() * 0.5 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    array = array.permute(1, 2, 0).numpy()  # [H, W, C]
    return Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else np.ascontiguousarray(array))


def wrong_indices(result: ValidationResult, case_insensitive: bool) -> list[int]:
    """Indices whose prediction does not match the label under the scoring validation used."""
    def norm(text: str) -> str:
        return normalize_for_scoring(text) if case_insensitive else text
    return [i for i, (gt, pred) in enumerate(zip(result.labels, result.preds)) if norm(gt) != norm(pred)]


def write_errors(result: ValidationResult, out_dir: str | os.PathLike, case_insensitive: bool = False) -> int:
    """Write every wrong prediction of ``result`` (validation with ``keep_all=True``); → how many."""
    if len(result.images) != len(result.labels):
        raise ValueError("write_errors needs the images: run validation(..., keep_all=True)")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    wrong = wrong_indices(result, case_insensitive)
    rows = []
    for i in wrong:
        name = f"images/{i:06d}.png"
        to_pil(result.images[i]).save(out / name)
        rows.append((i, name, result.labels[i], result.preds[i], result.confidences[i]))
    with open(out / "errors.tsv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_MINIMAL, lineterminator="\n")
        writer.writerow(["index", "image", "label", "prediction", "confidence"])
        writer.writerows((i, name, gt, pred, f"{conf:.4f}") for i, name, gt, pred, conf in rows)
    (out / "index.html").write_text(gallery(rows, len(result.labels), case_insensitive), encoding="utf-8")
    return len(rows)


def gallery(rows, total: int, case_insensitive: bool) -> str:
    scoring = "case-insensitive alphanumeric" if case_insensitive else "exact"
    cells = "\n".join(
        f"<tr><td>{i}</td><td><img src=\"{html.escape(name)}\"></td><td><code>{html.escape(gt)}</code></td>"
        f"<td><code>{html.escape(pred)}</code></td><td>{conf:.4f}</td></tr>"
        for i, name, gt, pred, conf in rows)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>Wrong predictions</title>
<style>body{{font-family:sans-serif}} td{{padding:4px 10px;border-bottom:1px solid #ddd}}
img{{image-rendering:pixelated;border:1px solid #999}} code{{font-size:1.2em;white-space:pre}}</style></head>
<body><h1>{len(rows)} wrong of {total} ({scoring} scoring)</h1>
<table><tr><th>index</th><th>image (as the model saw it)</th><th>label</th><th>prediction</th><th>confidence</th></tr>
{cells}
</table></body></html>
"""
