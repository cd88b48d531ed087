"""The synthetic data generator: determinism, labels, images, LMDB layout, font checks."""
from __future__ import annotations

import argparse
import io
from pathlib import Path

import lmdb
import numpy as np
import pytest
from PIL import Image

import create_synth_dataset
import synth
from lmdb_store import DatasetExistsError

DEFAULT = "0123456789abcdefghijklmnopqrstuvwxyz"
BENCHMARK_NAMES = ("iiit", "svt", "ic03", "ic13", "ic15", "cute", "coco", "totaltext")


@pytest.fixture(scope="module")
def fonts() -> tuple[synth.FontInfo, ...]:
    found = synth.discover_fonts(DEFAULT)
    if not synth.split_fonts(found, "train") or not synth.split_fonts(found, "heldout"):
        pytest.skip(f"too few system fonts cover {DEFAULT!r} for a train/heldout split "
                    "(run scripts/install_fonts.sh as root)")
    return found


def run_cli(*args: str) -> argparse.Namespace:
    opt = create_synth_dataset.parse_args(list(args))
    create_synth_dataset.generate(opt)
    return opt


def read_lmdb(root: Path) -> dict[bytes, bytes]:
    env = lmdb.open(str(root), readonly=True, lock=False)
    with env.begin() as txn:
        items = dict(txn.cursor())
    env.close()
    return items


def test_same_seed_same_bytes_whatever_the_workers(fonts, tmp_path):
    for name, workers in (("a", "1"), ("b", "2")):
        run_cli("--output_dir", str(tmp_path / name), "--num_samples", "40", "--seed", "7",
                "--workers", workers)
    a, b = read_lmdb(tmp_path / "a"), read_lmdb(tmp_path / "b")
    assert a == b
    run_cli("--output_dir", str(tmp_path / "c"), "--num_samples", "40", "--seed", "8", "--workers", "1")
    assert read_lmdb(tmp_path / "c") != a


def test_lmdb_layout_labels_and_images(fonts, tmp_path):
    n = 60
    run_cli("--output_dir", str(tmp_path / "out"), "--num_samples", str(n), "--workers", "1",
            "--batch_max_length", "8", "--imgH", "24", "--image_format", "png")
    env = lmdb.open(str(tmp_path / "out"), readonly=True, lock=False)
    with env.begin() as txn:
        assert int(txn.get(b"num-samples")) == n
        assert txn.get(f"image-{n + 1:09d}".encode()) is None
        for index in range(1, n + 1):
            label = txn.get(f"label-{index:09d}".encode()).decode("utf-8")
            assert 1 <= len(label) <= 8 and set(label) <= set(DEFAULT), label
            image = Image.open(io.BytesIO(txn.get(f"image-{index:09d}".encode())))
            assert image.format == "PNG"
            image.load()
            assert image.height == 24 and image.width >= 1
    env.close()


def test_refuses_to_overwrite_without_flag(fonts, tmp_path):
    args = ("--output_dir", str(tmp_path / "out"), "--num_samples", "3", "--workers", "1")
    run_cli(*args)
    with pytest.raises(DatasetExistsError):
        run_cli(*args)
    run_cli(*args, "--overwrite")


def test_tree_layout_uses_disjoint_font_families(fonts, tmp_path):
    run_cli("--output_dir", str(tmp_path), "--layout", "tree", "--num_train", "6", "--num_valid", "4",
            "--num_eval", "5", "--workers", "1")
    expected = {"training/synth": 6, "validation/synth_val": 4, "evaluation/synth_heldout_fonts": 5}
    for subdir, n in expected.items():
        assert int(read_lmdb(tmp_path / subdir)[b"num-samples"]) == n
        assert not any(name in subdir.lower() for name in BENCHMARK_NAMES)
    train = {f.design for f in synth.split_fonts(fonts, "train")}
    heldout = {f.design for f in synth.split_fonts(fonts, "heldout")}
    assert train and heldout and not train & heldout
    # validation is another stream of the same seed, not a copy of training
    first = b"image-000000001"
    assert read_lmdb(tmp_path / "training/synth")[first] != read_lmdb(tmp_path / "validation/synth_val")[first]


def test_generator_only_uses_fonts_of_its_split(fonts):
    heldout = synth.split_fonts(fonts, "heldout")
    generator = synth.SynthGenerator(heldout, synth.TextSource(DEFAULT, 10))
    rng = np.random.default_rng(0)
    paths = {generator.choose_font(rng).path for _ in range(200)}
    assert paths <= {f.path for f in heldout}


def test_lowercase_set_renders_mixed_case_with_lowercase_labels(fonts):
    texts = synth.TextSource(DEFAULT, 25)
    rng = np.random.default_rng(0)
    pairs = [texts.sample(rng) for _ in range(500)]
    assert all(label == text.lower() and set(label) <= set(DEFAULT) for text, label in pairs)
    assert any(text != label for text, label in pairs), "no upper/title case rendering"
    assert any(c.isdigit() for _, label in pairs for c in label)
    assert {c for _, label in pairs for c in label} == set(DEFAULT), "every character should occur"


def test_case_sensitive_set_keeps_case_in_labels():
    character = DEFAULT + "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    texts = synth.TextSource(character, 12)
    rng = np.random.default_rng(1)
    pairs = [texts.sample(rng) for _ in range(300)]
    assert all(text == label and set(label) <= set(character) and len(label) <= 12 for text, label in pairs)
    assert any(any(c.isupper() for c in label) for _, label in pairs)


def test_fonts_lacking_a_character_are_excluded(fonts):
    character = DEFAULT + "Ж€"
    candidates = synth.list_font_files(synth.DEFAULT_FONT_DIRS)
    lacking = {str(p) for p in candidates if not {"Ж", "€"} <= synth.font_cmap(str(p))[0]}
    if not lacking:
        pytest.skip("every system font has both 'Ж' and '€'; nothing to exclude")
    kept = synth.discover_fonts(character)
    assert not lacking & {f.path for f in kept}
    for font in kept:
        assert set(synth.render_characters(character)) <= synth.font_cmap(font.path)[0]


def test_every_discovered_font_covers_the_set(fonts):
    needed = set(synth.render_characters(DEFAULT))
    assert needed == set(DEFAULT) | set(DEFAULT.upper())
    for font in fonts:
        assert needed <= synth.font_cmap(font.path)[0], font.path


@pytest.mark.parametrize("family, design", [
    ("Noto Sans Display", "open sans"), ("Open Sans Condensed", "open sans"),
    ("TeX Gyre Heros", "helvetica"), ("Nimbus Sans Narrow", "helvetica"), ("FreeSans", "helvetica"),
    ("Roadgeek 2014 Series EM", "roadgeek 2014"), ("Inter Display", "inter"), ("DejaVu Sans", "dejavu sans"),
])
def test_design_family_merges_styles_and_clones(family, design):
    assert synth.design_family(family) == design


def test_lmdb_dataset_reads_synth_lmdb(fonts, tmp_path):
    dataset = pytest.importorskip("dataset", reason="dataset.py (LmdbDataset) not written yet")
    run_cli("--output_dir", str(tmp_path / "out"), "--num_samples", "20", "--workers", "1")
    opt = argparse.Namespace(character=DEFAULT, sensitive=False, batch_max_length=25, data_filtering_off=False,
                             rgb=False)
    data = dataset.LmdbDataset(tmp_path / "out", opt)
    assert len(data) == 20
    image, label = data[0]
    assert image.mode == "L" and image.height == 32 and set(label) <= set(DEFAULT)


def test_generator_refuses_fonts_checked_for_another_set(fonts):
    with pytest.raises(ValueError, match="not checked"):
        synth.SynthGenerator(synth.split_fonts(fonts, "train"), synth.TextSource(DEFAULT + "Ж", 10))


def test_requested_length_range_long_labels():
    texts = synth.TextSource(DEFAULT, 40, min_len=26, max_len=40)
    rng = np.random.default_rng(3)
    pairs = [texts.sample(rng) for _ in range(300)]
    lengths = [len(label) for _, label in pairs]
    assert min(lengths) == 26 and max(lengths) == 40
    assert all(label == text.lower() and set(label) <= set(DEFAULT) for text, label in pairs)


def test_requested_length_range_short_labels():
    texts = synth.TextSource(DEFAULT, 25, min_len=3, max_len=4)
    rng = np.random.default_rng(4)
    assert {len(texts.sample(rng)[1]) for _ in range(200)} == {3, 4}


def test_bad_length_range_is_refused():
    with pytest.raises(ValueError, match="min_len"):
        synth.TextSource(DEFAULT, 25, min_len=10, max_len=5)
    with pytest.raises(SystemExit):
        create_synth_dataset.parse_args(["--output_dir", "x", "--min_len", "30", "--max_len", "20"])


def test_cli_long_labels_widen_the_image(fonts, tmp_path):
    opt = run_cli("--output_dir", str(tmp_path / "long"), "--num_samples", "12", "--workers", "1",
                  "--min_len", "26", "--max_len", "40")
    assert opt.batch_max_length == 40
    run_cli("--output_dir", str(tmp_path / "short"), "--num_samples", "12", "--workers", "1",
            "--min_len", "2", "--max_len", "4")
    widths = {}
    for name in ("long", "short"):
        items = read_lmdb(tmp_path / name)
        labels = [items[f"label-{i:09d}".encode()].decode() for i in range(1, 13)]
        assert all(2 <= len(label) <= 40 for label in labels)
        widths[name] = np.mean([Image.open(io.BytesIO(items[f"image-{i:09d}".encode()])).width for i in range(1, 13)])
        if name == "long":
            assert all(26 <= len(label) <= 40 for label in labels)
    assert widths["long"] > 4 * widths["short"]


def test_font_discovery_is_cached_on_disk_and_rescans_when_a_font_changes(fonts, tmp_path, monkeypatch):
    monkeypatch.setenv("STR_FONT_CACHE_DIR", str(tmp_path / "cache"))
    font_dir = tmp_path / "fonts"
    font_dir.mkdir()
    (font_dir / "a.ttf").write_bytes(Path(fonts[0].path).read_bytes())
    dirs = (str(font_dir),)
    first = synth.discover_fonts.__wrapped__(DEFAULT, dirs)
    assert [f.path for f in first] == [str(font_dir / "a.ttf")]
    assert len(list((tmp_path / "cache").glob("*.json"))) == 1

    def no_scan(*args):
        raise AssertionError("rescanned although the cache is valid")
    monkeypatch.setattr(synth, "font_metadata", no_scan)
    assert synth.discover_fonts.__wrapped__(DEFAULT, dirs) == first

    (font_dir / "b.ttf").write_bytes(b"not a font")  # a new file: the key changes, the scan runs again
    monkeypatch.undo()
    monkeypatch.setenv("STR_FONT_CACHE_DIR", str(tmp_path / "cache"))
    assert synth.discover_fonts.__wrapped__(DEFAULT, dirs) == first
    assert len(list((tmp_path / "cache").glob("*.json"))) == 2


def test_unwritable_font_cache_only_costs_speed(fonts, tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("STR_FONT_CACHE_DIR", str(blocker / "sub"))
    font_dir = tmp_path / "fonts"
    font_dir.mkdir()
    (font_dir / "a.ttf").write_bytes(Path(fonts[0].path).read_bytes())
    found = synth.discover_fonts.__wrapped__(DEFAULT, (str(font_dir),))
    assert len(found) == 1 and "could not write the fonts cache" in caplog.text


def test_common_words_come_by_frequency():
    texts = synth.TextSource(DEFAULT, 25)
    rng = np.random.default_rng(5)
    drawn = [texts.common_word(rng) for _ in range(3000)]
    assert set(drawn) <= set(texts.common_words) and all(set(w) <= set(DEFAULT) for w in drawn)
    top = set(texts.common_words[:200])
    share = sum(w in top for w in drawn) / len(drawn)
    assert share > 5 * 200 / len(texts.common_words), "frequent words should be drawn far more often"
    assert len(set(drawn)) > 1000, "the long tail should still be drawn"


def test_word_lists_are_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("STR_FONT_CACHE_DIR", str(tmp_path))
    first = synth.TextSource(DEFAULT, 12)
    assert list(tmp_path.glob("words-*.json"))
    monkeypatch.setattr(synth.TextSource, "_scan_dictionary", lambda self: pytest.fail("rescanned"))
    second = synth.TextSource(DEFAULT, 12)
    assert second.words_by_length == first.words_by_length and second.common_words == first.common_words


def test_neighbours_are_drawn_but_the_crop_follows_the_word(fonts):
    font = synth.load_font(fonts[0].path, 32)
    rng = np.random.default_rng(0)
    while True:  # plain layers (no letter spacing), so the word's position is known
        layers = synth.draw_layers(rng, "word", font, ("ab ", " cd"))
        glyphs, word = (np.asarray(layers.getchannel(c)) for c in ("R", "A"))
        if glyphs.sum() > word.sum():
            break
    left, _, right, _ = layers.getchannel("A").getbbox()
    ink_left, _, ink_right, _ = layers.getchannel("R").getbbox()
    assert ink_left < left and ink_right > right
    cropped = synth.crop_with_margins(np.random.default_rng(1), layers, layers.height)
    assert cropped.width < layers.width


def test_natural_textures_come_from_skimage_photographs():
    pytest.importorskip("skimage")
    images = synth.natural_images()
    assert len(images) >= 10 and all(img.ndim == 3 and img.shape[2] == 3 for img in images)
    rng = np.random.default_rng(0)
    plain = np.full((32, 100, 3), 128, np.float32)
    textured = synth.natural_texture(rng, plain, np.full(3, 128.0))
    assert textured.shape == plain.shape and textured.std() > 1


def test_lines_above_and_below_are_glyphs_outside_the_word(fonts):
    font = synth.load_font(fonts[0].path, 32)
    rng = np.random.default_rng(2)
    layers = synth.draw_layers(rng, "word", font)
    tall = synth.add_lines(rng, layers, font, "above", "below")
    assert tall.height > 2 * layers.height and tall.width == layers.width
    word_top, word_bottom = tall.getchannel("A").getbbox()[1::2]
    ink_top, ink_bottom = tall.getchannel("R").getbbox()[1::2]
    assert ink_top < word_top and ink_bottom > word_bottom


def test_the_synthetic_data_command_does_not_import_torch():
    # torch's import is over a second: most of a small run's start-up (README: 3,000 samples in ~3.6 s)
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    code = "import sys, create_synth_dataset, lmdb_store; print(sorted(m for m in ('torch', 'torchvision') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
