"""MJSynth-like synthetic word images: fonts, words and the rendering pipeline.

``create_synth_dataset.py`` is the command line; this module is the library it (and the
tests and ``bench_synth.py``) import.

- Fonts: ``discover_fonts`` scans font folders and keeps only fonts whose cmap holds every
  character that may be rendered (no tofu boxes) and whose glyphs draw real, distinct ink.
  ``split_fonts`` splits them into train / heldout by design family, so a held-out set
  measures fonts never seen in training.
- Words: ``TextSource`` mixes English dictionary words (``english-words``), random
  alphanumeric strings and numbers, in lower, title and upper case.
- Rendering: ``SynthGenerator.sample(seed, stream, index)`` draws every random choice from
  an RNG seeded by ``(seed, stream, index)``, so a dataset is byte-identical for a seed
  whatever the number of worker processes.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import logging
import math
import multiprocessing
import os
import re
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import PIL
from PIL import Image, ImageDraw, ImageFilter, ImageFont

logger = logging.getLogger(__name__)

DEFAULT_FONT_DIRS = ("/usr/share/fonts", "/usr/share/texmf/fonts/opentype", "/usr/local/share/fonts")
FONT_SPLITS = ("train", "heldout", "all")
HELDOUT_EVERY = 5  # one design family in five is held out of training
IMAGE_FORMATS = {"jpeg": "JPEG", "png": "PNG"}
# Hairline, Thin and ExtraLight weights fade to nothing at 32 pixels once blurred or scaled.
LIGHT_STYLES = re.compile(r"hairline|thin|(extra|ultra)[ -]?light", re.IGNORECASE)
MIN_WEIGHT_CLASS = 300
# Bump when the discovery rules change (exclusions, glyph checks, design names): cached font
# lists made by older rules are then ignored.
FONT_CACHE_VERSION = 1

# Fonts whose cmap maps Latin letters to something else (Greek symbols, dingbats, key caps,
# small capitals); the cmap check cannot tell, the family name can.
EXCLUDED_FAMILIES = re.compile(r"symbol|math|dingbat|d050000l|keyboard|nushu|small ?caps|inverted|emoji",
                               re.IGNORECASE)
# Words that name a width, weight or optical size, not a design: "Noto Sans Display" and
# "Inter Display" are the designs "Noto Sans" and "Inter".
STYLE_WORDS = re.compile(r"\b(display|text|light|medium|thin|condensed|narrow|wide|caption|half|italic|book"
                         r"|code|minus|classic|smallcaps|basic|std|pro|no\d|series \w+)\b")
# Metric clones and forks of one design: they must land on the same side of the split.
DESIGN_ALIASES = {
    "nimbus sans": "helvetica", "freesans": "helvetica", "tex gyre": "urw clone",
    "nimbus roman": "times", "freeserif": "times",
    "nimbus mono": "courier", "freemono": "courier",
    "urw bookman": "bookman", "urw gothic": "avant garde", "c059": "century schoolbook",
    "p052": "palatino", "z003": "zapf chancery",
    "arimo": "liberation sans", "tinos": "liberation serif", "cousine": "liberation mono",
    "noto sans": "open sans", "betecknags": "beteckna", "betecknagscondensed": "beteckna",
}
TEX_GYRE_DESIGNS = {"adventor": "avant garde", "bonum": "bookman", "chorus": "zapf chancery",
                    "cursor": "courier", "heros": "helvetica", "pagella": "palatino",
                    "schola": "century schoolbook", "termes": "times"}

# Word lengths of scene text are short; the dictionary's are long. Relative weights for
# lengths 1, 2, ...; longer words share the last weight. Words of 15+ letters are about 2% of
# the dictionary words drawn: squeezed into a 100-pixel crop they are barely legible.
WORD_LENGTH_WEIGHTS = (2, 6, 10, 12, 12, 12, 11, 10, 8, 6, 4, 3, 2, 1.2, 0.8, 0.5, 0.3, 0.2, 0.1, 0.05)
TEXT_KINDS = (("word", 0.70), ("random", 0.15), ("number", 0.15))
CASES = (("lower", 0.5), ("title", 0.3), ("upper", 0.2))


# --- fonts --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class FontInfo:
    path: str
    family: str  # the font's own family name, e.g. "DejaVu Sans Condensed"
    style: str  # e.g. "Bold Oblique"
    design: str  # the design family the train / heldout split goes by, e.g. "dejavu sans"
    characters: frozenset[str] = frozenset()  # checked in the cmap: the font draws all of these

    @property
    def heldout(self) -> bool:
        digest = hashlib.md5(self.design.encode()).digest()
        return int.from_bytes(digest[:4], "little") % HELDOUT_EVERY == 0


def design_family(family: str) -> str:
    """The design a family belongs to: style words dropped, clones merged."""
    key = re.sub(r"[^a-z0-9]+", " ", family.lower()).strip()
    if key.startswith("tex gyre "):
        name = key.split()[2] if len(key.split()) > 2 else ""
        return TEX_GYRE_DESIGNS.get(name, key)
    key = re.sub(r"\s+", " ", STYLE_WORDS.sub(" ", key)).strip()
    key = " ".join(key.split()[:2])
    return DESIGN_ALIASES.get(key, key)


def render_characters(character: str) -> str:
    """Characters that may appear in rendered text: the set itself, plus upper case when the
    set has no upper case (labels are then stored in lower case, as MJSynth is used)."""
    if case_sensitive(character):
        return character
    extra = "".join(c.upper() for c in character if c.upper() != c and c.upper() not in character)
    return character + extra


def case_sensitive(character: str) -> bool:
    return any(c.isupper() for c in character)


@functools.lru_cache(maxsize=512)
def load_font(path: str, size: int) -> ImageFont.FreeTypeFont:
    """Loaded fonts are cached per process, per path and size."""
    return ImageFont.truetype(path, size)


def font_cmap(path: str) -> tuple[set[str], str, str]:
    """(characters in the font's best cmap, family name, style name) via fontTools."""
    cmap, family, style, _ = font_metadata(path)
    return cmap, family, style


def font_metadata(path: str) -> tuple[set[str], str, str, int]:
    """(cmap characters, family name, style name, OS/2 weight class) via fontTools."""
    from fontTools.ttLib import TTFont

    with TTFont(path, lazy=True, fontNumber=0) as font:
        cmap = font.getBestCmap() or {}
        names = font["name"]
        family = names.getDebugName(16) or names.getDebugName(1) or Path(path).stem
        style = names.getDebugName(17) or names.getDebugName(2) or ""
        weight = font["OS/2"].usWeightClass if "OS/2" in font else 400
    return {chr(c) for c in cmap}, family.strip(), style.strip(), weight


def glyph_problem(path: str, chars: str) -> str | None:
    """Why the font's glyphs are unusable (no ink, one shape for many characters), or None."""
    font = load_font(path, 24)
    masks = {}
    for c in chars:
        if c.isspace():
            continue
        mask = font.getmask(c)
        if mask.getbbox() is None:
            return f"no ink for {c!r}"
        masks[c] = (mask.size, bytes(mask))
    if "a" in masks and "A" in masks and masks["a"] == masks["A"]:
        return "'a' and 'A' are one glyph (capitals only)"
    if len(set(masks.values())) < len(masks) - 4:
        return "many characters share one glyph"
    return None


def too_light(style: str, weight: int) -> bool:
    """By style name, or by OS/2 weight class where the font uses the standard 100..900 scale."""
    return bool(LIGHT_STYLES.search(style)) or 100 <= weight < MIN_WEIGHT_CLASS


def list_font_files(font_dirs: Sequence[str | Path]) -> list[Path]:
    files = set()
    for folder in font_dirs:
        folder = Path(folder)
        if folder.is_dir():
            files.update(p for p in folder.rglob("*") if p.suffix.lower() in (".ttf", ".otf") and p.is_file())
    return sorted(files)


@functools.lru_cache(maxsize=8)
def discover_fonts(character: str, font_dirs: tuple[str, ...] = DEFAULT_FONT_DIRS) -> tuple[FontInfo, ...]:
    """Fonts under ``font_dirs`` that can render every character of ``render_characters(character)``.

    The cmap check is the no-tofu guarantee: a font missing any character is dropped, so no
    label can be drawn with a font that lacks one of its characters. Weights lighter than
    Light are dropped as illegible at this size. Fonts that render
    exactly like one already kept (the same file installed twice) are dropped too.

    Checking ~800 fonts takes seconds, so the result is cached on disk (``font_cache_path``),
    keyed by every font file's path, size and mtime and by the character set: adding, removing
    or touching a font file rescans. A cache that cannot be written only costs speed.
    """
    chars = render_characters(character)
    files = list_font_files(font_dirs)
    key = font_cache_key(chars, files)
    cache = font_cache_path(key)
    fonts = load_font_cache(cache, key, chars)
    if fonts is None:
        fonts = scan_fonts(chars, files)
        save_font_cache(cache, key, fonts)
    return fonts


def font_cache_key(chars: str, files: Sequence[Path]) -> str:
    from fontTools import version as fonttools_version

    stats = []
    for path in files:
        try:
            st = path.stat()
        except OSError:
            continue  # vanished between listing and stat; the scan skips it as well
        stats.append((str(path), st.st_size, st.st_mtime_ns))
    return json.dumps({"version": FONT_CACHE_VERSION, "characters": chars, "files": stats,
                       "pillow": PIL.__version__, "fonttools": fonttools_version})


def font_cache_path(key: str) -> Path:
    """``$STR_FONT_CACHE_DIR``, else ``$STR_CACHE_DIR/fonts``, else ``~/.cache/str_toolkit/fonts``."""
    base = os.environ.get("STR_FONT_CACHE_DIR")
    if not base:
        shared = os.environ.get("STR_CACHE_DIR")
        base = Path(shared) / "fonts" if shared else Path.home() / ".cache" / "str_toolkit" / "fonts"
    return Path(base) / f"{hashlib.sha1(key.encode()).hexdigest()}.json"


def load_font_cache(path: Path, key: str, chars: str) -> tuple[FontInfo, ...] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data["key"] != key:
            return None
        return tuple(FontInfo(f["path"], f["family"], f["style"], design_family(f["family"]), frozenset(chars))
                     for f in data["fonts"])
    except (OSError, ValueError, KeyError, TypeError):
        return None  # missing, unreadable or from another layout: rescan


def save_font_cache(path: Path, key: str, fonts: Sequence[FontInfo]) -> None:
    # The design is not stored: it is recomputed, so a change of DESIGN_ALIASES needs no rescan.
    data = {"key": key, "fonts": [{"path": f.path, "family": f.family, "style": f.style} for f in fonts]}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data), encoding="utf-8")
        os.replace(tmp, path)  # atomic: a concurrent reader sees the old file or the new one
    except OSError as e:
        logger.warning("could not write the font cache %s (%s); the next run rescans the fonts", path, e)


def scan_fonts(chars: str, files: Sequence[Path]) -> tuple[FontInfo, ...]:
    """The checks behind ``discover_fonts``, uncached."""
    from fontTools.ttLib import TTLibError

    fonts, fingerprints = [], set()
    for path in files:
        try:
            cmap, family, style, weight = font_metadata(str(path))
            if not set(chars) <= cmap or EXCLUDED_FAMILIES.search(f"{family} {style}"):
                continue
            if too_light(style, weight):
                continue
            if glyph_problem(str(path), chars) is not None:
                continue
            mask = load_font(str(path), 24).getmask("Hamburgefonstiv 0123456789 QRWgjy")
        except (OSError, ValueError, KeyError, AssertionError, TTLibError):
            continue  # unreadable or malformed font file
        fingerprint = hashlib.md5(bytes(mask) + str(mask.size).encode()).digest()
        if fingerprint in fingerprints:
            continue
        fingerprints.add(fingerprint)
        fonts.append(FontInfo(str(path), family, style, design_family(family), frozenset(chars)))
    return tuple(fonts)


def split_fonts(fonts: Sequence[FontInfo], split: str) -> list[FontInfo]:
    """``train``, ``heldout`` (design families never used for training) or ``all``."""
    if split not in FONT_SPLITS:
        raise ValueError(f"unknown font split {split!r}; choose one of {', '.join(FONT_SPLITS)}")
    if split == "all":
        return list(fonts)
    return [f for f in fonts if f.heldout == (split == "heldout")]


def describe_split(fonts: Sequence[FontInfo]) -> str:
    lines = []
    for split in ("train", "heldout"):
        chosen = split_fonts(fonts, split)
        designs = sorted({f.design for f in chosen})
        lines.append(f"{split}: {len(chosen)} fonts, {len(designs)} design families: {', '.join(designs)}")
    return "\n".join(lines)


# --- words --------------------------------------------------------------------------------

def choose(rng: np.random.Generator, table: Sequence[tuple[str, float]]) -> str:
    names, weights = zip(*table)
    return names[rng.choice(len(names), p=np.asarray(weights) / sum(weights))]


@dataclasses.dataclass
class TextSource:
    """Samples (rendered text, label) pairs whose labels only use ``character`` and are at
    most ``batch_max_length`` long."""

    character: str
    batch_max_length: int = 25
    word_lists: tuple[str, ...] = ("web2", "gcide")
    min_len: int = 1
    max_len: int | None = None  # None: batch_max_length

    def __post_init__(self):
        if self.max_len is None:
            self.max_len = self.batch_max_length
        if not 1 <= self.min_len <= self.max_len <= self.batch_max_length:
            raise ValueError(f"label lengths must satisfy 1 <= min_len ({self.min_len}) <= max_len ({self.max_len}) "
                             f"<= batch_max_length ({self.batch_max_length})")
        self.sensitive = case_sensitive(self.character)
        self.render_chars = frozenset(render_characters(self.character))
        self.base_chars = "".join(sorted({c.lower() for c in self.render_chars}))
        self.digits = "".join(c for c in self.base_chars if c.isdigit())
        self.letters = "".join(c for c in self.base_chars if not c.isdigit())
        self.words_by_length = self._load_words()
        lengths = [n for n, words in enumerate(self.words_by_length) if words]
        if not lengths:
            raise ValueError(f"no dictionary word fits the character set {self.character!r}")
        weights = np.array([WORD_LENGTH_WEIGHTS[min(n, len(WORD_LENGTH_WEIGHTS)) - 1] for n in lengths])
        self.word_lengths, self.word_length_p = np.array(lengths), weights / weights.sum()

    def _load_words(self) -> list[list[str]]:
        from english_words import get_english_words_set

        allowed = set(self.base_chars)
        words = get_english_words_set(list(self.word_lists), lower=True, alpha=False)
        by_length: list[list[str]] = [[] for _ in range(self.batch_max_length + 1)]
        for word in sorted(words):  # sorted: set order changes with PYTHONHASHSEED
            if 0 < len(word) <= self.batch_max_length and set(word) <= allowed:
                by_length[len(word)].append(word)
        return by_length

    @property
    def length_range_requested(self) -> bool:
        return self.min_len > 1 or self.max_len < self.batch_max_length

    def sample(self, rng: np.random.Generator) -> tuple[str, str]:
        while True:
            if self.length_range_requested:
                text = self.sized_text(rng, int(rng.integers(self.min_len, self.max_len + 1)))
            else:  # the natural length mixture
                text = self.apply_case(rng, self.base_text(rng))
            if self.min_len <= len(text) <= self.max_len and set(text) <= self.render_chars:
                return text, text if self.sensitive else text.lower()

    def sized_text(self, rng: np.random.Generator, length: int) -> str:
        """Text of exactly ``length`` characters: words, random strings and numbers run together
        ("ParisHotel2019x..."), each piece cased on its own; the last piece is a dictionary word of
        the remaining length where one exists, else it is cut."""
        text = ""
        while len(text) < length:
            remaining = length - len(text)
            piece = self.apply_case(rng, self.base_text(rng))
            if len(piece) > remaining:
                if self.words_by_length[remaining] and rng.random() < 0.8:
                    words = self.words_by_length[remaining]
                    piece = self.apply_case(rng, words[rng.integers(len(words))])
                piece = piece[:remaining]
            text += piece
        return text

    def base_text(self, rng: np.random.Generator) -> str:
        kind = choose(rng, TEXT_KINDS)
        if kind == "word":
            return self.word(rng)
        if kind == "random" or not self.digits:
            return self.random_string(rng, self.base_chars, int(rng.integers(1, 11)))
        return self.number(rng)

    def word(self, rng: np.random.Generator) -> str:
        words = self.words_by_length[rng.choice(self.word_lengths, p=self.word_length_p)]
        return words[rng.integers(len(words))]

    def number(self, rng: np.random.Generator) -> str:
        """Numbers and letter-digit mixtures: '2019', '123456', 'a4b', 'room12', '3d'."""
        style = rng.integers(4)
        if style == 0 or not self.letters:
            return self.random_string(rng, self.digits, int(rng.integers(1, 9)))
        if style == 1:
            word = self.word(rng)[:int(rng.integers(2, 8))]
            digits = self.random_string(rng, self.digits, int(rng.integers(1, 5)))
            return word + digits if rng.random() < 0.7 else digits + word
        if style == 2:
            pool = self.digits + self.letters[:len(self.digits)]
            return self.random_string(rng, pool, int(rng.integers(2, 7)))
        year = str(int(rng.integers(1900, 2031)))
        return year if set(year) <= set(self.digits) else self.random_string(rng, self.digits, 4)

    @staticmethod
    def random_string(rng: np.random.Generator, pool: str, length: int) -> str:
        return "".join(pool[i] for i in rng.integers(len(pool), size=length))

    def apply_case(self, rng: np.random.Generator, text: str) -> str:
        case = choose(rng, CASES)
        cased = {"lower": text, "title": text[:1].upper() + text[1:], "upper": text.upper()}[case]
        return cased if set(cased) <= self.render_chars else text


# --- rendering ----------------------------------------------------------------------------

def luminance(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114]))


def random_colour(rng: np.random.Generator) -> np.ndarray:
    """Mostly muted colours, like paint and print; a third are grey."""
    grey = rng.uniform(0, 255)
    if rng.random() < 0.33:
        return np.full(3, grey)
    return np.clip(grey + rng.normal(0, 60, 3), 0, 255)


def contrasting_colours(rng: np.random.Generator, min_contrast: float = 100) -> tuple[np.ndarray, np.ndarray]:
    """(background, text) colours whose luminances differ by at least ``min_contrast``."""
    for _ in range(20):
        background, text = random_colour(rng), random_colour(rng)
        if abs(luminance(background) - luminance(text)) >= min_contrast:
            return background, text
    return background, np.full(3, 0.0 if luminance(background) > 127 else 255.0)


def draw_layers(rng: np.random.Generator, text: str, font: ImageFont.FreeTypeFont) -> Image.Image:
    """Text masks in one RGB image: R the glyphs, G an optional border, B an optional shadow."""
    size = font.size
    stroke = int(rng.integers(1, max(2, size // 14) + 1)) if rng.random() < 0.1 else 0
    shadow = rng.random() < 0.1
    spacing = rng.uniform(0.05, 0.25) * size if rng.random() < 0.1 else 0.0
    left, top, right, bottom = font.getbbox(text, stroke_width=stroke)
    width = int(right - left + spacing * (len(text) - 1)) + 2 * stroke + 8
    height = int(bottom - top) + 2 * stroke + 8
    origin = (4 + stroke - left, 4 + stroke - top)
    layers = [Image.new("L", (width, height)) for _ in range(3)]
    positions = [origin]
    if spacing:  # letter by letter; kerning is lost, as in letter-spaced signs
        x, positions = origin[0], []
        for char in text:
            positions.append((x, origin[1]))
            x += font.getlength(char) + spacing
    pieces = list(text) if spacing else [text]
    for (x, y), piece in zip(positions, pieces):
        ImageDraw.Draw(layers[0]).text((x, y), piece, font=font, fill=255)
        if stroke:
            ImageDraw.Draw(layers[1]).text((x, y), piece, font=font, fill=255, stroke_width=stroke)
        if shadow:
            dx, dy = rng.integers(1, max(2, size // 12) + 1, size=2)
            ImageDraw.Draw(layers[2]).text((x + dx, y + dy), piece, font=font, fill=255)
    return Image.merge("RGB", layers)


def rotate(rng: np.random.Generator, img: Image.Image) -> Image.Image:
    angle = float(np.clip(rng.normal(0, 2.0), -5, 5))
    return img.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)


def perspective(rng: np.random.Generator, img: Image.Image) -> Image.Image:
    """Mild perspective and shear: each corner of the source quad moves a little."""
    w, h = img.size
    pad = h // 4
    jitter = rng.uniform(-0.12, 0.12, size=(4, 2)) * h
    shear = rng.uniform(-0.3, 0.3) * h
    # QUAD takes the source corners: upper-left, lower-left, lower-right, upper-right.
    corners = np.array([[-pad + shear, -pad], [-pad, h + pad], [w + pad, h + pad], [w + pad + shear, -pad]])
    quad = (corners + jitter).ravel().tolist()
    return img.transform((w + 2 * pad, h + 2 * pad), Image.Transform.QUAD, quad, Image.Resampling.BILINEAR)


def curve(rng: np.random.Generator, img: Image.Image, slices: int = 12) -> Image.Image:
    """A gently curved baseline (an arc), as MESH pieces shifted up or down."""
    w, h = img.size
    amplitude = rng.uniform(0.1, 0.3) * h * rng.choice([-1, 1])
    pad = int(abs(amplitude)) + 1
    xs = np.linspace(0, w, slices + 1)
    offsets = amplitude * (1 - (2 * xs / w - 1) ** 2)  # 0 at the ends, amplitude mid-word
    mesh = []
    for i in range(slices):
        x0, x1 = int(xs[i]), int(xs[i + 1])
        y0, y1 = offsets[i] - pad, offsets[i + 1] - pad
        box = (x0, 0, x1, h + 2 * pad)
        mesh.append((box, (x0, y0, x0, y0 + h + 2 * pad, x1, y1 + h + 2 * pad, x1, y1)))
    return img.transform((w, h + 2 * pad), Image.Transform.MESH, mesh, Image.Resampling.BILINEAR)


def crop_with_margins(rng: np.random.Generator, img: Image.Image, text_height: int) -> Image.Image:
    """Crop around the ink with random margins; now and then cut a pixel or two into it."""
    box = img.getbbox()
    if box is None:
        return img
    left, top, right, bottom = box
    side = rng.uniform(0.0, 0.3, size=2) * text_height
    vertical = rng.uniform(0.0, 0.2, size=2) * text_height
    if rng.random() < 0.1:
        vertical = -rng.uniform(0.0, 0.06, size=2) * text_height
    return img.crop((int(left - side[0]), int(top - vertical[0]), int(right + side[1]), int(bottom + vertical[1])))


def background(rng: np.random.Generator, width: int, height: int, colour: np.ndarray) -> np.ndarray:
    """[H, W, 3] float32: plain colour, plus now and then a gradient, a texture, blobs and lines."""
    out = np.empty((height, width, 3), np.float32)
    out[:] = colour
    if rng.random() < 0.3:  # linear gradient in a random direction
        angle = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
        ramp = (xs * math.cos(angle) + ys * math.sin(angle)) / max(width, height)
        out += ramp[..., None] * rng.uniform(-50, 50, 3).astype(np.float32)
    if rng.random() < 0.25:  # blotchy texture: upsampled coarse noise
        coarse = rng.normal(0, rng.uniform(8, 25), (max(2, height // 4), max(2, width // 4), 1))
        noise = Image.fromarray(coarse[..., 0].astype(np.float32), "F").resize((width, height), Image.Resampling.BILINEAR)
        out += np.asarray(noise)[..., None]
    if rng.random() < 0.15:
        out = blobs_and_lines(rng, out, colour)
    return out


def blobs_and_lines(rng: np.random.Generator, out: np.ndarray, colour: np.ndarray) -> np.ndarray:
    height, width = out.shape[:2]
    img = Image.fromarray(np.clip(out, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 5))):
        tint = tuple(int(c) for c in np.clip(colour + rng.normal(0, 35, 3), 0, 255))
        x0, x1 = sorted(rng.integers(-width // 4, width + width // 4, 2))
        y0, y1 = sorted(rng.integers(-height // 2, height + height // 2, 2))
        if rng.random() < 0.5:
            draw.ellipse((x0, y0, x1 + 1, y1 + 1), fill=tint)
        else:
            draw.line((x0, y0, x1, y1), fill=tint, width=int(rng.integers(1, 3)))
    return np.asarray(img, np.float32)


def composite(rng: np.random.Generator, layers: Image.Image) -> np.ndarray:
    """Paint shadow, border and glyphs over a background; [H, W, 3] float32."""
    masks = np.asarray(layers, np.float32) / 255.0  # [H, W, 3]: glyphs, border, shadow
    bg_colour, text_colour = contrasting_colours(rng)
    out = background(rng, masks.shape[1], masks.shape[0], bg_colour)
    if masks[..., 2].any():
        shadow_colour = bg_colour * rng.uniform(0.0, 0.5)
        alpha = masks[..., 2:3] * rng.uniform(0.5, 0.9)
        out = out * (1 - alpha) + shadow_colour * alpha
    if masks[..., 1].any():
        border_colour = bg_colour if rng.random() < 0.5 else 255.0 - text_colour
        out = out * (1 - masks[..., 1:2]) + border_colour * masks[..., 1:2]
    return out * (1 - masks[..., 0:1]) + text_colour * masks[..., 0:1]


def degrade(rng: np.random.Generator, img: Image.Image) -> Image.Image:
    """Camera-like damage, each to a minority of images: low resolution, blur, noise."""
    w, h = img.size
    if rng.random() < 0.12:
        factor = rng.uniform(0.45, 0.75)
        small = img.resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.Resampling.BILINEAR)
        img = small.resize((w, h), Image.Resampling.BILINEAR)
    if rng.random() < 0.15:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.2) * h / 32))
    if rng.random() < 0.15:
        pixels = np.asarray(img, np.float32) + rng.normal(0, rng.uniform(3, 12), (h, w, 1 if rng.random() < 0.5 else 3))
        img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return img


@dataclasses.dataclass
class SynthGenerator:
    """Renders word images of height ``imgH`` (width follows the text) and encodes them."""

    fonts: Sequence[FontInfo]
    texts: TextSource
    imgH: int = 32
    image_format: str = "jpeg"

    def __post_init__(self):
        if not self.fonts:
            raise ValueError("no usable fonts: run scripts/install_fonts.sh as root, or pass --font_dir "
                             "with .ttf/.otf fonts that cover the character set")
        if self.image_format not in IMAGE_FORMATS:
            raise ValueError(f"unknown image format {self.image_format!r}; choose one of {', '.join(IMAGE_FORMATS)}")
        lacking = [f.path for f in self.fonts if not self.texts.render_chars <= f.characters]
        if lacking:  # the no-tofu guarantee: fonts were checked against another character set
            raise ValueError(f"{len(lacking)} fonts were not checked for every character of "
                             f"{''.join(sorted(self.texts.render_chars))!r} (e.g. {lacking[0]}); "
                             "pass fonts from discover_fonts() with the same character set")
        designs: dict[str, list[FontInfo]] = {}
        for font in self.fonts:
            designs.setdefault(font.design, []).append(font)
        self.designs = [designs[d] for d in sorted(designs)]

    def sample(self, seed: int, stream: int, index: int) -> tuple[bytes, str]:
        """The encoded image and label of sample ``index``; a pure function of its arguments."""
        rng = np.random.default_rng([seed, stream, index])
        img, label = self.render(rng)
        return self.encode(rng, img), label

    def choose_font(self, rng: np.random.Generator) -> FontInfo:
        family = self.designs[rng.integers(len(self.designs))]  # designs equally likely
        return family[rng.integers(len(family))]

    def render(self, rng: np.random.Generator) -> tuple[Image.Image, str]:
        text, label = self.texts.sample(rng)
        font = load_font(self.choose_font(rng).path, int(self.imgH * rng.uniform(0.9, 1.4)))
        layers = draw_layers(rng, text, font)
        text_height = layers.height
        if rng.random() < 0.3:
            layers = rotate(rng, layers)
        if rng.random() < 0.2:
            layers = perspective(rng, layers)
        if rng.random() < 0.12:
            layers = curve(rng, layers)
        layers = crop_with_margins(rng, layers, text_height)
        pixels = composite(rng, layers)
        img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        stretch = rng.uniform(0.8, 1.25)  # aspect ratio of signs and cameras varies
        width = max(1, round(img.width * self.imgH / img.height * stretch))
        img = img.resize((width, self.imgH), Image.Resampling.BILINEAR)
        return degrade(rng, img), label

    def encode(self, rng: np.random.Generator, img: Image.Image) -> bytes:
        heavy_jpeg = rng.random() < 0.15
        quality = int(rng.integers(25, 60)) if heavy_jpeg else 92
        buffer = io.BytesIO()
        if self.image_format == "png" and heavy_jpeg:  # JPEG artefacts, stored losslessly
            img.save(buffer, format="JPEG", quality=quality)
            img = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
            buffer = io.BytesIO()
        img.save(buffer, format=IMAGE_FORMATS[self.image_format], quality=quality)
        return buffer.getvalue()


# --- many samples -------------------------------------------------------------------------

_worker_generator: SynthGenerator | None = None


def _init_worker(generator: SynthGenerator) -> None:
    global _worker_generator
    _worker_generator = generator


def _worker_sample(job: tuple[int, int, int]) -> tuple[bytes, str]:
    return _worker_generator.sample(*job)


def generate(generator: SynthGenerator, num_samples: int, seed: int, stream: int = 0, workers: int = 1,
             chunksize: int = 64) -> Iterator[tuple[bytes, str]]:
    """Samples 0 .. num_samples-1 in index order; the output does not depend on ``workers``."""
    jobs = ((seed, stream, index) for index in range(num_samples))
    if workers <= 1:
        yield from (generator.sample(*job) for job in jobs)
        return
    with multiprocessing.Pool(workers, initializer=_init_worker, initargs=(generator,)) as pool:
        yield from pool.imap(_worker_sample, jobs, chunksize=chunksize)
