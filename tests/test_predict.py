"""Decoding details of test.predict shared by test.py and demo.py."""
import torch

from demo import format_table
from model import ModelConfig, build_model
from evaluation import predict
from utils import make_converter


def test_empty_attention_prediction_prints_with_its_confidence():
    torch.manual_seed(0)
    config = ModelConfig("None", "VGG", "None", "Attn", output_channel=32, hidden_size=16)
    model = build_model(config).eval()
    with torch.no_grad():
        model.Prediction.generator.bias[1] = 50.0  # [s] first: every prediction is empty
        _, strings, confidences = predict(model, torch.zeros(2, 1, 32, 100), make_converter("Attn", config.character),
                                          config)
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
        _, strings, _ = predict(model, torch.zeros(1, 1, 32, 100), make_converter("Attn", config.character), config)
    assert strings == ["aaaaaa"]  # all batch_max_length + 1 steps (the reference dropped the last)
