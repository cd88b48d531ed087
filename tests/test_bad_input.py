"""Bad input meets a clear message or a counted skip, never a traceback.

Line breaks in gt.txt, labels and file names that are not UTF-8, paths of the wrong kind, and a
seeded fuzz test of the gt.txt parser and the label filter.
"""
from __future__ import annotations

import logging
import os
import random
import types
import unicodedata
from pathlib import Path

import numpy as np
import pytest

import checkpoint
import dataset
import demo
import test as test_script
from dataset import LabelFilter, LmdbDataset, iter_lmdb_labels, open_lmdb, parse_gt_file
from lmdb_store import LmdbWriter
from helpers import render_word, save_tiny_checkpoint
from utils import CTCLabelConverter, printable

LOWER = "0123456789abcdefghijklmnopqrstuvwxyz"


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("STR_CACHE_DIR", str(tmp_path / "filter-cache"))


def opt(**kw):
    values = dict(character=LOWER, sensitive=False, batch_max_length=25, data_filtering_off=False, rgb=False)
    return types.SimpleNamespace(**{**values, **kw})


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pth")


# ---------------------------------------------------------------- line breaks

def write_gt(tmp_path: Path, data: bytes) -> Path:
    path = tmp_path / "gt.txt"
    path.write_bytes(data)
    return path


def test_a_lone_carriage_return_stays_in_its_label(tmp_path):
    samples, problems = parse_gt_file(write_gt(tmp_path, b"a.png\tab\rcd\nb.png\tnext\nnotab\n"))
    assert samples == [(1, "a.png", "ab\rcd"), (2, "b.png", "next")]
    assert problems == [(3, "notab", "no tab between image path and label")]  # line 3, not 4


def test_crlf_endings_still_work(tmp_path):
    samples, problems = parse_gt_file(write_gt(tmp_path, b"\xef\xbb\xbfa.png\tone\r\nb.png\ttwo\r\n\r\nc.png\tthree"))
    assert samples == [(1, "a.png", "one"), (2, "b.png", "two"), (4, "c.png", "three")]
    assert problems == [(3, "", "empty line")]


def test_a_line_that_is_not_utf8_is_reported_with_its_number(tmp_path):
    samples, problems = parse_gt_file(write_gt(tmp_path, "a.png\tcafé\n".encode("latin-1") + b"b.png\tok\n"))
    assert samples == [(2, "b.png", "ok")]
    assert problems == [(1, "a.png\tcaf\ufffd", "not UTF-8 (byte 0xe9 at column 10); re-save the file as UTF-8")]


def test_utf16_gt_file_is_refused_with_the_fix(tmp_path):
    with pytest.raises(ValueError, match="UTF-16 text; re-save it as UTF-8"):
        parse_gt_file(write_gt(tmp_path, "a.png\tone\n".encode("utf-16")))


# ---------------------------------------------------------------- labels that are not UTF-8

def lmdb_with_raw_labels(path: Path, labels: list[bytes]) -> Path:
    png = render_png()
    with LmdbWriter(path) as writer:
        for label in labels:
            index = writer.add(png, "x")
            writer._txn.put(f"label-{index:09d}".encode(), label)  # bytes no writer would write
    return path


def render_png() -> bytes:
    import io
    buffer = io.BytesIO()
    render_word("ab").save(buffer, format="PNG")
    return buffer.getvalue()


def test_lmdb_label_not_utf8_is_skipped_counted_and_named(tmp_path, caplog):
    root = lmdb_with_raw_labels(tmp_path / "db", [b"ab", b"c\xffd", b"ef"])
    with caplog.at_level(logging.WARNING, logger="dataset"):
        ds = LmdbDataset(root, opt())
    assert len(ds) == 2 and ds.stats.bad_label == 1 and ds.stats.total == 3
    assert [ds[i][1] for i in range(2)] == ["ab", "ef"]
    assert "1 labels not UTF-8 skipped" in str(ds.stats)
    assert f"label of {root} at index 2 (key label-000000002) is not UTF-8" in caplog.text
    # Filtering off drops it too (the converter could not encode it), and a cached filter keeps the count.
    assert LmdbDataset(root, opt(data_filtering_off=True)).stats.bad_label == 1
    assert LmdbDataset(root, opt()).stats.bad_label == 1


def test_lmdb_label_not_utf8_at_read_time_is_skipped(tmp_path, caplog):
    root = lmdb_with_raw_labels(tmp_path / "db", [b"ab", b"\xc3\x28"])
    ds = LmdbDataset(root, opt())
    ds.filtered_index_list = np.array([1, 2], dtype=np.int32)  # as if the LMDB changed after the filter ran
    ds.stats.bad_label = 0
    with caplog.at_level(logging.WARNING, logger="dataset"):
        assert ds[1] is None
    assert ds.stats.bad_label == 1
    assert f"label in {root} at index 1 (key label-000000002) is missing or not UTF-8" in caplog.text


def test_evaluation_with_a_bad_label_finishes_and_names_it(tmp_path, monkeypatch, tiny_model, capsys):
    monkeypatch.chdir(tmp_path)
    lmdb_with_raw_labels(tmp_path / "eval" / "db", [b"ab", b"\xff\xfe", b"cd"])
    result = test_script.main(["--eval_data", str(tmp_path / "eval"), "--saved_model", str(tiny_model),
                               "--workers", "0", "--device", "cpu", "--batch_size", "4"])
    assert result["n_samples"] == 2
    assert "1 labels not UTF-8 skipped" in capsys.readouterr().out


# ---------------------------------------------------------------- file names that are not UTF-8

def test_demo_logs_a_file_name_that_is_not_utf8(tmp_path, monkeypatch, tiny_model, capsys):
    monkeypatch.chdir(tmp_path)
    folder = tmp_path / "images"
    folder.mkdir()
    name = os.fsdecode(b"caf\xe9.png")  # Latin-1 bytes on a UTF-8 system: a lone surrogate in Python
    render_word("cafe").save(os.path.join(folder, name))
    render_word("ok").save(folder / "ok.png")
    results = demo.main(["--image_folder", str(folder), "--saved_model", str(tiny_model), "--workers", "0",
                         "--device", "cpu", "--log_file", "log.txt"])
    assert sorted(os.path.basename(path) for path, _, _ in results) == sorted([name, "ok.png"])  # openable
    log = (tmp_path / "log.txt").read_text(encoding="utf-8")
    assert "caf\ufffd.png" in log and "ok.png" in log
    assert "caf\ufffd.png" in capsys.readouterr().out


def test_printable():
    assert printable(os.fsdecode(b"a\xffb")) == "a\ufffdb"
    assert printable("a\ud800b") == "a\ufffd\ufffd\ufffdb"  # a surrogate that stands for no byte
    assert printable("plain é") == "plain é"


# ---------------------------------------------------------------- paths of the wrong kind

def test_saved_model_that_is_a_folder_says_so(tmp_path, tiny_model):
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "best_accuracy.pth").write_bytes(tiny_model.read_bytes())
    with pytest.raises(checkpoint.CheckpointError, match="is a folder, not a checkpoint file; pass one of the "
                                                         ".pth files in it: best_accuracy.pth"):
        checkpoint.read_checkpoint(tmp_path / "exp")
    with pytest.raises(SystemExit) as exit_info:
        demo.main(["--image_folder", str(tmp_path), "--saved_model", str(tmp_path / "exp")])
    assert exit_info.value.code == 1 and "is a folder" in str(exit_info.value)


def test_zero_byte_data_mdb_is_not_an_lmdb_dataset(tmp_path, tiny_model, monkeypatch, capsys):
    (tmp_path / "eval" / "db").mkdir(parents=True)
    (tmp_path / "eval" / "db" / "data.mdb").write_bytes(b"")
    with pytest.raises(ValueError, match=r"is not an LMDB dataset: its data.mdb is empty \(0 bytes\)"):
        open_lmdb(tmp_path / "eval" / "db")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "data.mdb").write_bytes(b"not an lmdb file" * 512)
    with pytest.raises(ValueError, match="is not a readable LMDB dataset"):
        open_lmdb(tmp_path / "bad")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        test_script.main(["--eval_data", str(tmp_path / "eval"), "--saved_model", str(tiny_model), "--workers", "0"])
    assert exit_info.value.code == 1
    assert "data.mdb is empty" in capsys.readouterr().err


# ---------------------------------------------------------------- fuzz

ENCODINGS = ["utf-8", "latin-1", "cp1252", "shift_jis", "utf-16-le"]
ENDINGS = [b"\n", b"\r\n"]
ALPHABET = (LOWER + "ABCZ \t\r\x00\x0b\x0c\x1c\x85\u2028\u2029\ufeffßİıﬁ\u0301é€中🙂\\]^-[" + "\ud7ff")


def random_label(rng: random.Random) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 12)))


def random_line(rng: random.Random) -> tuple[bytes, tuple | None]:
    """(bytes without the line ending, the expected (path, label) or None when no sample is expected)."""
    kind = rng.random()
    if kind < 0.15:  # random bytes
        raw = bytes(rng.randrange(256) for _ in range(rng.randint(0, 20))).replace(b"\n", b"")
        return raw, "?"
    path = "".join(rng.choice(LOWER + "/._-") for _ in range(rng.randint(1, 10))) + ".png"
    label = random_label(rng)
    text = f"{path}\t{label}"
    encoding = rng.choice(ENCODINGS) if kind < 0.4 else "utf-8"
    try:
        raw = text.encode(encoding)
    except UnicodeEncodeError:
        raw = text.encode(encoding, "replace")
    if b"\n" in raw:
        raw = raw.replace(b"\n", b"")
        return raw, "?"
    try:
        decoded = raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw, None
    if decoded != text:
        return raw, "?"
    return raw, (path, label)


@pytest.mark.parametrize("seed", range(40))
def test_fuzz_gt_parser_never_fails_and_never_moves_a_label(tmp_path, seed):
    rng = random.Random(seed)
    lines = [random_line(rng) for _ in range(rng.randint(0, 30))]
    chunks = []
    for i, (raw, _) in enumerate(lines):
        ending = rng.choice(ENDINGS)
        if raw.endswith(b"\r") and ending == b"\n":
            ending = b"\r\n"  # 'x\r' + LF reads as CRLF: a label cannot end in '\r' before an LF
        last_without_ending = i == len(lines) - 1 and raw and rng.random() < 0.5  # an empty one would vanish
        chunks.append(raw + (b"" if last_without_ending else ending))
    data = (b"\xef\xbb\xbf" if rng.random() < 0.2 else b"") + b"".join(chunks)
    samples, problems = parse_gt_file(write_gt(tmp_path, data))
    by_line = {lineno: (path, label) for lineno, path, label in samples}
    reported = {lineno for lineno, _, _ in problems}
    assert not set(by_line) & reported
    assert set(by_line) | reported == set(range(1, len(lines) + 1))  # every line is a sample or a problem
    for lineno, (raw, expected) in enumerate(lines, start=1):
        if expected is None:
            assert lineno in reported
        elif expected != "?":
            if expected[1] == "" or not expected[0].strip():
                continue
            assert by_line[lineno] == expected, (lineno, raw)
        if lineno in by_line:  # whatever the line held, its sample is its own text
            path, label = by_line[lineno]
            assert f"{path}\t{label}".encode() in raw.removeprefix(b"\xef\xbb\xbf")


def random_lmdb_label(rng: random.Random) -> bytes:
    if rng.random() < 0.3:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 8)))
    return random_label(rng).encode(rng.choice(["utf-8", "utf-8", "latin-1", "utf-16-le"]), "replace")


@pytest.mark.parametrize("seed", range(6))
def test_fuzz_label_filter_keeps_only_encodable_labels(tmp_path, seed):
    rng = random.Random(seed)
    labels = [random_lmdb_label(rng) for _ in range(60)]
    root = lmdb_with_raw_labels(tmp_path / "db", labels)
    character = "".join(sorted(set(rng.sample(ALPHABET.replace("\ud7ff", ""), 20) + list("abc"))))
    for sensitive in (False, True):
        for filtering in (True, False):
            label_filter = LabelFilter(character, sensitive, rng.randint(1, 8), filtering)
            env = open_lmdb(root)
            with env.begin() as txn:
                index, stats = label_filter.filter(iter_lmdb_labels(txn, len(labels), root))
            expected_bad = sum(1 for b in labels if _not_utf8(b))
            assert stats.bad_label == expected_bad and stats.total == len(labels)
            converter = CTCLabelConverter(character)
            for i in index.tolist():
                label = label_filter.normalise(labels[i - 1].decode("utf-8"))
                assert set(label) <= set(character) and len(label) <= label_filter.batch_max_length
                converter.encode([label], label_filter.batch_max_length)  # never raises for a kept label


def _not_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False
