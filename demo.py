"""Read the words in a folder of cropped word images (or in image files).

    python demo.py --image_folder demo_image/ --saved_model saved_models/<exp>/best_accuracy.pth

Prints the reference's table and appends it to ./log_demo_result.txt.
"""
from __future__ import annotations

import argparse

import torch

from checkpoint import load_model
from dataset import RawDataset, data_options
from evaluation import make_eval_loader, predict
from model import add_model_arguments
from utils import add_runtime_arguments, amp_dtype, get_logger, make_converter, resolve_device, run_cli

DEFAULT_MODEL = "english_g2"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image_folder", nargs="+", required=True,
                        help="folder(s) walked recursively for images, and/or image files")
    parser.add_argument("--saved_model", default=DEFAULT_MODEL,
                        help=f"checkpoint path or pretrained model name (default {DEFAULT_MODEL})")
    parser.add_argument("--log_file", default="log_demo_result.txt", help="where the table is appended")
    add_runtime_arguments(parser)
    add_model_arguments(parser)
    return parser.parse_args(argv)


def read_images(opt) -> list[tuple[str, str, float]]:
    """→ [(image path, prediction, confidence)] in natural path order."""
    device = resolve_device(getattr(opt, "device", "auto"))
    loaded = load_model(opt.saved_model, opt, device, log=get_logger("demo.load").info)
    config = loaded.config
    converter = make_converter(config.Prediction, config.character)
    data_opt = data_options(config, opt)
    loader = make_eval_loader(RawDataset(opt.image_folder, data_opt), data_opt)
    dtype = amp_dtype(getattr(opt, "amp", "off"))
    results = []
    with torch.inference_mode():
        for image_tensors, paths in loader:
            _, preds, confidences = predict(loaded.model, image_tensors.to(device), converter, config, dtype)
            results += list(zip(paths, preds, confidences))
    return results


def format_table(results) -> str:
    dashed = "-" * 80
    lines = [dashed, f'{"image_path":25s}\t{"predicted_labels":25s}\tconfidence score', dashed]
    lines += [f"{path:25s}\t{pred:25s}\t{confidence:0.4f}" for path, pred, confidence in results]
    return "\n".join(lines)


def main(argv=None):
    return run_cli(read_folder, argv)


def read_folder(argv=None):
    opt = parse_args(argv)
    results = read_images(opt)
    table = format_table(results)
    print(table)
    with open(opt.log_file, "a", encoding="utf-8") as log:
        log.write(table + "\n")
    return results


if __name__ == "__main__":
    main()
