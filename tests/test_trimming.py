"""Reading padded batches without recomputing their repeated columns (trimming.py): each declared column
window holds for its module, the trimmed reading gives the full batch's features (float64: equal to
rounding) and readings, in PyTorch and through the exported graph that demo.py's ONNX Runtime cache uses."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import trimming
from helpers import WORDS
from model import ModelConfig, build_model
from modules.registry import REGISTRY, stage
from onnx_model import OnnxModel, export_onnx
from test_onnx import calibrated_model, word_batch
from trimming import Cut, TrimmedReader, column_window, padding_starts, plan_cut, plan_groups, trimmed_reader

DECLARED = sorted(name for name, cls in REGISTRY["FeatureExtraction"].items() if cls.column_window)


def config_for(extractor: str, prediction: str = "CTC", sequence: str = "BiLSTM", height: int = 32,
               width: int = 160) -> ModelConfig:
    return ModelConfig("None", extractor, sequence, prediction, imgH=height, imgW=width, output_channel=32,
                       hidden_size=16, batch_max_length=6, PAD=True, character="0123456789abcdefghijklmnopqrstuvwxyz")


def window_violations(extractor: str, height: int, width: int, window=None, seed: int = 0) -> list[str]:
    """Where an output column of ``extractor`` depends on an input column outside its declared window
    (autograd over random weights and inputs), or its column count is not linear in the width."""
    stride, left, right = window or stage("FeatureExtraction", extractor).column_window
    torch.manual_seed(seed)
    model = build_model(config_for(extractor, sequence="None", height=height, width=width)).double().eval()
    image = torch.randn(2, 1, height, width, dtype=torch.float64, requires_grad=True)
    visual = model.visual_features(image)  # [B, T, C]
    found = []
    for j in range(visual.size(1)):
        (grad,) = torch.autograd.grad(visual[:, j].square().sum(), image, retain_graph=True)
        used = (grad.abs().sum((0, 1, 2)) > 0).nonzero().flatten()
        lo, hi = int(used.min()), int(used.max())
        if lo < stride * j - left or hi > stride * j + right:
            found.append(f"column {j} reads input columns {lo}..{hi}, "
                         f"outside {stride * j - left}..{stride * j + right}")
    with torch.no_grad():
        narrower = model.visual_features(torch.zeros(1, 1, height, width - 3 * stride, dtype=torch.float64))
    if narrower.size(1) != visual.size(1) - 3:
        found.append(f"{3 * stride} columns fewer give {visual.size(1) - narrower.size(1)} feature columns fewer, "
                     "not 3")
    return found


@pytest.mark.parametrize("extractor", DECLARED)
@pytest.mark.parametrize("height,width", [(32, 100), (64, 256)])
def test_each_declared_column_window_holds(extractor, height, width):
    assert not window_violations(extractor, height, width)


def test_a_window_declared_too_narrow_is_caught():
    assert window_violations("VGG", 32, 100, window=(4, 10, 26))
    assert window_violations("VGG", 32, 100, window=(4, 19, 20))


def test_the_built_in_convolutional_extractors_declare_their_windows():
    assert {"VGG", "CRNN"} <= set(DECLARED)
    assert column_window(config_for("VGG")) == (4, 19, 26)
    tps = config_for("VGG")
    assert column_window(ModelConfig(**{**tps.to_dict(), "Transformation": "TPS"})) is None  # TPS resamples


def padded_batch(config: ModelConfig, words=WORDS) -> torch.Tensor:
    """Rendered words padded as --PAD pads them (the last column repeated), at several text widths."""
    images = word_batch(config, words)
    starts = padding_starts(images)
    assert len(set(starts.tolist())) > 3 and int(starts.max()) < config.imgW - 20  # varied, room to trim
    return images


def test_padding_starts_where_the_columns_repeat():
    image = torch.rand(3, 1, 8, 40)
    image[0, ..., 25:] = image[0, ..., 24:25]
    image[1, ..., 39:] = 0.5
    image[2, ..., 10:] = image[2, ..., 9:10]
    assert padding_starts(image).tolist() == [24, 39, 9]


def test_plan_cut_keeps_windows_clear_of_the_text_and_the_right_edge():
    window = (4, 19, 26)
    cut = plan_cut(60, 256, window, min_width=8)
    assert cut == Cut(start=60, removed=4 * cut.repeats, column=20, repeats=cut.repeats)
    assert 4 * cut.column - 19 >= 60  # the repeated column's window: all padding
    assert 4 * (cut.column + cut.repeats) + 26 < 256  # the last repeated one's, clear of the edge
    assert plan_cut(200, 256, window, min_width=8).repeats == 2
    assert plan_cut(215, 256, window, min_width=8) is None  # no room: read whole
    assert plan_cut(60, 256, window, min_width=250) is None


def test_groups_cover_every_image_once():
    starts = [10, 200, 40, 180, 12, 90, 250, 30]
    groups = plan_groups(starts, 256, (4, 19, 26), 8, group_cost=1)
    assert sorted(i for indices, _ in groups for i in indices) == list(range(len(starts)))
    for indices, cut in groups:
        assert cut is None or all(starts[i] <= cut.start for i in indices)
    assert any(cut for _, cut in groups) and len(groups) > 1


@pytest.mark.parametrize("extractor", DECLARED)
@pytest.mark.parametrize("prediction", ["CTC", "Attn"])
def test_trimmed_reading_equals_the_full_batch_in_pytorch(extractor, prediction):
    config = config_for(extractor, prediction)
    model = calibrated_model(config).double()
    images = padded_batch(config).double()
    reader = TrimmedReader(model, config, column_window(config))
    assert any(cut for _, cut in reader.groups(images))
    with torch.no_grad():
        assert torch.allclose(reader.encode(images), model.encode(images), rtol=0, atol=1e-10)
        full = model(images, None, is_train=False)
        trimmed = reader(images)
    assert torch.allclose(trimmed, full, rtol=0, atol=1e-9)


@pytest.mark.parametrize("prediction", ["CTC", "Attn"])
def test_the_exported_graph_takes_the_cut(tmp_path, prediction):
    config = config_for("VGG", prediction)
    model = calibrated_model(config)
    plain = OnnxModel(export_onnx(model, tmp_path / "plain.onnx"))
    graph = OnnxModel(export_onnx(model, tmp_path / "trimmed.onnx", trimmed=True))
    assert graph.trimmed and not plain.trimmed
    assert trimmed_reader(plain, config) is plain  # a graph without the cut's inputs reads whole batches
    reader = trimmed_reader(graph, config)
    assert isinstance(reader, TrimmedReader) and reader.config == config
    images = padded_batch(config)
    with torch.no_grad():
        eager = model(images, None, is_train=False)
    whole, trimmed = plain(images), reader(images)
    assert any(cut for _, cut in reader.groups(images))
    if prediction == "CTC":
        assert torch.allclose(trimmed, whole, atol=1e-5) and torch.allclose(trimmed, eager, atol=1e-4)
    assert torch.equal(trimmed.argmax(2), whole.argmax(2))
    with pytest.raises(ValueError, match="no 'cut' input"):
        plain(images, cut=(3, 2))
    assert not hasattr(reader, "encode")  # an exported Attn runs its greedy loop only: no beam search
    if prediction == "Attn":
        from decoding import DecodeOptions, decode
        from runtime import UsageError

        with pytest.raises(UsageError, match="cannot do: use the PyTorch checkpoint for beam"):
            decode(reader, images, config, DecodeOptions(decoder="beam", beam_size=2))


def test_a_batch_with_nothing_to_trim_is_read_once(monkeypatch):
    config = config_for("VGG")
    model = calibrated_model(config)
    images = torch.rand(4, 1, 32, 160)  # no repeated columns
    with torch.no_grad():
        whole = model(images, None, is_train=False)
    calls = []
    encode = model.encode
    monkeypatch.setattr(model, "encode", lambda part, cut=(0, 0): calls.append(cut) or encode(part, cut))
    reader = TrimmedReader(model, config, column_window(config))
    with torch.no_grad():
        assert torch.equal(reader(images), whole)
    assert calls == [(0, 0)]


def test_demo_reads_the_folder_in_its_order_with_the_trimmed_cache(tmp_path, monkeypatch):
    from checkpoint import save_checkpoint
    from demo import main
    from helpers import make_gt_folder

    monkeypatch.setenv("STR_CACHE_DIR", str(tmp_path / "cache"))
    config = config_for("VGG")
    saved = tmp_path / "vgg.pth"
    save_checkpoint(saved, calibrated_model(config))
    images = make_gt_folder(tmp_path / "words", copies=1) / "images"
    seen = []
    original = trimming.TrimmedReader.__call__

    def watched(self, image, *args, **kwargs):
        seen.append(any(cut for _, cut in self.groups(image)))
        return original(self, image, *args, **kwargs)

    monkeypatch.setattr(trimming.TrimmedReader, "__call__", watched)
    argv = ["--image_folder", str(images), "--saved_model", str(saved), "--workers", "0", "--log_file",
            str(tmp_path / "log.txt")]
    by_torch = main([*argv, "--runtime", "torch"])
    assert not seen  # PyTorch reads whole batches
    by_onnx = main([*argv, "--runtime", "onnx"])
    assert any(seen)
    assert [(p, t) for p, t, _ in by_onnx] == [(p, t) for p, t, _ in by_torch]
    assert [int(Path(p).stem) for p, _, _ in by_onnx] == list(range(len(WORDS)))  # read by width, told in order


# --- benchmarks/bench_original.py: the original's demo.py against this one's -----------------------------

def test_the_original_is_given_its_own_flags_and_refused_other_models(tmp_path):
    from benchmarks.bench_original import check_original, original_flags, read_table
    from runtime import UsageError

    config = ModelConfig("None", "VGG", "BiLSTM", "CTC", imgH=64, imgW=256, output_channel=256, hidden_size=256,
                         batch_max_length=34, PAD=True, character="ab c€")
    flags = original_flags(config, tmp_path / "w.pth", tmp_path / "images")
    given = dict(zip(flags[::2], flags[1::2]))
    assert given["--character"] == "ab c€" and given["--imgW"] == "256" and flags[-1] == "--PAD"
    assert "--rgb" not in flags
    (tmp_path / "dtrb" / "modules").mkdir(parents=True)
    with pytest.raises(UsageError, match="no demo.py"):
        check_original(tmp_path / "dtrb", config)
    (tmp_path / "dtrb" / "demo.py").write_text("")
    check_original(tmp_path / "dtrb", config)
    with pytest.raises(UsageError, match="its own 24 combinations"):
        check_original(tmp_path / "dtrb", ModelConfig(**{**config.to_dict(), "FeatureExtraction": "CRNN"}))
    table = ("-" * 80 + "\nimage_path               \tpredicted_labels         \tconfidence score\n" + "-" * 80
             + f"\n{tmp_path}/images/a/1.png      \thello                    \t0.9981\n")
    assert read_table(table, tmp_path / "images") == {"a/1.png": "hello"}
