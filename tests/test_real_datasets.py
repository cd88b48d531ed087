"""real_datasets.py and scripts/convert_real_dataset.py: each public format, made here in miniature, to LMDB."""
from __future__ import annotations

import io
import json
import math
import types

import lmdb
import numpy as np
import pytest
from PIL import Image, ImageDraw

from real_datasets import READERS, Dropped, Sample, convert, crop, read_cocotext
from tests.helpers import render_word, run_main


def read_lmdb(path):
    """[(PIL image, label)] in index order, checking the layout create_lmdb_dataset.py writes."""
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        count = int(txn.get(b"num-samples"))
        samples = [(Image.open(io.BytesIO(txn.get(f"image-{i:09d}".encode()))),
                    txn.get(f"label-{i:09d}".encode()).decode("utf-8")) for i in range(1, count + 1)]
        assert txn.get(f"image-{count + 1:09d}".encode()) is None
    env.close()
    return samples


def scene(words_at, size=(400, 200)) -> Image.Image:
    """An RGB scene with each word drawn black on white inside its box (x, y, w, h)."""
    img = Image.new("RGB", size, (90, 140, 60))
    for word, (x, y, w, h) in words_at:
        img.paste(render_word(word).convert("RGB").resize((w, h)), (x, y))
    return img


def dark_columns(img: Image.Image) -> int:
    return int((np.asarray(img.convert("L")) < 100).any(axis=0).sum())


# --- IIIT5K ---------------------------------------------------------------------------------

def test_iiit5k_mat(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    (tmp_path / "train").mkdir()
    words = ["CHINA", "Restaurant", ""]
    table = np.zeros((1, len(words)), dtype=[("ImgName", "O"), ("GroundTruth", "O"), ("smallLexi", "O"),
                                              ("mediumLexi", "O")])
    for i, word in enumerate(words):
        name = f"train/{100 + i}_{i + 1}.png"
        render_word(word or "x").save(tmp_path / name)
        table[0, i] = (name, word, np.array(["A", "B"], dtype=object), np.array(["C"], dtype=object))
    scipy_io.savemat(tmp_path / "traindata.mat", {"traindata": table})
    report = convert(READERS["iiit5k"](tmp_path / "traindata.mat", tmp_path), tmp_path / "out")
    assert [label for _, label in read_lmdb(tmp_path / "out")] == ["CHINA", "Restaurant"]
    assert report.written == 2 and report.dropped == {"empty label": 1}
    # the stored bytes are the crop files themselves (already word images: no re-encoding)
    assert read_lmdb(tmp_path / "out")[0][0].size == render_word("CHINA").size


def test_iiit5k_wrong_mat_is_named(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    scipy_io.savemat(tmp_path / "other.mat", {"x": np.arange(3)})
    with pytest.raises(ValueError, match="ImgName and GroundTruth"):
        list(READERS["iiit5k"](tmp_path / "other.mat", tmp_path))


# --- SVT ------------------------------------------------------------------------------------

SVT_XML = """<?xml version="1.0" encoding="utf-8"?>
<tagset>
  <image>
    <imageName>img/14_03.jpg</imageName>
    <address>341 Southwest 10th Avenue Portland OR</address>
    <lex>LIVING,ROOM,THEATERS,KENNY,ZUKE</lex>
    <Resolution x="400" y="200"/>
    <taggedRectangles>
      <taggedRectangle height="40" width="120" x="20" y="30">
        <tag>LIVING</tag>
      </taggedRectangle>
      <taggedRectangle height="40" width="100" x="-10" y="120">
        <tag>ROOM</tag>
      </taggedRectangle>
      <taggedRectangle height="40" width="100" x="500" y="20">
        <tag>OUTSIDE</tag>
      </taggedRectangle>
    </taggedRectangles>
  </image>
  <image>
    <imageName>img/missing.jpg</imageName>
    <taggedRectangles><taggedRectangle height="10" width="10" x="0" y="0"><tag>GONE</tag></taggedRectangle></taggedRectangles>
  </image>
</tagset>
"""


def test_svt_xml_crops_and_clips(tmp_path):
    (tmp_path / "img").mkdir()
    scene([("LIVING", (20, 30, 120, 40)), ("ROOM", (0, 120, 90, 40))]).save(tmp_path / "img/14_03.jpg")
    (tmp_path / "train.xml").write_text(SVT_XML, encoding="utf-8")
    report = convert(READERS["svt"](tmp_path / "train.xml", tmp_path), tmp_path / "out")
    samples = read_lmdb(tmp_path / "out")
    assert [label for _, label in samples] == ["LIVING", "ROOM"]
    assert samples[0][0].size == (120, 40) and samples[1][0].size == (90, 40)  # clipped at x=0
    assert dark_columns(samples[0][0]) > 30  # the word is inside the crop
    assert report.dropped == {"box empty inside the image": 1, "image file missing": 1}


# --- ICDAR 2013 / 2015 ----------------------------------------------------------------------

def write_icdar(tmp_path, lines, bom=False):
    for name in ["word_1.png", "word_2.png", "word_3.png", "word_4.png"]:
        render_word(name[5]).save(tmp_path / name)
    text = "\r\n".join(lines) + "\r\n"
    (tmp_path / "gt.txt").write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))


def test_ic13_gt(tmp_path):
    write_icdar(tmp_path, ['word_1.png, "Tiredness"', 'word_2.png, "kills"', 'word_3.png, "A,B \\"C\\""',
                           "word_4.png, no quotes"])
    report = convert(READERS["ic13"](tmp_path / "gt.txt", tmp_path), tmp_path / "out")
    assert [label for _, label in read_lmdb(tmp_path / "out")] == ["Tiredness", "kills", 'A,B "C"']
    assert report.dropped == {'line not of the form name, "label"': 1}
    assert "gt.txt line 4" in str(report)


def test_ic15_drops_do_not_care_and_missing(tmp_path):
    write_icdar(tmp_path, ['word_1.png, "JOINT"', 'word_2.png, "###"', 'word_3.png, "###"',
                           'word_4.png, "café"', 'word_9.png, "gone"'], bom=True)
    report = convert(READERS["ic15"](tmp_path / "gt.txt", tmp_path), tmp_path / "out")
    assert [label for _, label in read_lmdb(tmp_path / "out")] == ["JOINT", "café"]  # the BOM is not in a name
    assert report.dropped == {"do-not-care label '###'": 2, "image file missing": 1}
    assert "dropped 3" in str(report) and "2 do-not-care" in str(report)


# --- COCO-Text ------------------------------------------------------------------------------

def test_cocotext_v2_json(tmp_path):
    scene([("STOP", (10, 10, 100, 40)), ("bus", (150, 100, 80, 30))]).save(tmp_path / "COCO_train2014_000000000036.jpg")
    ann = {"mask": [0, 0, 1, 1], "area": 1.0, "id": 0}
    data = {
        "imgs": {"36": {"id": 36, "set": "train", "width": 400, "height": 200,
                        "file_name": "COCO_train2014_000000000036.jpg"},
                 "40": {"id": 40, "set": "val", "width": 10, "height": 10, "file_name": "COCO_train2014_000000000040.jpg"}},
        "anns": {
            "1": {**ann, "id": 1, "image_id": 36, "bbox": [10.4, 10.0, 99.8, 40.0], "utf8_string": "STOP",
                  "legibility": "legible", "class": "machine printed", "language": "english"},
            "2": {**ann, "id": 2, "image_id": 36, "bbox": [150, 100, 80, 30], "utf8_string": "bus",
                  "legibility": "legible", "class": "machine printed", "language": "english"},
            "3": {**ann, "id": 3, "image_id": 36, "bbox": [0, 0, 5, 5], "legibility": "illegible",
                  "class": "machine printed", "language": "na"},
            "4": {**ann, "id": 4, "image_id": 36, "bbox": [0, 0, 5, 5], "utf8_string": "hi",
                  "legibility": "legible", "class": "handwritten", "language": "english"},
            "5": {**ann, "id": 5, "image_id": 36, "bbox": [0, 0, 5, 5], "utf8_string": "hola",
                  "legibility": "legible", "class": "machine printed", "language": "not english"},
            "6": {**ann, "id": 6, "image_id": 40, "bbox": [0, 0, 5, 5], "utf8_string": "val",
                  "legibility": "legible", "class": "machine printed", "language": "english"}},
        "imgToAnns": {"36": [1, 2, 3, 4, 5], "40": [6]}, "cats": {}, "info": {}}
    (tmp_path / "cocotext.v2.json").write_text(json.dumps(data), encoding="utf-8")
    report = convert(read_cocotext(tmp_path / "cocotext.v2.json", tmp_path), tmp_path / "out")
    samples = read_lmdb(tmp_path / "out")
    assert [label for _, label in samples] == ["STOP", "bus"]
    assert samples[0][0].size == (101, 40) and samples[1][0].size == (80, 30)  # x 10.4..110.2 → pixels 10..110
    assert report.dropped == {"illegible": 1, "class 'handwritten' (not machine printed)": 1,
                              "language 'not english' (not english)": 1}
    with pytest.raises(ValueError, match="1 image file missing"):  # --split val: only annotation 6 (no file)
        convert(read_cocotext(tmp_path / "cocotext.v2.json", tmp_path, split="val"), tmp_path / "val")


# --- TextOCR --------------------------------------------------------------------------------

def test_textocr_rectifies_quads_and_boxes_polygons(tmp_path):
    (tmp_path / "train").mkdir()
    img = Image.new("RGB", (300, 200), "white")
    draw = ImageDraw.Draw(img)
    draw.polygon([(50, 50), (200, 80), (195, 120), (45, 90)], fill="black")  # a tilted bar (quad)
    img.save(tmp_path / "train/a4ea732cd3d5948a.jpg")
    data = {
        "info": {}, "imgs": {"a4ea732cd3d5948a": {"id": "a4ea732cd3d5948a", "width": 300, "height": 200,
                                                  "set": "train", "file_name": "train/a4ea732cd3d5948a.jpg"}},
        "anns": {
            "a4ea732cd3d5948a_1": {"id": "a4ea732cd3d5948a_1", "image_id": "a4ea732cd3d5948a",
                                   "bbox": [45, 50, 155, 70], "utf8_string": "tilted", "area": 6000.0,
                                   "points": [50, 50, 200, 80, 195, 120, 45, 90]},
            "a4ea732cd3d5948a_2": {"id": "a4ea732cd3d5948a_2", "image_id": "a4ea732cd3d5948a",
                                   "bbox": [10, 150, 100, 30], "utf8_string": "curved", "area": 3000.0,
                                   "points": [10, 150, 60, 155, 110, 150, 110, 180, 60, 175, 10, 180]},
            "a4ea732cd3d5948a_3": {"id": "a4ea732cd3d5948a_3", "image_id": "a4ea732cd3d5948a",
                                   "bbox": [0, 0, 5, 5], "utf8_string": ".", "area": 25.0,
                                   "points": [0, 0, 5, 0, 5, 5, 0, 5]}},
        "imgToAnns": {"a4ea732cd3d5948a": ["a4ea732cd3d5948a_1", "a4ea732cd3d5948a_2", "a4ea732cd3d5948a_3"]}}
    (tmp_path / "TextOCR_0.1_train.json").write_text(json.dumps(data), encoding="utf-8")
    report = convert(READERS["textocr"](tmp_path / "TextOCR_0.1_train.json", tmp_path), tmp_path / "out")
    samples = read_lmdb(tmp_path / "out")
    assert [label for _, label in samples] == ["tilted", "curved"]
    tilted = np.asarray(samples[0][0].convert("L"))
    assert samples[0][0].size == (round(math.dist((50, 50), (200, 80))), round(math.dist((50, 50), (45, 90))))
    assert tilted[3:-3, 3:-3].mean() < 60  # rectified: the bar fills the crop (axis-aligned it would not)
    assert samples[1][0].size == (100, 30)  # 6-point polygon: its bounding box
    assert report.dropped == {"illegible ('.')": 1}


def test_quad_crop_of_a_rotated_rectangle_is_upright():
    img = Image.new("L", (200, 200), 255)
    ImageDraw.Draw(img).rectangle((60, 90, 140, 110), fill=0)
    rotated = img.rotate(30, center=(100, 100), fillcolor=255)
    c, s = np.cos(np.radians(-30)), np.sin(np.radians(-30))
    quad = tuple((100 + (x - 100) * c - (y - 100) * s, 100 + (x - 100) * s + (y - 100) * c)
                 for x, y in [(60, 90), (140, 90), (140, 110), (60, 110)])
    word = crop(rotated, Sample(None, "x", quad=quad))
    assert abs(word.width - 80) <= 1 and abs(word.height - 20) <= 1
    assert np.asarray(word)[2:-2, 2:-2].mean() < 40


# --- Union14M-L -----------------------------------------------------------------------------

def test_union14m_mmocr1_json_and_0x_jsonl(tmp_path):
    (tmp_path / "full_images/art_curve").mkdir(parents=True)
    for word in ["hello", "world"]:
        render_word(word).convert("RGB").save(tmp_path / f"full_images/art_curve/{word}.jpg")
    annos = tmp_path / "train_annos"
    (annos / "mmocr1.0").mkdir(parents=True)
    (annos / "mmocr-0.x").mkdir(parents=True)
    data = {"metainfo": {"dataset_type": "TextRecogDataset", "task_name": "textrecog"},
            "data_list": [{"img_path": "full_images/art_curve/hello.jpg", "instances": [{"text": "hello"}]},
                          {"img_path": "full_images/art_curve/world.jpg", "instances": [{"text": "world"}]},
                          {"img_path": "full_images/art_curve/none.jpg", "instances": []}]}
    (annos / "mmocr1.0/train_easy.json").write_text(json.dumps(data), encoding="utf-8")
    report = convert(READERS["union14m"](annos / "mmocr1.0/train_easy.json", tmp_path), tmp_path / "out1")
    assert [label for _, label in read_lmdb(tmp_path / "out1")] == ["hello", "world"]
    assert report.dropped == {"not exactly one text instance": 1}
    lines = [json.dumps({"filename": "full_images/art_curve/hello.jpg", "text": "hello"}),
             json.dumps({"filename": "full_images/art_curve/gone.jpg", "text": "gone"}), "not json"]
    (annos / "mmocr-0.x/train_easy.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    report = convert(READERS["union14m"](annos / "mmocr-0.x/train_easy.jsonl", tmp_path), tmp_path / "out0")
    assert [label for _, label in read_lmdb(tmp_path / "out0")] == ["hello"]
    assert report.dropped == {"image file missing": 1,
                              "line is not a JSON object with filename and text": 1}


# --- the CLI and the dataset it feeds ------------------------------------------------------

def test_cli_converts_and_train_reads_it(tmp_path):
    write_icdar(tmp_path, ['word_1.png, "one"', 'word_2.png, "###"', 'word_3.png, "three"'])
    out = tmp_path / "lmdb" / "ic15"
    proc = run_main("scripts/convert_real_dataset.py", "--format", "ic15", "--annotation", tmp_path / "gt.txt",
                    "--output", out, cwd=tmp_path)
    assert "wrote 2 samples; dropped 1" in proc.stdout and "1 do-not-care label '###'" in proc.stdout
    from dataset import hierarchical_dataset
    opt = types.SimpleNamespace(character="0123456789abcdefghijklmnopqrstuvwxyz", sensitive=False,
                                batch_max_length=25, data_filtering_off=False, rgb=False)
    dataset, _ = hierarchical_dataset(tmp_path / "lmdb", opt)
    assert sorted(dataset[i][1] for i in range(len(dataset))) == ["one", "three"]
    again = run_main("scripts/convert_real_dataset.py", "--format", "ic15", "--annotation", tmp_path / "gt.txt",
                     "--output", out, cwd=tmp_path, check=False)
    assert again.returncode == 1 and "--overwrite" in again.stderr and "Traceback" not in again.stderr


def test_cli_names_a_missing_annotation(tmp_path):
    proc = run_main("scripts/convert_real_dataset.py", "--format", "svt", "--annotation", tmp_path / "test.xml",
                    "--output", tmp_path / "out", cwd=tmp_path, check=False)
    assert proc.returncode == 1 and "test.xml does not exist" in proc.stderr


def test_nothing_usable_leaves_no_dataset(tmp_path):
    with pytest.raises(ValueError, match="no sample was written"):
        convert(iter([Dropped("illegible", "a"), Sample(tmp_path / "gone.png", "x")]), tmp_path / "out")
    assert not (tmp_path / "out" / "data.mdb").exists() or b"num-samples" not in _keys(tmp_path / "out")


def _keys(path):
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        keys = [k for k, _ in txn.cursor()]
    env.close()
    return keys
