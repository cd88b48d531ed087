"""Every stage combination against the reference state_dict contract (spec/state_dict, copied to fixtures)."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from model import ModelConfig, build_model, count_parameters
from modules.prediction import Attention
from modules.transformation import GridGenerator, initial_fiducials

FIXTURES = Path(__file__).parent / "fixtures"
SPEC_FILES = sorted((FIXTURES / "state_dict").glob("*.json"))


def config_for(spec_path: Path) -> ModelConfig:
    spec = json.loads(spec_path.read_text())
    name = spec_path.stem
    stages = name.split("-")[:4]
    extra = {"character": spec["character"]} if "character" in spec else {}
    return ModelConfig(*stages, **extra)


def test_all_25_spec_files_present():
    assert len(SPEC_FILES) == 25


@pytest.fixture(scope="module", params=SPEC_FILES, ids=lambda p: p.stem)
def spec_model(request):
    """(spec file, its configuration, its model): built once for the tests of each spec file (pytest runs
    them together, and drops the model before building the next)."""
    torch.manual_seed(0)
    config = config_for(request.param)
    return request.param, config, build_model(config)


def test_state_dict_matches_reference(spec_model):
    spec_path, config, model = spec_model
    spec = json.loads(spec_path.read_text())
    ours = [("module." + k, list(v.shape)) for k, v in model.state_dict().items()]
    assert ours == list(spec["keys"].items())  # names, shapes and order
    assert count_parameters(model) == spec["params"]
    assert config.num_class == spec["num_class"]


def test_forward_backward_every_parameter_gets_gradient(spec_model):
    _, config, model = spec_model
    torch.manual_seed(0)
    model.train()
    images = torch.rand(2, 1, config.imgH, config.imgW) * 2 - 1
    text = torch.randint(2, config.num_class, (2, config.batch_max_length + 2))
    preds = model(images, text[:, :-1])
    T = 24 if config.FeatureExtraction == "VGG" else 26
    if config.Prediction == "CTC":
        assert preds.shape == (2, T, config.num_class)
    else:
        assert preds.shape == (2, config.batch_max_length + 1, config.num_class)
    preds.float().logsumexp(-1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"no/invalid gradient for {missing[:5]}"


def test_tps_constants_match_reference():
    ref = json.loads((FIXTURES / "tps_constants_F20_32x100.json").read_text())
    grid = GridGenerator(20, (32, 100))
    inv = json.loads(ref["inv_delta_C"]) if isinstance(ref["inv_delta_C"], str) else ref["inv_delta_C"]
    np.testing.assert_allclose(grid.inv_delta_C.numpy(), np.array(inv, dtype=np.float32), rtol=1e-5, atol=1e-5)
    P_hat = grid.P_hat.double().numpy()
    assert list(P_hat.shape) == ref["P_hat_shape"]
    assert P_hat.sum() == pytest.approx(ref["P_hat_sum"], rel=1e-6)
    assert np.abs(P_hat).sum() == pytest.approx(ref["P_hat_abs_sum"], rel=1e-6)

    def rows(key):
        v = ref[key]
        return np.array(json.loads(v) if isinstance(v, str) else v)

    np.testing.assert_allclose(P_hat[:3], rows("P_hat_rows_0_1_2"), atol=1e-5)
    np.testing.assert_allclose(P_hat[100], rows("P_hat_row_100"), atol=1e-5)
    np.testing.assert_allclose(P_hat[-1], rows("P_hat_last_row"), atol=1e-5)
    model = build_model(ModelConfig("TPS", "VGG", "None", "CTC"))
    bias = model.Transformation.LocalizationNetwork.localization_fc2.bias.detach().numpy()
    np.testing.assert_allclose(bias, rows("localization_fc2_bias_init"), atol=1e-6)
    np.testing.assert_allclose(bias.reshape(20, 2), initial_fiducials(20), atol=1e-6)
    assert not model.Transformation.LocalizationNetwork.localization_fc2.weight.any()


def test_init_follows_reference():
    torch.manual_seed(0)
    model = build_model(ModelConfig("None", "VGG", "BiLSTM", "CTC"))
    for name, p in model.named_parameters():
        if "bias" in name:
            assert not p.any(), name
        elif p.dim() == 1:
            assert torch.all(p == 1), name
        else:
            fan_in = p[0].numel()
            assert p.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.25), name


def reference_attention_inference(attn: Attention, batch_H, num_steps):
    """The reference's loop: i2h re-applied at every step, all steps run."""
    B = batch_H.size(0)
    h = batch_H.new_zeros(B, attn.hidden_size)
    hidden = (h, h.clone())
    targets = torch.zeros(B, dtype=torch.long)
    probs = batch_H.new_zeros(B, num_steps, attn.num_classes)
    cell = attn.attention_cell
    for i in range(num_steps):
        onehot = torch.nn.functional.one_hot(targets, attn.num_classes).float()
        hidden, _ = cell(hidden, batch_H, cell.i2h(batch_H), onehot)
        probs[:, i] = attn.generator(hidden[0])
        targets = probs[:, i].argmax(1)
    return probs


def cut_at_eos(indices):
    out = []
    for row in indices.tolist():
        out.append(row[:row.index(1)] if 1 in row else row)
    return out


def test_attention_early_stop_gives_identical_predictions():
    torch.manual_seed(3)
    attn = Attention(64, 32, 12).eval()
    # Bias [s] so that every sequence ends early, then check the early exit really happened.
    with torch.no_grad():
        attn.generator.bias[1] += 4.0
        batch_H = torch.randn(5, 10, 64)
        ours = attn(batch_H, is_train=False, batch_max_length=25)
        ref = reference_attention_inference(attn, batch_H, 26)
    assert all(1 in row[:10] for row in ref.argmax(2).tolist())
    assert torch.all(ours[:, -1].argmax(1) == 1) and torch.all(ours[:, -1, 1] == 1.0)  # the loop exited early
    assert cut_at_eos(ours.argmax(2)) == cut_at_eos(ref.argmax(2))
    for o, r, keep in zip(ours.softmax(2).max(2).values, ref.softmax(2).max(2).values, cut_at_eos(ref.argmax(2))):
        torch.testing.assert_close(o[:len(keep)], r[:len(keep)])
    # No sequence ever finishing: all 26 steps run and equal the reference exactly.
    with torch.no_grad():
        attn.generator.bias[1] -= 100.0
        torch.testing.assert_close(attn(batch_H, is_train=False, batch_max_length=25),
                                   reference_attention_inference(attn, batch_H, 26))


def test_attention_computes_i2h_once_per_forward():
    attn = Attention(64, 32, 12).eval()
    calls = []
    attn.attention_cell.i2h.register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        attn(torch.randn(2, 10, 64), is_train=False, batch_max_length=25)
    assert len(calls) == 1


def test_unknown_stage_name_lists_choices():
    with pytest.raises(ValueError, match="VGG, RCNN, ResNet"):
        ModelConfig("None", "vgg", "None", "CTC")


def test_config_round_trips_as_plain_types():
    config = ModelConfig("TPS", "ResNet", "BiLSTM", "Attn", character="ab\\] -€")
    d = config.to_dict()
    assert all(isinstance(v, (str, int, float, bool)) for v in d.values())
    assert ModelConfig.from_dict(d) == config
