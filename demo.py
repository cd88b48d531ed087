"""Read the words in a folder of cropped word images (or in image files).

    python demo.py --image_folder demo_image/ --saved_model saved_models/<exp>/best_accuracy.pth

Prints the reference's table and appends it to ./log_demo_result.txt. ``--decoder beam``,
``--lexicon words.txt``, ``--topk 3`` (the three best readings with scores) and ``--char_conf``
(each character's confidence) add lines under each row. ``--runtime onnx`` reads with ONNX Runtime
(the checkpoint is exported once to a cache and reused); the default, ``--runtime auto``, reads with
whichever of PyTorch and ONNX Runtime (both fp32) this machine measured faster for the model.

``--explain DIR`` writes what each stage did to every image (DIR/index.html, one panel per image,
DIR/spans.json: docs/explain.md); ``--char_boxes`` prints each character's horizontal span in the
image's pixels.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch
from PIL import Image

import plugins
from checkpoint import RUNTIME_FLAGS, RUNTIME_HELP, load_model_for_runtime
from dataset import DataConfig, RawDataset, list_images
from decoding import Decoded, add_decoding_arguments, check_decoding_flags, decode, options_from_args
from evaluation import make_eval_loader
from explain import Explained, explain_batch, write_explanations
from fileio import check_output_file, check_output_folder
from model import add_model_arguments, model_flags
from runtime import (UsageError, add_runtime_arguments, check_amp, check_runtime_arguments, get_logger, reading_workers,
                     resolve_device, run_cli)
from trimming import by_aspect_ratio, trimmed_reader
from utils import printable

DEFAULT_MODEL = "english_g2"


def parse_args(argv=None):
    plugins.load_from_argv(argv)  # their stages join the choices before the parser is built
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image_folder", nargs="+", required=True,
                        help="folder(s) walked recursively for images, and/or image files")
    parser.add_argument("--saved_model", default=DEFAULT_MODEL,
                        help=f"checkpoint path or pretrained model name (default {DEFAULT_MODEL})")
    parser.add_argument("--runtime", choices=RUNTIME_FLAGS, default="auto", help=RUNTIME_HELP)
    parser.add_argument("--log_file", default="log_demo_result.txt", help="where the table is appended")
    parser.add_argument("--explain", default=None, metavar="DIR",
                        help="write a panel per image of what each stage did (TPS's rectified image, the attention "
                             "per character, CTC's frames), DIR/spans.json and DIR/index.html (docs/explain.md)")
    parser.add_argument("--char_boxes", action="store_true",
                        help="print each character's horizontal span in the image's pixels (x0-x1)")
    add_runtime_arguments(parser, reading=True)
    add_decoding_arguments(parser, readout=True)
    add_model_arguments(parser)
    return parser.parse_args(argv)


def read_images(opt) -> list[tuple[str, str, float]]:
    """→ [(image path, prediction, confidence)] in natural path order; ``opt`` is ``parse_args``' namespace."""
    return [(path, d.text, d.confidence) for path, d in read_decoded(opt)]


def read_decoded(opt, notes: list[str] | None = None) -> list[tuple[str, Decoded]]:
    """→ [(image path, ``decoding.Decoded``)]: text, confidence, per-character confidences, N best. ``notes``
    receives the line saying which runtime ``--runtime auto`` chose, for the log file."""
    reader = open_reader(opt, notes)
    results = []
    with torch.inference_mode():
        for image_tensors, paths in reader.loader:
            results += zip(paths, decode(reader.model, image_tensors.to(reader.device), reader.config,
                                         reader.options, reader.amp_dtype).results)
    return sorted(results, key=lambda result: reader.position[result[0]])  # the folder's order


def read_explained(opt, notes: list[str] | None = None) -> list[Explained]:
    """→ one ``explain.Explained`` per image: the reading (as ``read_decoded``'s) and what the stages show;
    the spans are mapped to the image file's pixels."""
    reader = open_reader(opt, notes)
    results = []
    for image_tensors, paths in reader.loader:
        batch = explain_batch(reader.model, image_tensors.to(reader.device), reader.config, reader.options,
                              reader.amp_dtype, names=list(paths))
        for ex in batch:
            with Image.open(ex.name) as image:
                ex.original_size = image.size
        results += batch
    return results


@dataclass(frozen=True)
class Reader:
    model: torch.nn.Module
    config: object  # model.ModelConfig
    options: object  # decoding.DecodeOptions
    loader: torch.utils.data.DataLoader
    device: torch.device
    amp_dtype: torch.dtype | None
    position: dict  # path → its place in the folder's order (the loader may read in another)


def open_reader(opt, notes: list[str] | None = None) -> Reader:
    """The model, decoding options and image loader of demo.py's flags (``--runtime auto``: the runtime this
    machine measured faster; ``--workers auto``: runtime.reading_workers; their lines appended to ``notes``)."""
    check_decoding_flags(opt, opt.topk)  # a bad flag fails before the model loads
    device = resolve_device(opt.device)
    dtype = check_amp(opt.amp, device)
    log = get_logger("demo.load").info
    amp = "off" if opt.amp == "auto" else opt.amp
    loaded = load_model_for_runtime(opt.saved_model, model_flags(opt), device,
                                    "torch" if opt.runtime == "auto" else opt.runtime, log=log, amp=amp)
    if opt.runtime == "auto":
        from measured import Decision, choose_runtime

        if opt.explain or opt.char_boxes:
            decision = Decision("--runtime auto", "torch", reason="--explain and --char_boxes watch the PyTorch "
                                                                  "model's stages")
        else:
            decision = choose_runtime(opt.saved_model, model_flags(opt), loaded.model, device, opt.amp,
                                      len(list_images(opt.image_folder)), opt.batch_size, log)
        log(decision.line())  # --runtime {choice} repeats it
        if notes is not None:
            notes.append(decision.line())
        if decision.choice == "onnx" and not hasattr(loaded.model, "session"):
            loaded = load_model_for_runtime(opt.saved_model, model_flags(opt), device, "onnx", log=log)
    config = loaded.config
    options = options_from_args(opt, config, log, topk=opt.topk)
    workers, why = reading_workers(opt.workers, device)
    if opt.workers == "auto":
        log(why)
        if notes is not None:
            notes.append(why)
    data = DataConfig.for_model(config, dynamic_width=opt.dynamic_width, workers=workers,
                                batch_size=opt.batch_size)
    dataset = RawDataset(opt.image_folder, data)
    position = {path: i for i, path in reversed(list(enumerate(dataset.image_path_list)))}
    model = trimmed_reader(loaded.model, config)
    if model is not loaded.model:  # batches of alike widths trim alike (trimming.py); the table keeps the order
        log("reading without recomputing each batch's repeated padding (exact: trimming.py)")
        dataset.image_path_list = by_aspect_ratio(dataset.image_path_list)
    return Reader(model, config, options, make_eval_loader(dataset, data), device, dtype, position)


def format_table(results, details: list[list[str]] | None = None) -> str:
    """The reference's table of (path, prediction, confidence); ``details[i]`` lines follow row i."""
    dashed = "-" * 80
    lines = [dashed, f'{"image_path":25s}\t{"predicted_labels":25s}\tconfidence score', dashed]
    for i, (path, pred, confidence) in enumerate(results):
        # printable: a file name that is not UTF-8 must not stop the table from being printed and logged.
        lines.append(f"{printable(path):25s}\t{pred:25s}\t{confidence:0.4f}")
        lines += details[i] if details else []
    return "\n".join(lines)


def detail_lines(decoded: Decoded, topk: int, char_conf: bool, explained: Explained | None = None) -> list[str]:
    """Indented lines under a row: per-character confidences, the K best readings with scores, and with
    ``explained`` (``--char_boxes``) each character's span in the image's pixels."""
    lines = []
    if decoded.snapped_from is not None:
        lines.append(f"    snapped from {decoded.snapped_from!r}")
    if char_conf:
        lines.append("    chars: " + " ".join(f"{c}:{p:0.3f}" for c, p in zip(decoded.text, decoded.char_confidences)))
    if topk > 1:
        lines += [f"    {rank}. {h.text!r} score {h.score:0.4f} log_prob {h.log_prob:0.4f}"
                  for rank, h in enumerate(decoded.nbest[:topk], 1)]
    if explained is not None:
        spans = explained.span_records()
        of = f" (of the greedy reading {spans['chars_of']!r})" if "chars_of" in spans else ""
        lines.append("    boxes: " + " ".join(f"{c['char']}:{c['x0']:g}-{c['x1']:g}" for c in spans["chars"]) + of)
    return lines


def check_args(opt) -> None:
    """Refuse unusable flags (UsageError, exit 2) before a model or image is read; sizes: ModelConfig."""
    check_runtime_arguments(opt)
    check_decoding_flags(opt, opt.topk)
    check_output_file(opt.log_file, "--log_file")  # the table is appended at the end: fail before the work
    if (opt.explain or opt.char_boxes) and opt.runtime == "onnx":
        raise UsageError("--explain and --char_boxes watch the PyTorch model's stages: use --runtime torch")
    if opt.explain:
        check_output_folder(opt.explain, "--explain")


def read_folder(argv=None):
    opt = parse_args(argv)
    check_args(opt)
    notes: list[str] = []
    explained = read_explained(opt, notes) if opt.explain or opt.char_boxes else None
    decoded = [(ex.name, ex.decoded) for ex in explained] if explained else read_decoded(opt, notes)
    results = [(path, d.text, d.confidence) for path, d in decoded]
    details = [detail_lines(d, opt.topk, opt.char_conf, explained[i] if opt.char_boxes else None)
               for i, (_, d) in enumerate(decoded)]
    if opt.explain:
        page = write_explanations(explained, opt.explain, f"demo.py: {opt.saved_model}", topk=opt.topk)
        get_logger("demo").info(f"wrote {len(explained)} panels and {page}")
    table = format_table(results, details)
    print(table)
    with open(opt.log_file, "a", encoding="utf-8", errors="replace") as log:
        log.write("".join(note + "\n" for note in notes) + table + "\n")
    return results


def main(argv=None):
    """demo.py's entry point: ``read_folder`` with user errors reported as one line (exit 2 or 1)."""
    return run_cli(read_folder, argv)


if __name__ == "__main__":
    main()
