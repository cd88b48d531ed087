"""A stage from outside the tree, end to end: examples/plugin_stage's MobileNetV3 feature stage and TCN
sequence stage, loaded with --plugin, through train.py, a checkpoint that needs no stage flag, test.py,
demo.py, ONNX (fp32 through the parity check, int8) and study.py, with the same checks as VGG."""
from __future__ import annotations

import csv
import os
import re
import sys

import pytest
import torch

import plugins
from checkpoint import export_reference, load_model
from helpers import ROOT, make_gt_folder, run_main, run_script

PLUGINS = ["--plugin", "examples.plugin_stage.mobilenetv3", "--plugin", "examples.plugin_stage.tcn"]
MODEL = "None-MobileNetV3-TCN-CTC"
STAGES = ["--Transformation", "None", "--FeatureExtraction", "MobileNetV3", "--SequenceModeling", "TCN",
          "--Prediction", "CTC"]
SIZES = ["--hidden_size", "64", "--tcn_kernel", "5", "--tcn_dropout", "0.05"]
CHECKPOINT = "saved_models/plugin/best_accuracy.pth"


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """Words rendered into an LMDB, and the plugin model trained on them for a few iterations (train.py in a
    process of its own, as a user runs it)."""
    for name in PLUGINS[1::2]:
        plugins.load(name)
    work = tmp_path_factory.mktemp("plugin")
    make_gt_folder(work / "words", copies=2)
    run_main("create_lmdb_dataset.py", "--inputPath", work / "words", "--gtFile", work / "words" / "gt.txt",
             "--outputPath", work / "lmdb" / "train", cwd=work)
    run_script("train.py", *PLUGINS, "--train_data", "lmdb", "--valid_data", "lmdb", "--select_data", "/",
               "--batch_ratio", "1", *STAGES, *SIZES, "--num_iter", "40", "--valInterval", "20",
               "--batch_size", "16", "--workers", "0", "--adam", "--lr", "0.002", "--exp_name", "plugin", cwd=work)
    return work


def test_the_checkpoint_records_its_plugins_and_needs_no_stage_flag(work):
    ckpt = torch.load(work / CHECKPOINT, weights_only=True)
    assert ckpt["plugins"] == ["examples.plugin_stage.mobilenetv3", "examples.plugin_stage.tcn"]
    assert ckpt["config"]["FeatureExtraction"] == "MobileNetV3" and ckpt["config"]["tcn_kernel"] == 5
    config = load_model(work / CHECKPOINT).config
    assert config.name == MODEL and config.tcn_dropout == 0.05 and config.hidden_size == 64


def test_test_and_demo_read_with_the_plugin_and_no_stage_flag(work):
    out = run_main("test.py", *PLUGINS, "--eval_data", "lmdb", "--saved_model", CHECKPOINT, "--workers", "0",
                   cwd=work).stdout
    assert re.search(r"accuracy: [\d.]+", out), out
    out = run_main("demo.py", *PLUGINS, "--image_folder", "words/images", "--saved_model", CHECKPOINT,
                   "--workers", "0", cwd=work).stdout
    assert out.count(".png") == 32


def test_a_checkpoint_alone_does_not_import_its_plugin(work):
    """In a fresh process the plugin is not imported on the checkpoint's word: one line naming it and the flag."""
    proc = run_script("demo.py", "--image_folder", "words/images", "--saved_model", CHECKPOINT, "--workers", "0",
                      cwd=work, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "--plugin examples.plugin_stage.mobilenetv3 --plugin examples.plugin_stage.tcn" in proc.stderr


def test_its_names_and_options_are_in_help_only_with_the_plugin():
    with_plugin = run_script("train.py", *PLUGINS, "--help", cwd=ROOT).stdout
    assert "MobileNetV3" in with_plugin and "--tcn_dropout" in with_plugin and "TCN:" in with_plugin
    without = run_script("train.py", "--help", cwd=ROOT).stdout
    assert "MobileNetV3" not in without and "--tcn_dropout" not in without


def test_an_unknown_plugin_is_one_line(work):
    proc = run_main("test.py", "--plugin", "no_such.plugin_module", "--eval_data", "lmdb", "--saved_model",
                    CHECKPOINT, cwd=work, check=False)
    assert proc.returncode == 2 and "--plugin no_such.plugin_module: no such module" in proc.stderr


@pytest.mark.parametrize("flags, message", [
    (["--output_channel", "256"], "--output_channel sizes the convolutional extractors, not --FeatureExtraction "
                                  "MobileNetV3 (its width is MobileNetV3-small's 576 channels)"),
    (["--tcn_kernel", "4"], "--tcn_kernel 4 must be odd"),
    (["--tcn_dropout", "1.5"], "--tcn_dropout must be between 0 and 0.9 (--SequenceModeling TCN), got 1.5"),
])
def test_its_flags_are_checked_like_the_reference_stages(work, flags, message):
    proc = run_main("train.py", *PLUGINS, "--train_data", "lmdb", "--valid_data", "lmdb", "--select_data", "/",
                    "--batch_ratio", "1", *STAGES, *flags, "--exp_name", "refused", cwd=work, check=False)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert not (work / "saved_models" / "refused").exists()


def test_a_tcn_option_with_another_sequence_stage_is_refused(work):
    proc = run_main("train.py", *PLUGINS, "--train_data", "lmdb", "--valid_data", "lmdb", *STAGES[:5], "BiLSTM",
                    *STAGES[6:], "--tcn_kernel", "5", "--exp_name", "refused", cwd=work, check=False)
    assert proc.returncode == 2
    assert "--tcn_kernel applies to --SequenceModeling TCN only, not --SequenceModeling BiLSTM" in proc.stderr


def test_a_bare_state_dict_is_explained_in_its_own_terms(work):
    """The reference layout of the plugin model, loaded with VGG's flags: the stages its weights show."""
    export_reference(work / "bare.pth", load_model(work / CHECKPOINT).model)
    proc = run_main("demo.py", *PLUGINS, "--image_folder", "words/images", "--saved_model", "bare.pth",
                    "--Transformation", "None", "--FeatureExtraction", "VGG", "--SequenceModeling", "BiLSTM",
                    "--Prediction", "CTC", "--hidden_size", "64", cwd=work, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "it was trained with --FeatureExtraction MobileNetV3, not VGG" in proc.stderr
    assert "--SequenceModeling TCN, not BiLSTM" in proc.stderr
    out = run_main("demo.py", *PLUGINS, "--image_folder", "words/images", "--saved_model", "bare.pth", *STAGES,
                   *SIZES, "--workers", "0", cwd=work).stdout  # with its own flags it loads
    assert out.count(".png") == 32


def test_onnx_export_reads_as_pytorch_and_int8_exports(work):
    from decoding import decode
    from onnx_model import OnnxModel
    from dataset import AlignCollate, DataConfig, RawDataset

    run_main("export.py", *PLUGINS, "--saved_model", CHECKPOINT, "--format", "onnx", "--output", "plugin.onnx",
             cwd=work)
    loaded = load_model(work / CHECKPOINT)
    config = loaded.config
    data = RawDataset(str(work / "words" / "images"), DataConfig.for_model(config))
    image, _ = AlignCollate(imgH=config.imgH, imgW=config.imgW)([data[i] for i in range(16)])
    with torch.inference_mode():
        eager, exported = decode(loaded.model, image, config), decode(OnnxModel(work / "plugin.onnx"), image, config)
    assert (exported.logits - eager.logits).abs().max() < 1e-4  # the parity check of tests/test_onnx.py
    assert exported.texts == eager.texts

    # The torch-free reader reads it by the rule the export recorded (no plugin needed there).
    images = sorted(str(p.relative_to(work)) for p in (work / "words" / "images").glob("*.png"))
    proc = run_script("onnx_infer.py", "plugin.onnx", *images, cwd=work)
    assert proc.stdout.splitlines() == [f"{path}\t{text}" for path, text in zip(images, read_in_order(work, images))]

    run_main("export.py", *PLUGINS, "--saved_model", CHECKPOINT, "--format", "onnx", "--quantize", "int8",
             "--calib_data", "words/images", "--calib_size", "32", "--on_drop", "warn", "--output", "plugin.int8.onnx",
             cwd=work)
    out = run_main("demo.py", *PLUGINS, "--image_folder", "words/images", "--saved_model", "plugin.int8.onnx",
                   "--workers", "0", cwd=work).stdout
    assert out.count(".png") == 32


def read_in_order(work, images: list[str]) -> list[str]:
    """demo.py's readings of ``images`` with the fp32 export, in that order."""
    out = run_main("demo.py", *PLUGINS, "--image_folder", *images, "--saved_model", "plugin.onnx", "--workers", "0",
                   cwd=work).stdout
    rows = {path.strip(): text.strip() for path, text, _ in
            (line.split("\t") for line in out.splitlines() if line.count("\t") == 2)}
    return [rows[path] for path in images]


def test_the_study_profiles_and_trains_it_beside_a_reference_model(work):
    env = {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    tiny = ["--hidden_size", "16", "--output_channel", "16", "--batch_size", "4", "--workers", "0", "--device",
            "cpu", "--profile_warmup", "1", "--profile_repeats", "2"]
    with pytest.MonkeyPatch.context() as patch:
        for name, value in env.items():
            patch.setenv(name, value)
        run_main("study.py", *PLUGINS, "--name", "costs", "--profile_only", "--models",
                 f"{MODEL},None-VGG-None-CTC", *tiny, cwd=work)
        run_main("study.py", *PLUGINS, "--name", "trained", "--models", f"{MODEL},None-VGG-None-CTC",
                 "--train_data", "lmdb", "--valid_data", "lmdb", "--select_data", "/", "--batch_ratio", "1",
                 "--eval_data", "lmdb", "--num_iter", "10", "--valInterval", "5", *tiny, cwd=work)
    for name in ("costs", "trained"):
        with open(work / "studies" / name / "results.csv", encoding="utf-8") as f:
            rows = {row["combination"]: row for row in csv.DictReader(f) if row["kind"] == "mean"}
        assert set(rows) == {MODEL, "None-VGG-None-CTC"}, rows.keys()
        assert float(rows[MODEL]["params_m"]) > float(rows["None-VGG-None-CTC"]["params_m"])
    protocol = (work / "studies" / "trained" / "protocol.json").read_text(encoding="utf-8")
    assert "examples.plugin_stage.tcn" in protocol  # the protocol names the plugins its cells loaded
    # The plugin's cell kept its own options: --output_channel does not size MobileNetV3, so it was left out.
    opt = (work / "saved_models" / "trained" / f"{MODEL}-Seed1111" / "opt.txt").read_text(encoding="utf-8")
    assert "FeatureExtraction: MobileNetV3" in opt and "plugin: ['examples.plugin_stage.mobilenetv3'" in opt
    assert os.path.isfile(work / "saved_models" / "trained" / f"{MODEL}-Seed1111" / "best_accuracy.pth")
    assert sys.modules.get("examples.plugin_stage.mobilenetv3") is not None
