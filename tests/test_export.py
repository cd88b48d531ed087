"""export.py: the reference state_dict and the EasyOCR custom recogniser round-trip to the same logits."""
from __future__ import annotations

import importlib.util

import pytest
import torch
import yaml

from checkpoint import load_model, save_checkpoint
from export import export_easyocr, main
from model import ModelConfig, build_model
from pretrained import EASYOCR_CHARACTER


def tiny(stages: str = "None-VGG-BiLSTM-CTC", **options) -> torch.nn.Module:
    t, f, s, p = stages.split("-")
    config = ModelConfig(t, f, s, p, imgH=64, imgW=128, output_channel=32, hidden_size=16,
                         character=EASYOCR_CHARACTER, sensitive=True, PAD=True, **options)
    torch.manual_seed(0)
    return build_model(config).eval()


def load_module(path):
    spec = importlib.util.spec_from_file_location(path.stem + "_exported", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_easyocr_export_round_trip(tmp_path):
    model = tiny()
    pth, yml, py = export_easyocr(model, tmp_path / "out", "tiny_rec")
    settings = yaml.safe_load(yml.read_text(encoding="utf-8"))
    assert settings["character_list"] == EASYOCR_CHARACTER  # the space, '\\' and '€' survive
    assert settings["imgH"] == 64 and settings["lang_list"] == ["en"]
    assert settings["network_params"] == {"input_channel": 1, "output_channel": 32, "hidden_size": 16}

    state = torch.load(pth, weights_only=True)
    assert all(k.startswith("module.") for k in state)
    exported = load_module(py).Model(num_class=len(settings["character_list"]) + 1, **settings["network_params"])
    exported.load_state_dict({k[len("module."):]: v for k, v in state.items()})  # strict, as EasyOCR does
    exported.eval()
    image = torch.rand(2, 1, 64, 128) * 2 - 1
    with torch.inference_mode():
        assert torch.allclose(exported(image, None), model(image), atol=1e-6)


def test_reference_export_round_trip(tmp_path):
    model = tiny()
    saved = tmp_path / "model.pth"
    save_checkpoint(saved, model)
    out = tmp_path / "reference.pth"
    main(["--saved_model", str(saved), "--format", "reference", "--output", str(out)])
    state = torch.load(out, weights_only=True)
    assert set(state) == {"module." + k for k in model.state_dict()}
    again = load_model(out, model.config.to_dict()).model  # stage flags, as the reference
    image = torch.rand(1, 1, 64, 128) * 2 - 1
    with torch.inference_mode():
        assert torch.equal(again(image), model(image))


def test_cli_writes_easyocr_files_named_after_the_model(tmp_path):
    saved = tmp_path / "my_model.pth"
    save_checkpoint(saved, tiny())
    written = main(["--saved_model", str(saved), "--format", "easyocr", "--output", str(tmp_path / "eo")])
    assert sorted(p.name for p in written) == ["my_model.pth", "my_model.py", "my_model.yaml"]


@pytest.mark.parametrize("stages, options, reason", [
    ("None-VGG-BiLSTM-Attn", {}, "CTC only"),
    ("TPS-VGG-BiLSTM-CTC", {}, "no TPS"),
    ("None-ResNet-BiLSTM-CTC", {}, "None-VGG-BiLSTM-CTC"),
    ("None-VGG-BiLSTM-CTC", {"input_channel": 3}, "grey"),
])
def test_easyocr_refuses_what_it_cannot_run(tmp_path, stages, options, reason):
    with pytest.raises(ValueError, match=reason):
        export_easyocr(tiny(stages, **options), tmp_path, "x")
    assert not any(tmp_path.iterdir())
