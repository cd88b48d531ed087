"""Read word images with an exported model, using only numpy, onnxruntime and Pillow (no torch).

    python export.py --saved_model english_g2 --format onnx --output english_g2.onnx
    python onnx_infer.py english_g2.onnx word1.png word2.jpg

Prints ``path<TAB>prediction`` per image. Everything it needs (input size, padding, character
set, decoder) is in the .onnx file's ``str_toolkit`` metadata; preprocessing and greedy
decoding are those of demo.py, so the strings are the same. An image that is missing, unreadable
or not a regular file (a FIFO, a device) is reported on stderr and the others are read, as demo.py
does; a model file that cannot be used ends with one ``error:`` line and exit status 1 (2 for a
wrong command line).

This file stays standalone (it is copied next to a deployed model): it imports nothing from the
toolkit, so it reports its errors itself, by the toolkit's rules.
"""
from __future__ import annotations

import json
import math
import os
import platform
import stat
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image, UnidentifiedImageError

VNNI_CPU_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}  # x86 int8 kernels that accumulate in int32
CONFIG_KEYS = ("input_channel", "imgH", "imgW", "PAD", "character", "Prediction")
# The reading rule of the files exported before the metadata carried its own ("readout"), by their head.
EARLIER_READOUTS = {"CTC": {"rule": "frames", "specials": ["[CTCblank]"], "blank": 0},
                    "Attn": {"rule": "steps", "specials": ["[GO]", "[s]"], "end": 1},
                    "PARSeq": {"rule": "steps", "specials": ["[E]"], "end": 0}}


class OnnxFileError(ValueError):
    """A model file that cannot be used: the message names it and says what is wrong."""


def special_kind(path: str) -> str | None:
    """None for a regular file; else what it is, found by os.stat without opening it (a FIFO would block)."""
    mode = os.stat(path).st_mode
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    return "a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a special file (device or socket)"


def load(path: str) -> tuple[ort.InferenceSession, dict]:
    """The session and the model's configuration, checked when the file is opened: a file that is not
    a runnable graph, or whose character set does not match its output classes, is refused here."""
    check_model_file(path)
    try:
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime's errors have no common public base
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise OnnxFileError(f"{path} is not a usable ONNX model ({reason}); export it again with export.py "
                            "--format onnx") from None
    meta = session.get_modelmeta().custom_metadata_map
    if "str_toolkit" not in meta:
        raise OnnxFileError(f"{path} has no str_toolkit metadata; export it with export.py --format onnx")
    try:
        info = json.loads(meta["str_toolkit"])
        config = info["config"]
        missing = [k for k in CONFIG_KEYS if k not in config]
        readout = info.get("readout") or EARLIER_READOUTS.get(config["Prediction"])
        if missing or not isinstance(readout, dict) or readout.get("rule") not in ("frames", "steps"):
            raise ValueError(f"missing {missing}" if missing else f"no reading rule for {config['Prediction']!r}")
        config = {**config, "readout": readout}
    except (ValueError, KeyError, TypeError) as e:
        raise OnnxFileError(f"{path}: its str_toolkit metadata is not a model configuration ({e}); export it "
                            "again with export.py --format onnx") from None
    check_classes(path, session, config)
    warn_if_saturating(path, json.loads(meta["str_toolkit"]).get("quantized"))
    return session, config


def cpu_flags() -> set[str]:
    """The CPU feature flags of /proc/cpuinfo (empty where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return {flag for line in f if line.startswith("flags") for flag in line.split(":", 1)[1].split()}
    except OSError:
        return set()


def warn_if_saturating(path: str, quantized) -> None:
    """An int8 file with 8-bit weights (``reduce_range`` false, or not recorded) on an x86 CPU without VNNI:
    ONNX Runtime's u8s8 kernels add product pairs in int16 there, which saturates (see export.py)."""
    if not quantized or (isinstance(quantized, dict) and quantized.get("reduce_range")):
        return
    flags = cpu_flags()
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686") or not flags or flags & VNNI_CPU_FLAGS:
        return
    print(f"warning: {path}: this int8 model was quantised with 8-bit weights (without reduce_range), and this CPU "
          "has no VNNI: ONNX Runtime's int8 kernels saturate here and the model can read several points worse "
          "than fp32. Re-export it with export.py --quantize int8 (7-bit weights by default), or use the fp32 "
          ".onnx", file=sys.stderr)


def check_model_file(path: str) -> None:
    try:
        kind = special_kind(path)
    except FileNotFoundError:
        raise OnnxFileError(f"{path} does not exist") from None
    if kind is not None:
        raise OnnxFileError(f"{path} is {kind}, not an .onnx file")


def check_classes(path: str, session: ort.InferenceSession, config: dict) -> None:
    outputs = [o for o in session.get_outputs() if o.name == "logits"]
    if not outputs or len(outputs[0].shape) != 3:
        raise OnnxFileError(f"{path} has no 'logits' output [batch, steps, classes]; export it with export.py")
    classes = outputs[0].shape[2]
    expected = len(config["character"]) + len(config["readout"]["specials"])
    if isinstance(classes, int) and classes != expected:
        raise OnnxFileError(f"{path}: the graph predicts {classes} classes but its metadata's character set "
                            f"({len(config['character'])} characters, {config['Prediction']}) gives {expected}; "
                            "the metadata does not belong to this graph. Export it again with export.py")
    inputs = [i for i in session.get_inputs() if i.name == "image"]
    shape = inputs[0].shape if inputs else []
    if len(shape) != 4 or any(isinstance(shape[axis], int) and shape[axis] != config[key]
                              for axis, key in ((1, "input_channel"), (2, "imgH"))):
        raise OnnxFileError(f"{path}: its 'image' input {shape} does not take the [batch, {config['input_channel']}, "
                            f"{config['imgH']}, width] images its metadata describes; export it again with export.py")


def preprocess(image: Image.Image, config: dict) -> np.ndarray:
    """→ [C, imgH, imgW] float32 in [-1, 1]: plain resize, or keep-ratio resize + replicate padding (PAD); Pillow's
    bicubic, or cv2's bilinear ("resize": "bilinear"); colour channels reversed for "channel_order": "BGR"."""
    image = image.convert("RGB" if config["input_channel"] == 3 else "L")
    height, width = config["imgH"], config["imgW"]
    method = config.get("resize", "bicubic")
    if config["PAD"]:
        w, h = image.size
        resized_w = min(width, math.ceil(height * w / h))
        array = resized(image, resized_w, height, method)
        array = np.pad(array, ((0, 0), (0, width - resized_w), (0, 0)), mode="edge")
    else:
        array = resized(image, width, height, method)
    if config.get("channel_order", "RGB") == "BGR" and array.shape[2] == 3:
        array = array[..., ::-1]
    # Same float operations as the toolkit's AlignCollate: /255, -0.5, /0.5.
    return ((array.transpose(2, 0, 1).astype(np.float32) / np.float32(255)) - np.float32(0.5)) / np.float32(0.5)


def resized(image: Image.Image, width: int, height: int, method: str) -> np.ndarray:
    """[height, width, C] uint8."""
    if method != "bilinear":
        return np.asarray(image.resize((width, height), Image.BICUBIC), dtype=np.uint8).reshape(height, width, -1)
    array = np.asarray(image, dtype=np.uint8)
    return resize_bilinear(array.reshape(array.shape[0], array.shape[1], -1), width, height)


def resize_bilinear(array: np.ndarray, width: int, height: int) -> np.ndarray:
    """cv2's INTER_LINEAR in floating point: a copy of dataset.resize_bilinear (this file imports nothing of the
    toolkit's; tests/test_releases.py checks that the two agree)."""
    def axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        low = np.floor(pos).astype(np.int64)
        frac = pos - low
        frac[low < 0] = 0
        low = np.clip(low, 0, n_in - 1)
        frac[low >= n_in - 1] = 0
        return low, np.minimum(low + 1, n_in - 1), frac

    x0, x1, fx = axis(array.shape[1], width)
    y0, y1, fy = axis(array.shape[0], height)
    a = array.astype(np.float64)
    rows = a[:, x0] * (1 - fx)[None, :, None] + a[:, x1] * fx[None, :, None]  # [H, width, C]
    out = rows[y0] * (1 - fy)[:, None, None] + rows[y1] * fy[:, None, None]  # [height, width, C]
    return np.clip(np.floor(out + 0.5), 0, 255).astype(np.uint8)


def decode(logits: np.ndarray, config: dict) -> list[str]:
    """Greedy decoding by the rule the export recorded ("readout"): the classes are its special tokens, then the
    characters. "frames" (CTC): merge repeats, drop the blank. "steps" (Attn, PARSeq): cut at the end class."""
    readout = config.get("readout") or EARLIER_READOUTS[config["Prediction"]]
    classes = list(readout["specials"]) + list(config["character"])
    texts = []
    for row in logits.argmax(axis=2):
        if readout["rule"] == "frames":
            blank = readout["blank"]
            texts.append("".join(classes[c] for t, c in enumerate(row) if c != blank and (t == 0 or c != row[t - 1])))
        else:
            ends = np.flatnonzero(row == readout["end"])
            row = row[:ends[0]] if len(ends) else row
            texts.append("".join(classes[c] for c in row))
    return texts


IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


def open_image(path: str, config: dict) -> np.ndarray | None:
    """The preprocessed image, or None after a warning on stderr (missing, unreadable, a FIFO...)."""
    try:
        kind = special_kind(path)
        if kind is not None:
            raise ValueError(f"it is {kind}, not a regular file")
        with Image.open(path) as image:
            return preprocess(image, config)
    except UnidentifiedImageError:
        problem = "not an image Pillow can read"
    except FileNotFoundError:
        problem = "does not exist"
    except IMAGE_ERRORS as e:
        problem = str(e)
    print(f"warning: unreadable image {path}: {problem}; skipped", file=sys.stderr)
    return None


def read(model_path: str, image_paths: list[str]) -> list[tuple[str, str]]:
    """→ [(image path, prediction)] for the images that could be read, in the given order."""
    session, config = load(model_path)
    images = [(p, open_image(p, config)) for p in image_paths]
    readable = [(p, a) for p, a in images if a is not None]
    if not readable:
        raise OnnxFileError(f"none of the {len(image_paths)} images could be read")
    try:
        (logits,) = session.run(["logits"], {"image": np.stack([a for _, a in readable])})
    except Exception as e:  # noqa: BLE001 - onnxruntime's errors have no common public base
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise OnnxFileError(f"{model_path}: ONNX Runtime failed on the images ({reason}); export the model "
                            "again with export.py --format onnx") from None
    return list(zip([p for p, _ in readable], decode(logits, config)))


def main(argv: list[str] | None = None) -> list[tuple[str, str]]:
    """Print ``path<TAB>prediction`` per readable image; errors as one ``error:`` line on stderr."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) < 2:
        print("usage: python onnx_infer.py MODEL.onnx IMAGE [IMAGE ...]", file=sys.stderr)
        raise SystemExit(2)
    try:
        results = read(argv[0], argv[1:])
    except OnnxFileError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
    for path, text in results:
        print(f"{path}\t{text}")
    return results


if __name__ == "__main__":
    main()
