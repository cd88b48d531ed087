"""profiling.py: FLOPs against hand counts, the paper's GFLOPs, parameters against the spec, and a profile."""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from helpers import FakeClock
from model import REFERENCE_NAMES, build_model, config_from_name
from modules.transformation import TPS_SpatialTransformerNetwork
from modules.vit import SelfAttention
from profiling import Profile, build_by_name, count_flops, count_parameters, flop_breakdown, profile_model
from runtime import UsageError

SPEC = Path(__file__).parent / "fixtures" / "state_dict"


class ConvLSTM(nn.Module):
    """[B, 1, 6, 5] → conv 1→4 (3x3, same size) → a sequence over the 5 columns of 4 x 6 features →
    BiLSTM(24, hidden 3) → Linear(6, 2)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.rnn = nn.LSTM(24, 3, bidirectional=True, batch_first=True)
        self.linear = nn.Linear(6, 2)

    def forward(self, x):
        seq = self.conv(x).permute(0, 3, 1, 2).flatten(2)  # [B, 5, 24]
        return self.linear(self.rnn(seq)[0])


def test_conv_lstm_flops_equal_a_hand_count():
    conv = 2 * (4 * 6 * 5) * (1 * 3 * 3)  # 2 x (output values) x (MACs per value)
    # per step and direction: the 4 gates (4 x 3 rows) read the input (24) and the hidden state (3)
    lstm = 2 * 5 * 2 * (4 * 3) * (24 + 3)  # directions x steps x 2 x rows x columns
    linear = 2 * 5 * 6 * 2
    assert count_flops(ConvLSTM(), torch.rand(1, 1, 6, 5)) == conv + lstm + linear == 8760
    assert count_flops(ConvLSTM(), torch.rand(3, 1, 6, 5)) == 3 * 8760


def test_tps_flops_equal_a_hand_count():
    H, W, F = 8, 16, 6
    tps = TPS_SpatialTransformerNetwork(F, (H, W), (H, W), 1)
    loc = (2 * 64 * (H * W) * 9 * 1  # 3x3 convolutions, each after a 2x2 max-pooling but the first
           + 2 * 128 * (H * W // 4) * 9 * 64
           + 2 * 256 * (H * W // 16) * 9 * 128
           + 2 * 512 * (H * W // 64) * 9 * 256
           + 2 * 512 * 256 + 2 * 256 * 2 * F)  # fc1, fc2 → F (x, y) fiducials
    grid = 2 * (H * W) * F * 2  # [n, F] constant times C' [F, 2]
    sampling = 2 * 4 * 1 * (H * W)  # bilinear: 4 neighbours per output value, 1 channel
    assert count_flops(tps, torch.rand(1, 1, H, W)) == loc + grid + sampling


def test_attention_decoder_counts_every_step():
    model = build_by_name("None-VGG-None-Attn", output_channel=8, hidden_size=4, imgW=16)
    C, h, classes, steps = 8, 4, model.config.num_class, model.config.batch_max_length + 1
    T = model.visual_features(torch.rand(1, 1, 32, 16)).size(1)  # frames (a shape, not a count)
    per_step = 2 * (h * h + T * h + T * C + 4 * h * (C + classes + h) + h * classes)  # h2h, score, context, LSTMCell, generator
    once = 2 * T * C * h  # i2h, projected once
    assert flop_breakdown(model)["Prediction"] == once + steps * per_step
    # the reference projects at every step
    assert flop_breakdown(model, as_reference=True)["Prediction"] == steps * (once + per_step)


def test_scaled_dot_product_attention_is_counted_on_the_cpu():
    N, C, heads = 5, 8, 2
    qkv, attention, proj = 2 * N * C * 3 * C, 2 * heads * N * N * (C // heads) * 2, 2 * N * C * C
    assert count_flops(SelfAttention(C, heads), torch.rand(1, N, C)) == qkv + attention + proj


@pytest.mark.parametrize("name", ["None-VGG-BiLSTM-CTC", "TPS-ResNet-BiLSTM-Attn", "None-RCNN-None-CTC"])
def test_parameters_equal_the_reference(name):
    spec = json.loads((SPEC / f"{name}.json").read_text())
    assert count_parameters(build_model(config_from_name(name), init=False)) == spec["params"]


def test_reference_names_are_the_24_spec_files():
    assert sorted(REFERENCE_NAMES) == sorted(p.stem for p in SPEC.glob("*.json") if not p.stem.endswith("sensitive"))


def test_unknown_name_lists_the_choices():
    with pytest.raises(UsageError, match="VGG, RCNN, ResNet"):
        config_from_name("TPS-Foo-BiLSTM-Attn")
    with pytest.raises(UsageError, match="Transformation-FeatureExtraction"):
        config_from_name("VGG-CTC")


# GFLOPs at 32 x 100 in the paper (Baek et al. 2019, Table 8), counted on the reference implementation.
PAPER_GFLOPS = {"None-VGG-BiLSTM-CTC": 1.4, "TPS-VGG-BiLSTM-Attn": 2.0, "None-ResNet-None-CTC": 10.0,
                "TPS-ResNet-BiLSTM-CTC": 10.7, "TPS-ResNet-BiLSTM-Attn": 10.9}


@pytest.mark.parametrize("name", ["None-VGG-BiLSTM-CTC", "TPS-VGG-BiLSTM-Attn"])  # (the ResNet ones take seconds each)
def test_gflops_within_ten_percent_of_the_paper(name):
    gflops = count_flops(build_model(config_from_name(name), init=False), as_reference=True) / 1e9
    assert abs(gflops / PAPER_GFLOPS[name] - 1) < 0.10


@pytest.fixture(scope="module")
def tiny_profile() -> Profile:
    model = build_by_name("None-VGG-BiLSTM-Attn", output_channel=64, hidden_size=32, imgW=64, batch_max_length=5)
    return profile_model(model, device="cpu", batch_size=16, warmup=1, repeats=3)


def test_profile_values_are_positive_and_finite(tiny_profile):
    values = tiny_profile.as_dict()
    for key in ("params_m", "gflops", "gflops_reference", "latency_ms", "throughput_ips", "infer_mem_mb", "train_mem_mb", "weights_mb"):
        assert math.isfinite(values[key]) and values[key] > 0, key
    assert (values["name"], values["device"], values["precision"], values["batch_size"]) == \
        ("None-VGG-BiLSTM-Attn", "cpu", "fp32", 16)
    assert values["train_mem_mb"] > values["infer_mem_mb"]  # gradients and optimizer state on top
    assert values["gflops_reference"] > values["gflops"]  # the reference projects i2h at every step


def test_the_profile_records_how_many_runs_each_figure_rests_on(tiny_profile):
    # at most the counts asked (repeats=3, throughput_repeats 5 by default), fewer past the 10 s budget
    assert 1 <= tiny_profile.latency_runs <= 3 and 1 <= tiny_profile.throughput_runs <= 5


@pytest.mark.parametrize("read_s, budget_s, repeats, runs", [
    (0.5, 4.0, 30, 8),  # the budget stops it: 8 x 0.5 s
    (0.5, 4.0, 5, 5),  # the repeat count is an upper bound
    (10.0, 4.0, 30, 3),  # a slow model: the minimum for a stable median, past the budget
    (10.0, 4.0, 2, 2),  # ... but never more than --profile_repeats
    (0.5, None, 30, 30),  # no budget: the count
])
def test_timed_runs_stop_on_the_time_budget(monkeypatch, read_s, budget_s, repeats, runs):
    import profiling

    reads = []
    monkeypatch.setattr(profiling, "decode", lambda *args, **kwargs: reads.append(1))
    model = build_by_name("None-VGG-None-CTC", output_channel=8, hidden_size=4, imgW=16)
    times = profiling._timed_runs(model, 1, torch.device("cpu"), None, warmup=10, repeats=repeats, every_step=False,
                                  budget_s=budget_s, clock=FakeClock(read_s))
    assert len(times) == runs and all(t == pytest.approx(read_s) for t in times)
    # the warm-up stops after a quarter of the budget (at least one read), or at its count
    warmups = 10 if budget_s is None else max(1, min(10, int(budget_s / 4 / read_s) + 1))
    assert len(reads) == runs + warmups


def test_a_bad_budget_is_refused():
    model = build_by_name("None-VGG-None-CTC", output_channel=8, hidden_size=4, imgW=16)
    with pytest.raises(UsageError, match="time budget"):
        profile_model(model, budget_s=0)


def test_bad_precision_is_refused():
    model = build_by_name("None-VGG-None-CTC", output_channel=8, hidden_size=4, imgW=16)
    with pytest.raises(UsageError, match="fp32, bf16, fp16"):
        profile_model(model, precision="fp8")
    with pytest.raises(UsageError, match="fp16 needs a CUDA GPU"):
        profile_model(model, device="cpu", precision="fp16")
