"""Read word images with an exported model, using only numpy, onnxruntime and Pillow (no torch).

    python export.py --saved_model english_g2 --format onnx --output english_g2.onnx
    python onnx_infer.py english_g2.onnx word1.png word2.jpg

Prints ``path<TAB>prediction`` per image. Everything it needs (input size, padding, character
set, decoder) is in the .onnx file's ``str_toolkit`` metadata; preprocessing and greedy
decoding are those of demo.py, so the strings are the same.
"""
from __future__ import annotations

import json
import math
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image


def load(path: str) -> tuple[ort.InferenceSession, dict]:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    if "str_toolkit" not in meta:
        raise SystemExit(f"error: {path} has no str_toolkit metadata; export it with export.py --format onnx")
    return session, json.loads(meta["str_toolkit"])["config"]


def preprocess(image: Image.Image, config: dict) -> np.ndarray:
    """→ [C, imgH, imgW] float32 in [-1, 1]: plain resize, or keep-ratio resize + replicate padding (PAD)."""
    image = image.convert("RGB" if config["input_channel"] == 3 else "L")
    height, width = config["imgH"], config["imgW"]
    if config["PAD"]:
        w, h = image.size
        resized_w = min(width, math.ceil(height * w / h))
        array = np.asarray(image.resize((resized_w, height), Image.BICUBIC), dtype=np.uint8)
        array = array.reshape(height, resized_w, -1)
        array = np.pad(array, ((0, 0), (0, width - resized_w), (0, 0)), mode="edge")
    else:
        array = np.asarray(image.resize((width, height), Image.BICUBIC), dtype=np.uint8).reshape(height, width, -1)
    # Same float operations as the toolkit's AlignCollate: /255, -0.5, /0.5.
    return ((array.transpose(2, 0, 1).astype(np.float32) / np.float32(255)) - np.float32(0.5)) / np.float32(0.5)


def decode(logits: np.ndarray, config: dict) -> list[str]:
    """Greedy decoding. CTC: merge repeats, drop blank 0, character i is class i + 1.
    Attn: cut at the first [s] (class 1), character i is class i + 2 (class 0 is [GO])."""
    characters = config["character"]
    texts = []
    for row in logits.argmax(axis=2):
        if config["Prediction"] == "CTC":
            kept = [c for t, c in enumerate(row) if c != 0 and (t == 0 or c != row[t - 1])]
            texts.append("".join(characters[c - 1] for c in kept))
        else:
            ends = np.flatnonzero(row == 1)
            row = row[:ends[0]] if len(ends) else row
            texts.append("".join((["[GO]", "[s]"] + list(characters))[c] for c in row))
    return texts


def read(model_path: str, image_paths: list[str]) -> list[str]:
    session, config = load(model_path)
    batch = np.stack([preprocess(Image.open(p), config) for p in image_paths])
    (logits,) = session.run(["logits"], {"image": batch})
    return decode(logits, config)


def main(argv: list[str] | None = None) -> list[str]:
    """Print ``path<TAB>prediction`` per image. This file stays standalone (it is copied next to a deployed
    model), so it reports a wrong command line itself instead of through the toolkit's ``runtime.run_cli``."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        raise SystemExit("usage: python onnx_infer.py MODEL.onnx IMAGE [IMAGE ...]")
    texts = read(argv[0], argv[1:])
    for path, text in zip(argv[1:], texts):
        print(f"{path}\t{text}")
    return texts


if __name__ == "__main__":
    main()
