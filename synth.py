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
import importlib.util
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
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

from errors import UserError
from fileio import atomic_write, cache_root

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
WORDS_CACHE_VERSION = 1

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
# "common": English words drawn by frequency (wordfreq's list), as signs and shop fronts use them;
# "word": any dictionary word, uniformly, so rare words are seen too; "random": letters and digits
# with no language model to lean on; "number": numbers and codes.
TEXT_KINDS = (("common", 0.55), ("word", 0.20), ("random", 0.08), ("number", 0.17))
# Signs are often set in capitals: about a third of scene words are all caps.
CASES = (("lower", 0.35), ("title", 0.30), ("upper", 0.35))
NUMBER_STYLES = (("digits", 0.25), ("year", 0.12), ("phone", 0.08), ("unit", 0.2), ("word", 0.15),
                 ("code", 0.2))
NUMBER_SUFFIXES = ("st", "nd", "rd", "th", "h", "am", "pm", "p", "kg", "km", "m", "cm", "mm", "g", "ml", "s", "x",
                   "mph", "ft", "in", "d", "k")
COMMON_WORDS = 50000  # the most frequent English words considered
COMMON_FLATTEN = 0.5  # p(word) ~ rank ** -0.5: common words often, the long tail still seen


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

    Checking ~800 fonts takes seconds, so the result is cached on disk (``cache_path``),
    keyed by every font file's path, size and mtime and by the character set: adding, removing
    or touching a font file rescans. A cache that cannot be written only costs speed.
    """
    chars = render_characters(character)
    files = list_font_files(font_dirs)
    key = font_cache_key(chars, files)
    cached = load_cached("fonts", key)
    if cached is not None:
        return tuple(FontInfo(path, family, style, design_family(family), frozenset(chars))
                     for path, family, style in cached)
    fonts = scan_fonts(chars, files)
    # The design is not stored but recomputed, so a change of DESIGN_ALIASES needs no rescan.
    save_cached("fonts", key, [(f.path, f.family, f.style) for f in fonts])
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


def cache_path(kind: str, key: str) -> Path:
    """Where a cached result lives: ``$STR_FONT_CACHE_DIR`` (the historical name; words are cached
    beside fonts), else ``fileio.cache_root()/synth``; one JSON file per ``kind`` and key digest."""
    base = os.environ.get("STR_FONT_CACHE_DIR")
    folder = Path(base) if base else cache_root() / "synth"
    return folder / f"{kind}-{hashlib.sha1(key.encode()).hexdigest()}.json"


def load_cached(kind: str, key: str):
    """The value saved under ``key``, or None when missing, unreadable or saved under another key."""
    try:
        data = json.loads(cache_path(kind, key).read_text(encoding="utf-8"))
        return data["value"] if data["key"] == key else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save_cached(kind: str, key: str, value) -> None:
    """Atomic write; a cache that cannot be written only costs the next run the time to recompute."""
    path = cache_path(kind, key)
    try:
        with atomic_write(path, "w", what=f"the {kind} cache", encoding="utf-8") as f:
            json.dump({"key": key, "value": value}, f)  # a concurrent reader sees the old file or the new one
    except OSError as e:
        logger.warning("could not write the %s cache %s (%s); the next run recomputes it", kind, path, e)


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
        raise UserError(f"unknown font split {split!r}; choose one of {', '.join(FONT_SPLITS)}")
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
    """One name of a (name, weight) table; one uniform draw (``rng.choice(p=...)`` is 10x slower)."""
    total = sum(weight for _, weight in table)
    point = rng.random() * total
    for name, weight in table:
        point -= weight
        if point < 0:
            return name
    return table[-1][0]


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
            raise UserError(f"label lengths must satisfy 1 <= min_len ({self.min_len}) <= max_len ({self.max_len}) "
                            f"<= batch_max_length ({self.batch_max_length})")
        self.sensitive = case_sensitive(self.character)
        self.render_chars = frozenset(render_characters(self.character))
        self.base_chars = "".join(sorted({c.lower() for c in self.render_chars}))
        self.digits = "".join(c for c in self.base_chars if c.isdigit())
        self.letters = "".join(c for c in self.base_chars if not c.isdigit())
        self.words_by_length = self._load_words()
        lengths = [n for n, words in enumerate(self.words_by_length) if words]
        if not lengths:
            raise UserError(f"no dictionary word fits the character set {self.character!r}")
        weights = np.array([WORD_LENGTH_WEIGHTS[min(n, len(WORD_LENGTH_WEIGHTS)) - 1] for n in lengths])
        self.word_lengths, self.word_length_p = np.array(lengths), weights / weights.sum()
        # rank ** -COMMON_FLATTEN times the scene-text length weight, as a cumulative distribution
        weights = np.array([rank ** -COMMON_FLATTEN * WORD_LENGTH_WEIGHTS[min(len(w), len(WORD_LENGTH_WEIGHTS)) - 1]
                            for rank, w in enumerate(self.common_words, start=1)])
        self.common_cdf = np.cumsum(weights) / weights.sum() if len(weights) else weights

    def _load_words(self) -> list[list[str]]:
        """Dictionary words that fit the set, by length; cached on disk (loading the lists takes
        about a second)."""
        from importlib.metadata import version

        key = json.dumps({"version": WORDS_CACHE_VERSION, "lists": self.word_lists, "chars": self.base_chars,
                          "max": self.batch_max_length, "english_words": version("english-words"),
                          "wordfreq": version("wordfreq"), "common": COMMON_WORDS})
        cached = load_cached("words", key)
        if cached is None:
            cached = {"by_length": self._scan_dictionary(), "common": self._scan_common_words()}
            save_cached("words", key, cached)
        self.common_words = cached["common"]
        return cached["by_length"]

    def _scan_dictionary(self) -> list[list[str]]:
        from english_words import get_english_words_set

        allowed = set(self.base_chars)
        words = get_english_words_set(list(self.word_lists), lower=True, alpha=False)
        by_length: list[list[str]] = [[] for _ in range(self.batch_max_length + 1)]
        for word in sorted(words):  # sorted: set order changes with PYTHONHASHSEED
            if 0 < len(word) <= self.batch_max_length and set(word) <= allowed:
                by_length[len(word)].append(word)
        return by_length

    def _scan_common_words(self) -> list[str]:
        """The most frequent English words that fit the set, most frequent first."""
        from wordfreq import top_n_list

        allowed = set(self.base_chars)
        return [word for word in top_n_list("en", COMMON_WORDS)
                if 1 < len(word) <= self.batch_max_length and set(word) <= allowed]

    def common_word(self, rng: np.random.Generator) -> str:
        if not self.common_words:
            return self.word(rng)
        return self.common_words[min(int(np.searchsorted(self.common_cdf, rng.random())), len(self.common_words) - 1)]

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
        if kind == "common":
            return self.common_word(rng)
        if kind == "word":
            return self.word(rng)
        if kind == "random" or not self.digits:
            return self.random_string(rng, self.base_chars, int(rng.integers(1, 11)))
        return self.number(rng)

    def word(self, rng: np.random.Generator) -> str:
        words = self.words_by_length[rng.choice(self.word_lengths, p=self.word_length_p)]
        return words[rng.integers(len(words))]

    def number(self, rng: np.random.Generator) -> str:
        """Numbers as signs carry them: '24', '1999', '5551234', '20p', '3rd', '10am', 'room12', 'a4'."""
        style = choose(rng, NUMBER_STYLES)
        if style == "digits" or not self.letters:
            return self.random_string(rng, self.digits, int(rng.integers(1, 5)))
        if style == "year":
            return str(int(rng.integers(1900, 2031)))
        if style == "phone":
            return self.random_string(rng, self.digits, int(rng.integers(6, 12)))
        if style == "unit":
            number = str(int(10 ** rng.uniform(0, 3.5)))
            return number + NUMBER_SUFFIXES[rng.integers(len(NUMBER_SUFFIXES))]
        if style == "word":
            word = self.common_word(rng)
            digits = self.random_string(rng, self.digits, int(rng.integers(1, 4)))
            return word + digits if rng.random() < 0.7 else digits + word
        letters = self.random_string(rng, self.letters, int(rng.integers(1, 3)))  # codes: a4, bk52, 7g
        digits = self.random_string(rng, self.digits, int(rng.integers(1, 5)))
        return letters + digits if rng.random() < 0.7 else digits + letters

    @staticmethod
    def random_string(rng: np.random.Generator, pool: str, length: int) -> str:
        return "".join(pool[i] for i in rng.integers(len(pool), size=length))

    def neighbours(self, rng: np.random.Generator) -> tuple[str, str]:
        """Text beside a word on a sign: the end of the word before, the start of the one after
        (a space apart or not)."""
        before, after = self.apply_case(rng, self.common_word(rng)), self.apply_case(rng, self.common_word(rng))
        gap = " " if rng.random() < 0.5 else ""
        return before[-int(rng.integers(1, 4)):] + gap, gap + after[:int(rng.integers(1, 4))]

    def lines(self, rng: np.random.Generator) -> tuple[str, str]:
        """(above, below): one or both neighbouring lines of a sign, a few words each."""
        def line() -> str:
            return " ".join(self.apply_case(rng, self.common_word(rng)) for _ in range(int(rng.integers(1, 4))))
        where = rng.integers(3)
        return (line() if where != 1 else "", line() if where != 0 else "")

    def apply_case(self, rng: np.random.Generator, text: str) -> str:
        case = choose(rng, CASES)
        cased = {"lower": text, "title": text[:1].upper() + text[1:], "upper": text.upper()}[case]
        return cased if set(cased) <= self.render_chars else text


# --- rendering ----------------------------------------------------------------------------

SIGN_COLOURS = np.array([(200, 30, 35), (25, 60, 150), (20, 105, 60), (240, 200, 30), (235, 120, 20),
                         (245, 245, 240), (20, 20, 25), (110, 60, 30), (130, 20, 60), (0, 120, 150)], np.float64)
# Photographs shipped inside scikit-image (no download): textures of brick, grass, gravel, coffee,
# faces, machines. Crops of them, blurred and recoloured, stand in for the surfaces text is painted
# on. Images holding letters (text.png, page.png) are left out: their ink would be unlabelled text.
NATURAL_IMAGES = ("astronaut.png", "brick.png", "camera.png", "chelsea.png", "coffee.png", "coins.png", "grass.png",
                  "gravel.png", "moon.png", "motorcycle_left.png", "motorcycle_right.png", "rocket.jpg",
                  "hubble_deep_field.jpg", "ihc.png", "retina.jpg", "clock_motion.png", "cell.png")


NATURAL_TEXTURE_P = 0.4  # share of backgrounds with a photo texture blended in


@functools.lru_cache(maxsize=1)
def natural_images() -> tuple[np.ndarray, ...]:
    """[H, W, 3] float32 photographs from scikit-image's data folder; () when it is not installed.
    Loaded once per process, on first use (in each worker, in parallel)."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or spec.origin is None:
        return ()
    folder = Path(spec.origin).parent / "data"
    return tuple(np.asarray(Image.open(folder / name).convert("RGB"), np.float32)
                 for name in NATURAL_IMAGES if (folder / name).is_file())


def luminance(rgb: np.ndarray) -> float:
    return float(rgb @ np.array([0.299, 0.587, 0.114]))


def random_colour(rng: np.random.Generator) -> np.ndarray:
    """Mostly muted colours, like paint and print; a third are grey; a quarter the saturated
    paints of signs (red, blue, green, yellow, orange, white, black), a little worn."""
    if rng.random() < 0.25:
        return np.clip(SIGN_COLOURS[rng.integers(len(SIGN_COLOURS))] + rng.normal(0, 18, 3), 0, 255)
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


def draw_layers(rng: np.random.Generator, text: str, font: ImageFont.FreeTypeFont,
                neighbours: tuple[str, str] = ("", "")) -> Image.Image:
    """Text masks in one RGBA image: R the glyphs, G an optional border, B an optional shadow, A the
    glyphs of ``text`` alone. ``neighbours`` are drawn before and after ``text`` into R, G and B
    only: the crop follows A, so they show as cut characters in the margins, as in real crops."""
    size = font.size
    stroke = int(rng.integers(1, max(2, size // 14) + 1)) if rng.random() < 0.1 else 0
    shadow = rng.random() < 0.1
    spacing = rng.uniform(0.05, 0.25) * size if rng.random() < 0.1 else 0.0
    before, after = neighbours
    full = before + text + after
    left, top, right, bottom = font.getbbox(full, stroke_width=stroke)
    width = int(right - left + spacing * (len(full) - 1)) + 2 * stroke + 8
    height = int(bottom - top) + 2 * stroke + 8
    origin = (4 + stroke - left, 4 + stroke - top)
    layers = [Image.new("L", (width, height)) for _ in range(4)]
    # letter by letter when letter-spaced (kerning is lost, as in letter-spaced signs), else three runs
    pieces = list(full) if spacing else [before, text, after]
    x, main = origin[0], range(len(before), len(before) + len(text)) if spacing else range(1, 2)
    for i, piece in enumerate(pieces):
        position = (x, origin[1])
        x += font.getlength(piece) + spacing
        if not piece:
            continue
        ImageDraw.Draw(layers[3 if i in main else 0]).text(position, piece, font=font, fill=255)
        if stroke:
            ImageDraw.Draw(layers[1]).text(position, piece, font=font, fill=255, stroke_width=stroke)
        if shadow:
            dx, dy = rng.integers(1, max(2, size // 12) + 1, size=2)
            ImageDraw.Draw(layers[2]).text((position[0] + dx, position[1] + dy), piece, font=font, fill=255)
    layers[0] = ImageChops.lighter(layers[0], layers[3]) if before or after else layers[3]  # all glyphs
    return Image.merge("RGBA", layers)


def add_lines(rng: np.random.Generator, layers: Image.Image, font: ImageFont.FreeTypeFont, above: str,
              below: str) -> Image.Image:
    """Lines of text above and below the word, into the glyph layer only: the crop follows the
    word, so their descenders and ascenders show cut at the top and bottom, as on real signs."""
    step = int(layers.height * rng.uniform(0.75, 1.1))  # baseline to baseline
    pad_top, pad_bottom = (step if above else 0), (step if below else 0)
    out = Image.new("RGBA", (layers.width, layers.height + pad_top + pad_bottom))
    out.paste(layers, (0, pad_top))
    glyphs, border, shadow, word = out.split()
    draw = ImageDraw.Draw(glyphs)
    _, top, _, _ = font.getbbox("Hg")
    for line, y in ((above, 4 - top), (below, pad_top + step + 4 - top)):
        if line:
            draw.text((int(rng.integers(-layers.height, layers.height)), y), line, font=font, fill=255)
    return Image.merge("RGBA", (glyphs, border, shadow, word))


def rotate(rng: np.random.Generator, img: Image.Image) -> Image.Image:
    angle = float(np.clip(rng.normal(0, 3.0), -8, 8))
    return img.rotate(angle, resample=Image.Resampling.BILINEAR, expand=True)


def perspective(rng: np.random.Generator, img: Image.Image) -> Image.Image:
    """Mild perspective and shear: each corner of the source quad moves a little."""
    w, h = img.size
    pad = h // 4
    jitter = rng.uniform(-0.2, 0.2, size=(4, 2)) * h
    shear = rng.uniform(-0.3, 0.3) * h
    # QUAD takes the source corners: upper-left, lower-left, lower-right, upper-right.
    corners = np.array([[-pad + shear, -pad], [-pad, h + pad], [w + pad, h + pad], [w + pad + shear, -pad]])
    quad = (corners + jitter).ravel().tolist()
    return img.transform((w + 2 * pad, h + 2 * pad), Image.Transform.QUAD, quad, Image.Resampling.BILINEAR)


def curve(rng: np.random.Generator, img: Image.Image, slices: int = 12) -> Image.Image:
    """A gently curved baseline (an arc), as MESH pieces shifted up or down."""
    w, h = img.size
    amplitude = rng.uniform(0.1, 0.4) * h * rng.choice([-1, 1])
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
    """Crop around the ink of the word (alpha) with random margins; now and then cut a pixel or two into it."""
    box = img.getchannel("A").getbbox()
    if box is None:
        return img
    left, top, right, bottom = box
    side = rng.uniform(0.0, 0.3, size=2) * text_height
    vertical = rng.uniform(0.0, 0.2, size=2) * text_height
    if rng.random() < 0.2:
        vertical = -rng.uniform(0.0, 0.08, size=2) * text_height
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
    if rng.random() < NATURAL_TEXTURE_P:
        out = natural_texture(rng, out, colour)
    return out


def natural_texture(rng: np.random.Generator, out: np.ndarray, colour: np.ndarray) -> np.ndarray:
    """Blend in a crop of a photograph, recentred on the background colour so that the text keeps
    its contrast on average: a random image, region, scale, flip, blur and strength."""
    images = natural_images()
    if not images:
        return out
    photo = images[rng.integers(len(images))]
    height, width = out.shape[:2]
    scale = rng.uniform(0.5, 4.0)  # photo pixels per output pixel: coarse or fine texture
    ch, cw = min(photo.shape[0], max(2, int(height * scale))), min(photo.shape[1], max(2, int(width * scale)))
    y, x = rng.integers(photo.shape[0] - ch + 1), rng.integers(photo.shape[1] - cw + 1)
    crop = Image.fromarray(photo[y:y + ch, x:x + cw].astype(np.uint8)).resize((width, height), Image.Resampling.BILINEAR)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if rng.random() < 0.5:
        crop = crop.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.5)))
    patch = np.asarray(crop, np.float32)
    if rng.random() < 0.5:  # keep the photo's colours, or only its light and shade
        patch = patch.mean(axis=2, keepdims=True)
    patch = (patch - patch.mean(axis=(0, 1))) * rng.uniform(0.3, 1.0)
    return out + patch


def lighting(rng: np.random.Generator, pixels: np.ndarray) -> np.ndarray:
    """Light as photographs have it, each to a minority of images: uneven illumination, a cast
    shadow with a soft edge, a specular glare spot. [H, W, 3] float32 in and out."""
    height, width = pixels.shape[:2]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    if rng.random() < 0.25:  # brighter on one side
        angle = rng.uniform(0, 2 * math.pi)
        ramp = (xs * math.cos(angle) + ys * math.sin(angle)) / max(width, height)
        pixels = pixels * (1 + rng.uniform(-0.5, 0.5) * (ramp - ramp.mean()))[..., None]
    if rng.random() < 0.15:  # a shadow edge across the word
        angle = rng.uniform(0, 2 * math.pi)
        across = (xs - rng.uniform(0, width)) * math.cos(angle) + (ys - rng.uniform(0, height)) * math.sin(angle)
        soft = 0.5 + 0.5 * np.tanh(across / rng.uniform(0.5, 0.15 * height + 1))  # a sigmoid that cannot overflow
        pixels = pixels * (1 - rng.uniform(0.25, 0.6) * soft)[..., None]
    if rng.random() < 0.1:  # glare
        cy, cx, sigma = rng.uniform(0, height), rng.uniform(0, width), rng.uniform(0.3, 1.2) * height
        spot = np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma ** 2))
        pixels = pixels + rng.uniform(60, 160) * spot[..., None]
    return pixels


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
    # Real signs are often faded or dim: two in five images get a contrast well below the usual.
    bg_colour, text_colour = contrasting_colours(rng, 100 if rng.random() < 0.6 else rng.uniform(35, 100))
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
    if rng.random() < 0.3:
        factor = rng.uniform(0.3, 0.75)
        small = img.resize((max(1, round(w * factor)), max(1, round(h * factor))), Image.Resampling.BILINEAR)
        img = small.resize((w, h), Image.Resampling.BILINEAR)
    if rng.random() < 0.35:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5) * h / 32))
    if rng.random() < 0.2:
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
            raise UserError("no usable fonts: run scripts/install_fonts.sh as root, or pass --font_dir "
                            "with .ttf/.otf fonts that cover the character set")
        if self.image_format not in IMAGE_FORMATS:
            raise UserError(f"unknown image format {self.image_format!r}; choose one of {', '.join(IMAGE_FORMATS)}")
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
        layers = draw_layers(rng, text, font, self.texts.neighbours(rng) if rng.random() < 0.25 else ("", ""))
        text_height = layers.height
        if rng.random() < 0.15:
            layers = add_lines(rng, layers, font, *self.texts.lines(rng))
        if rng.random() < 0.3:
            layers = rotate(rng, layers)
        if rng.random() < 0.3:
            layers = perspective(rng, layers)
        if rng.random() < 0.15:
            layers = curve(rng, layers)
        layers = crop_with_margins(rng, layers, text_height)
        stretch = rng.uniform(0.8, 1.25)  # aspect ratio of signs and cameras varies
        width = max(1, round(layers.width * self.imgH / layers.height * stretch))
        # Masks are scaled to the output size before painting: 2-3x fewer pixels to paint and light.
        layers = layers.resize((width, self.imgH), Image.Resampling.BILINEAR)
        pixels = lighting(rng, composite(rng, layers))
        img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        return degrade(rng, img), label

    def encode(self, rng: np.random.Generator, img: Image.Image) -> bytes:
        heavy_jpeg = rng.random() < 0.3
        quality = int(rng.integers(15, 60)) if heavy_jpeg else 92
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
