"""Every Pillow mode reaches the model as the picture a person sees.

Each test image is the same picture, an ink ramp from black to white, stored in another mode:
scaled for 16/32-bit samples, as black ink with transparency on a transparent sheet, through a
palette, in CMYK. ``dataset.to_model_image`` must give back the ramp in every case; Pillow's plain
``convert('L')`` fails most of them (16-bit clipped to white, alpha dropped to black).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dataset import AlignCollate, GtFolderDataset, LmdbDataset, RawDataset, image_problem, to_model_image
from lmdb_store import LmdbWriter
from helpers import render_word

INK = np.linspace(0, 1, 32).reshape(4, 8)  # [H, W]: 0 is black, 1 is white
EXPECTED = np.rint(INK * 255).astype(np.uint8)


def grey16(mode: str) -> Image.Image:
    values = np.rint(INK * 65535).astype(">u2" if mode == "I;16B" else "<u2")
    return Image.frombytes(mode, (8, 4), values.tobytes())


def on_transparent(mode: str) -> Image.Image:
    """Black ink whose opacity is 1 - INK: composited on white it is the ramp."""
    alpha = np.rint((1 - INK) * 255).astype(np.uint8)
    black = np.zeros_like(alpha)
    if mode == "LA":
        return Image.fromarray(np.stack([black, alpha], axis=-1), "LA")
    if mode == "RGBA":
        return Image.fromarray(np.stack([black, black, black, alpha], axis=-1), "RGBA")
    img = Image.new("PA", (8, 4))  # palette entry 0 is black; the alpha band carries the ink
    img.putpalette([0, 0, 0] * 256)
    img.putdata([(0, int(a)) for a in alpha.flatten()])
    return img


def palette() -> Image.Image:
    """Index i of the palette is grey EXPECTED.flat[i]; the image uses each index once."""
    img = Image.fromarray(np.arange(32, dtype=np.uint8).reshape(4, 8), "P")
    img.putpalette([int(v) for v in EXPECTED.flatten() for _ in range(3)] + [0, 0, 0] * 224)
    return img


def palette_with_transparent_black() -> tuple[Image.Image, np.ndarray]:
    img = palette()
    img.info["transparency"] = 0  # index 0 (black) is transparent: a person sees white
    expected = EXPECTED.copy()
    expected[0, 0] = 255
    return img, expected


def cmyk() -> Image.Image:
    k = 255 - EXPECTED
    zero = np.zeros_like(k)
    return Image.fromarray(np.stack([zero, zero, zero, k], axis=-1), "CMYK")


PICTURES = {
    "1": lambda: (Image.fromarray(INK > 0.5).convert("1"), np.where(INK > 0.5, 255, 0)),
    "L": lambda: (Image.fromarray(EXPECTED, "L"), EXPECTED),
    "LA": lambda: (on_transparent("LA"), EXPECTED),
    "P": lambda: (palette(), EXPECTED),
    "P+transparency": palette_with_transparent_black,
    "PA": lambda: (on_transparent("PA"), EXPECTED),
    "RGB": lambda: (Image.fromarray(np.stack([EXPECTED] * 3, axis=-1), "RGB"), EXPECTED),
    "RGBA": lambda: (on_transparent("RGBA"), EXPECTED),
    "CMYK": lambda: (cmyk(), EXPECTED),
    "I;16": lambda: (grey16("I;16"), EXPECTED),
    "I;16B": lambda: (grey16("I;16B"), EXPECTED),
    "I;16L": lambda: (grey16("I;16L"), EXPECTED),
    # 32-bit integer: 16-bit data Pillow widened to 'I', and 8-bit data converted from 'L'.
    "I (16-bit values)": lambda: (Image.fromarray(np.rint(INK * 65535).astype(np.int32)), EXPECTED),
    "I (8-bit values)": lambda: (Image.fromarray(EXPECTED, "L").convert("I"), EXPECTED),
    "I (negative values)": lambda: (Image.fromarray(np.rint(INK * 1000 - 500).astype(np.int32)), EXPECTED),
    "F (0-1)": lambda: (Image.fromarray(INK.astype(np.float32)), EXPECTED),
    "F (0-255)": lambda: (Image.fromarray((INK * 255).astype(np.float32)), EXPECTED),
}


@pytest.mark.parametrize("name", list(PICTURES))
@pytest.mark.parametrize("rgb", [False, True])
def test_every_mode_gives_the_picture_a_person_sees(name, rgb):
    img, expected = PICTURES[name]()
    assert img.mode == name.split(" ")[0].split("+")[0]
    out = to_model_image(img, rgb)
    assert out.mode == ("RGB" if rgb else "L")
    array = np.asarray(out).astype(int)
    channels = [array[..., c] for c in range(3)] if rgb else [array]
    for channel in channels:
        assert np.abs(channel - expected).max() <= 1, (name, channel, expected)


def test_plain_convert_would_fail_these_modes():
    """The test above can fail: Pillow's own conversion clips 16-bit data and drops alpha."""
    assert np.asarray(grey16("I;16").convert("L")).min() == 0 and np.asarray(grey16("I;16").convert("L")).max() == 255
    assert (np.asarray(grey16("I;16").convert("L")) == 255).mean() > 0.9  # clipped to white
    assert np.asarray(on_transparent("RGBA").convert("L")).max() == 0  # alpha dropped: all black


def png_bytes(img: Image.Image) -> bytes:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def word_16bit() -> Image.Image:
    """A rendered word stored as a 16-bit greyscale PNG (the issue's example: read as white before)."""
    word = np.asarray(render_word("cat"), dtype=np.uint16) * 257  # 0-255 → 0-65535
    img = Image.open(io.BytesIO(png_bytes(Image.fromarray(word))))
    assert img.mode == "I;16"
    return img


def assert_is_the_word(img: Image.Image) -> None:
    expected = np.asarray(render_word("cat"), dtype=int)
    assert img.mode == "L"
    assert np.abs(np.asarray(img, dtype=int) - expected).max() <= 1


def opt():
    from types import SimpleNamespace
    return SimpleNamespace(character="abcdefghijklmnopqrstuvwxyz", sensitive=False, batch_max_length=25,
                           data_filtering_off=False, rgb=False)


def test_lmdb_gt_folder_and_demo_read_a_16_bit_png(tmp_path, monkeypatch):
    monkeypatch.setenv("STR_CACHE_DIR", str(tmp_path / "cache"))
    data = png_bytes(word_16bit())
    assert image_problem(data) is None
    with LmdbWriter(tmp_path / "db") as writer:
        writer.add(data, "cat")
    (tmp_path / "gt" / "images").mkdir(parents=True)
    (tmp_path / "gt" / "images" / "cat.png").write_bytes(data)
    (tmp_path / "gt" / "gt.txt").write_text("images/cat.png\tcat\n", encoding="utf-8")
    assert_is_the_word(LmdbDataset(tmp_path / "db", opt())[0][0])
    assert_is_the_word(GtFolderDataset(tmp_path / "gt", opt())[0][0])
    assert_is_the_word(RawDataset(tmp_path / "gt" / "images", opt())[0][0])


def test_collate_converts_before_resizing():
    collate = AlignCollate(32, 100, rgb=False)
    reference, _ = collate([(Image.fromarray(EXPECTED, "L"), "x")])  # [1, 1, 32, 100] in [-1, 1]
    images, _ = collate([(PICTURES[name]()[0], "x") for name in ("RGBA", "I;16", "P", "F (0-1)")])
    assert images.shape == (4, 1, 32, 100)
    assert (images - reference).abs().max() <= 2 / 255 * 2  # one grey level, in [-1, 1] units
    colour, _ = AlignCollate(32, 100, rgb=True)([(PICTURES["RGBA"]()[0], "x")])
    assert colour.shape == (1, 3, 32, 100) and (colour - reference).abs().max() <= 4 / 255


def test_a_mode_without_a_grey_conversion_is_still_read():
    lab = Image.new("RGB", (8, 4), (255, 255, 255)).convert("LAB")  # Pillow has no LAB → L conversion
    assert np.asarray(to_model_image(lab, rgb=False)).min() >= 250
