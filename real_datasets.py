"""The public real word-image datasets, read in the formats they ship in, written as LMDB.

One reader per format yields ``Sample`` (an image file, a label, and where to crop) or
``Dropped`` (why an annotation is not used); ``convert`` crops and writes the samples with the
same LMDB writer and layout as create_lmdb_dataset.py and counts every drop by reason. The CLI
is ``scripts/convert_real_dataset.py``.

| format    | annotation file                                   | images                        |
|-----------|---------------------------------------------------|-------------------------------|
| iiit5k    | traindata.mat / testdata.mat (ImgName, GroundTruth) | word crops under the IIIT5K folder |
| svt       | train.xml / test.xml (taggedRectangle x y width height, tag) | scenes under img/, cropped |
| ic13      | gt.txt: ``word_1.png, "label"``                   | word crops                    |
| ic15      | same, ``###`` = do not care (dropped)             | word crops                    |
| cocotext  | cocotext.v2.json (anns: bbox, utf8_string, legibility, class, language) | COCO train2014, cropped |
| textocr   | TextOCR_0.1_{train,val}.json (anns: points, utf8_string; '.' = illegible) | train_val_images, cropped |
| union14m  | Union14M-L train_annos: mmocr1.0 .json (data_list) or mmocr0.x .jsonl | word crops under Union14M-L |
"""
from __future__ import annotations

import collections
import dataclasses
import io
import json
import math
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
from PIL import Image

from dataset import IMAGE_ERRORS, image_problem
from errors import UserError
from fileio import NotRegularFileError, read_regular_file
from lmdb_store import LmdbWriter


def real_data_dir() -> Path:
    """The real evaluation crops (``svt_647/``, ``ic03_860/``, ``iiit5k_train_2000/`` ...): ``$REAL``, else
    ``../shared/data/real`` beside the repository (quickstart.sh and scripts/finetune_english_g2.sh use
    the same rule)."""
    return Path(os.environ.get("REAL") or Path(__file__).resolve().parent.parent / "shared" / "data" / "real")


@dataclasses.dataclass(frozen=True)
class Sample:
    """One word: ``image`` whole (no box/quad), or the axis-aligned ``box`` (x0, y0, x1, y1)
    of it, or the ``quad`` (4 corners, clockwise from top-left) rectified to a rectangle."""
    image: Path
    label: str
    box: tuple[float, float, float, float] | None = None
    quad: tuple[tuple[float, float], ...] | None = None
    where: str = ""  # for messages: the annotation's id or line


@dataclasses.dataclass(frozen=True)
class Dropped:
    reason: str
    where: str = ""


Item = Sample | Dropped


@dataclasses.dataclass
class ConversionReport:
    written: int = 0
    dropped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
    examples: dict = dataclasses.field(default_factory=dict)  # reason -> first place met

    def drop(self, reason: str, where: str) -> None:
        self.dropped[reason] += 1
        self.examples.setdefault(reason, where)

    def __str__(self) -> str:
        lines = [f"wrote {self.written} samples; dropped {sum(self.dropped.values())}"]
        lines += [f"  {count} {reason} (first: {self.examples[reason]})"
                  for reason, count in self.dropped.most_common()]
        return "\n".join(lines)


# --- readers -------------------------------------------------------------------------------

class AnnotationError(UserError):
    """An annotation file that cannot be read in its format: the message names the file, the format
    expected and, where the parser knows it, the line."""


EXPECTED = {
    "iiit5k": "IIIT5K's traindata.mat or testdata.mat (a MATLAB file)",
    "svt": "SVT's train.xml or test.xml (XML: <image> with <taggedRectangle> boxes)",
    "ic13": 'a UTF-8 gt.txt of lines like  word_1.png, "label"',
    "cocotext": 'cocotext.v2.json (a JSON object with "imgs" and "anns" objects)',
    "textocr": 'TextOCR_0.1_train.json or _val.json (a JSON object with "imgs" and "anns" objects)',
    "union14m": 'an MMOCR 1.0 .json ({"data_list": [...]}) or an MMOCR 0.x .jsonl (one object per line)',
}
EXPECTED["ic15"] = EXPECTED["ic13"]

RECORD_ERRORS = (KeyError, TypeError, ValueError, AttributeError, IndexError)  # a field of the wrong shape


def annotation_error(annotation: Path, fmt: str, problem: str) -> AnnotationError:
    return AnnotationError(f"{annotation}: {problem}; --format {fmt} reads {EXPECTED[fmt]}. Is it the right file "
                           "for --format?")


def annotation_bytes(annotation: Path, fmt: str) -> bytes:
    data = read_regular_file(annotation)
    if not data.strip():
        raise annotation_error(annotation, fmt, "the file is empty")
    return data


def annotation_text(annotation: Path, fmt: str) -> str:
    """The whole file as UTF-8 text (a BOM dropped); bytes that are not UTF-8 are named with their line."""
    data = annotation_bytes(annotation, fmt)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise annotation_error(annotation, fmt, f"line {line} is not UTF-8 (byte {data[e.start]:#04x}): save the "
                               "file as UTF-8") from None


def annotation_lines(annotation: Path, fmt: str) -> Iterator[tuple[int, str | None]]:
    """(line number, text) per non-blank line; text is None for a line that is not UTF-8 (dropped, counted)."""
    data = annotation_bytes(annotation, fmt).removeprefix(b"\xef\xbb\xbf")
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        if raw.strip():
            try:
                yield lineno, raw.decode("utf-8").rstrip("\r")
            except UnicodeDecodeError:
                yield lineno, None


def load_json(annotation: Path, fmt: str, top_level: tuple[str, ...] = ()) -> dict:
    """A JSON object holding the ``top_level`` keys, each an object (dict) or a list as the format has it."""
    try:
        data = json.loads(annotation_text(annotation, fmt))
    except json.JSONDecodeError as e:
        raise annotation_error(annotation, fmt, f"not valid JSON at line {e.lineno} column {e.colno} ({e.msg})"
                               ) from None
    if not isinstance(data, dict):
        raise annotation_error(annotation, fmt, f"the JSON's top level is {type(data).__name__}, not an object")
    missing = [key for key in top_level if key not in data]
    if missing:
        raise annotation_error(annotation, fmt, f"the JSON object has no {', '.join(map(repr, missing))}")
    return data


def finite_numbers(values, count: int | None = None) -> tuple[float, ...] | None:
    """``values`` as floats when it is a list of ``count`` finite numbers (not strings, not booleans), else None."""
    if not isinstance(values, (list, tuple)) or (count is not None and len(values) != count):
        return None
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        return None
    numbers = tuple(float(v) for v in values)
    return numbers if all(math.isfinite(v) for v in numbers) else None


def make_sample(root: Path, image, label, where: str, box=None, quad=None) -> Item:
    """Every reader's record goes through here: a Sample, or Dropped naming the field that is unusable."""
    if not isinstance(image, str) or not image.strip():
        return Dropped("no image path", where)
    if not isinstance(label, str):
        return Dropped(f"label is {'null' if label is None else type(label).__name__}, not a string", where)
    try:
        label.encode("utf-8")
    except UnicodeEncodeError:
        return Dropped("label is not valid Unicode (a lone surrogate)", where)
    if box is not None and finite_numbers(box, 4) is None:
        return Dropped("box is not 4 finite numbers", where)
    if quad is not None and finite_numbers([c for point in quad for c in point], 8) is None:
        return Dropped("quadrilateral is not 4 points of finite numbers", where)
    return Sample(root / image, label, box=box, quad=quad, where=where)


def guarded(records: Iterable[tuple[str, object]], build: Callable[[object, str], Item | None]) -> Iterator[Item]:
    """``build(record, where)`` per record; a record whose fields have the wrong shape (a null where an
    object is expected, a missing key) is dropped and counted, never the end of the conversion."""
    for where, record in records:
        try:
            item = build(record, where)
        except KeyError as e:
            item = Dropped(f"record lacks the field {e}", where)
        except RECORD_ERRORS as e:
            item = Dropped(f"malformed record ({type(e).__name__})", where)
        if item is not None:
            yield item


def by_image(anns: dict) -> list[tuple[str, object]]:
    """COCO-style ``anns`` items grouped by image (first-seen order), so each scene is opened once."""
    groups: dict[str, list] = {}
    for ann_id, ann in anns.items():
        image_id = ann.get("image_id") if isinstance(ann, dict) else None
        groups.setdefault(str(image_id), []).append((f"ann {ann_id}", ann))
    return [item for group in groups.values() for item in group]


def read_iiit5k(annotation: Path, root: Path) -> Iterator[Item]:
    """``traindata.mat``/``testdata.mat``: a 1 x N struct array (variable ``traindata`` or
    ``testdata``) with fields ImgName ('train/1009_2.png', relative to the IIIT5K folder),
    GroundTruth, smallLexi and mediumLexi (the lexicons are not used)."""
    from scipy.io import loadmat  # only this format needs scipy

    annotation_bytes(annotation, "iiit5k")
    try:
        mat = loadmat(str(annotation))
    except Exception as e:  # noqa: BLE001 - scipy raises many types for a cut-off or foreign file
        raise annotation_error(annotation, "iiit5k", f"not a readable MATLAB file ({type(e).__name__}: {e})"
                               ) from None
    tables = [v for k, v in mat.items() if not k.startswith("__") and getattr(v, "dtype", None) is not None
              and v.dtype.names and {"ImgName", "GroundTruth"} <= set(v.dtype.names)]
    if not tables:
        raise UserError(f"{annotation} holds no struct array with ImgName and GroundTruth fields; is it "
                        "IIIT5K's traindata.mat or testdata.mat?")

    def build(entry, where):
        return make_sample(root, _mat_string(entry["ImgName"]), _mat_string(entry["GroundTruth"]), where)

    return guarded(((f"entry {i + 1}", entry) for i, entry in enumerate(tables[0].ravel())), build)


def _mat_string(value):
    """A MATLAB char array as loadmat returns it (array(['text']) or an empty array) as a str; a number
    array as its first number (not a str: ``make_sample`` drops it)."""
    while isinstance(value, np.ndarray) and value.dtype == object:
        value = value.ravel()[0] if value.size else ""
    if isinstance(value, np.ndarray):
        if value.size == 0:
            return ""
        return "".join(str(v) for v in value.ravel()) if value.dtype.kind in "US" else value.ravel()[0].item()
    return value


def read_svt(annotation: Path, root: Path) -> Iterator[Item]:
    """SVT ``train.xml``/``test.xml``: ``<image><imageName>img/14_03.jpg</imageName>...
    <taggedRectangles><taggedRectangle x= y= width= height=><tag>WORD</tag>``. Boxes that reach
    outside the image are clipped by ``convert``."""
    try:
        tree = ET.fromstring(annotation_bytes(annotation, "svt"))
    except ET.ParseError as e:
        line, column = e.position
        raise annotation_error(annotation, "svt", f"not well-formed XML at line {line} column {column + 1} "
                               f"({str(e).split(':')[0]})") from None
    images = list(tree.iter("image"))
    if not images:
        raise annotation_error(annotation, "svt", "the XML holds no <image> element")

    def rectangles():
        for image in images:
            name = (image.findtext("imageName") or "").strip()
            for j, rect in enumerate(image.iter("taggedRectangle")):
                yield f"{name} box {j + 1}", (name, rect)

    def build(record, where):
        name, rect = record
        try:
            x, y, w, h = (float(rect.get(k)) for k in ("x", "y", "width", "height"))
        except (TypeError, ValueError):
            return Dropped("box without numeric x/y/width/height", where)
        return make_sample(root, name, (rect.findtext("tag") or "").strip(), where, box=(x, y, x + w, y + h))

    return guarded(rectangles(), build)


ICDAR_LINE = re.compile(r'^\s*(?P<name>[^,]+?)\s*,\s*"(?P<label>.*)"\s*$')


def read_icdar_words(annotation: Path, root: Path, do_not_care: str | None = None) -> Iterator[Item]:
    """ICDAR word recognition ``gt.txt`` (2013 and 2015): ``word_1.png, "Tiredness"`` per line,
    UTF-8 (with a BOM in 2015). Inside the quotes ``\\"`` is a quote and ``\\\\`` a backslash; the
    label ends at the line's last quote. ``do_not_care`` ('###' in 2015) labels are dropped."""
    lines = list(annotation_lines(annotation, "ic15" if do_not_care else "ic13"))

    def build(line, where):
        if line is None:
            return Dropped("line is not UTF-8", where)
        match = ICDAR_LINE.match(line)
        if match is None:
            return Dropped('line not of the form name, "label"', where)
        label = re.sub(r'\\(["\\])', r"\1", match["label"])
        if do_not_care is not None and label == do_not_care:
            return Dropped(f"do-not-care label {do_not_care!r}", where)
        return make_sample(root, match["name"], label, where)

    return guarded(((f"{annotation.name} line {lineno}", line) for lineno, line in lines), build)


def read_ic15(annotation: Path, root: Path) -> Iterator[Item]:
    return read_icdar_words(annotation, root, do_not_care="###")


def coco_tables(annotation: Path, fmt: str) -> tuple[dict, dict]:
    """The ``imgs`` and ``anns`` objects of a COCO-style file (COCO-Text, TextOCR)."""
    data = load_json(annotation, fmt, ("imgs", "anns"))
    imgs, anns = data["imgs"], data["anns"]
    for key, value in (("imgs", imgs), ("anns", anns)):
        if not isinstance(value, dict):
            raise annotation_error(annotation, fmt, f"its {key!r} is {type(value).__name__}, not an object of "
                                   "id: record")
    return imgs, anns


def read_cocotext(annotation: Path, root: Path, split: str = "train") -> Iterator[Item]:
    """COCO-Text v2 ``cocotext.v2.json``: ``imgs`` (file_name, set), ``anns`` (image_id, bbox
    [x, y, w, h], utf8_string, legibility, class, language). Kept: legible machine-printed English
    words of the images in ``split``; images are COCO train2014's, under ``root``."""
    imgs, anns = coco_tables(annotation, "cocotext")

    def build(ann, where):
        img = imgs.get(str(ann["image_id"]))
        if img is None:
            return Dropped("image_id not in imgs", where)
        if img.get("set") != split:
            return None  # the other split: not a drop
        if ann.get("legibility") != "legible":
            return Dropped("illegible", where)
        if ann.get("class") != "machine printed":
            return Dropped(f"class {ann.get('class')!r} (not machine printed)", where)
        if ann.get("language") != "english":
            return Dropped(f"language {ann.get('language')!r} (not english)", where)
        box = finite_numbers(ann.get("bbox"), 4)
        if box is None:
            return Dropped("bbox is not 4 finite numbers", where)
        x, y, w, h = box
        return make_sample(root, img.get("file_name"), ann.get("utf8_string", ""), where, box=(x, y, x + w, y + h))

    return guarded(by_image(anns), build)


def read_textocr(annotation: Path, root: Path) -> Iterator[Item]:
    """TextOCR ``TextOCR_0.1_{train,val}.json``: ``imgs`` (file_name 'train/<id>.jpg', relative to
    train_val_images/), ``anns`` (image_id, points [x1, y1, ...], utf8_string; '.' marks an
    illegible word). A 4-point polygon is rectified; a longer one is cropped by its bounding box."""
    imgs, anns = coco_tables(annotation, "textocr")

    def build(ann, where):
        img = imgs.get(ann["image_id"])
        points = ann.get("points") or []
        if img is None:
            return Dropped("image_id not in imgs", where)
        if ann.get("utf8_string", ".") == ".":
            return Dropped("illegible ('.')", where)
        if finite_numbers(points) is None:
            return Dropped("points are not finite numbers", where)
        if len(points) < 6 or len(points) % 2:
            return Dropped("polygon with fewer than 3 points", where)
        name = img.get("file_name") or img.get("filename")
        xy = tuple(zip(points[0::2], points[1::2]))
        if len(xy) == 4:
            return make_sample(root, name, ann["utf8_string"], where, quad=xy)
        xs, ys = [p[0] for p in xy], [p[1] for p in xy]
        return make_sample(root, name, ann["utf8_string"], where, box=(min(xs), min(ys), max(xs), max(ys)))

    return guarded(by_image(anns), build)


def read_union14m(annotation: Path, root: Path) -> Iterator[Item]:
    """Union14M-L ``train_annos``: MMOCR 1.0 ``.json`` (``{"data_list": [{"img_path": ...,
    "instances": [{"text": ...}]}]}``) or MMOCR 0.x ``.jsonl`` (``{"filename": ..., "text": ...}``
    per line); paths relative to the Union14M-L folder (``root``). The images are word crops."""
    if annotation.suffix == ".jsonl":
        lines = list(annotation_lines(annotation, "union14m"))

        def build_line(line, where):
            if line is None:
                return Dropped("line is not UTF-8", where)
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                entry = None
            if not isinstance(entry, dict) or not {"filename", "text"} <= entry.keys():
                return Dropped("line is not a JSON object with filename and text", where)
            return make_sample(root, entry["filename"], entry["text"], where)

        return guarded(((f"{annotation.name} line {lineno}", line) for lineno, line in lines), build_line)
    data = load_json(annotation, "union14m", ("data_list",))
    if not isinstance(data["data_list"], list):
        raise annotation_error(annotation, "union14m", f"its 'data_list' is {type(data['data_list']).__name__}, "
                               "not a list")

    def build(entry, where):
        instances = entry.get("instances") or []
        if len(instances) != 1 or "text" not in instances[0]:
            return Dropped("not exactly one text instance", where)
        return make_sample(root, entry.get("img_path"), instances[0]["text"], where)

    return guarded(((f"data_list[{i}]", entry) for i, entry in enumerate(data["data_list"])), build)


READERS: dict[str, Callable[[Path, Path], Iterator[Item]]] = {
    "iiit5k": read_iiit5k, "svt": read_svt, "ic13": read_icdar_words, "ic15": read_ic15,
    "cocotext": read_cocotext, "textocr": read_textocr, "union14m": read_union14m,
}


# --- cropping and writing -------------------------------------------------------------------

def crop(image: Image.Image, sample: Sample) -> Image.Image | None:
    """The sample's word image, or None if its box is empty inside the image.

    Boxes and quadrilateral corners are clipped to the image first, so the crop is never larger than
    the image, whatever the annotation says (a 100000 x 50000 box on a 200 x 100 scene is the scene).
    """
    if sample.quad is not None:
        (x0, y0), (x1, y1), (x2, y2), (x3, y3) = (clip_point(p, image) for p in sample.quad)  # tl, tr, br, bl
        width = round((math.dist((x0, y0), (x1, y1)) + math.dist((x3, y3), (x2, y2))) / 2)
        height = round((math.dist((x0, y0), (x3, y3)) + math.dist((x1, y1), (x2, y2))) / 2)
        if width < 1 or height < 1:
            return None
        # PIL's QUAD data: upper-left, lower-left, lower-right, upper-right source corners
        return image.transform((width, height), Image.Transform.QUAD, (x0, y0, x3, y3, x2, y2, x1, y1),
                               Image.Resampling.BICUBIC)
    x0, y0, x1, y1 = sample.box
    box = (max(0, math.floor(min(x0, image.width))), max(0, math.floor(min(y0, image.height))),
           min(image.width, math.ceil(max(x1, 0))), min(image.height, math.ceil(max(y1, 0))))
    if box[2] <= box[0] or box[3] <= box[1]:
        return None
    return image.crop(box)


def clip_point(point: tuple[float, float], image: Image.Image) -> tuple[float, float]:
    return min(max(point[0], 0.0), float(image.width)), min(max(point[1], 0.0), float(image.height))


def encode(image: Image.Image) -> bytes:
    """PNG for grey and palette crops, JPEG quality 95 for colour ones (a photo as PNG is ~3x larger)."""
    buffer = io.BytesIO()
    if image.mode in ("RGB", "RGBA", "CMYK", "YCbCr"):
        image.convert("RGB").save(buffer, format="JPEG", quality=95)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def image_bytes(path: Path) -> tuple[bytes | None, str | None]:
    """(the file's bytes, None) or (None, why not); a FIFO or device is reported without being opened."""
    try:
        return read_regular_file(path), None
    except NotRegularFileError as e:
        return None, f"image is {e.kind}, not a regular file"
    except FileNotFoundError:
        return None, "image file missing"
    except (OSError, ValueError) as e:  # ValueError: a path the file system cannot encode
        return None, f"image file unreadable ({type(e).__name__})"


def sample_bytes(sample: Sample, cache: dict) -> tuple[bytes | None, str | None]:
    """(encoded word image, None) or (None, why not). ``cache`` keeps the last opened scene."""
    if sample.box is None and sample.quad is None:
        data, problem = image_bytes(sample.image)
        if problem is None and image_problem(data):
            problem = "image " + image_problem(data)
        return (None, problem) if problem else (data, None)
    if cache.get("path") != sample.image:
        cache.clear()
        cache["path"] = sample.image
        data, cache["image"] = image_bytes(sample.image)
        if data is not None:
            try:
                with Image.open(io.BytesIO(data)) as scene:
                    scene.load()
                    cache["image"] = scene
            except IMAGE_ERRORS as e:
                cache["image"] = f"image not readable ({type(e).__name__})"
    scene = cache["image"]
    if isinstance(scene, str):
        return None, scene
    word = crop(scene, sample)
    return (None, "box empty inside the image") if word is None else (encode(word), None)


def convert(items: Iterable[Item], output: str | Path, overwrite: bool = False,
            log: Callable[[str], None] = print) -> ConversionReport:
    """Write the samples of ``items`` to the LMDB ``output``; returns what was written and dropped."""
    report = ConversionReport()
    cache: dict = {}
    with LmdbWriter(output, overwrite=overwrite) as writer:
        for item in items:
            if isinstance(item, Dropped):
                report.drop(item.reason, item.where)
                continue
            if not item.label:
                report.drop("empty label", item.where)
                continue
            data, problem = sample_bytes(item, cache)
            if problem:
                report.drop(problem, f"{item.where} ({item.image})")
                continue
            writer.add(data, item.label)
            if writer.count % 10000 == 0:
                log(f"written {writer.count}")
        if writer.count == 0:
            # an exception inside the writer leaves num-samples unwritten: never an empty usable dataset
            raise UserError(f"no sample was written to {output}:\n{report}")
    report.written = writer.count
    return report
