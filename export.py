"""Export a model for other tools.

    python export.py --saved_model best_accuracy.pth --format reference --output model.pth
    python export.py --saved_model english_g2 --format easyocr --output easyocr_model/ [--name my_recognizer]

``reference``: a bare state_dict with the ``module.`` prefix, as the original train.py saves it
(its demo.py / test.py load it with the same stage flags).

``easyocr``: an EasyOCR custom recogniser (``Reader(..., recog_network=NAME,
user_network_directory=DIR)``): ``DIR/NAME.pth`` (the bare state_dict), ``DIR/NAME.yaml``
(``network_params``, ``imgH``, ``lang_list``, ``character_list``) and ``DIR/NAME.py`` (a
self-contained ``Model(input_channel, output_channel, hidden_size, num_class)``).
EasyOCR decodes CTC only, reads grey images, and its custom-model code here covers the
None-VGG-BiLSTM-CTC layout; other architectures are refused.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from types import SimpleNamespace

import yaml

from checkpoint import CheckpointError, atomic_save, export_reference, to_reference_state_dict
from model import Model, ModelConfig, add_model_arguments

EASYOCR_ARCHITECTURE = "None-VGG-BiLSTM-CTC"

# Written to DIR/NAME.py: torch only, the reference's module names, EasyOCR's constructor signature.
EASYOCR_MODEL_SOURCE = '''"""None-VGG-BiLSTM-CTC recogniser for EasyOCR (exported by str-toolkit export.py; torch only)."""
import torch.nn as nn


class VGG_FeatureExtractor(nn.Module):
    def __init__(self, input_channel, output_channel=512):
        super().__init__()
        oc = [output_channel // 8, output_channel // 4, output_channel // 2, output_channel]
        self.ConvNet = nn.Sequential(
            nn.Conv2d(input_channel, oc[0], 3, 1, 1), nn.ReLU(True), nn.MaxPool2d(2, 2),
            nn.Conv2d(oc[0], oc[1], 3, 1, 1), nn.ReLU(True), nn.MaxPool2d(2, 2),
            nn.Conv2d(oc[1], oc[2], 3, 1, 1), nn.ReLU(True),
            nn.Conv2d(oc[2], oc[2], 3, 1, 1), nn.ReLU(True), nn.MaxPool2d((2, 1), (2, 1)),
            nn.Conv2d(oc[2], oc[3], 3, 1, 1, bias=False), nn.BatchNorm2d(oc[3]), nn.ReLU(True),
            nn.Conv2d(oc[3], oc[3], 3, 1, 1, bias=False), nn.BatchNorm2d(oc[3]), nn.ReLU(True),
            nn.MaxPool2d((2, 1), (2, 1)),
            nn.Conv2d(oc[3], oc[3], 2, 1, 0), nn.ReLU(True))

    def forward(self, input):
        return self.ConvNet(input)


class BidirectionalLSTM(nn.Module):
    def __init__(self, input_size, hidden_size, output_size):
        super().__init__()
        self.rnn = nn.LSTM(input_size, hidden_size, bidirectional=True, batch_first=True)
        self.linear = nn.Linear(hidden_size * 2, output_size)

    def forward(self, input):
        self.rnn.flatten_parameters()
        recurrent, _ = self.rnn(input)  # [B, T, 2 * hidden_size]
        return self.linear(recurrent)


class Model(nn.Module):
    def __init__(self, input_channel, output_channel, hidden_size, num_class):
        super().__init__()
        self.FeatureExtraction = VGG_FeatureExtractor(input_channel, output_channel)
        self.FeatureExtraction_output = output_channel
        self.AdaptiveAvgPool = nn.AdaptiveAvgPool2d((None, 1))
        self.SequenceModeling = nn.Sequential(
            BidirectionalLSTM(self.FeatureExtraction_output, hidden_size, hidden_size),
            BidirectionalLSTM(hidden_size, hidden_size, hidden_size))
        self.SequenceModeling_output = hidden_size
        self.Prediction = nn.Linear(self.SequenceModeling_output, num_class)

    def forward(self, input, text=None):
        visual = self.FeatureExtraction(input)
        visual = self.AdaptiveAvgPool(visual.permute(0, 3, 1, 2)).squeeze(3)  # [B, T, C]
        contextual = self.SequenceModeling(visual)
        return self.Prediction(contextual.contiguous())  # [B, T, num_class]
'''


def check_easyocr_compatible(config: ModelConfig) -> None:
    problems = []
    if config.name != EASYOCR_ARCHITECTURE:
        problems.append(f"the model is {config.name}; EasyOCR's custom recogniser here is {EASYOCR_ARCHITECTURE} "
                        "(EasyOCR decodes CTC only and has no TPS or attention decoder)")
    if config.input_channel != 1:
        problems.append(f"it reads {config.input_channel}-channel images; EasyOCR feeds grey (input_channel 1)")
    if problems:
        raise ValueError("cannot export to EasyOCR: " + "; ".join(problems)
                         + ". Use --format reference for the deep-text-recognition-benchmark layout instead.")


def easyocr_yaml(config: ModelConfig) -> dict:
    return {
        "network_params": {"input_channel": config.input_channel, "output_channel": config.output_channel,
                           "hidden_size": config.hidden_size},
        "imgH": config.imgH,
        "lang_list": ["en"],
        "character_list": config.character,
    }


def export_easyocr(model: Model, out_dir: str | Path, name: str) -> list[Path]:
    """Write NAME.pth, NAME.yaml and NAME.py under ``out_dir``; → the paths."""
    config = model.config
    check_easyocr_compatible(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{name}.pth", out / f"{name}.yaml", out / f"{name}.py"]
    atomic_save(to_reference_state_dict(model.state_dict()), paths[0])
    # allow_unicode keeps '€' readable; safe_dump quotes the set so the space and '\\' survive.
    paths[1].write_text(yaml.safe_dump(easyocr_yaml(config), allow_unicode=True, sort_keys=False), encoding="utf-8")
    paths[2].write_text(EASYOCR_MODEL_SOURCE, encoding="utf-8")
    return paths


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--saved_model", required=True, help="checkpoint path or pretrained model name")
    parser.add_argument("--format", choices=["reference", "easyocr"], required=True)
    parser.add_argument("--output", required=True, help="reference: the .pth file; easyocr: a folder")
    parser.add_argument("--name", default=None, help="easyocr: the recogniser's name (default: the model's file stem)")
    add_model_arguments(parser)
    return parser.parse_args(argv)


def main(argv=None) -> list[Path]:
    from test import load_model_for_eval

    opt = parse_args(argv)
    model, config, path = load_model_for_eval(SimpleNamespace(**vars(opt)), "cpu")
    if opt.format == "reference":
        export_reference(opt.output, model)
        written = [Path(opt.output)]
    else:
        written = export_easyocr(model, opt.output, opt.name or path.stem)
    for p in written:
        print(f"wrote {p}")
    return written


if __name__ == "__main__":
    try:
        main()
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}")
