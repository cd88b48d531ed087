"""Cost of beam search against greedy (forward + decode), and the word-list trie's build time.

    flock /tmp/cpu_heavy.lock python -m benchmarks.bench_decoding --device cpu

For each head (CTC: ``english_g2``; Attn: ``--attn_model``, or a freshly initialised
None-VGG-BiLSTM-Attn at the reference's sizes when none is given) it reads one batch of real word
crops (``--data``; rendered words when the folder is missing) and times ``decoding.decode``
greedy, with ``--beam_size``, and with ``--beam_size`` constrained to a ``--lexicon_size``-word
list from the ``english-words`` package (median of ``--repeats`` runs after one warm-up). The
list's trie is timed once cold and once from the per-file cache. Prints one JSON object and a table.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

from checkpoint import load_model
from decoding import DecodeOptions, decode
from lexicon import load_lexicon
from model import ModelConfig, build_model
from real_datasets import real_data_dir
from runtime import run_cli

GOALS = {"CTC": 3.0, "Attn": 4.0}  # the goal: beam 5 within this factor of greedy's forward + decode


def load(saved_model: str | None, prediction: str, device):
    """→ (model, config): a checkpoint or registered name, or (Attn without one) a fresh reference-size model."""
    if saved_model is None:
        config = ModelConfig("None", "VGG", "BiLSTM", prediction)
        return build_model(config).to(device).eval(), config
    loaded = load_model(saved_model, None, device)
    return loaded.model, loaded.config


def batch_of_images(config: ModelConfig, data: Path, batch_size: int) -> torch.Tensor:
    """[batch_size, C, H, W]: the first crops of ``data`` (a gt.txt folder), preprocessed as test.py does."""
    from dataset import AlignCollate, DataConfig, hierarchical_dataset

    if not (data / "gt.txt").is_file():
        from tests.helpers import make_gt_folder  # rendered words, no external data

        data = make_gt_folder(Path(tempfile.mkdtemp()) / "words", copies=batch_size // 16 + 1)
    dataset, _ = hierarchical_dataset(str(data), DataConfig.for_model(config, batch_size=batch_size))
    samples = [dataset[i] for i in range(min(batch_size, len(dataset)))]
    images, _ = AlignCollate(imgH=config.imgH, imgW=config.imgW, keep_ratio_with_pad=config.PAD)(samples)
    return images


def time_decode(model, image, config, options: DecodeOptions, repeats: int) -> float:
    """Median seconds of forward + decode for the batch."""
    with torch.inference_mode():
        decode(model, image, config, options)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            decode(model, image, config, options)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_head(prediction: str, saved_model: str | None, opt, device, words: Path) -> dict:
    model, config = load(saved_model, prediction, device)
    image = batch_of_images(config, Path(opt.data), opt.batch_size).to(device)
    greedy = time_decode(model, image, config, DecodeOptions(), opt.repeats)
    beam_options = DecodeOptions("beam", beam_size=opt.beam_size)
    beam = time_decode(model, image, config, beam_options, opt.repeats)
    lexicon = load_lexicon(words, config.character, ignore_case=True)
    with_list = time_decode(model, image, config, dataclasses.replace(beam_options, lexicon=lexicon), opt.repeats)
    return {"head": prediction, "model": saved_model or f"{config.name} (untrained)", "batch": image.size(0),
            "greedy_s": greedy, "beam_s": beam, "ratio": beam / greedy, "goal": GOALS[prediction],
            "beam_lexicon_s": with_list, "lexicon_words": len(lexicon.words)}


def bench_trie(size: int, path: Path) -> dict:
    """Writes ``size`` English words to ``path``, then times the first (building) and a cached load."""
    from english_words import get_english_words_set

    words = random.Random(0).sample(sorted(get_english_words_set(["web2", "gcide"], lower=True)), size)
    path.write_text("\n".join(words) + "\n", encoding="utf-8")
    start = time.perf_counter()
    lexicon = load_lexicon(path, "0123456789abcdefghijklmnopqrstuvwxyz", ignore_case=True)
    cold = time.perf_counter() - start
    start = time.perf_counter()
    load_lexicon(path, "0123456789abcdefghijklmnopqrstuvwxyz", ignore_case=True)
    cached = time.perf_counter() - start
    return {"words": len(words), "kept": len(lexicon.words), "build_s": cold, "cached_s": cached}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(real_data_dir() / "svt_647"),
                        help="a folder with gt.txt whose first --batch_size crops are read")
    parser.add_argument("--ctc_model", default="english_g2")
    parser.add_argument("--attn_model", default=None, help="an Attn checkpoint (default: untrained reference size)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--beam_size", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lexicon_size", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def benchmark(argv=None) -> dict:
    opt = parse_args(argv)
    if opt.threads:
        torch.set_num_threads(opt.threads)
    device = torch.device(opt.device)
    with tempfile.TemporaryDirectory() as tmp:
        words = Path(tmp) / "words.txt"
        trie = bench_trie(opt.lexicon_size, words)
        heads = [bench_head("CTC", opt.ctc_model, opt, device, words),
                 bench_head("Attn", opt.attn_model, opt, device, words)]
    result = {"device": str(device), "threads": torch.get_num_threads(), "heads": heads, "trie": trie}
    print(json.dumps(result, indent=1))
    print(f"\n{'head':5s} {'model':32s} {'batch':>5s} {'greedy s':>9s} {'beam s':>8s} {'ratio':>6s} {'goal':>6s} "
          f"{'beam+list s':>11s}")
    for h in heads:
        print(f"{h['head']:5s} {h['model']:32s} {h['batch']:5d} {h['greedy_s']:9.3f} {h['beam_s']:8.3f} "
              f"{h['ratio']:6.2f} {'<=' + format(h['goal'], '.0f') + 'x':>6s} {h['beam_lexicon_s']:11.3f}")
    print(f"trie: {trie['words']} words ({trie['kept']} kept) built in {trie['build_s']:.3f} s, "
          f"cached load {trie['cached_s'] * 1000:.2f} ms")
    return result


def main(argv: list[str] | None = None) -> dict:
    """bench_decoding.py's entry point: ``benchmark`` with user errors reported as one line (exit 2 or 1)."""
    return run_cli(benchmark, argv)


if __name__ == "__main__":
    main()
