"""Export a model for other tools.

    python export.py --saved_model best_accuracy.pth --format reference --output model.pth
    python export.py --saved_model parseq-bb5792a6.pt --format checkpoint --output parseq.pth
    python export.py --saved_model english_g2 --format easyocr --output easyocr_model/ [--name my_recognizer]
    python export.py --saved_model english_g2 --format onnx --output english_g2.onnx [--opset 17]
    python export.py --saved_model english_g2 --format onnx --output english_g2_int8.onnx \\
        --quantize int8 --calib_data my_crops/

``reference``: a bare state_dict with the ``module.`` prefix, as the original train.py saves it
(its demo.py / test.py load it with the same stage flags).

``checkpoint``: this toolkit's self-describing checkpoint (configuration and weights in its keys), so that
later loads need no flag and no conversion: the way to keep another project's release (a baudm/parseq
PARSeq state_dict, an OpenOCR SVTR checkpoint) once converted; where it came from is kept in it ("release").

``easyocr``: an EasyOCR custom recogniser (``Reader(..., recog_network=NAME,
user_network_directory=DIR)``): ``DIR/NAME.pth`` (the bare state_dict), ``DIR/NAME.yaml``
(``network_params``, ``imgH``, ``lang_list``, ``character_list``) and ``DIR/NAME.py`` (a
self-contained ``Model(input_channel, output_channel, hidden_size, num_class)``).
EasyOCR decodes CTC only, reads grey images, and its custom-model code here covers the
None-VGG-BiLSTM-CTC layout; other architectures are refused.

``onnx``: one self-contained .onnx file (``image [B, C, imgH, W] → logits``) for any of the 24
models, run by ONNX Runtime (``demo.py`` / ``test.py --saved_model model.onnx``) or anything
that reads ONNX. Batch is dynamic, and width too unless the model has TPS, ViT or SVTR. The attention
decoder runs a fixed batch_max_length + 1 greedy steps; PARSeq its reading (AR with every step run,
or NAR) and refinement. The model's configuration (stages,
sizes, character set, PAD, sensitive) is in the file's metadata. ``--quantize int8``: static
QDQ int8 quantisation with ONNX Runtime (7-bit per-channel weights, which read the same on CPUs with
and without VNNI), calibrated on the images of ``--calib_data``, then read against fp32 on those
images: past ``--max_drop`` points (default 1) nothing is written and the exit status is 1, unless
``--on_drop warn``.
"""
from __future__ import annotations

import argparse
import ast
import inspect
import os
import textwrap
from pathlib import Path

import yaml

import plugins
from checkpoint import atomic_save, export_reference, load_model, save_checkpoint, to_reference_state_dict
from errors import UserError
from model import Model, ModelConfig, add_model_arguments, model_flags
from modules.feature_extraction import VGG_FeatureExtractor
from modules.sequence_modeling import BidirectionalLSTM
from fileio import check_output_file, check_output_folder
from onnx_model import DEFAULT_OPSET, OPSET_HELP, export_onnx
from runtime import UsageError, run_cli

EASYOCR_ARCHITECTURE = "None-VGG-BiLSTM-CTC"
DEFAULT_MAX_DROP = 1.0

# Written to DIR/NAME.py: torch only, the reference's module names, EasyOCR's constructor signature.
# The stage classes are copied from modules/ by inspect, so the export cannot drift from them.
EASYOCR_HEADER = '''"""None-VGG-BiLSTM-CTC recogniser for EasyOCR (exported by str-toolkit export.py; torch only)."""
from __future__ import annotations

import torch
import torch.nn as nn


'''
EASYOCR_MODEL_CLASS = '''class Model(nn.Module):
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


def easyocr_model_source() -> str:
    stages = [torch_only_source(cls) for cls in (VGG_FeatureExtractor, BidirectionalLSTM)]
    return EASYOCR_HEADER + "\n\n\n".join(stages + [EASYOCR_MODEL_CLASS])


def torch_only_source(cls: type) -> str:
    """``cls``'s source as a plain ``nn.Module``: without the registry's decorator, its ``Stage`` bases and the
    facts declared on the class (its class-level assignments and classmethods), which EasyOCR does not need."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    node = tree.body[0]
    node.decorator_list = []
    node.bases = [b for b in node.bases if ast.unparse(b).startswith("nn.")]
    node.body = [item for item in node.body if not isinstance(item, (ast.Assign, ast.AnnAssign)) and not (
        isinstance(item, ast.FunctionDef) and any(ast.unparse(d) in ("classmethod", "staticmethod")
                                                  for d in item.decorator_list))]
    return ast.unparse(tree) + "\n"


def check_easyocr_compatible(config: ModelConfig) -> None:
    problems = []
    if config.name != EASYOCR_ARCHITECTURE:
        problems.append(f"the model is {config.name}; EasyOCR's custom recogniser here is {EASYOCR_ARCHITECTURE} "
                        "(EasyOCR decodes CTC only and has no TPS or attention decoder)")
    if config.input_channel != 1:
        problems.append(f"it reads {config.input_channel}-channel images; EasyOCR feeds grey (input_channel 1)")
    if problems:
        raise UserError("cannot export to EasyOCR: " + "; ".join(problems)
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
    paths[2].write_text(easyocr_model_source(), encoding="utf-8")
    return paths


def export_onnx_file(model: Model, opt) -> Path:
    output = Path(opt.output)
    if not opt.quantize:
        return export_onnx(model, output, opset=opt.opset)
    from onnx_model import compare_int8, quantize_int8

    fp32 = output.with_name(output.stem + ".fp32.tmp.onnx")
    int8 = output.with_name(output.stem + ".int8.tmp.onnx")
    try:
        export_onnx(model, fp32, opset=opt.opset)
        quantize_int8(fp32, int8, opt.calib_data, opt.calib_size)
        check_int8_drop(compare_int8(fp32, int8, opt.calib_data, opt.calib_size), opt)
        os.replace(int8, output)  # only a file that passed the check (or --on_drop warn) reaches --output
        return output
    finally:
        fp32.unlink(missing_ok=True)
        int8.unlink(missing_ok=True)


class Int8DropError(UserError):
    """The int8 file reads worse than fp32 by more than --max_drop: exit status 1, no file written."""


def check_int8_drop(check, opt) -> None:
    """Refuse (no file written) or warn when int8 loses more than ``--max_drop`` points against fp32."""
    print(f"int8 check: {check.describe()}")
    max_drop = DEFAULT_MAX_DROP if opt.max_drop is None else opt.max_drop
    if check.drop <= max_drop:
        return
    problem = (f"the int8 model loses {check.drop:.2f} points against fp32, more than --max_drop {max_drop:g} "
               f"({check.describe()})")
    if opt.on_drop == "warn":
        print(f"warning: {problem}; {opt.output} is written anyway (--on_drop warn)")
        return
    raise Int8DropError(f"{problem}; {opt.output} was not written. Calibrate on more images like those the model "
                        "will read (--calib_data, --calib_size), use the fp32 export, or keep this file with "
                        "--on_drop warn (or a larger --max_drop)")


def check_outputs(opt, source: str | Path) -> None:
    """Before any work: the output is writable and is not the model being exported (nor its input data)."""
    inputs = [("--saved_model", source)]
    if opt.format != "easyocr":
        check_output_file(opt.output, "--output", inputs)
        return
    check_output_folder(opt.output, "--output")
    name = opt.name or Path(source).stem
    for suffix in (".pth", ".yaml", ".py"):
        check_output_file(Path(opt.output) / f"{name}{suffix}", "--output", inputs)


def parse_args(argv=None):
    plugins.load_from_argv(argv)  # their stages join the choices before the parser is built
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--saved_model", required=True, help="checkpoint path or pretrained model name")
    parser.add_argument("--format", choices=["reference", "checkpoint", "easyocr", "onnx"], required=True)
    parser.add_argument("--output", required=True, help="reference, checkpoint: the .pth file; easyocr: a folder; onnx: the .onnx file")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="onnx: " + OPSET_HELP)
    parser.add_argument("--quantize", choices=["int8"], default=None,
                        help="onnx: static int8 (QDQ) quantisation with ONNX Runtime; needs --calib_data")
    parser.add_argument("--calib_data", default=None,
                        help="onnx --quantize: a folder of word images like those the model will read (a few hundred)")
    parser.add_argument("--calib_size", type=int, default=256, help="onnx --quantize: images used for calibration")
    parser.add_argument("--max_drop", type=float, default=None, metavar="POINTS",
                        help="onnx --quantize: the most accuracy points int8 may lose against fp32 on the calibration "
                             f"images (default {DEFAULT_MAX_DROP}; measured with their gt.txt labels when the "
                             "folder or its parent has one, else estimated from fp32's confident readings)")
    parser.add_argument("--on_drop", choices=["refuse", "warn"], default="refuse",
                        help="onnx --quantize: past --max_drop, refuse (exit 1, no file written; default) or "
                             "write the file with a warning")
    parser.add_argument("--name", default=None, help="easyocr: the recogniser's name (default: the model's file stem)")
    add_model_arguments(parser)
    return parser.parse_args(argv)


def export(argv=None) -> list[Path]:
    opt = parse_args(argv)
    if opt.format != "onnx" and (opt.quantize or opt.calib_data):
        raise UsageError("--quantize and --calib_data apply to --format onnx only")
    if opt.quantize and not opt.calib_data:
        raise UsageError("--quantize int8 needs --calib_data DIR: a folder of word images to calibrate on")
    if opt.max_drop is not None and not opt.quantize:
        raise UsageError("--max_drop applies to --quantize int8 only")
    if opt.max_drop is not None and not opt.max_drop >= 0:  # NaN too
        raise UsageError(f"--max_drop is a number of accuracy points, 0 or more; got {opt.max_drop:g}")
    if opt.calib_size < 1:
        raise UsageError(f"--calib_size must be at least 1, got {opt.calib_size}")
    if opt.calib_data and not Path(opt.calib_data).is_dir():
        raise FileNotFoundError(f"--calib_data {opt.calib_data} is not a folder; give a folder of word images")
    check_outputs(opt, opt.saved_model)
    loaded = load_model(opt.saved_model, model_flags(opt), "cpu", allow_onnx=False)
    check_outputs(opt, loaded.source)  # a registered name is a file in the cache
    if opt.format == "reference":
        export_reference(opt.output, loaded.model)
        written = [Path(opt.output)]
    elif opt.format == "checkpoint":
        release = loaded.checkpoint.get("release")
        save_checkpoint(opt.output, loaded.model, **({"release": release} if release else {}))
        written = [Path(opt.output)]
    elif opt.format == "onnx":
        written = [export_onnx_file(loaded.model, opt)]
    else:
        written = export_easyocr(loaded.model, opt.output, opt.name or loaded.source.stem)
    for p in written:
        print(f"wrote {p}")
    return written


def main(argv=None) -> list[Path]:
    """export.py's entry point: ``export`` with user errors reported as one line (exit 2 or 1)."""
    return run_cli(export, argv)


if __name__ == "__main__":
    main()
