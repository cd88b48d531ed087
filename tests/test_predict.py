"""Decoding details of decoding.decode (greedy) shared by test.py and demo.py."""
import torch

from demo import format_table
from decoding import decode
from model import ModelConfig, build_model


def test_empty_attention_prediction_prints_with_its_confidence():
    torch.manual_seed(0)
    config = ModelConfig("None", "VGG", "None", "Attn", output_channel=32, hidden_size=16)
    model = build_model(config).eval()
    with torch.no_grad():
        model.Prediction.generator.bias[1] = 50.0  # [s] first: every prediction is empty
        out = decode(model, torch.zeros(2, 1, 32, 100), config)
    strings, confidences = out.texts, out.confidences
    assert strings == ["", ""]
    assert all(0.99 < c <= 1.0 for c in confidences)
    table = format_table([("a.png", strings[0], confidences[0])])
    assert table.splitlines()[-1].split("\t")[1].strip() == ""


def test_attention_prediction_without_eos_keeps_every_character():
    torch.manual_seed(0)
    config = ModelConfig("None", "VGG", "None", "Attn", output_channel=32, hidden_size=16, batch_max_length=5)
    model = build_model(config).eval()
    with torch.no_grad():
        model.Prediction.generator.bias[1] = -50.0  # never [s]
        model.Prediction.generator.bias[12] = 50.0  # always 'a'
        strings = decode(model, torch.zeros(1, 1, 32, 100), config).texts
    assert strings == ["aaaaaa"]  # all batch_max_length + 1 steps (the reference dropped the last)
