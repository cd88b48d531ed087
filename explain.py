"""See inside a reading: what each stage did to a word image, as pictures and as data.

    with explaining(model) as record:          # the stages' hooks, installed only here
        logits = forward_logits(model, image, config)
    record["rectified"], record["attention"], ...   # what the stages declared (modules/registry.VIEWS)

``explain_batch`` reads a batch that way and returns one ``Explained`` per image: the reading, the views
the model has (TPS's rectified image and fiducials, the attention heads' weights per character, CTC's
best class per frame) and each character's horizontal span. ``draw_panel`` draws one image's views as a
PNG; ``write_explanations`` writes the panels, ``spans.json`` and an ``index.html`` that sorts and filters
them offline (demo.py / test.py ``--explain DIR``, test.py ``--save_errors``, study.py ``--explain K``).
Nothing here runs unless asked: a plain reading installs no hook and collects nothing.
"""
from __future__ import annotations

import html
import json
import math
import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from decoding import Decoded, DecodeOptions, decode, decode_logits, forward_logits, greedy
from evaluation import normalize_for_scoring
from modules.registry import KINDS, Stage, head, stage

SCALE_HEIGHT = 64  # panels draw the model's input this many pixels high
LABEL_WIDTH = 96  # the panel's left column, naming each row
ERROR_KINDS = ("substitution", "insertion", "deletion", "case")
PALETTE = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180), (70, 240, 240),
           (240, 50, 230), (128, 128, 0), (0, 128, 128), (170, 110, 40)]


@contextmanager
def explaining(model) -> Iterator[dict]:
    """Install every stage's ``explain_hooks`` for the duration; yields the record they fill
    ({view: [one tensor per forward call]}, ``modules.registry.VIEWS``). The hooks are removed on exit."""
    record: dict = {}
    handles = []
    for kind in KINDS:
        module = getattr(model, kind, None)
        if isinstance(module, Stage):
            handles += module.explain_hooks(record)
    try:
        yield record
    finally:
        for handle in handles:
            handle.remove()


def model_views(config) -> tuple[str, ...]:
    """What the model of ``config`` can show: the views its four stages declare."""
    return tuple(v for kind in KINDS for v in stage(kind, getattr(config, kind)).views)


@dataclass
class CharSpan:
    """One character's horizontal extent in the model's input, pixels [x0, x1), and where it was read."""

    char: str
    x0: float
    x1: float
    confidence: float
    source: tuple[int, int]  # the feature columns [first, last] it was read from (CTC frames, attention peak)


@dataclass
class Explained:
    """One image's reading with what its model can show of it (arrays on the CPU)."""

    name: str
    image: np.ndarray  # uint8 [H, W] or [H, W, 3]: the input as the model receives it (resized, padded)
    decoded: Decoded
    greedy_text: str  # the reading the views and spans are of (the beam's may differ)
    spans: list[CharSpan]
    grid: tuple[int, int]  # how the T feature tokens lie over the image (rows, columns)
    rectified: np.ndarray | None = None  # uint8, like ``image``
    fiducials: np.ndarray | None = None  # [F, 2] in [-1, 1]
    sampling_grid: np.ndarray | None = None  # [H, W, 2] in [-1, 1]
    attention: list[np.ndarray] = field(default_factory=list)  # per pass [steps, T]
    frames: tuple[np.ndarray, np.ndarray] | None = None  # best class [T], its probability [T]
    classes: list[str] = field(default_factory=list)  # the head's class names (frames' labels)
    label: str | None = None
    dataset: str = ""
    original_size: tuple[int, int] | None = None  # (w, h) of the file, when known
    pad: bool = False  # the input keeps the file's ratio, padded on the right (--PAD)

    def span_records(self) -> dict:
        """The characters' spans in the original image's pixels (the model input's when the file's size is
        unknown): the JSON of ``--explain`` and the lines of ``--char_boxes``."""
        H, W = self.image.shape[:2]
        to_original, (w, h), where = self.original_mapping()
        chars = [{"char": s.char, "x0": round(to_original(s.x0), 1), "x1": round(to_original(s.x1), 1),
                  "confidence": round(s.confidence, 4)} for s in self.spans]
        out = {"image": self.name, "text": self.decoded.text, "confidence": round(self.decoded.confidence, 4),
               "coordinates": where, "width": w, "height": h, "chars": chars}
        if self.greedy_text != self.decoded.text:
            out["chars_of"] = self.greedy_text  # the spans are those of the greedy reading
        return out

    def original_mapping(self):
        """→ (model-input x → original x, (w, h), the name of the coordinates)."""
        H, W = self.image.shape[:2]
        if self.original_size is None:
            return (lambda x: x), (W, H), "model input"
        w, h = self.original_size
        resized = min(W, math.ceil(H * w / h)) if self.pad else W  # dataset._resize_pad's width
        return (lambda x: min(max(x, 0.0), resized) * w / resized), (w, h), "original"


# ----------------------------------------------------------------------------------------- reading

def input_array(image: torch.Tensor) -> np.ndarray:
    """[C, H, W] in [-1, 1] (the loader's normalisation) → uint8 [H, W] (grey) or [H, W, 3]."""
    array = ((image.detach().float().cpu() * 0.5 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    array = array.permute(1, 2, 0).numpy()  # [H, W, C]
    return array[:, :, 0] if array.shape[2] == 1 else np.ascontiguousarray(array)


def explain_batch(model, image: torch.Tensor, config, options: DecodeOptions = DecodeOptions(),
                  amp_dtype: torch.dtype | None = None, names: list[str] | None = None) -> list[Explained]:
    """Read ``image`` [B, C, H, W] as ``decoding.decode`` does and collect what the stages show.

    The views come from the greedy forward (the hooks watch it); a beam search's reading, when asked for,
    is decoded from the same logits (CTC) or by running the decoder again (Attn), and may differ from the
    greedy reading the views show (``Explained.greedy_text``).
    """
    with explaining(model) as record, torch.inference_mode():
        logits = forward_logits(model, image, config, amp_dtype)  # [B, T or steps, C]
    greedy_read = greedy(logits, config)
    if options.plain_greedy:
        decoded = greedy_read
    elif head(config.Prediction).beam == "decoder":
        with torch.inference_mode():
            decoded = decode(model, image, config, options, amp_dtype).results
    else:
        decoded = decode_logits(logits, config, options)
    prediction = head(config.Prediction)
    classes = prediction.converter(config.character).character
    probs, best = F.softmax(logits.float(), dim=2).max(dim=2)  # [B, T]
    W = image.size(3)
    out = []
    for b, (d, g) in enumerate(zip(decoded, greedy_read)):
        ex = Explained(names[b] if names else str(b), input_array(image[b]), d, g.text, [], (1, 1),
                       classes=classes, pad=config.PAD)
        if "rectified" in record:
            ex.rectified = input_array(record["rectified"][0][b])
            ex.sampling_grid = record["sampling_grid"][0][b].numpy()
        if "fiducials" in record:
            ex.fiducials = record["fiducials"][0][b].numpy()
        ex.attention = [p[b].numpy() for p in record.get("attention", [])]
        if "frames" in prediction.views:
            ex.frames = (best[b].cpu().numpy(), probs[b].cpu().numpy())
        tokens = ex.attention[0].shape[1] if ex.attention else logits.size(1)
        ex.grid = stage("FeatureExtraction", config.FeatureExtraction).token_grid(config, tokens)
        ex.spans = character_spans(ex, g.char_confidences, W)
        out.append(ex)
    return out


def explain_images(model, images: list[torch.Tensor], config, options: DecodeOptions, device,
                   amp_dtype=None, names: list[str] | None = None, batch_size: int = 64) -> list[Explained]:
    """``explain_batch`` over a list of image tensors [C, H, W] (consecutive ones of one size batched)."""
    names = names or [str(i) for i in range(len(images))]
    out: list[Explained] = []
    start = 0
    while start < len(images):
        end = start + 1
        while end < len(images) and end - start < batch_size and images[end].shape == images[start].shape:
            end += 1
        batch = torch.stack(images[start:end]).to(device)
        out += explain_batch(model, batch, config, options, amp_dtype, names[start:end])
        start = end
    return out


def can_explain(model) -> bool:
    """A PyTorch model of registered stages (not an exported graph, whose stages cannot be watched)."""
    return isinstance(getattr(model, "Prediction", None), Stage)


def explain_results(model, kept: list[tuple[str, object]], config, options: DecodeOptions, device, amp_dtype=None,
                    case_insensitive: bool = False, wrong_only: bool = False) -> list[Explained]:
    """The images of validation results kept with ``keep_all`` ([(set name, ValidationResult)]) explained with
    their labels and set names; ``wrong_only``: the misread ones (the scoring ``case_insensitive`` asks for)."""
    out = []
    for name, result in kept:
        indices = [i for i, (gt, pred) in enumerate(zip(result.labels, result.preds))
                   if not wrong_only or scored_text(gt, case_insensitive) != scored_text(pred, case_insensitive)]
        explained = explain_images(model, [result.images[i] for i in indices], config, options, device, amp_dtype,
                                   names=[f"{name}/{i}" for i in indices])
        for ex, i in zip(explained, indices):
            ex.label, ex.dataset = result.labels[i], name
        out += explained
    return out


def scored_text(text: str, case_insensitive: bool) -> str:
    """``text`` as test.py scores it (``--case_insensitive``: lower-case alphanumerics only)."""
    return normalize_for_scoring(text) if case_insensitive else text


# ------------------------------------------------------------------------------------------ spans

def character_spans(ex: Explained, confidences: list[float], W: int) -> list[CharSpan]:
    """Each character of the greedy reading → its span in the model input's pixels: the frames CTC read it
    from, or the columns around its attention peak (the last pass's; at least half the peak's weight)."""
    text = ex.greedy_text
    rows, cols = ex.grid
    if ex.frames is not None:
        columns, cols = ctc_runs(ex.frames[0]), len(ex.frames[0])
        edges = run_extents(columns, cols)
    elif ex.attention:
        columns = [peak_columns(step.reshape(rows, cols).sum(0)) for step in ex.attention[-1][:len(text)]]
        edges = [(first, last + 1) for first, last in columns]
    else:
        return []
    spans = []
    for char, conf, (first, last), (e0, e1) in zip(text, confidences, columns, edges):
        x0, x1 = e0 * W / cols, e1 * W / cols
        if ex.sampling_grid is not None:
            x0, x1 = through_grid(ex.sampling_grid, x0, x1)
        spans.append(CharSpan(char, x0, x1, conf, (first, last)))
    return spans


def ctc_runs(best: np.ndarray) -> list[tuple[int, int]]:
    """Best class per frame [T] (0 blank) → [first, last] frame of each emitted character (best path)."""
    runs, previous = [], 0
    for t, c in enumerate(best.tolist()):
        if c != 0 and c == previous:
            runs[-1] = (runs[-1][0], t)
        elif c != 0:
            runs.append((t, t))
        previous = c
    return runs


def run_extents(runs: list[tuple[int, int]], T: int) -> list[tuple[float, float]]:
    """Each character's extent in frames: its run widened to the middle of the blank frames between it and its
    neighbours (a CTC character fires on one or two frames of the several its glyph covers); the first and
    the last reach as far out as their inner gaps, within [0, T]."""
    if not runs:
        return []
    cuts = [(last + 1 + first) / 2 for (_, last), (first, _) in zip(runs, runs[1:])]  # between characters
    gap_left = cuts[0] - runs[0][1] - 1 if cuts else 0.5
    gap_right = runs[-1][0] - cuts[-1] if cuts else 0.5
    starts = [max(0.0, runs[0][0] - gap_left)] + cuts
    ends = cuts + [min(float(T), runs[-1][1] + 1 + gap_right)]
    return list(zip(starts, ends))


def peak_columns(profile: np.ndarray) -> tuple[int, int]:
    """The columns around ``profile``'s peak that keep at least half of its weight → [first, last]."""
    peak = int(profile.argmax())
    first = last = peak
    while first > 0 and profile[first - 1] >= profile[peak] / 2:
        first -= 1
    while last < len(profile) - 1 and profile[last + 1] >= profile[peak] / 2:
        last += 1
    return first, last


def through_grid(grid: np.ndarray, x0: float, x1: float) -> tuple[float, float]:
    """Rectified columns [x0, x1) → the input columns the sampling grid [H, W, 2] took them from
    (grid_sample's align_corners: -1 and 1 are the centres of the first and last pixels)."""
    W = grid.shape[1]
    c0, c1 = int(max(0, math.floor(x0))), int(min(W, max(math.ceil(x1), math.floor(x0) + 1)))
    xs = (grid[:, c0:c1, 0] + 1) / 2 * (W - 1)
    return float(np.clip(xs.min(), 0, W)), float(np.clip(xs.max() + 1, 0, W))


def error_kinds(label: str, pred: str) -> list[str]:
    """How ``pred`` differs from ``label``: the edit operations of a shortest alignment (substitution,
    insertion, deletion) or ``case`` when only the case differs; [] when they are equal."""
    if label == pred:
        return []
    if label.lower() == pred.lower():
        return ["case"]
    a, b = label.lower(), pred.lower()
    d = np.zeros((len(a) + 1, len(b) + 1), dtype=np.int32)
    d[:, 0], d[0, :] = np.arange(len(a) + 1), np.arange(len(b) + 1)
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i, j] = min(d[i - 1, j] + 1, d[i, j - 1] + 1, d[i - 1, j - 1] + (a[i - 1] != b[j - 1]))
    kinds, i, j = set(), len(a), len(b)
    while i or j:
        if i and j and d[i, j] == d[i - 1, j - 1] + (a[i - 1] != b[j - 1]):
            kinds |= {"substitution"} if a[i - 1] != b[j - 1] else set()
            i, j = i - 1, j - 1
        elif i and d[i, j] == d[i - 1, j] + 1:
            kinds.add("deletion")  # a label character the reading lacks
            i -= 1
        else:
            kinds.add("insertion")  # a character the reading added
            j -= 1
    return [k for k in ERROR_KINDS if k in kinds]


# ------------------------------------------------------------------------------------------ panel

def _font(size: int = 12) -> ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=size)


def _rgb(array: np.ndarray) -> np.ndarray:
    return np.repeat(array[:, :, None], 3, axis=2) if array.ndim == 2 else array


def _scaled(array: np.ndarray, width: int, height: int) -> Image.Image:
    return Image.fromarray(_rgb(array)).resize((width, height), Image.NEAREST)


def heat_overlay(base: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """uint8 RGB [H, W, 3] tinted red where ``heat`` [H, W] (0..1) is high."""
    alpha = (heat / max(float(heat.max()), 1e-12))[:, :, None] * 0.7
    grey = base.mean(axis=2, keepdims=True)
    return (grey * (1 - alpha) + np.array([255, 0, 0]) * alpha).astype(np.uint8)


def attention_heat(weights: np.ndarray, grid: tuple[int, int], height: int, width: int) -> np.ndarray:
    """One step's weights over the T tokens → [height, width]: each token's weight over the image cell it
    covers (a column of the feature map; ViT: a patch)."""
    rows, cols = grid
    cells = weights.reshape(rows, cols)
    ys = np.minimum((np.arange(height) * rows) // height, rows - 1)
    xs = np.minimum((np.arange(width) * cols) // width, cols - 1)
    return cells[ys][:, xs]


class _Canvas:
    """Rows of pictures, each named in the left column, drawn top to bottom."""

    def __init__(self, width: int):
        self.width, self.rows = width, []

    def add(self, name: str, picture: Image.Image) -> None:
        self.rows.append((name, picture))

    def text(self, lines: list[str], size: int = 13) -> None:
        font = _font(size)
        width = max(self.width - LABEL_WIDTH, *(int(font.getlength(line)) + 6 for line in lines))
        picture = Image.new("RGB", (width, (size + 5) * len(lines) + 4), "white")
        draw = ImageDraw.Draw(picture)
        for i, line in enumerate(lines):
            draw.text((2, 2 + i * (size + 5)), line, fill="black", font=font)
        self.add("", picture)

    def image(self) -> Image.Image:
        height = sum(p.height + 4 for _, p in self.rows) + 4
        width = max(self.width, LABEL_WIDTH + max(p.width for _, p in self.rows) + 4)
        out = Image.new("RGB", (width, height), "white")
        draw, font, y = ImageDraw.Draw(out), _font(11), 4
        for name, picture in self.rows:
            draw.text((4, y + 2), name, fill=(60, 60, 60), font=font)
            out.paste(picture, (LABEL_WIDTH, y))
            y += picture.height + 4
        return out


def draw_panel(ex: Explained, topk: int = 1) -> Image.Image:
    """One image's reading as a picture: the input, TPS's fiducials and rectified image, CTC's frames, each
    character's attention map and span, the confidences and (``topk``) the alternatives."""
    H, W = ex.image.shape[:2]
    scale = SCALE_HEIGHT / H
    h, w = SCALE_HEIGHT, max(1, round(W * scale))
    canvas = _Canvas(LABEL_WIDTH + max(w, 360) + 4)
    canvas.text(_summary_lines(ex, topk))
    canvas.add("input", _with_spans(_scaled(ex.image, w, h), ex.spans, scale))
    if ex.fiducials is not None:
        canvas.add("fiducials", _with_fiducials(_scaled(ex.image, w, h), ex.fiducials))
    if ex.rectified is not None:
        canvas.add("TPS output", _scaled(ex.rectified, w, h))
    if ex.frames is not None:
        canvas.add("CTC frames", _frame_strip(ex, w))
    base = _rgb(ex.rectified if ex.rectified is not None else ex.image)
    if len(ex.attention) > 1:
        header = Image.new("RGB", (len(ex.attention) * (w + 6), 16), "white")
        for p in range(len(ex.attention)):
            ImageDraw.Draw(header).text((p * (w + 6), 1), "decoding" if p == 0 else f"refinement {p}",
                                        fill="black", font=_font(12))
        canvas.add("pass", header)
    steps = min(len(a) for a in ex.attention) if ex.attention else 0
    for i in range(min(steps, len(ex.greedy_text) + 1)):  # one map per character, and the end's
        maps = [_scaled(heat_overlay(base, attention_heat(a[i], ex.grid, H, W)), w, h) for a in ex.attention]
        row = Image.new("RGB", (len(maps) * (w + 6) - 6, h), "white")
        for p, picture in enumerate(maps):
            row.paste(picture, (p * (w + 6), 0))
        char = ex.greedy_text[i] if i < len(ex.greedy_text) else "[end]"
        canvas.add(f"attention\n{char!r}" if i < len(ex.greedy_text) else f"attention\n{char}", row)
    return canvas.image()


def _summary_lines(ex: Explained, topk: int) -> list[str]:
    d = ex.decoded
    lines = [f"read {d.text!r}  confidence {d.confidence:.4f}"]
    if ex.label is not None:
        kinds = error_kinds(ex.label, d.text)
        lines.append(f"label {ex.label!r}  " + ("correct" if not kinds else "wrong: " + ", ".join(kinds)))
    if d.char_confidences:
        lines.append("chars " + " ".join(f"{c}:{p:.2f}" for c, p in zip(d.text, d.char_confidences)))
    if ex.greedy_text != d.text:
        lines.append(f"views and spans: the greedy reading {ex.greedy_text!r}")
    lines += [f"{rank}. {hyp.text!r} {hyp.score:.3f}" for rank, hyp in enumerate(d.nbest[:topk], 1) if topk > 1]
    return lines


def _with_spans(picture: Image.Image, spans: list[CharSpan], scale: float) -> Image.Image:
    """The picture with each character's span as a coloured bar under it, the character on the bar."""
    out = Image.new("RGB", (picture.width, picture.height + 18), "white")
    out.paste(picture, (0, 0))
    draw, font = ImageDraw.Draw(out), _font(12)
    for i, span in enumerate(spans):
        colour = PALETTE[i % len(PALETTE)]
        x0, x1 = span.x0 * scale, max(span.x1 * scale - 1, span.x0 * scale + 1)
        y = picture.height + 2 + (i % 2) * 2
        draw.rectangle([x0, y, x1, y + 3], fill=colour)
        draw.text(((x0 + x1) / 2 - 3, picture.height + 5), span.char, fill=colour, font=font)
    return out


def _with_fiducials(picture: Image.Image, fiducials: np.ndarray) -> Image.Image:
    """The input with the localisation network's control points (normalised x, y) as dots."""
    draw = ImageDraw.Draw(picture)
    for i, (x, y) in enumerate(fiducials.tolist()):
        px, py = (x + 1) / 2 * (picture.width - 1), (y + 1) / 2 * (picture.height - 1)
        draw.ellipse([px - 3, py - 3, px + 3, py + 3], fill=(0, 200, 0) if i < len(fiducials) // 2 else (255, 0, 0),
                     outline="black")
    return picture


def _frame_strip(ex: Explained, width: int) -> Image.Image:
    """CTC's best class per frame as cells aligned with the image width: darker is more probable; blank '·'."""
    best, probs = ex.frames
    T = len(best)
    out = Image.new("RGB", (width, 30), "white")
    draw, font = ImageDraw.Draw(out), _font(10)
    for t, (c, p) in enumerate(zip(best.tolist(), probs.tolist())):
        x0, x1 = t * width / T, (t + 1) * width / T
        shade = int(255 - 200 * p)
        fill = (shade, shade, 255) if c else (235, 235, 235)
        draw.rectangle([x0, 0, x1 - 1, 16], fill=fill)
        draw.text((x0 + 1, 17), ex.classes[c] if c else "·", fill="black", font=font)
    return out


# ------------------------------------------------------------------------------------------- page

def is_correct(ex: Explained, case_insensitive: bool = False) -> bool | None:
    """Whether the reading matches the label (the scoring ``case_insensitive`` asks for); None without one."""
    if ex.label is None:
        return None
    return scored_text(ex.label, case_insensitive) == scored_text(ex.decoded.text, case_insensitive)


def write_explanations(items: list[Explained], out_dir: str | os.PathLike, title: str = "Readings explained",
                       topk: int = 1, case_insensitive: bool = False, panel_names: list[str] | None = None) -> Path:
    """DIR/panels/NNNNNN.png (one per image), DIR/spans.json (each character's span) and DIR/index.html
    (sort and filter by confidence, correct / wrong, error kind and set; offline) → DIR/index.html."""
    out = Path(out_dir)
    (out / "panels").mkdir(parents=True, exist_ok=True)
    cards = []
    for i, ex in enumerate(items):
        name = f"panels/{panel_names[i] if panel_names else f'{i:06d}'}.png"
        draw_panel(ex, topk).save(out / name, compress_level=1)
        correct = is_correct(ex, case_insensitive)
        scored = [] if correct in (None, True) else [scored_text(t, case_insensitive) for t in (ex.label, ex.decoded.text)]
        kinds = error_kinds(*scored) if scored else []
        cards.append(_Card(i, name, ex, correct, kinds))
    with open(out / "spans.json", "w", encoding="utf-8") as f:
        json.dump([ex.span_records() for ex in items], f, ensure_ascii=False, indent=1)
    (out / "index.html").write_text(page(cards, title), encoding="utf-8")
    return out / "index.html"


@dataclass
class _Card:
    index: int
    panel: str
    ex: Explained
    correct: bool | None
    kinds: list[str]


def _counts(cards: list[_Card]) -> str:
    """The summary line: how many read, correct, wrong by kind and by set."""
    parts = [f"{len(cards)} images"]
    labelled = [c for c in cards if c.correct is not None]
    if labelled:
        wrong = [c for c in labelled if not c.correct]
        parts.append(f"{len(labelled) - len(wrong)} correct, {len(wrong)} wrong")
        parts += [f"{k}: {sum(k in c.kinds for c in wrong)}" for k in ERROR_KINDS]
    sets = sorted({c.ex.dataset for c in cards if c.ex.dataset})
    if len(sets) > 1 or labelled and sets:
        parts += [f"{s}: {sum(c.ex.dataset == s for c in cards)} "
                  f"({sum(c.ex.dataset == s and c.correct is False for c in cards)} wrong)" for s in sets]
    return " · ".join(parts)


def page(cards: list[_Card], title: str) -> str:
    """The gallery: one card per image; its controls sort and filter the cards in the browser. The state is
    kept in the address's #fragment (``#sort=conf-asc&show=wrong&kind=deletion&set=svt``), so a view can be
    linked to and a test can open one."""
    sets = sorted({c.ex.dataset for c in cards if c.ex.dataset})
    body = "\n".join(_card_html(c) for c in cards)
    options = lambda values: "".join(f'<option value="{html.escape(v)}">{html.escape(v or "all")}</option>'
                                     for v in values)
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body{{font-family:sans-serif;margin:12px}} #cards{{display:flex;flex-wrap:wrap;gap:10px}}
.card{{border:1px solid #bbb;padding:6px;background:#fafafa}} .card.wrong{{border-color:#d33}}
.card.correct{{border-color:#3a3}} .card img{{display:block}} code{{font-size:1.1em;white-space:pre}}
.meta{{font-size:13px;margin-top:4px}} .hidden{{display:none}} label{{margin-right:12px}}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p id="counts">{html.escape(_counts(cards))}</p>
<p><label>sort <select id="sort"><option value="index">as read</option>
<option value="conf-asc">confidence, lowest first</option><option value="conf-desc">confidence, highest first</option>
</select></label>
<label>show <select id="show">{options(["", "correct", "wrong"])}</select></label>
<label>error kind <select id="kind">{options(["", *ERROR_KINDS])}</select></label>
<label>set <select id="set">{options(["", *sets])}</select></label>
<label>confidence below <input id="below" type="number" min="0" max="1" step="0.05" value="1"></label>
<span id="shown"></span></p>
<div id="cards">
{body}
</div>
<script>
const ids = ["sort", "show", "kind", "set", "below"];
function apply() {{
  const v = Object.fromEntries(ids.map(i => [i, document.getElementById(i).value]));
  const box = document.getElementById("cards");
  const cards = Array.from(box.children);
  const key = c => v.sort === "index" ? +c.dataset.index : +c.dataset.conf;
  cards.sort((a, b) => v.sort === "conf-desc" ? key(b) - key(a) : key(a) - key(b) || a.dataset.index - b.dataset.index);
  let shown = 0;
  for (const c of cards) {{
    const ok = (!v.show || c.dataset.status === v.show) && (!v.kind || c.dataset.kinds.split(" ").includes(v.kind))
      && (!v.set || c.dataset.set === v.set) && +c.dataset.conf < +v.below + 1e-9;
    c.classList.toggle("hidden", !ok);
    shown += ok;
    box.appendChild(c);
  }}
  document.getElementById("shown").textContent = shown + " of " + cards.length + " shown";
  const state = new URLSearchParams(ids.filter(i => v[i] !== document.getElementById(i).defaultValue
    && !(i === "sort" && v[i] === "index") && v[i] !== "").map(i => [i, v[i]])).toString();
  history.replaceState(null, "", state ? "#" + state : location.pathname);
}}
const initial = new URLSearchParams(location.hash.slice(1));
for (const i of ids) {{
  const e = document.getElementById(i);
  if (initial.has(i)) e.value = initial.get(i);
  e.addEventListener("change", apply);
}}
apply();
</script></body></html>
"""


def _card_html(c: _Card) -> str:
    ex, status = c.ex, {None: "", True: "correct", False: "wrong"}[c.correct]
    label = "" if ex.label is None else f" label <code>{html.escape(ex.label)}</code>"
    kinds = f" ({', '.join(c.kinds)})" if c.kinds else ""
    where = f" · {html.escape(ex.dataset)}" if ex.dataset else ""
    return (f'<div class="card {status}" id="card{c.index}" data-index="{c.index}" '
            f'data-conf="{ex.decoded.confidence:.6f}" data-status="{status}" data-kinds="{" ".join(c.kinds)}" '
            f'data-set="{html.escape(ex.dataset)}"><img src="{html.escape(c.panel)}" loading="lazy" alt="">'
            f'<div class="meta">#{c.index} <code>{html.escape(ex.decoded.text)}</code> '
            f'{ex.decoded.confidence:.4f}{label}{kinds}{where}<br>{html.escape(ex.name)}</div></div>')


def write_comparison(out_dir: str | os.PathLike, set_name: str, chosen: list[int], readings: dict) -> Path:
    """study.py --explain: the ``chosen`` words of a set as every cell reads them, one row per word and one
    column per cell (``readings``: cell name → study.CellReading); rows with the most misreadings first.
    → DIR/index.html (DIR/panels/<cell>/<index>.png)."""
    out = Path(out_dir)
    columns = {}
    for cell, r in readings.items():
        explained = explain_images(r.model, [r.result.images[i] for i in chosen], r.config, DecodeOptions(), r.device,
                                   names=[f"{set_name}/{i}" for i in chosen])
        (out / "panels" / cell).mkdir(parents=True, exist_ok=True)
        for ex, i in zip(explained, chosen):
            ex.label, ex.dataset = r.result.labels[i], set_name
            draw_panel(ex).save(out / "panels" / cell / f"{i:06d}.png", compress_level=1)
        columns[cell] = explained
    wrong = {i: [not is_correct(columns[c][n], readings[c].case_insensitive) for c in columns]
             for n, i in enumerate(chosen)}
    rows = sorted(range(len(chosen)), key=lambda n: -sum(wrong[chosen[n]]))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "\n".join(
        f"<tr><td>#{chosen[n]}<br><code>{html.escape(next(iter(columns.values()))[n].label)}</code><br>"
        f"{sum(wrong[chosen[n]])} of {len(columns)} misread</td>"
        + "".join(f'<td class="{"wrong" if w else "correct"}"><img src="panels/{html.escape(c)}/{chosen[n]:06d}.png" '
                  f'loading="lazy"></td>' for c, w in zip(columns, wrong[chosen[n]])) + "</tr>"
        for n in rows)
    (out / "index.html").write_text(f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{html.escape(set_name)} through every cell</title>
<style>body{{font-family:sans-serif}} td{{vertical-align:top;padding:4px;border-bottom:1px solid #ccc}}
td.wrong{{background:#fee}} td.correct{{background:#efe}} code{{font-size:1.2em}}</style></head><body>
<h1>{len(chosen)} words of {html.escape(set_name)}, each cell's worst, read by every cell</h1>
<table><tr><th>word</th>{head}</tr>
{body}
</table></body></html>
""", encoding="utf-8")
    return out / "index.html"
