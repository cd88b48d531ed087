"""Read the words in a folder of cropped word images (or in image files).

    python demo.py --image_folder demo_image/ --saved_model saved_models/<exp>/best_accuracy.pth

Prints the reference's table and appends it to ./log_demo_result.txt.
"""
from __future__ import annotations

import argparse

import torch

from model import add_model_arguments
from test import data_options, load_model_for_eval, predict
from utils import make_converter, resolve_device, run_cli

DEFAULT_MODEL = "english_g2"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image_folder", nargs="+", required=True,
                        help="folder(s) walked recursively for images, and/or image files")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--batch_size", type=int, default=192)
    parser.add_argument("--saved_model", default=DEFAULT_MODEL,
                        help=f"checkpoint path or pretrained model name (default {DEFAULT_MODEL})")
    parser.add_argument("--dynamic_width", action="store_true",
                        help="with --PAD: batch width follows the widest image (multiple of imgH, at most imgW)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--log_file", default="log_demo_result.txt", help="where the table is appended")
    add_model_arguments(parser)
    return parser.parse_args(argv)


def read_images(opt) -> list[tuple[str, str, float]]:
    """→ [(image path, prediction, confidence)] in natural path order."""
    from dataset import AlignCollate, RawDataset

    device = resolve_device(opt.device)
    model, config, _ = load_model_for_eval(opt, device)
    converter = make_converter(config.Prediction, config.character)
    data_opt = data_options(config, opt)
    dataset = RawDataset(opt.image_folder, data_opt)
    collate = AlignCollate(imgH=config.imgH, imgW=config.imgW, keep_ratio_with_pad=config.PAD,
                           dynamic_width=opt.dynamic_width)
    loader = torch.utils.data.DataLoader(dataset, batch_size=opt.batch_size, shuffle=False,
                                         num_workers=opt.workers, collate_fn=collate)
    results = []
    with torch.inference_mode():
        for image_tensors, paths in loader:
            _, preds, confidences = predict(model, image_tensors.to(device), converter, config)
            results += list(zip(paths, preds, confidences))
    return results


def format_table(results) -> str:
    dashed = "-" * 80
    lines = [dashed, f'{"image_path":25s}\t{"predicted_labels":25s}\tconfidence score', dashed]
    lines += [f"{path:25s}\t{pred:25s}\t{confidence:0.4f}" for path, pred, confidence in results]
    return "\n".join(lines)


def main(argv=None):
    opt = parse_args(argv)
    results = read_images(opt)
    table = format_table(results)
    print(table)
    with open(opt.log_file, "a", encoding="utf-8") as log:
        log.write(table + "\n")
    return results


if __name__ == "__main__":
    run_cli(main)
