"""Accuracy of every decoder on one labelled set, the model run once per batch.

    flock /tmp/cpu_heavy.lock python -m benchmarks.eval_decoding --eval_data ../shared/data/real/svt_647 \\
        --saved_model english_g2 --case_insensitive --full_lexicon --english_lexicon 50000

Rows: greedy; beam (``--beam_size``); beam constrained to each word list; greedy snapped to each
word list. Word lists: ``--lexicon FILE`` (any number), ``--full_lexicon`` (every label of the
set: the benchmarks' "full lexicon" protocol) and ``--english_lexicon N`` (the set's labels plus
words of the ``english-words`` package up to N words). The last two are written to a temporary
folder, never into the repository. Scoring is test.py's (``evaluation.score_batch``); each row
equals the test.py command printed beside it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import random
import tempfile
import time
from pathlib import Path

import torch


from checkpoint import load_model
from dataset import DataConfig, hierarchical_dataset
from decoding import DecodeOptions, decode_attention, decode_logits, forward_logits
from evaluation import make_eval_loader, score_batch
from lexicon import load_lexicon
from modules.registry import head
from runtime import run_cli


@dataclasses.dataclass
class Row:
    name: str
    options: DecodeOptions
    flags: str  # the test.py flags giving the same figure
    correct: int = 0
    seconds: float = 0.0  # decoding time (the shared forward not included)


def labels_of(dataset) -> list[str]:
    return [dataset[i][1] for i in range(len(dataset))]


def write_lists(labels: list[str], folder: Path, full: bool, english: int | None) -> dict[str, Path]:
    lists = {}
    if full:
        lists["full"] = folder / "full.txt"
        lists["full"].write_text("\n".join(dict.fromkeys(labels)) + "\n", encoding="utf-8")
    if english:
        from english_words import get_english_words_set

        pool = sorted(get_english_words_set(["web2", "gcide"], lower=True, alpha=True))
        own = list(dict.fromkeys(labels))
        folded = {w.lower() for w in own}
        pool = [w for w in pool if w not in folded]
        words = own + random.Random(0).sample(pool, english - len(own))
        lists[f"en{english // 1000}k"] = folder / f"english_{english}.txt"
        lists[f"en{english // 1000}k"].write_text("\n".join(words) + "\n", encoding="utf-8")
    return lists


def make_rows(opt, config, lists: dict[str, Path], ignore_case: bool) -> list[Row]:
    beam = DecodeOptions("beam", beam_size=opt.beam_size)
    rows = [Row("greedy", DecodeOptions(), ""), Row(f"beam {opt.beam_size}", beam, f"--decoder beam --beam_size {opt.beam_size}")]
    for name, path in lists.items():
        lexicon = load_lexicon(path, config.character, ignore_case)
        print(f"{name}: {path} ({len(lexicon.words)} words; {lexicon.describe_dropped() or 'none dropped'})")
        rows.append(Row(f"beam {opt.beam_size} + {name} list", dataclasses.replace(beam, lexicon=lexicon),
                        f"--decoder beam --beam_size {opt.beam_size} --lexicon {path}"))
        rows.append(Row(f"greedy, snap to {name} list", DecodeOptions(lexicon=lexicon, lexicon_mode="snap"),
                        f"--lexicon {path} --lexicon_mode snap"))
    return rows


def run_rows(rows: list[Row], model, config, loader, case_insensitive: bool, device) -> int:
    n, step_by_step = 0, head(config.Prediction).beam == "decoder"  # the attention beam runs the decoder itself
    with torch.inference_mode():
        for images, labels in loader:
            image = images.to(device)
            logits = forward_logits(model, image, config)
            contextual = model.encode(image) if step_by_step else None
            n += len(labels)
            for row in rows:
                start = time.perf_counter()
                if row.options.decoder == "beam" and step_by_step:
                    results = decode_attention(model.Prediction, contextual, config, row.options)
                else:
                    results = decode_logits(logits, config, row.options)
                row.seconds += time.perf_counter() - start
                row.correct += score_batch(labels, [r.text for r in results], case_insensitive)[0]
    return n


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval_data", required=True)
    parser.add_argument("--saved_model", required=True)
    parser.add_argument("--case_insensitive", action="store_true")
    parser.add_argument("--beam_size", type=int, default=5)
    parser.add_argument("--full_lexicon", action="store_true", help="a list of every label of the set")
    parser.add_argument("--english_lexicon", type=int, default=None,
                        help="a list of N words: the set's labels plus english-words")
    parser.add_argument("--lists_dir", default=None, help="where the generated lists go (default: a temp folder)")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    return parser.parse_args(argv)


def evaluate(argv=None) -> dict:
    opt = parse_args(argv)
    device = torch.device(opt.device)
    loaded = load_model(opt.saved_model, None, device)
    model, config = loaded.model, loaded.config
    data = DataConfig.for_model(config, batch_size=opt.batch_size)
    dataset, _ = hierarchical_dataset(opt.eval_data, data)
    folder = Path(opt.lists_dir or tempfile.mkdtemp(prefix="lexicons_"))
    folder.mkdir(parents=True, exist_ok=True)
    lists = write_lists(labels_of(dataset), folder, opt.full_lexicon, opt.english_lexicon)
    ignore_case = not config.sensitive or opt.case_insensitive
    rows = make_rows(opt, config, lists, ignore_case)
    n = run_rows(rows, model, config, make_eval_loader(dataset, data), opt.case_insensitive, device)
    base = f"test.py --eval_data {opt.eval_data} --saved_model {opt.saved_model}" + \
        (" --case_insensitive" if opt.case_insensitive else "")
    print(f"\n{opt.eval_data}: {n} images, {config.name}")
    for row in rows:
        print(f"{row.name:34s} {row.correct / n * 100:7.3f}  decode {row.seconds:6.2f} s   [{base} {row.flags}]")
    result = {row.name: row.correct / n * 100 for row in rows}
    print(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> dict:
    """eval_decoding.py's entry point: ``evaluate`` with user errors reported as one line (exit 2 or 1)."""
    return run_cli(evaluate, argv)


if __name__ == "__main__":
    main()
