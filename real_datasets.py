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

from PIL import Image

from dataset import IMAGE_ERRORS, image_problem
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

def by_image(anns: dict) -> list[tuple[str, dict]]:
    """COCO-style ``anns`` items grouped by image (first-seen order), so each scene is opened once."""
    groups: dict[str, list] = {}
    for ann_id, ann in anns.items():
        groups.setdefault(str(ann.get("image_id")), []).append((ann_id, ann))
    return [item for group in groups.values() for item in group]


def read_iiit5k(annotation: Path, root: Path) -> Iterator[Item]:
    """``traindata.mat``/``testdata.mat``: a 1 x N struct array (variable ``traindata`` or
    ``testdata``) with fields ImgName ('train/1009_2.png', relative to the IIIT5K folder),
    GroundTruth, smallLexi and mediumLexi (the lexicons are not used)."""
    from scipy.io import loadmat  # only this format needs scipy
    mat = loadmat(str(annotation))
    tables = [v for k, v in mat.items() if not k.startswith("__") and getattr(v.dtype, "names", None)
              and {"ImgName", "GroundTruth"} <= set(v.dtype.names)]
    if not tables:
        raise ValueError(f"{annotation} holds no struct array with ImgName and GroundTruth fields; is it "
                         "IIIT5K's traindata.mat or testdata.mat?")
    for i, entry in enumerate(tables[0].ravel()):
        name, label = _mat_string(entry["ImgName"]), _mat_string(entry["GroundTruth"])
        if not name:
            yield Dropped("no ImgName", f"entry {i + 1}")
        else:
            yield Sample(root / name, label, where=name)


def _mat_string(value) -> str:
    """A MATLAB char array as loadmat returns it (array(['text']) or an empty array)."""
    while hasattr(value, "ravel") and value.dtype == object:
        value = value.ravel()[0] if value.size else ""
    if hasattr(value, "ravel"):
        return "".join(str(v) for v in value.ravel())
    return str(value)


def read_svt(annotation: Path, root: Path) -> Iterator[Item]:
    """SVT ``train.xml``/``test.xml``: ``<image><imageName>img/14_03.jpg</imageName>...
    <taggedRectangles><taggedRectangle x= y= width= height=><tag>WORD</tag>``. Boxes that reach
    outside the image are clipped by ``convert``."""
    for image in ET.parse(annotation).getroot().iter("image"):
        name = image.findtext("imageName", "").strip()
        for j, rect in enumerate(image.iter("taggedRectangle")):
            where = f"{name} box {j + 1}"
            try:
                x, y, w, h = (float(rect.get(k)) for k in ("x", "y", "width", "height"))
            except (TypeError, ValueError):
                yield Dropped("box without numeric x/y/width/height", where)
                continue
            yield Sample(root / name, (rect.findtext("tag") or "").strip(), box=(x, y, x + w, y + h), where=where)


ICDAR_LINE = re.compile(r'^\s*(?P<name>[^,]+?)\s*,\s*"(?P<label>.*)"\s*$')


def read_icdar_words(annotation: Path, root: Path, do_not_care: str | None = None) -> Iterator[Item]:
    """ICDAR word recognition ``gt.txt`` (2013 and 2015): ``word_1.png, "Tiredness"`` per line,
    UTF-8 (with a BOM in 2015). Inside the quotes ``\\"`` is a quote and ``\\\\`` a backslash; the
    label ends at the line's last quote. ``do_not_care`` ('###' in 2015) labels are dropped."""
    text = annotation.read_text(encoding="utf-8-sig")
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{annotation.name} line {lineno}"
        match = ICDAR_LINE.match(line)
        if match is None:
            yield Dropped('line not of the form name, "label"', where)
            continue
        label = re.sub(r'\\(["\\])', r"\1", match["label"])
        if do_not_care is not None and label == do_not_care:
            yield Dropped(f"do-not-care label {do_not_care!r}", where)
        else:
            yield Sample(root / match["name"], label, where=where)


def read_ic15(annotation: Path, root: Path) -> Iterator[Item]:
    return read_icdar_words(annotation, root, do_not_care="###")


def read_cocotext(annotation: Path, root: Path, split: str = "train") -> Iterator[Item]:
    """COCO-Text v2 ``cocotext.v2.json``: ``imgs`` (file_name, set), ``anns`` (image_id, bbox
    [x, y, w, h], utf8_string, legibility, class, language). Kept: legible machine-printed English
    words of the images in ``split``; images are COCO train2014's, under ``root``."""
    data = json.loads(annotation.read_text(encoding="utf-8"))
    imgs = data["imgs"]
    for ann_id, ann in by_image(data["anns"]):
        img = imgs.get(str(ann["image_id"]))
        where = f"ann {ann_id}"
        if img is None:
            yield Dropped("image_id not in imgs", where)
        elif img.get("set") != split:
            continue  # the other split: not a drop
        elif ann.get("legibility") != "legible":
            yield Dropped("illegible", where)
        elif ann.get("class") != "machine printed":
            yield Dropped(f"class {ann.get('class')!r} (not machine printed)", where)
        elif ann.get("language") != "english":
            yield Dropped(f"language {ann.get('language')!r} (not english)", where)
        else:
            x, y, w, h = ann["bbox"]
            yield Sample(root / img["file_name"], ann.get("utf8_string", ""), box=(x, y, x + w, y + h), where=where)


def read_textocr(annotation: Path, root: Path) -> Iterator[Item]:
    """TextOCR ``TextOCR_0.1_{train,val}.json``: ``imgs`` (file_name 'train/<id>.jpg', relative to
    train_val_images/), ``anns`` (image_id, points [x1, y1, ...], utf8_string; '.' marks an
    illegible word). A 4-point polygon is rectified; a longer one is cropped by its bounding box."""
    data = json.loads(annotation.read_text(encoding="utf-8"))
    imgs = data["imgs"]
    for ann_id, ann in by_image(data["anns"]):
        img = imgs.get(ann["image_id"])
        points = ann.get("points") or []
        if img is None:
            yield Dropped("image_id not in imgs", ann_id)
        elif ann.get("utf8_string", ".") == ".":
            yield Dropped("illegible ('.')", ann_id)
        elif len(points) < 6 or len(points) % 2:
            yield Dropped("polygon with fewer than 3 points", ann_id)
        else:
            path = root / (img.get("file_name") or img["filename"])
            xy = tuple(zip(points[0::2], points[1::2]))
            if len(xy) == 4:
                yield Sample(path, ann["utf8_string"], quad=xy, where=ann_id)
            else:
                xs, ys = [p[0] for p in xy], [p[1] for p in xy]
                yield Sample(path, ann["utf8_string"], box=(min(xs), min(ys), max(xs), max(ys)), where=ann_id)


def read_union14m(annotation: Path, root: Path) -> Iterator[Item]:
    """Union14M-L ``train_annos``: MMOCR 1.0 ``.json`` (``{"data_list": [{"img_path": ...,
    "instances": [{"text": ...}]}]}``) or MMOCR 0.x ``.jsonl`` (``{"filename": ..., "text": ...}``
    per line); paths relative to the Union14M-L folder (``root``). The images are word crops."""
    if annotation.suffix == ".jsonl":
        for lineno, line in enumerate(annotation.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{annotation.name} line {lineno}"
            try:
                entry = json.loads(line)
                yield Sample(root / entry["filename"], entry["text"], where=where)
            except (json.JSONDecodeError, KeyError, TypeError):
                yield Dropped("line is not a JSON object with filename and text", where)
        return
    data = json.loads(annotation.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "data_list" not in data:
        raise ValueError(f"{annotation} has no 'data_list': not an MMOCR 1.0 annotation file (Union14M-L ships "
                         "train_annos/mmocr1.0/*.json and train_annos/mmocr-0.x/*.jsonl).")
    for i, entry in enumerate(data["data_list"]):
        instances = entry.get("instances") or []
        where = f"data_list[{i}] {entry.get('img_path', '')}"
        if len(instances) != 1 or "text" not in instances[0]:
            yield Dropped("not exactly one text instance", where)
        else:
            yield Sample(root / entry["img_path"], instances[0]["text"], where=where)


READERS: dict[str, Callable[[Path, Path], Iterator[Item]]] = {
    "iiit5k": read_iiit5k, "svt": read_svt, "ic13": read_icdar_words, "ic15": read_ic15,
    "cocotext": read_cocotext, "textocr": read_textocr, "union14m": read_union14m,
}


# --- cropping and writing -------------------------------------------------------------------

def crop(image: Image.Image, sample: Sample) -> Image.Image | None:
    """The sample's word image, or None if its box is empty inside the image."""
    if sample.quad is not None:
        (x0, y0), (x1, y1), (x2, y2), (x3, y3) = sample.quad  # tl, tr, br, bl
        width = round((math.dist((x0, y0), (x1, y1)) + math.dist((x3, y3), (x2, y2))) / 2)
        height = round((math.dist((x0, y0), (x3, y3)) + math.dist((x1, y1), (x2, y2))) / 2)
        if width < 1 or height < 1:
            return None
        # PIL's QUAD data: upper-left, lower-left, lower-right, upper-right source corners
        return image.transform((width, height), Image.Transform.QUAD, (x0, y0, x3, y3, x2, y2, x1, y1),
                               Image.Resampling.BICUBIC)
    x0, y0, x1, y1 = sample.box
    box = (max(0, math.floor(x0)), max(0, math.floor(y0)), min(image.width, math.ceil(x1)),
           min(image.height, math.ceil(y1)))
    if box[2] <= box[0] or box[3] <= box[1]:
        return None
    return image.crop(box)


def encode(image: Image.Image) -> bytes:
    """PNG for grey and palette crops, JPEG quality 95 for colour ones (a photo as PNG is ~3x larger)."""
    buffer = io.BytesIO()
    if image.mode in ("RGB", "RGBA", "CMYK", "YCbCr"):
        image.convert("RGB").save(buffer, format="JPEG", quality=95)
    else:
        image.save(buffer, format="PNG")
    return buffer.getvalue()


def sample_bytes(sample: Sample, cache: dict) -> tuple[bytes | None, str | None]:
    """(encoded word image, None) or (None, why not). ``cache`` keeps the last opened scene."""
    if sample.box is None and sample.quad is None:
        try:
            data = sample.image.read_bytes()
        except OSError:
            return None, "image file missing or unreadable"
        problem = image_problem(data)
        return (None, "image " + problem) if problem else (data, None)
    if cache.get("path") != sample.image:
        cache.clear()
        cache["path"] = sample.image
        try:
            with Image.open(sample.image) as scene:
                scene.load()
                cache["image"] = scene
        except FileNotFoundError:
            cache["image"] = "image file missing"
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
            raise ValueError(f"no sample was written to {output}:\n{report}")
    report.written = writer.count
    return report
