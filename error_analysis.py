"""Write a model's wrong predictions out for a person to look at (``test.py --save_errors DIR``).

    DIR/errors.tsv    index, image, label, prediction, confidence (one row per wrong prediction)
    DIR/images/*.png  the images as the model saw them (after resizing and padding)
    DIR/index.html    a gallery of the same, images linked by relative path; with the PyTorch model, the
                      explain.py page instead: a panel per misread image of what each stage did, grouped and
                      counted by error kind and by set (DIR/panels/, DIR/spans.json)
"""
from __future__ import annotations

import csv
import html
import os
from pathlib import Path

import torch
from PIL import Image

from evaluation import ValidationResult, normalize_for_scoring
from explain import Explained, input_array, write_explanations


def to_pil(image: torch.Tensor) -> Image.Image:
    """[C, H, W] in [-1, 1] (the loader's normalisation) → a grey or RGB PIL image."""
    return Image.fromarray(input_array(image))


def wrong_indices(result: ValidationResult, case_insensitive: bool) -> list[int]:
    """Indices whose prediction does not match the label under the scoring validation used."""
    def norm(text: str) -> str:
        return normalize_for_scoring(text) if case_insensitive else text
    return [i for i, (gt, pred) in enumerate(zip(result.labels, result.preds)) if norm(gt) != norm(pred)]


def write_errors(result: ValidationResult, out_dir: str | os.PathLike, case_insensitive: bool = False,
                 explained: list[Explained] | None = None) -> int:
    """Write every wrong prediction of ``result`` (validation with ``keep_all=True``); → how many.
    ``explained``: the wrong ones explained (``explain.explain_results``), for the page of panels."""
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
    if explained is None:
        (out / "index.html").write_text(gallery(rows, len(result.labels), case_insensitive), encoding="utf-8")
    else:
        write_explanations(explained, out, f"{len(rows)} wrong of {len(result.labels)} "
                           f"({'case-insensitive alphanumeric' if case_insensitive else 'exact'} scoring)",
                           case_insensitive=case_insensitive, panel_names=[f"{i:06d}" for i, *_ in rows])
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
