"""How the model runs: demo.py --runtime onnx (the checkpoint exported once to the cache, keyed by its
content, reused, reading as --runtime torch does) and --compile (train.py, test.py)."""
from __future__ import annotations

import pytest
import torch

import onnx_model
from checkpoint import load_model, onnx_cache_path, save_checkpoint
from helpers import make_gt_folder
from runtime import UserErrorExit
from test_int8 import READER


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STR_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "onnx"


@pytest.fixture(scope="module")
def words(tmp_path_factory):
    return make_gt_folder(tmp_path_factory.mktemp("demo_runtime") / "words", copies=1) / "images"


def demo(words, saved, tmp_path, *extra):
    from demo import main

    return main(["--image_folder", str(words), "--saved_model", str(saved), "--workers", "0",
                 "--log_file", str(tmp_path / "log.txt"), *extra])


def test_onnx_runtime_exports_once_and_reads_as_torch(words, cache, tmp_path, monkeypatch):
    torch_results = demo(words, READER, tmp_path)
    onnx_results = demo(words, READER, tmp_path, "--runtime", "onnx")
    cached = list(cache.glob("*.onnx"))
    assert len(cached) == 1 and cached[0] == onnx_cache_path(READER, {})
    assert [(p, t) for p, t, _ in onnx_results] == [(p, t) for p, t, _ in torch_results]

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the cache holds the model")

    monkeypatch.setattr(onnx_model, "export_onnx", no_export)
    again = demo(words, READER, tmp_path, "--runtime", "onnx")
    assert [t for _, t, _ in again] == [t for _, t, _ in onnx_results]
    assert list(cache.glob("*.onnx")) == cached


def test_the_cache_follows_the_checkpoints_content(cache, tmp_path):
    copy = tmp_path / "reader.pth"
    model = load_model(READER).model
    save_checkpoint(copy, model)
    first = onnx_cache_path(copy, {})
    with torch.no_grad():
        model.Prediction.bias[0] += 1  # same file name, other weights
    save_checkpoint(copy, model)
    assert onnx_cache_path(copy, {}) != first
    assert onnx_cache_path(copy, {"imgW": 200}) != onnx_cache_path(copy, {})
    assert first.parent == cache


def test_an_onnx_file_runs_as_it_is(words, cache, tmp_path):
    exported = onnx_model.export_onnx(load_model(READER).model, tmp_path / "reader.onnx")
    demo(words, exported, tmp_path, "--runtime", "onnx")
    assert not cache.exists()


def test_onnx_runtime_refuses_amp(words, cache, tmp_path):
    with pytest.raises(UserErrorExit) as e:
        demo(words, READER, tmp_path, "--runtime", "onnx", "--amp", "bf16")
    assert e.value.code == 2 and "--runtime onnx runs the model in fp32" in str(e.value)


def test_compile_keeps_the_weights_and_refuses_onnx(tmp_path):
    """--compile (train.py, test.py) compiles in place: same module, same state_dict keys (checkpoints
    unchanged); compiling is lazy, so this costs nothing until a forward pass."""
    from runtime import UsageError, compile_model

    model = load_model(READER).model
    keys = list(model.state_dict())
    assert compile_model(model, True) is model and list(model.state_dict()) == keys
    exported = onnx_model.export_onnx(model, tmp_path / "m.onnx")
    with pytest.raises(UsageError, match="--compile applies to PyTorch models"):
        compile_model(onnx_model.OnnxModel(exported), True)
