"""Every registered combination, tested by construction: the product of all registered stages (the
repository's and the example plugins', examples/plugin_stage) at tiny sizes is built, run forward and
backward, saved and loaded back with no stage flag; each stage's declared facts (its width, the input
options its weights fix, its smallest input) are checked against the module it builds, so a stage that
declares them wrongly fails here."""
from __future__ import annotations

import itertools
import types

import pytest
import torch

import plugins
from checkpoint import load_model, save_checkpoint
from model import STAGES, all_names, build_model, config_from_name, stage_widths
from modules.registry import KINDS, Head, all_stages

PLUGINS = ["examples.plugin_stage.mobilenetv3", "examples.plugin_stage.tcn"]
for _name in PLUGINS:
    plugins.load(_name)

# Tiny sizes for every stage: a stage whose options are not listed here is built with its defaults.
TINY = dict(output_channel=32, hidden_size=32, batch_max_length=6, vit_embed_dim=32, vit_depth=1, vit_heads=2)
COMBINATIONS = all_names()


def tiny_config(name: str, **changes):
    return config_from_name(name, **{k: v for k, v in {**TINY, **changes}.items()})


def test_the_registry_holds_every_stage():
    assert list(STAGES) == list(KINDS)
    names = {cls.name for cls in all_stages()}
    assert {"None", "TPS", "VGG", "RCNN", "ResNet", "ViT", "SVTR", "CRNN", "BiLSTM", "CRNNLSTM", "CTC", "Attn", "PARSeq", "ViTSTR",
            "MobileNetV3", "TCN"} <= names
    assert len(COMBINATIONS) == 2 * 7 * 4 * 4


@pytest.mark.parametrize("name", COMBINATIONS)
def test_combination_builds_trains_and_round_trips(name, tmp_path):
    torch.manual_seed(0)
    config = tiny_config(name)
    model = build_model(config).train()
    widths = stage_widths(config)
    prediction = STAGES["Prediction"][config.Prediction]
    image = torch.rand(2, config.input_channel, config.imgH, config.imgW) * 2 - 1
    labels = ["ab1", "c"]
    converter = prediction.converter(config.character)
    text, length = converter.encode(labels, config.batch_max_length)
    text, extra = prediction.training_batch(text, length, config)
    loss = prediction.loss(model(image, text[:, :-1], **extra).float(), text, length)
    loss.backward()
    assert torch.isfinite(loss)
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f"parameters that get no gradient: {no_grad[:5]}"

    model.eval()
    with torch.no_grad():
        visual = model.visual_features(image)
        contextual = model.encode(image)
        logits = model(image, is_train=False)
    assert visual.shape[-1] == widths["SequenceModeling"], "output_width of the feature stage"
    assert contextual.shape[-1] == widths["Prediction"], "output_width of the sequence stage"
    steps = visual.shape[1] if prediction.end_index is None else config.batch_max_length + 1
    assert logits.shape == (2, steps, config.num_class)

    save_checkpoint(tmp_path / "model.pth", model)
    loaded = load_model(tmp_path / "model.pth")  # no flags: the checkpoint describes the model
    assert loaded.config == config
    with torch.no_grad():
        assert torch.equal(loaded.model(image, is_train=False), logits)


def duck_config(config, **changes):
    """The configuration's values as attributes, without its checks (to build a stage past its declared edge)."""
    return types.SimpleNamespace(**{**config.to_dict(), **dict(config.options), **changes,
                                    "num_class": config.num_class})


def stage_module(cls, **changes):
    config = tiny_config(combination_with(cls))
    duck = duck_config(config, **changes)
    return cls.from_config(duck, stage_widths(config)[cls.kind]).eval()


def combination_with(cls) -> str:
    """The cheapest combination that has ``cls``: the first registered stage of every other kind."""
    return "-".join(cls.name if kind == cls.kind else next(iter(STAGES[kind])) for kind in KINDS)


IMAGE_STAGES = [cls for cls in all_stages() if cls.kind in ("Transformation", "FeatureExtraction")]


@pytest.mark.parametrize("cls", IMAGE_STAGES, ids=lambda c: f"{c.kind}-{c.name}")
def test_weights_fix_the_image_size_exactly_when_declared(cls):
    """A stage whose weights' shapes depend on imgW must say so (``fixed_input``, or ``fixed_width`` for a
    graph that cannot take another width); one that says so must really depend on it."""
    config = tiny_config(combination_with(cls))
    step = 32
    a = stage_module(cls).state_dict()
    b = stage_module(cls, imgW=config.imgW + step).state_dict()
    depends = any(a[k].shape != b[k].shape for k in a)
    assert depends == ("imgW" in cls.fixed_input or bool(cls.fixed_width)), cls.name
    if "imgW" in cls.fixed_input:
        assert depends


def runs(module: torch.nn.Module, channels: int, height: int, width: int) -> bool:
    try:
        with torch.inference_mode():
            module(torch.zeros(1, channels, height, width))
        return True
    except RuntimeError:
        return False


@pytest.mark.parametrize("cls", [c for c in IMAGE_STAGES if c.min_input != (1, 1)], ids=lambda c: c.name)
def test_min_input_is_the_edge(cls):
    """The declared smallest input is exact: the stage runs at it and fails one pixel below, in each direction."""
    h, w = cls.min_input
    channels = tiny_config(combination_with(cls)).input_channel
    for height, width, expected in [(h, w, True), (h - 1, w, False), (h, w - 1, False)]:
        if height < 1 or width < 1:
            continue
        module = stage_module(cls, imgH=height, imgW=width)
        assert runs(module, channels, height, width) is expected, (cls.name, height, width)


@pytest.mark.parametrize("cls", [c for c in STAGES["FeatureExtraction"].values() if not c.own_width],
                         ids=lambda c: c.name)
def test_min_output_channel_is_the_edge(cls):
    low = cls.min_output_channel
    assert runs(stage_module(cls, output_channel=low), 1, 32, 100)
    with pytest.raises((RuntimeError, ValueError, ZeroDivisionError)):
        with pytest.warns(UserWarning):  # zero-sized layers
            stage_module(cls, output_channel=low - 1)(torch.zeros(1, 1, 32, 100))


@pytest.mark.parametrize("cls", [c for c in STAGES["FeatureExtraction"].values() if c.own_width],
                         ids=lambda c: c.name)
def test_own_width_does_not_follow_output_channel(cls):
    """A stage that says its width is its own is not sized by --output_channel (else it should say so)."""
    a, b = stage_module(cls, output_channel=32), stage_module(cls, output_channel=64)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}


@pytest.mark.parametrize("cls", all_stages(), ids=lambda c: f"{c.kind}-{c.name}")
def test_weights_are_recognised_as_their_stage(cls):
    """A bare state_dict's stage is found by the stage's own recognition (checkpoint.infer_architecture):
    every stage claims its own weights, and no other stage of its kind claims them."""
    from checkpoint import infer_architecture

    model = build_model(tiny_config(combination_with(cls)))
    found = infer_architecture(model.state_dict())
    assert found[cls.kind] == cls.name, found["candidates"][cls.kind]


NON_REFERENCE = [cls for cls in all_stages() if not cls.reference]


@pytest.mark.parametrize("cls", NON_REFERENCE, ids=lambda c: f"{c.kind}-{c.name}")
def test_torch_export_reads_as_eager(cls):
    """The exported graph (every decoding step run, no data-dependent control flow) gives the eager model's
    logits: the rule every stage must follow to reach ONNX (test_onnx.py checks the repository's stages)."""
    from onnx_model import torch_export

    torch.manual_seed(0)
    model = build_model(tiny_config(combination_with(cls))).eval()
    config = model.config
    image = torch.rand(2, config.input_channel, config.imgH, config.imgW) * 2 - 1
    program = torch_export(model)
    with torch.no_grad():
        eager = model(image, is_train=False)
        exported = program.module()(image)
    steps = eager.shape[1]
    assert torch.allclose(exported[:, :steps], eager, atol=1e-4)


def test_heads_implement_the_protocol():
    for cls in STAGES["Prediction"].values():
        assert issubclass(cls, Head)
        assert cls.converter.num_special >= 1
        assert cls.beam in ("", "logits", "decoder")
        assert cls.end_index is None or 0 <= cls.end_index < cls.converter.num_special


def test_option_tables_follow_the_registry():
    """Each registered option is a flag of every script and a field of the configuration."""
    from model import model_flag_names

    names = set(model_flag_names())
    for cls in all_stages():
        for option in cls.options:
            assert option.name in names
            assert getattr(config_from_name(combination_with(cls)), option.name) == option.default
    assert list(itertools.chain(*STAGES.values()))  # every kind has stages


def test_an_installed_entry_point_registers_its_stages(tmp_path, monkeypatch):
    """A package's ``str_toolkit.stages`` entry point is imported by every script, with no --plugin."""
    import importlib.metadata
    import sys

    (tmp_path / "flip_stage.py").write_text(
        "import torch.nn as nn\nfrom modules.registry import Stage, register\n\n\n"
        "@register\nclass Flip(Stage, nn.Module):\n    kind, name = 'Transformation', 'Flip'\n\n"
        "    def __init__(self, config, input_size):\n        super().__init__()\n\n"
        "    def forward(self, x):\n        return x.flip(-1)\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = importlib.metadata.EntryPoint("flip", "flip_stage", plugins.ENTRY_POINT_GROUP)
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: [entry] if group == plugins.ENTRY_POINT_GROUP else [])
    try:
        plugins.load_from_argv([])
        assert "Flip" in STAGES["Transformation"] and "flip_stage" in plugins.loaded()
        model = build_model(tiny_config("Flip-VGG-None-CTC"))
        image = torch.rand(1, 1, 32, 100)
        assert torch.equal(model.Transformation(image), image.flip(-1))
        plugins.check_required(plugins.required(model.config), "a checkpoint")  # installed: trusted
    finally:
        STAGES["Transformation"].pop("Flip", None)
        sys.modules.pop("flip_stage", None)
        plugins._loaded.remove("flip_stage")


def test_a_plugin_named_only_by_a_file_is_refused():
    with pytest.raises(plugins.PluginError, match="--plugin not_imported.module if you trust it"):
        plugins.check_required(["not_imported.module"], "model.pth")
