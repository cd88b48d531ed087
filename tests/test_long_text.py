"""Long text: a CTC model trained on 26-40-character words reads held-out 30+-character words.

CTC emits one symbol per feature column and the VGG extractor keeps imgW / 4 - 1 columns, so
imgW 100 (24 columns) cannot spell a 26-character word at all, however long it trains. At
imgW 256 (63 columns, 6.4 px per character at 40) the same model reads them: a doubled letter
needs a blank column between its two copies, and at 4.8 px per character (imgW 192) a trial
run read only 28-30 % of the held-out words, most errors doubled letters read once (README).
Words are random letters rendered with Pillow's built-in font, so no system font is needed;
the training words are many and fresh because 1,000 of them were memorised (train loss 0.002,
held-out accuracy flat from iteration 1,000).
"""
from __future__ import annotations

import io
import random
import re
import string

import torch

from lmdb_store import LmdbWriter
from model import ModelConfig, build_model
from tests.helpers import render_word, run_main, run_script

CHARACTER = string.ascii_lowercase
# The recipe's model (train.py's flags, and the ModelConfig whose output columns the test counts)
MODEL = {"Transformation": "None", "FeatureExtraction": "VGG", "SequenceModeling": "BiLSTM", "Prediction": "CTC",
         "imgH": 32, "output_channel": 64, "hidden_size": 64, "batch_max_length": 40, "character": CHARACTER}


def random_words(count: int, min_len: int, max_len: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(CHARACTER) for _ in range(rng.randint(min_len, max_len))) for _ in range(count)]


def write_lmdb(path, words) -> None:
    with LmdbWriter(path) as writer:
        for word in words:
            buffer = io.BytesIO()
            render_word(word).save(buffer, format="PNG")
            writer.add(buffer.getvalue(), word)


def train_and_test(root, imgW: int, num_iter: int = 300) -> float:
    exp = root / f"exp_w{imgW}"
    cwd = root / f"cwd_w{imgW}"  # each run its own result/ folder
    cwd.mkdir()
    model = [arg for name, value in {**MODEL, "imgW": imgW}.items() for arg in (f"--{name}", str(value))]
    run_script("train.py", "--train_data", root / "train", "--valid_data", root / "valid", "--select_data", "/",
               "--batch_ratio", "1", *model, "--batch_size", "32", "--num_iter", str(num_iter), "--valInterval", str(num_iter),
               "--adam", "--lr", "5e-3", "--schedule", "onecycle", "--workers", "0", "--device", "cpu",
               "--manualSeed", "1", "--exp_name", exp, cwd=cwd)
    assert "augment: none" in (exp / "opt.txt").read_text()  # the run records its (absent) augmentation
    proc = run_main("test.py", "--eval_data", root / "test", "--saved_model", exp / "best_accuracy.pth",
                    "--workers", "0", "--device", "cpu", "--batch_size", "64", cwd=cwd)
    return float(re.search(r"^accuracy: ([0-9.]+)", proc.stdout, re.M).group(1))


def ctc_columns(imgW: int) -> int:
    """How many symbols the CTC model of ``train_and_test`` can emit at most: its feature columns."""
    config = ModelConfig(**MODEL, imgW=imgW)
    with torch.no_grad():
        return build_model(config).eval()(torch.zeros(1, 1, MODEL["imgH"], imgW)).size(1)


def test_ctc_reads_words_longer_than_25_with_a_wider_input(tmp_path):
    write_lmdb(tmp_path / "train" / "long", random_words(4000, 26, 40, seed=1))
    write_lmdb(tmp_path / "valid" / "long", random_words(64, 26, 40, seed=2))
    held_out = random_words(100, 30, 40, seed=3)
    write_lmdb(tmp_path / "test" / "long", held_out)
    assert min(map(len, held_out)) >= 30
    # At imgW 100 the recipe cannot read them however long it trains: 24 columns spell at most 24
    # characters (a trained run read 0.0 %); at imgW 256 it has 63 columns and learns to.
    assert ctc_columns(100) == 24 < min(map(len, held_out))
    assert ctc_columns(256) == 63
    wide = train_and_test(tmp_path, 256)
    assert wide >= 40.0, f"imgW 256 read {wide}% of the held-out 30-40-character words"
