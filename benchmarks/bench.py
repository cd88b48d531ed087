"""Training and inference speed for chosen models, batch sizes, devices and precisions.

    python -m benchmarks.bench --models None-VGG-BiLSTM-CTC,TPS-ResNet-BiLSTM-Attn --batch_sizes 32,192 \\
        --devices cpu,cuda --amp off,bf16,onnx [--json bench.json] [--compare]

Generates its own LMDB of PIL-rendered words in a temporary folder (no external data), then for
every combination measures

- ``train_it_s``: optimizer steps per second through train.py's path (BatchBalancedDataset →
  AlignCollate → compute_loss → backward → step);
- ``infer_model_img_s``: images per second of ``decoding.decode`` (forward + greedy decode) on a batch
  already on the device;
- ``infer_e2e_img_s``: images per second of ``evaluation.validation`` over test.py's data path
  (LMDB → DataLoader → AlignCollate → model → decode → scoring).

``--amp`` names the paths (PyTorch fp32 ``off``, ``bf16``, ``fp16``, and ``onnx``: ONNX Runtime fp32, reading
only). Prints the CPU kind (model, cores, AVX2, AVX-512, VNNI, AVX512-BF16, AMX), one JSON object and a table
with the paths side by side. ``--compare`` also times the reference's Python loops for CTC
decoding and per-sample edit distance against the ones in use, in the same process.
"""
from __future__ import annotations

import argparse
import json
import random
import string
import tempfile
import time
from pathlib import Path

import torch

from errors import UserError
from runtime import run_cli
from tests.helpers import make_word_lmdb  # (rendered words, no external data)

ALPHABET = string.digits + string.ascii_lowercase


# ---------------------------------------------------------------- measurements

def model_config(name: str, output_channel: int = 512, hidden_size: int = 256):
    from model import ModelConfig

    parts = name.split("-")
    if len(parts) != 4:
        raise UserError(f"--models entry {name!r} is not Transformation-FeatureExtraction-SequenceModeling-"
                        "Prediction, e.g. None-VGG-BiLSTM-CTC")
    return ModelConfig(*parts, output_channel=output_channel, hidden_size=hidden_size)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_train(config, root: Path, batch_size: int, device: torch.device, dtype, iters: int, workers: int):
    """→ training iterations per second (after two warm-up steps)."""
    from dataset import BatchBalancedDataset, DataConfig, TrainDataConfig
    from model import build_model, compute_loss
    from utils import make_converter

    loader = DataConfig.for_model(config, workers=workers, batch_size=batch_size, seed=0)
    data = BatchBalancedDataset(TrainDataConfig(loader, str(root), ("train",), (1.0,)), log=lambda *a: None)
    model = build_model(config).to(device).train()
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0)
    converter = make_converter(config.Prediction, config.character)

    def step():
        image, labels = data.get_batch()
        loss = compute_loss(model, image.to(device, non_blocking=True), list(labels), converter, config, dtype)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        step()
    _sync(device)
    return iters / (time.perf_counter() - start)


def bench_infer(config, root: Path, batch_size: int, device: torch.device, dtype, iters: int, workers: int,
                onnx: bool = False):
    """→ (model-only images/s, end-to-end images/s); ``onnx``: the same model exported and run by ONNX Runtime
    (fp32), as demo.py and test.py --runtime onnx run it."""
    from dataset import DataConfig, hierarchical_dataset
    from decoding import decode
    from evaluation import make_eval_loader, validation
    from model import build_model
    from utils import make_converter

    model = build_model(config).to(device).eval()
    if onnx:
        from onnx_model import OnnxModel, export_onnx

        torch.manual_seed(0)
        model = OnnxModel(export_onnx(build_model(config).eval(), root / f"{config.name}.onnx"), device)
    converter = make_converter(config.Prediction, config.character)
    data = DataConfig.for_model(config, workers=workers, batch_size=batch_size)
    dataset, _ = hierarchical_dataset(root / "valid", data)
    loader = make_eval_loader(dataset, data)
    with torch.inference_mode():
        image = next(iter(loader))[0].to(device)
        decode(model, image, config, amp_dtype=dtype)  # warm-up
        _sync(device)
        start = time.perf_counter()
        for _ in range(iters):
            decode(model, image, config, amp_dtype=dtype)
        _sync(device)
        model_rate = iters * image.size(0) / (time.perf_counter() - start)
        validation(model, loader, converter, config, device, amp_dtype=dtype)  # warm-up (workers, caches)
        start = time.perf_counter()
        result = validation(model, loader, converter, config, device, amp_dtype=dtype)
        e2e_rate = result.n_samples / (time.perf_counter() - start)
    return model_rate, e2e_rate


# ---------------------------------------------------------------- old vs new helpers

def reference_ctc_decode(converter, text_index: torch.Tensor, length) -> list[str]:
    """The reference's CTCLabelConverter.decode: a Python loop over every frame."""
    texts = []
    for index, l in enumerate(length):
        t = text_index[index, :]
        char_list = []
        for i in range(l):
            if t[i] != 0 and (not (i > 0 and t[i - 1] == t[i])):
                char_list.append(converter.character[t[i]])
        texts.append("".join(char_list))
    return texts


def reference_ctc_encode(converter, text: list[str], batch_max_length: int = 25) -> torch.Tensor:
    """The reference's CTCLabelConverter.encode: one small tensor per label."""
    batch_text = torch.zeros(len(text), batch_max_length, dtype=torch.long)
    for i, t in enumerate(text):
        batch_text[i, :len(t)] = torch.tensor([converter.dict[char] for char in t], dtype=torch.long)
    return batch_text


def reference_attn_cut(converter, preds_index: torch.Tensor, max_probs: torch.Tensor):
    """The previous predict() Attn tail: per-sample cut at [s] and a per-sample product."""
    from modules.prediction import EOS_INDEX

    strings, confidences = [], []
    for row, pred_max_prob in zip(preds_index.tolist(), max_probs):
        steps = row.index(EOS_INDEX) if EOS_INDEX in row else len(row)
        strings.append("".join(converter.character[i] for i in row[:steps]))
        confidences.append(float(pred_max_prob[:max(steps, 1)].prod()))
    return strings, confidences


def _texts_and_confidences(decoded) -> tuple[list[str], list[float]]:
    return decoded.texts, decoded.confidences


class _Logits(torch.nn.Module):
    """A stand-in model returning fixed logits, so the greedy decoding of ``decoding.decode`` is timed alone."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, image, text, is_train=False):
        return self.logits


def compare_helpers(batch_size: int, repeats: int = 20) -> dict:
    """Old vs new label encoding, CTC decoding, attention cut and edit distance on the same input."""
    from nltk.metrics.distance import edit_distance

    from decoding import decode
    from model import ModelConfig
    from utils import AttnLabelConverter, CTCLabelConverter, edit_distance as fast_edit_distance

    ctc, attn = CTCLabelConverter(ALPHABET), AttnLabelConverter(ALPHABET)
    generator = torch.Generator().manual_seed(0)
    index = torch.randint(0, len(ALPHABET) + 1, (batch_size, 26), generator=generator)
    index[index % 3 == 0] = 0  # blanks and repeats as in real output
    lengths = [26] * batch_size
    rng = random.Random(0)
    words = ["".join(rng.choices(ALPHABET, k=rng.randint(1, 12))) for _ in range(2 * batch_size)]
    pairs = list(zip(words[:batch_size], words[batch_size:]))
    logits = torch.randn(batch_size, 26, len(ALPHABET) + 2, generator=generator)
    logits[::3, 5:, 1] += 20  # a third of the rows end with [s] at step 5
    attn_config = ModelConfig("None", "VGG", "None", "Attn")
    image = torch.zeros(batch_size, 1, 32, 100)
    cases = {
        "ctc_encode": (lambda: reference_ctc_encode(ctc, words).tolist(), lambda: ctc.encode(words)[0].tolist()),
        "ctc_decode": (lambda: reference_ctc_decode(ctc, index, lengths), lambda: ctc.decode(index, lengths)),
        "attn_predict_tail": (lambda: reference_attn_cut(attn, *reversed(logits.float().softmax(2).max(dim=2))),
                              lambda: _texts_and_confidences(decode(_Logits(logits), image, attn_config))),
        "edit_distance": (lambda: [edit_distance(a, b) for a, b in pairs],
                          lambda: [fast_edit_distance(a, b) for a, b in pairs]),
    }
    out = {}
    for name, (old, new) in cases.items():
        if tuple(old()) != tuple(new()):
            raise AssertionError(f"{name}: the new implementation disagrees with the old one")
        times = {}
        for label, fn in (("old", old), ("new", new)):
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            times[label] = (time.perf_counter() - start) / repeats / batch_size * 1e6  # µs per sample
        out[name] = {"old_us_per_sample": round(times["old"], 2), "new_us_per_sample": round(times["new"], 2),
                     "speedup": round(times["old"] / times["new"], 1)}
    return out


# ---------------------------------------------------------------- CLI

def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="None-VGG-BiLSTM-CTC,TPS-ResNet-BiLSTM-Attn",
                   help="comma-separated Transformation-FeatureExtraction-SequenceModeling-Prediction names")
    p.add_argument("--batch_sizes", default="32", help="comma-separated batch sizes")
    p.add_argument("--devices", default="cpu", help="comma-separated devices (cpu, cuda, cuda:1 ...)")
    p.add_argument("--amp", default="off,bf16,onnx",
                   help="comma-separated paths: off (PyTorch fp32), bf16, fp16 (fp16 needs CUDA), onnx (ONNX Runtime "
                        "fp32, inference only); the table puts them side by side")
    p.add_argument("--output_channel", type=int, default=512, help="model width (reference default 512)")
    p.add_argument("--hidden_size", type=int, default=256, help="LSTM size (reference default 256)")
    p.add_argument("--train_iters", type=int, default=5, help="timed training steps per combination")
    p.add_argument("--infer_iters", type=int, default=5, help="timed model-only forward passes per combination")
    p.add_argument("--num_samples", type=int, default=256, help="samples in the generated validation LMDB")
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave the default)")
    p.add_argument("--compare", action="store_true", help="also time old vs new CTC decode and edit distance")
    p.add_argument("--json", default="", help="also write the JSON to this file")
    return p.parse_args(argv)


def benchmark(argv=None) -> dict:
    opt = parse_args(argv)
    if opt.threads:
        torch.set_num_threads(opt.threads)
    from runtime import cpu_description

    precisions = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16, "onnx": None}
    cpu = cpu_description()
    print(cpu, f"(torch threads {torch.get_num_threads()})", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        batches = [int(b) for b in opt.batch_sizes.split(",")]
        make_word_lmdb(root / "train", max(batches) * 4, seed=0)
        make_word_lmdb(root / "valid", opt.num_samples, seed=1)
        for name in opt.models.split(","):
            config = model_config(name, opt.output_channel, opt.hidden_size)
            for device_name in opt.devices.split(","):
                device = torch.device(device_name)
                for amp in opt.amp.split(","):
                    if amp not in precisions:
                        raise UserError(f"--amp {amp!r} is not one of {', '.join(precisions)}")
                    if amp == "fp16" and device.type != "cuda":
                        continue  # autocast fp16 is a CUDA feature here, as in train.py
                    for batch in batches:
                        torch.manual_seed(0)
                        train_rate = (bench_train(config, root, batch, device, precisions[amp], opt.train_iters,
                                                  opt.workers) if amp != "onnx" else None)  # ONNX Runtime: reading only
                        model_rate, e2e_rate = bench_infer(config, root, batch, device, precisions[amp],
                                                           opt.infer_iters, opt.workers, onnx=amp == "onnx")
                        rows.append({"model": name, "device": device_name, "amp": amp, "batch_size": batch,
                                     "train_it_s": round(train_rate, 3) if train_rate else None,
                                     "train_img_s": round(train_rate * batch, 1) if train_rate else None,
                                     "infer_model_img_s": round(model_rate, 1),
                                     "infer_e2e_img_s": round(e2e_rate, 1)})
                        print(table([rows[-1]], header=len(rows) == 1), flush=True)
    result = {"cpu": cpu, "torch": torch.__version__, "threads": torch.get_num_threads(), "workers": opt.workers,
              "rows": rows}
    if opt.compare:
        result["compare"] = compare_helpers(max(batches))
    text = json.dumps(result, indent=1)
    print(text)
    print(f"\n{cpu}, torch threads {result['threads']}, loader workers {opt.workers}\n")
    print(side_by_side(rows))
    if opt.json:
        Path(opt.json).write_text(text + "\n")
    return result


def table(rows: list[dict], header: bool = True) -> str:
    columns = ["model", "device", "amp", "batch_size", "train_it_s", "train_img_s", "infer_model_img_s",
               "infer_e2e_img_s"]
    widths = [max(len(c), 26 if c == "model" else 0) for c in columns]
    lines = []
    if header:
        lines.append(" | ".join(c.ljust(w) for c, w in zip(columns, widths)))
    lines += [" | ".join(str(r[c]).ljust(w) for c, w in zip(columns, widths)) for r in rows]
    return "\n".join(lines)


PATH_TITLES = {"off": "fp32", "bf16": "bf16", "fp16": "fp16", "onnx": "ONNX Runtime fp32"}
FIGURES = {"train_it_s": "training it/s", "infer_model_img_s": "inference images/s, model only",
           "infer_e2e_img_s": "inference images/s, end to end"}


def side_by_side(rows: list[dict]) -> str:
    """Markdown: one line per model, device and batch size; each figure with the paths side by side (fp32,
    bf16, ONNX Runtime ...), as docs/cpus.md's per-CPU tables show them."""
    paths = list(dict.fromkeys(r["amp"] for r in rows))
    head = ["model", "device", "batch"] + [f"{title} {PATH_TITLES.get(p, p)}" for title in FIGURES.values()
                                           for p in paths]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    groups = dict.fromkeys((r["model"], r["device"], r["batch_size"]) for r in rows)
    for model, device, batch in groups:
        by_path = {r["amp"]: r for r in rows if (r["model"], r["device"], r["batch_size"]) == (model, device, batch)}
        cells = [model, device, str(batch)]
        for key in FIGURES:
            for p in paths:
                value = by_path.get(p, {}).get(key)
                cells.append("-" if value is None else f"{value:g}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """bench.py's entry point: ``benchmark`` with user errors reported as one line (exit 2 or 1)."""
    return run_cli(benchmark, argv)


if __name__ == "__main__":
    main()
