"""create_lmdb_dataset.py: gt parsing, image checks, CLI forms, strict mode, overwrite, interruption."""
from __future__ import annotations

import types
from pathlib import Path

import lmdb
import pytest
from PIL import Image

from create_lmdb_dataset import createDataset
from dataset import parse_gt_file
from lmdb_store import LmdbWriter
from dataset import LmdbDataset
from helpers import run_main


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("STR_CACHE_DIR", str(tmp_path / "filter-cache"))


def opt(**kw):
    values = dict(character="0123456789abcdefghijklmnopqrstuvwxyz", sensitive=False, batch_max_length=25,
                  data_filtering_off=False, rgb=False)
    values.update(kw)
    return types.SimpleNamespace(**values)


@pytest.fixture
def source(tmp_path):
    """An input folder and gt.txt with one malformed line, one missing and one corrupt image."""
    images = tmp_path / "input" / "images"
    images.mkdir(parents=True)
    for i, width in enumerate([30, 45, 60]):
        Image.new("RGB", (width, 20), (i * 80, 10, 200)).save(images / f"word_{i}.png")
    (images / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    lines = ["images/word_0.png\tHello",      # 1
             "images/word_1.png\tnew york",   # 2: label with a space
             "this line has no tab",          # 3: malformed
             "images/missing.png\tlost",      # 4: missing
             "images/corrupt.png\tbroken",    # 5: corrupt
             "images/word_2.png\ta\tb"]       # 6: two tabs, label is 'a\tb'
    gt = tmp_path / "input" / "gt.txt"
    gt.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return tmp_path / "input", gt


def read_lmdb(path: Path) -> tuple[int, list[str], list[bytes]]:
    env = lmdb.open(str(path), readonly=True, lock=False)
    with env.begin() as txn:
        n = int(txn.get(b"num-samples"))
        labels = [txn.get(f"label-{i:09d}".encode()).decode() for i in range(1, n + 1)]
        images = [txn.get(f"image-{i:09d}".encode()) for i in range(1, n + 1)]
    env.close()
    return n, labels, images


def test_parse_gt_file(tmp_path):
    gt = tmp_path / "gt.txt"
    gt.write_bytes("\ufeffa.png\tone\r\n\nb.png\ttwo\tthree\nnotab\n\tnolabelpath\nc.png\t\n".encode())
    samples, problems = parse_gt_file(gt)
    assert samples == [(1, "a.png", "one"), (3, "b.png", "two\tthree"), (6, "c.png", "")]
    assert [(n, reason) for n, _, reason in problems] == [
        (2, "empty line"), (4, "no tab between image path and label"), (5, "empty image path")]


def test_round_trip_with_problems(source, tmp_path, capsys):
    input_path, gt = source
    out = tmp_path / "out"
    createDataset(str(input_path), str(gt), str(out))
    printed = capsys.readouterr().out
    n, labels, images = read_lmdb(out)
    assert n == 3 and labels == ["Hello", "new york", "a\tb"]
    assert images[0] == (input_path / "images" / "word_0.png").read_bytes()  # raw bytes, not re-encoded
    assert "line 3: no tab" in printed
    assert "line 4:" in printed and "missing.png does not exist" in printed
    assert "line 5:" in printed and "corrupt.png not a valid image" in printed
    assert "Created dataset with 3 samples" in printed
    assert "Skipped 3 lines: 1 malformed gt lines, 2 missing or corrupt images" in printed
    log = (out / "error_image_log.txt").read_text().splitlines()
    assert len(log) == 2 and log[0].startswith("line 4:") and log[1].startswith("line 5:")
    ds = LmdbDataset(out, opt(character="0123456789abcdefghijklmnopqrstuvwxyz "))
    assert [ds[i][1] for i in range(len(ds))] == ["hello", "new york"]
    assert ds[0][0].size == (30, 20)


def test_truncated_image_is_rejected(tmp_path):
    (tmp_path / "in").mkdir()
    Image.new("L", (64, 64)).save(tmp_path / "in" / "full.png")
    data = (tmp_path / "in" / "full.png").read_bytes()
    (tmp_path / "in" / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "gt.txt").write_text("full.png\tok\ncut.png\tcut\n")
    createDataset(str(tmp_path / "in"), str(tmp_path / "gt.txt"), str(tmp_path / "out"))
    assert read_lmdb(tmp_path / "out")[1] == ["ok"]
    createDataset(str(tmp_path / "in"), str(tmp_path / "gt.txt"), str(tmp_path / "out2"), checkValid=False)
    assert read_lmdb(tmp_path / "out2")[1] == ["ok", "cut"]


def test_strict_writes_nothing(source, tmp_path):
    input_path, gt = source
    out = tmp_path / "out"
    with pytest.raises(ValueError, match="--strict: 1 malformed gt lines and 2 missing or corrupt images"):
        createDataset(str(input_path), str(gt), str(out), strict=True)
    assert not out.exists()


def test_strict_clean_input_writes(source, tmp_path):
    input_path, gt = source
    gt.write_text("images/word_0.png\tabc\nimages/word_1.png\tdef\n")
    createDataset(str(input_path), str(gt), str(tmp_path / "out"), strict=True)
    assert read_lmdb(tmp_path / "out")[:2] == (2, ["abc", "def"])
    assert not (tmp_path / "out" / "error_image_log.txt").exists()


def test_user_errors(source, tmp_path):
    input_path, gt = source
    with pytest.raises(FileNotFoundError, match="gtFile .*nope.txt does not exist"):
        createDataset(str(input_path), str(tmp_path / "nope.txt"), str(tmp_path / "out"))
    with pytest.raises(FileNotFoundError, match="inputPath .*absent is not a folder"):
        createDataset(str(tmp_path / "absent"), str(gt), str(tmp_path / "out"))
    gt.write_text("images/missing.png\tx\n")
    with pytest.raises(ValueError, match="no valid image"):
        createDataset(str(input_path), str(gt), str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="incomplete"):  # nothing usable was marked complete
        LmdbDataset(tmp_path / "empty", opt())


def test_overwrite_refused_then_allowed(source, tmp_path):
    input_path, gt = source
    out = tmp_path / "out"
    createDataset(str(input_path), str(gt), str(out))
    with pytest.raises(FileExistsError, match="--overwrite"):
        createDataset(str(input_path), str(gt), str(out))
    gt.write_text("images/word_0.png\tonly\n")
    createDataset(str(input_path), str(gt), str(out), overwrite=True)
    assert read_lmdb(out)[:2] == (1, ["only"])


@pytest.mark.parametrize("form", ["positional", "flags"])
def test_cli_forms(source, tmp_path, form):
    input_path, gt = source
    out = tmp_path / "out"
    if form == "positional":
        args = [str(input_path), str(gt), str(out)]
    else:
        args = ["--inputPath", str(input_path), "--gtFile", str(gt), "--outputPath", str(out)]
    result = run_main("create_lmdb_dataset.py", *args, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr
    assert "Created dataset with 3 samples" in result.stdout
    assert read_lmdb(out)[0] == 3
    again = run_main("create_lmdb_dataset.py", *args, cwd=tmp_path, check=False)
    assert again.returncode != 0
    assert "--overwrite" in again.stderr and "Traceback" not in again.stderr


def test_cli_strict_exit_status(source, tmp_path):
    input_path, gt = source
    result = run_main("create_lmdb_dataset.py", input_path, gt, tmp_path / "out", "--strict", cwd=tmp_path,
                      check=False)
    assert result.returncode == 1 and "nothing was written" in result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


def test_progress_every_thousand(tmp_path, capsys):
    (tmp_path / "in").mkdir()
    Image.new("L", (8, 4)).save(tmp_path / "in" / "a.png")
    (tmp_path / "gt.txt").write_text("".join(f"a.png\tw{i}\n" for i in range(2001)))
    createDataset(str(tmp_path / "in"), str(tmp_path / "gt.txt"), str(tmp_path / "out"), checkValid=False)
    printed = capsys.readouterr().out
    assert "Written 1000 / 2001" in printed and "Written 2000 / 2001" in printed
    assert read_lmdb(tmp_path / "out")[0] == 2001


def test_interrupted_write_is_refused(tmp_path):
    out = tmp_path / "partial"
    with pytest.raises(KeyboardInterrupt):
        with LmdbWriter(out) as writer:
            writer.add(b"\x89PNG fake", "abc")
            raise KeyboardInterrupt
    with pytest.raises(ValueError) as err:
        LmdbDataset(out, opt())
    message = str(err.value)
    assert "incomplete" in message and str(out) in message and "--overwrite" in message
