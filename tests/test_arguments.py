"""Flags are checked at the door: a bad value exits 2 naming the flag and its range, before any
data or model is read and before the experiment folder exists."""
from __future__ import annotations

import types
from pathlib import Path

import pytest

import checkpoint
import demo
import test as test_script
import train
from model import ModelConfig, build_model
from runtime import UsageError, check_runtime_arguments

STAGES = ["--Transformation", "None", "--FeatureExtraction", "VGG", "--SequenceModeling", "None",
          "--Prediction", "CTC", "--workers", "0", "--batch_size", "4", "--select_data", "MJ", "--batch_ratio", "1"]

BAD_TRAIN_FLAGS = [
    (["--batch_size", "0"], "--batch_size must be at least 1, got 0"),
    (["--batch_size", "-3"], "--batch_size must be at least 1, got -3"),
    (["--num_iter", "0"], "--num_iter must be at least 1, got 0"),
    (["--valInterval", "0"], "--valInterval must be at least 1, got 0"),
    (["--saveInterval", "0"], "--saveInterval must be at least 1, got 0"),
    (["--workers", "-1"], "--workers must be 0 (load in the main process) or more, got -1"),
    (["--accum_steps", "0"], "--accum_steps must be at least 1, got 0"),
    (["--lr", "0"], "--lr must be greater than 0, got 0.0"),
    (["--lr", "-1"], "--lr must be greater than 0, got -1.0"),
    (["--grad_clip", "-1"], "--grad_clip must be 0 or more, got -1.0"),
    (["--grad_clip", "nan"], "--grad_clip must be 0 or more, got nan"),
    (["--select_data", "MJ-ST", "--batch_ratio", "0.5-0.4"], "--batch_ratio 0.5-0.4: each share must be in (0, 1] "
                                                             "and together they must sum to 1 (within 0.01), got a sum of 0.9"),
    (["--select_data", "MJ-ST", "--batch_ratio", "1"], "--batch_ratio 1 has 1 entries but --select_data MJ-ST has 2"),
    (["--batch_ratio", "half"], "must be numbers"),
    (["--total_data_usage_ratio", "0"], "--total_data_usage_ratio must be in (0, 1], got 0"),
    (["--imgH", "16"], "--imgH 16 is too small for --FeatureExtraction VGG: it needs --imgH of at least 32"),
    (["--imgW", "7"], "--imgW 7 is too small for --FeatureExtraction VGG: it needs --imgW of at least 8"),
    (["--FeatureExtraction", "ResNet", "--imgW", "3"], "--imgW 3 is too small for --FeatureExtraction ResNet"),
    (["--Transformation", "TPS", "--imgW", "7"], "--imgW 7 is too small for --FeatureExtraction VGG"),
    (["--Transformation", "TPS", "--num_fiducial", "5"], "--num_fiducial must be an even number of at least 4"),
    (["--output_channel", "4"], "--output_channel must be at least 8 (with --FeatureExtraction VGG), got 4"),
    (["--FeatureExtraction", "ResNet", "--output_channel", "8"], "--output_channel must be at least 16"),
]


@pytest.mark.parametrize("flags, message", BAD_TRAIN_FLAGS, ids=[" ".join(f) for f, _ in BAD_TRAIN_FLAGS])
def test_train_refuses_a_bad_flag_before_anything(flags, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    # The data folders do not exist: a check that ran after reading them would fail with exit 1 instead.
    with pytest.raises(SystemExit) as info:
        train.main(["--train_data", "missing/train", "--valid_data", "missing/valid", *STAGES, "--exp_name", "x",
                    *flags])
    assert info.value.code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "saved_models").exists()


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "tiny.pth"
    checkpoint.save_checkpoint(path, build_model(ModelConfig("None", "VGG", "None", "CTC", output_channel=32,
                                                             hidden_size=32)))
    return path


@pytest.mark.parametrize("script", ["test", "demo"])
@pytest.mark.parametrize("flags, message", [(["--batch_size", "0"], "--batch_size must be at least 1"),
                                            (["--workers", "-2"], "--workers must be 0")])
def test_test_and_demo_refuse_bad_runtime_flags_before_loading(script, flags, message, tmp_path, monkeypatch,
                                                               capsys):
    monkeypatch.chdir(tmp_path)
    data = ["--eval_data", "missing"] if script == "test" else ["--image_folder", "missing"]
    main = test_script.main if script == "test" else demo.main
    with pytest.raises(SystemExit) as info:
        main([*data, "--saved_model", "missing.pth", *flags])  # the model would fail with exit 1
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_demo_refuses_an_image_height_the_checkpoint_cannot_read(tiny_model, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        demo.main(["--image_folder", str(tmp_path), "--saved_model", str(tiny_model), "--imgH", "20"])
    assert info.value.code == 2
    assert "--imgH 20 is too small for --FeatureExtraction VGG: it needs --imgH of at least 32" in capsys.readouterr().err


@pytest.mark.parametrize("script", ["test", "demo"])
def test_beam_size_is_checked_before_loading(script, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    data = ["--eval_data", "missing"] if script == "test" else ["--image_folder", "missing"]
    main = test_script.main if script == "test" else demo.main
    with pytest.raises(SystemExit) as info:
        main([*data, "--saved_model", "missing.pth", "--decoder", "beam", "--beam_size", "0"])
    assert info.value.code == 2 and "--beam_size" in capsys.readouterr().err
