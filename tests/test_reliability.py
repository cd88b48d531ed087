"""Dependable at the new edges: converters, ONNX files, outputs, flags, hangs, --resume.

Each class of broken-but-realistic input ends in one ``error:`` line naming the file (exit 1, or 2
for a flag), or in a counted skip; never a traceback, a hang or a destroyed input. Every test here
runs in seconds: tiny models, a handful of images, FIFOs guarded by an alarm.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import sys
from pathlib import Path

import lmdb
import numpy as np
import onnx
import pytest
import torch
from PIL import Image

import checkpoint
import create_lmdb_dataset
import create_synth_dataset
import demo
import export
import onnx_infer
import test as test_script
import train
from helpers import make_gt_folder, make_word_lmdb, render_word, save_tiny_checkpoint
from model import ModelConfig, build_model
from onnx_model import OnnxModel, OnnxModelError, export_onnx
from real_datasets import READERS, Dropped, Sample, convert, crop
from runtime import run_cli

ROOT = Path(__file__).resolve().parents[1]
LOWER = "0123456789abcdefghijklmnopqrstuvwxyz"


def load_script(relative: str):
    """A script under scripts/ as a module (run as a file, it finds its own folder on the import path)."""
    folder = str((ROOT / relative).parent)
    if folder not in sys.path:
        sys.path.append(folder)
    spec = importlib.util.spec_from_file_location(Path(relative).stem, ROOT / relative)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


convert_cli = load_script("scripts/convert_real_dataset.py")


def exit_code(main, *argv) -> int:
    """``main(argv)`` through run_cli, as the command line runs it: → the exit status (0 when it returns)."""
    try:
        run_cli(main, [str(a) for a in argv])
    except SystemExit as e:
        return e.code
    return 0


def one_error_line(err: str) -> str:
    """The single ``error:`` line of stderr; fails on a traceback or on several error lines."""
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@contextlib.contextmanager
def no_hang(seconds: int = 10):
    """A blocking open() of a FIFO fails the test instead of hanging the suite (even where the code
    under test catches the interruption as an OSError and carries on)."""
    fired = []

    def expire(*_):
        fired.append(True)
        raise TimeoutError(f"hung for {seconds} s (a FIFO opened for reading?)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds, 1)  # then every second: each blocked open is interrupted
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert not fired, f"blocked for {seconds} s or more: a special file was opened"


def lmdb_labels(path: Path) -> list[str]:
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        count = int(txn.get(b"num-samples"))
        labels = [txn.get(f"label-{i:09d}".encode()).decode() for i in range(1, count + 1)]
    env.close()
    return labels


# ================================================================ 1. converters: files

SVT_XML = """<?xml version="1.0" encoding="utf-8"?>
<tagset><image><imageName>img/a.jpg</imageName><taggedRectangles>
<taggedRectangle height="40" width="120" x="20" y="30"><tag>LIVING</tag></taggedRectangle>
</taggedRectangles></image></tagset>
"""

BROKEN_ANNOTATIONS = [
    ("svt", "train.xml", b"", "the file is empty"),
    ("svt", "train.xml", b"LIVING 20 30 120 40\n", "not well-formed XML at line 1"),
    ("svt", "train.xml", SVT_XML.encode()[:150], "not well-formed XML at line 3"),  # cut off inside a tag
    ("svt", "train.xml", b"<tagset/>", "holds no <image> element"),
    ("ic13", "gt.txt", b"  \n", "the file is empty"),
    ("cocotext", "cocotext.v2.json", b"[1, 2]", "top level is list, not an object"),
    ("cocotext", "cocotext.v2.json", b'{"imgs": {},\n "anns": {', "not valid JSON at line 2"),
    ("cocotext", "cocotext.v2.json", b'{"imgs": [], "anns": {}}', "its 'imgs' is list"),
    ("textocr", "TextOCR_0.1_train.json", b'{"anns": {}}', "has no 'imgs'"),
    ("textocr", "TextOCR_0.1_train.json", b'{"imgs": {},\n\n "anns": {"1": "caf\xe9"}}', "line 3 is not UTF-8"),
    ("union14m", "train.json", b'{"data_list": 5}', "its 'data_list' is int, not a list"),
    ("union14m", "train.json", b'"a string"', "top level is str"),
    ("iiit5k", "traindata.mat", b"MATLAB 5.0 MAT-file" + bytes(range(256)) * 4, "not a readable MATLAB file"),
]


@pytest.mark.parametrize("fmt, name, content, expected", BROKEN_ANNOTATIONS,
                         ids=[f"{c[0]}-{c[3][:24]}" for c in BROKEN_ANNOTATIONS])
def test_a_broken_annotation_file_is_one_line_naming_file_and_format(tmp_path, capsys, fmt, name, content, expected):
    annotation = tmp_path / name
    annotation.write_bytes(content)
    code = exit_code(convert_cli.main, "--format", fmt, "--annotation", annotation, "--output", tmp_path / "out")
    line = one_error_line(capsys.readouterr().err)
    assert code == 1
    assert str(annotation) in line and expected in line and f"--format {fmt} reads" in line
    assert "disk" not in line  # an XML error code is expat's, not an errno
    assert not (tmp_path / "out").exists()  # read before anything is written


def test_a_cut_off_mat_file_is_named(tmp_path, capsys):
    scipy_io = pytest.importorskip("scipy.io")
    table = np.zeros((1, 50), dtype=[("ImgName", "O"), ("GroundTruth", "O")])
    for i in range(50):
        table[0, i] = (f"train/{i}.png", f"word{i}")
    scipy_io.savemat(tmp_path / "full.mat", {"traindata": table})
    data = (tmp_path / "full.mat").read_bytes()
    (tmp_path / "traindata.mat").write_bytes(data[:len(data) * 2 // 3])
    code = exit_code(convert_cli.main, "--format", "iiit5k", "--annotation", tmp_path / "traindata.mat",
                     "--images", tmp_path, "--output", tmp_path / "out")
    line = one_error_line(capsys.readouterr().err)
    assert code == 1 and "traindata.mat: not a readable MATLAB file" in line


# ================================================================ 1. converters: records

def scene_file(path: Path, size=(200, 100)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("RGB", size, (90, 140, 60))
    img.paste(render_word("STOP").convert("RGB").resize((100, 40)), (10, 10))
    img.save(path)


def coco_ann(**fields) -> dict:
    return {"image_id": 1, "bbox": [10, 10, 100, 40], "utf8_string": "STOP", "legibility": "legible",
            "class": "machine printed", "language": "english", **fields}


def test_cocotext_bad_records_are_skipped_and_counted(tmp_path):
    scene_file(tmp_path / "s.jpg")
    anns = {"1": coco_ann(), "2": coco_ann(bbox=None), "3": coco_ann(bbox=[1, 2, 3]),
            "4": coco_ann(bbox=[float("nan"), 0, 10, 10]), "5": coco_ann(bbox=[0, 0, float("inf"), 10]),
            "6": coco_ann(bbox=["1", "2", "3", "4"]), "7": coco_ann(utf8_string=42), "8": None,
            "9": {k: v for k, v in coco_ann().items() if k != "image_id"}}
    (tmp_path / "c.json").write_text(json.dumps({"imgs": {"1": {"file_name": "s.jpg", "set": "train"}}, "anns": anns}))
    report = convert(READERS["cocotext"](tmp_path / "c.json", tmp_path), tmp_path / "out")
    assert report.written == 1 and lmdb_labels(tmp_path / "out") == ["STOP"]
    assert report.dropped == {"bbox is not 4 finite numbers": 5, "label is int, not a string": 1,
                              "malformed record (TypeError)": 1, "record lacks the field 'image_id'": 1}
    assert report.examples["label is int, not a string"] == "ann 7"


def test_textocr_bad_records_are_skipped_and_counted(tmp_path):
    scene_file(tmp_path / "train" / "s.jpg")
    quad = [10, 10, 110, 10, 110, 50, 10, 50]
    anns = {"a": {"image_id": "s", "points": quad, "utf8_string": "STOP"},
            "b": {"image_id": "s", "points": [str(v) for v in quad], "utf8_string": "x"},
            "c": {"image_id": "s", "points": [float("nan")] + quad[1:], "utf8_string": "x"},
            "d": {"image_id": "s", "points": quad, "utf8_string": 7},
            "e": {"image_id": "nameless", "points": quad, "utf8_string": "x"},
            "f": {"image_id": ["s"], "points": quad, "utf8_string": "x"}}
    imgs = {"s": {"file_name": "train/s.jpg"}, "nameless": {"file_name": None}}
    (tmp_path / "t.json").write_text(json.dumps({"imgs": imgs, "anns": anns}))
    report = convert(READERS["textocr"](tmp_path / "t.json", tmp_path), tmp_path / "out")
    assert report.written == 1
    assert report.dropped == {"points are not finite numbers": 2, "label is int, not a string": 1,
                              "no image path": 1, "malformed record (TypeError)": 1}


def test_svt_icdar_and_union14m_bad_records_are_skipped_and_counted(tmp_path):
    scene_file(tmp_path / "img" / "a.jpg")
    render_word("ok").save(tmp_path / "w.png")
    (tmp_path / "svt.xml").write_text(SVT_XML.replace("</taggedRectangles>", """
        <taggedRectangle height="40" width="120" x="nan" y="30"><tag>NAN</tag></taggedRectangle>
        <taggedRectangle height="40" width="inf" x="0" y="30"><tag>INF</tag></taggedRectangle>
        </taggedRectangles></image><image><taggedRectangles>
        <taggedRectangle height="4" width="4" x="0" y="0"><tag>NONAME</tag></taggedRectangle>
        </taggedRectangles>"""))
    report = convert(READERS["svt"](tmp_path / "svt.xml", tmp_path), tmp_path / "svt")
    assert report.written == 1 and report.dropped == {"box is not 4 finite numbers": 2, "no image path": 1}

    (tmp_path / "gt.txt").write_bytes(b'w.png, "ok"\nw.png, "caf\xe9"\n')
    report = convert(READERS["ic13"](tmp_path / "gt.txt", tmp_path), tmp_path / "ic13")
    assert report.written == 1 and report.dropped == {"line is not UTF-8": 1}
    assert report.examples["line is not UTF-8"] == "gt.txt line 2"

    entries = [{"img_path": "w.png", "instances": [{"text": "ok"}]}, {"img_path": None, "instances": [{"text": "a"}]},
               {"img_path": "w.png", "instances": [{"text": 5}]}, None, {"img_path": "w.png", "instances": [5]}]
    (tmp_path / "u.json").write_text(json.dumps({"data_list": entries}))
    report = convert(READERS["union14m"](tmp_path / "u.json", tmp_path), tmp_path / "u14m")
    assert report.written == 1
    assert report.dropped == {"no image path": 1, "label is int, not a string": 1,
                              "malformed record (AttributeError)": 1, "malformed record (TypeError)": 1}

    (tmp_path / "u.jsonl").write_bytes(b'{"filename": "w.png", "text": "ok"}\n\xff\xfe\n{"filename": "w.png", "text": 3}\n')
    report = convert(READERS["union14m"](tmp_path / "u.jsonl", tmp_path), tmp_path / "u14m_0x")
    assert report.written == 1 and report.dropped == {"line is not UTF-8": 1, "label is int, not a string": 1}


def test_iiit5k_numeric_label_is_skipped(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    render_word("ok").save(tmp_path / "a.png")
    table = np.zeros((1, 2), dtype=[("ImgName", "O"), ("GroundTruth", "O")])
    table[0, 0] = ("a.png", "ok")
    table[0, 1] = ("a.png", np.array([[7.0]]))
    scipy_io.savemat(tmp_path / "testdata.mat", {"testdata": table})
    report = convert(READERS["iiit5k"](tmp_path / "testdata.mat", tmp_path), tmp_path / "out")
    assert report.written == 1 and report.dropped == {"label is float, not a string": 1}


@pytest.mark.parametrize("sample", [
    Sample(Path("s"), "w", quad=((0, 0), (4000, 0), (4000, 2000), (0, 2000))),
    Sample(Path("s"), "w", quad=((-3000, -900), (5000, -900), (5000, 3000), (-3000, 3000))),
    Sample(Path("s"), "w", box=(-50000, -20000, 100000, 50000)),
], ids=["quad", "quad-around", "box"])
def test_a_box_far_larger_than_its_image_is_clipped_before_cropping(sample):
    scene = Image.new("RGB", (200, 100), (255, 255, 255))
    word = crop(scene, sample)
    assert word is not None and word.width <= 200 and word.height <= 100


def test_a_box_empty_after_clipping_is_skipped_and_counted(tmp_path):
    scene_file(tmp_path / "s.jpg")
    items = [Sample(tmp_path / "s.jpg", "in", box=(10, 10, 110, 50)),
             Sample(tmp_path / "s.jpg", "right", box=(300, 10, 400, 50), where="r"),
             Sample(tmp_path / "s.jpg", "below", quad=((0, 150), (90, 150), (90, 190), (0, 190)), where="q")]
    report = convert(iter(items), tmp_path / "out")
    assert report.written == 1 and report.dropped == {"box empty inside the image": 2}


# ================================================================ 1. converters: --overwrite

def previous_dataset(tmp_path: Path) -> Path:
    render_word("old").save(tmp_path / "old.png")
    out = tmp_path / "data" / "ic13"
    convert(iter([Sample(tmp_path / "old.png", "old"), Sample(tmp_path / "old.png", "older")]), out)
    return out


def failing_items(tmp_path: Path):
    render_word("new").save(tmp_path / "new.png")
    yield Sample(tmp_path / "new.png", "new")
    raise RuntimeError("killed half-way")


def test_overwrite_that_writes_nothing_or_fails_leaves_the_old_dataset(tmp_path):
    out = previous_dataset(tmp_path)
    before = (out / "data.mdb").read_bytes()
    with pytest.raises(ValueError, match="no sample was written"):
        convert(iter([Dropped("illegible", "a"), Sample(tmp_path / "gone.png", "x")]), out, overwrite=True)
    with pytest.raises(RuntimeError, match="half-way"):
        convert(failing_items(tmp_path), out, overwrite=True)
    assert (out / "data.mdb").read_bytes() == before and lmdb_labels(out) == ["old", "older"]
    assert sorted(p.name for p in out.parent.iterdir()) == ["ic13"]  # no temporary folder left beside it
    convert(iter([Sample(tmp_path / "new.png", "new")]), out, overwrite=True)
    assert lmdb_labels(out) == ["new"] and sorted(p.name for p in out.parent.iterdir()) == ["ic13"]


def test_cli_overwrite_with_every_image_missing_keeps_the_old_dataset(tmp_path, capsys):
    out = previous_dataset(tmp_path)
    (tmp_path / "gt.txt").write_text('gone_1.png, "a"\ngone_2.png, "b"\n')
    code = exit_code(convert_cli.main, "--format", "ic13", "--annotation", tmp_path / "gt.txt", "--output", out,
                     "--overwrite")
    assert code == 1 and "no sample was written" in capsys.readouterr().err
    assert lmdb_labels(out) == ["old", "older"]


# ================================================================ 2. ONNX files

@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model(ModelConfig("None", "VGG", "None", "CTC", imgH=32, imgW=100, output_channel=32,
                                    hidden_size=16, batch_max_length=6))
    return export_onnx(model.eval(), tmp_path_factory.mktemp("onnx") / "tiny.onnx")


def broken_onnx(kind: str, good: Path, folder: Path) -> Path:
    path = folder / f"{kind}.onnx"
    data = good.read_bytes()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    elif kind == "truncated":
        path.write_bytes(data[:len(data) // 2])
    else:
        proto = onnx.load_model(good)
        if kind == "node_missing":
            proto.graph.node.remove(proto.graph.node[len(proto.graph.node) // 2])
        else:  # metadata that does not fit the graph: one character more, or another image height
            meta = json.loads(proto.metadata_props[0].value)
            if kind == "charset":
                meta["config"]["character"] += "%"
            else:
                meta["config"]["imgH"] = 64
            proto.metadata_props[0].value = json.dumps(meta)
        onnx.save_model(proto, path)
    return path


ONNX_DAMAGE = ["empty", "random", "truncated", "node_missing", "charset", "height"]


@pytest.mark.parametrize("kind", ONNX_DAMAGE)
def test_a_broken_onnx_file_is_refused_when_opened(tmp_path, onnx_file, kind):
    path = broken_onnx(kind, onnx_file, tmp_path)
    with pytest.raises(OnnxModelError) as error:
        OnnxModel(path)
    assert str(path) in str(error.value) and "\n" not in str(error.value)
    if kind == "charset":
        assert "the graph predicts 37 classes" in str(error.value) and "38" in str(error.value)
    if kind == "height":
        assert "imgH 64" in str(error.value)


@pytest.mark.parametrize("kind", ONNX_DAMAGE)
def test_demo_test_and_onnx_infer_answer_a_broken_onnx_file_in_one_line(tmp_path, onnx_file, capsys, monkeypatch,
                                                                        kind):
    monkeypatch.chdir(tmp_path)
    path = broken_onnx(kind, onnx_file, tmp_path)
    render_word("cat").save(tmp_path / "cat.png")
    make_word_lmdb(tmp_path / "eval" / "e", 4)
    runs = [(demo.read_folder, ["--image_folder", tmp_path / "cat.png", "--saved_model", path]),
            (test_script.evaluate, ["--eval_data", tmp_path / "eval", "--saved_model", path, "--workers", "0"]),
            (onnx_infer.main, [path, tmp_path / "cat.png"])]
    for main, argv in runs:
        code = exit_code(main, *argv)
        line = one_error_line(capsys.readouterr().err)
        assert code == 1 and str(path) in line, (main.__module__, line)


def test_onnx_infer_skips_missing_unreadable_and_special_images(tmp_path, onnx_file, capsys):
    render_word("cat").save(tmp_path / "cat.png")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    os.mkfifo(tmp_path / "pipe.png")
    with no_hang():
        code = exit_code(onnx_infer.main, onnx_file, tmp_path / "gone.png", tmp_path / "bad.png",
                         tmp_path / "pipe.png", tmp_path / "cat.png")
    captured = capsys.readouterr()
    assert code == 0 and "Traceback" not in captured.err
    assert [line.split("\t")[0] for line in captured.out.splitlines()] == [str(tmp_path / "cat.png")]
    for name in ("gone.png", "bad.png", "pipe.png"):
        assert f"{tmp_path / name}:" in captured.err
    assert "FIFO" in captured.err
    assert exit_code(onnx_infer.main, onnx_file) == 2  # no image: usage


# ================================================================ 3. outputs

@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "best_accuracy.pth", hidden_size=16)


@pytest.mark.parametrize("fmt", ["reference", "onnx", "easyocr"])
def test_export_never_writes_over_its_input(tmp_path, tiny_checkpoint, capsys, fmt):
    saved = tmp_path / "best_accuracy.pth"
    saved.write_bytes(tiny_checkpoint.read_bytes())
    output = tmp_path if fmt == "easyocr" else saved
    code = exit_code(export.export, "--saved_model", saved, "--format", fmt, "--output", output, "--name",
                     "best_accuracy")
    line = one_error_line(capsys.readouterr().err)
    assert code == 1 and "would destroy the input" in line
    assert saved.read_bytes() == tiny_checkpoint.read_bytes() and sorted(os.listdir(tmp_path)) == [saved.name]


def test_export_to_a_folder_or_under_a_file_fails_before_the_work(tmp_path, tiny_checkpoint, capsys):
    (tmp_path / "models").mkdir()
    (tmp_path / "plain").write_text("x")
    for output, expected in [(tmp_path / "models", "is a folder"), (tmp_path / "plain" / "m.onnx", "is a file")]:
        code = exit_code(export.export, "--saved_model", tiny_checkpoint, "--format", "onnx", "--output", output)
        line = one_error_line(capsys.readouterr().err)
        assert code == 1 and expected in line and str(output) in line
    assert os.listdir(tmp_path / "models") == [] and sorted(os.listdir(tmp_path)) == ["models", "plain"]


def test_dataset_writers_refuse_an_output_under_a_file_before_the_work(tmp_path, capsys):
    (tmp_path / "plain").write_text("x")
    under = tmp_path / "plain" / "lmdb"
    folder = make_gt_folder(tmp_path / "in", copies=1)
    (tmp_path / "gt15.txt").write_text('w.png, "a"\n')
    runs = [(create_synth_dataset.main,
             ["--output_dir", under, "--num_samples", "2", "--workers", "1"]),
            (create_lmdb_dataset.main, [folder, folder / "gt.txt", under]),
            (convert_cli.main, ["--format", "ic15", "--annotation", tmp_path / "gt15.txt", "--output", under])]
    for main, argv in runs:
        code = exit_code(main, *argv)
        line = one_error_line(capsys.readouterr().err)
        assert code == 1 and "is a file, not a folder" in line, line
    assert (tmp_path / "plain").read_text() == "x"


def test_late_writers_check_their_output_before_the_work(tmp_path, tiny_checkpoint, capsys, monkeypatch):
    """demo.py's --log_file and test.py's --save_errors are written after every image is read."""
    monkeypatch.chdir(tmp_path)
    render_word("cat").save(tmp_path / "cat.png")
    (tmp_path / "log").mkdir()
    (tmp_path / "plain").write_text("x")
    monkeypatch.setattr(demo, "read_decoded", lambda opt, notes=None: pytest.fail("read the images first"))
    monkeypatch.setattr(test_script, "load_model_for_runtime", lambda *a, **k: pytest.fail("loaded the model first"))
    runs = [(demo.read_folder, ["--image_folder", tmp_path / "cat.png", "--saved_model", tiny_checkpoint,
                                "--log_file", tmp_path / "log"], "--log_file"),
            (test_script.evaluate, ["--eval_data", tmp_path, "--saved_model", tiny_checkpoint, "--save_errors",
                                    tmp_path / "plain" / "errors"], "--save_errors")]
    for main, argv, flag in runs:
        code = exit_code(main, *argv)
        assert code == 1 and flag in one_error_line(capsys.readouterr().err)


# ================================================================ 4. flags at the door

def test_new_flags_are_checked_at_the_door_with_exit_2(tmp_path, tiny_checkpoint, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "latin1.txt").write_bytes(b"abc\n\xe9\n")
    synth = create_synth_dataset.main
    out = ["--output_dir", tmp_path / "synth", "--workers", "1"]
    runs = [
        (train.main, ["--train_data", "t", "--valid_data", "v", "--augment", "rand", "--augment_m", "11"],
         "--augment_m 11"),
        (train.main, ["--train_data", "t", "--valid_data", "v", "--augment", "rand", "--augment_n", "0"],
         "--augment_n 0"),
        (train.main, ["--train_data", "t", "--valid_data", "v", "--augment", "rand", "--augment_m", "nan"],
         "--augment_m nan"),
        (export.export, ["--saved_model", tiny_checkpoint, "--format", "onnx", "--output", "m.onnx", "--quantize",
                         "int8", "--calib_data", tmp_path, "--calib_size", "0"], "--calib_size"),
        (synth, [*out, "--num_samples", "0"], "--num_samples"),
        (synth, [*out, "--layout", "tree", "--num_eval", "0"], "--num_eval"),
        (synth, [*out, "--num_samples", "2", "--font_dir", tmp_path / "no_fonts"], "--font_dir"),
        (synth, [*out, "--num_samples", "2", "--character", tmp_path / "latin1.txt"], "not UTF-8"),
        (demo.read_folder, ["--image_folder", tmp_path, "--saved_model", tiny_checkpoint, "--decoder", "beam",
                            "--beam_size", "1000000"], "--beam_size 1000000"),
    ]
    for main, argv, expected in runs:
        code = exit_code(main, *argv)
        err = capsys.readouterr().err
        assert code == 2 and expected in err and "Traceback" not in err, (argv, err)
    assert "latin1.txt" in exit_message(synth, *out, "--character", tmp_path / "latin1.txt", capsys=capsys)
    assert not (tmp_path / "synth").exists() and not (tmp_path / "saved_models").exists()


def exit_message(main, *argv, capsys) -> str:
    exit_code(main, *argv)
    return capsys.readouterr().err


# ================================================================ 5. hangs

def test_demo_skips_a_fifo_in_the_folder_and_reads_the_rest(tmp_path, tiny_checkpoint, caplog, monkeypatch):
    monkeypatch.chdir(tmp_path)
    render_word("cat").save(tmp_path / "cat.png")
    os.mkfifo(tmp_path / "pipe.png")
    with no_hang(), caplog.at_level("WARNING"):
        results = demo.read_folder(["--image_folder", str(tmp_path), "--saved_model", str(tiny_checkpoint),
                                     "--workers", "0"])
    assert [path for path, _, _ in results] == [str(tmp_path / "cat.png")]
    assert "pipe.png" in caplog.text and "FIFO" in caplog.text


def test_create_lmdb_skips_a_gt_line_naming_a_fifo(tmp_path, capsys):
    folder = make_gt_folder(tmp_path / "in", copies=1)
    os.mkfifo(folder / "images" / "pipe.png")
    with open(folder / "gt.txt", "a") as gt:
        gt.write("images/pipe.png\tpipe\n")
    with no_hang():
        assert exit_code(create_lmdb_dataset.main, folder, folder / "gt.txt", tmp_path / "out") == 0
    assert "pipe.png is a FIFO (named pipe), not a regular file" in capsys.readouterr().out
    assert "pipe" not in lmdb_labels(tmp_path / "out")
    with no_hang():  # the gt file itself
        assert exit_code(create_lmdb_dataset.main, folder, folder / "images" / "pipe.png", tmp_path / "o2") == 1
    assert "is a FIFO (named pipe), not a regular file" in one_error_line(capsys.readouterr().err)


def test_converter_skips_a_fifo_image(tmp_path):
    render_word("ok").save(tmp_path / "w.png")
    os.mkfifo(tmp_path / "pipe.png")
    items = [Sample(tmp_path / "w.png", "ok"), Sample(tmp_path / "pipe.png", "whole"),
             Sample(tmp_path / "pipe.png", "crop", box=(0, 0, 5, 5))]
    with no_hang():
        report = convert(iter(items), tmp_path / "out")
    assert report.written == 1 and report.dropped == {"image is a FIFO (named pipe), not a regular file": 2}


# ================================================================ 6. checkpoints at the wrong door

def test_resume_with_a_file_that_is_not_a_training_state_names_it(tmp_path, tiny_checkpoint, onnx_file):
    bare = tmp_path / "reference.pth"
    checkpoint.export_reference(bare, build_model(ModelConfig("None", "VGG", "None", "CTC", output_channel=32,
                                                              hidden_size=16)))
    cases = [(tiny_checkpoint, "is a model checkpoint (weights only"), (bare, "is a bare state_dict"),
             (onnx_file, "is an ONNX model")]
    for path, expected in cases:
        with pytest.raises(checkpoint.CheckpointError) as error:
            checkpoint.read_training_state(path)
        message = str(error.value)
        assert expected in message and str(path) in message and "--resume" in message, message
        assert "weights_only` set to `False`" not in message  # torch's unsafe advice is not passed on
    assert "--saved_model" in str(pytest.raises(checkpoint.CheckpointError, checkpoint.read_training_state,
                                                tiny_checkpoint).value)


def test_train_resume_with_best_accuracy_exits_1_with_the_flag_that_takes_it(tmp_path, tiny_checkpoint, capsys,
                                                                           monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STR_CACHE_DIR", str(tmp_path / "cache"))
    make_word_lmdb(tmp_path / "train" / "MJ", 8, max_len=6)
    make_word_lmdb(tmp_path / "valid" / "v", 4, max_len=6)
    code = exit_code(train.main, "--train_data", tmp_path / "train", "--valid_data", tmp_path / "valid",
                     "--select_data", "MJ", "--batch_ratio", "1", "--Transformation", "None", "--FeatureExtraction",
                     "VGG", "--SequenceModeling", "None", "--Prediction", "CTC", "--output_channel", "32",
                     "--hidden_size", "16", "--workers", "0", "--batch_size", "4", "--progress", "off",
                     "--num_iter", "2", "--resume", tiny_checkpoint)
    line = one_error_line(capsys.readouterr().err)
    assert code == 1 and "not a training state" in line and f"--saved_model {tiny_checkpoint}" in line
