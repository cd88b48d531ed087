"""Small word-image datasets made on the fly (Pillow's built-in font: no system fonts needed)."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import math
import os
import random
import string
import subprocess
import sys
from pathlib import Path

import torch
from PIL import Image, ImageDraw, ImageFont

from dataset import DataConfig, TrainDataConfig
from lmdb_store import LmdbWriter

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["cat", "dog", "sun", "tree", "blue", "red", "home", "star", "fish", "bird", "moon", "road",
         "42", "car", "book", "door"]


def train_config(opt) -> TrainDataConfig:
    """The training-data configuration of a test's namespace of train.py flags (select_data, batch_ratio as lists)."""
    data = DataConfig(character=opt.character, sensitive=opt.sensitive, batch_max_length=opt.batch_max_length,
                      imgH=opt.imgH, imgW=opt.imgW, PAD=opt.PAD, rgb=opt.rgb, data_filtering_off=opt.data_filtering_off,
                      workers=opt.workers, batch_size=opt.batch_size, seed=opt.manualSeed)
    extra = {k: getattr(opt, k) for k in ("augment", "augment_n", "augment_m") if hasattr(opt, k)}
    return TrainDataConfig(data, opt.train_data, tuple(opt.select_data), tuple(float(r) for r in opt.batch_ratio),
                           float(opt.total_data_usage_ratio), **extra)


def render_word(word: str, height: int = 32) -> Image.Image:
    font = ImageFont.load_default(size=24)
    width = int(font.getlength(word)) + 16
    img = Image.new("L", (width, height), 255)
    ImageDraw.Draw(img).text((8, 2), word, fill=0, font=font)
    return img


def make_gt_folder(folder: Path, words=WORDS, copies: int = 4) -> Path:
    """folder/images/*.png and folder/gt.txt (the create_lmdb_dataset input format)."""
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(len(words) * copies):
        word = words[i % len(words)]
        render_word(word).save(folder / "images" / f"{i}.png")
        lines.append(f"images/{i}.png\t{word}")
    (folder / "gt.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


def run_script(script: str, *args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)
    return checked(script, proc, check)


def checked(script: str, proc: subprocess.CompletedProcess, check: bool) -> subprocess.CompletedProcess:
    """``proc``, or (with ``check``) an AssertionError with the end of its output if it failed."""
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def run_main(script: str, *args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    """``script``'s ``main(argv)`` in this process, in ``cwd``, as :func:`run_script` would run it: its
    stdout, stderr and exit status (0, or what its SystemExit carries: 2 for bad usage, 1 for failed work).

    For the many short runs of the scripts (an evaluation, a refused flag) that would otherwise spend
    two seconds each starting an interpreter and importing torch. An exception that the script does
    not turn into an exit status (a bug: the user would see a traceback) propagates and fails the test.
    Runs that train, time out, or need their own process (signals, --help's import path) use run_script."""
    main = _script_module(script).main
    out, err, previous = io.StringIO(), io.StringIO(), Path.cwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main([str(arg) for arg in args])
                code = 0
            except SystemExit as e:  # as the interpreter exits: a number as it is, a message printed, status 1
                if e.code is None or isinstance(e.code, int):
                    code = e.code or 0
                else:
                    print(e.code, file=sys.stderr)
                    code = 1
    finally:
        os.chdir(previous)
    return checked(script, subprocess.CompletedProcess([script, *map(str, args)], code, out.getvalue(),
                                                       err.getvalue()), check)


_SCRIPTS: dict[str, object] = {}


def _script_module(script: str):
    """The script imported once, under a name of its own (``test.py`` would be the standard library's ``test``)."""
    if script not in _SCRIPTS:
        path = ROOT / script
        spec = importlib.util.spec_from_file_location(f"_script_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # a dataclass looks its module up there
        sys.path.insert(0, str(path.parent))  # as python puts it for a script run as a file (scripts/_root)
        try:
            spec.loader.exec_module(module)
        finally:
            sys.path.remove(str(path.parent))
        _SCRIPTS[script] = module
    return _SCRIPTS[script]


def render_word_png(word: str, font: ImageFont.FreeTypeFont, rng: random.Random) -> bytes:
    """A dark word on a light background, PNG-encoded; width follows the text."""
    left, top, right, bottom = font.getbbox(word)
    pad = rng.randint(2, 6)
    img = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), rng.randint(200, 255))
    ImageDraw.Draw(img).text((pad - left, pad - top), word, fill=rng.randint(0, 60), font=font)
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    return buffer.getvalue()


def make_word_lmdb(path: str | Path, num_samples: int, seed: int = 0, min_len: int = 3, max_len: int = 10,
                   font_size: int = 24) -> Path:
    """An LMDB of ``num_samples`` random lower-case alphanumeric words rendered with PIL's built-in font."""
    rng = random.Random(seed)
    font = ImageFont.load_default(size=font_size)
    with LmdbWriter(path) as writer:
        for _ in range(num_samples):
            word = "".join(rng.choices(string.digits + string.ascii_lowercase, k=rng.randint(min_len, max_len)))
            writer.add(render_word_png(word, font, rng), word)
    return Path(path)


def save_tiny_checkpoint(path: Path, hidden_size: int = 32) -> Path:
    """A self-describing checkpoint of a tiny None-VGG-None-CTC model with fixed random weights."""
    import torch

    import checkpoint
    from model import ModelConfig, build_model

    torch.manual_seed(0)
    checkpoint.save_checkpoint(path, build_model(ModelConfig("None", "VGG", "None", "CTC", output_channel=32,
                                                             hidden_size=hidden_size)))
    return path


# --- released models' file layouts (tests/test_releases.py, scripts/make_release_fixtures.py) -----------------

# OpenOCR's configs/rec/svtrs/svtrnet_ctc_syn.yml, Architecture.Encoder
SVTR_TINY = {"name": "SVTRNet", "img_size": [32, 100], "out_char_num": 25, "out_channels": 192,
             "patch_merging": "Conv", "embed_dim": [64, 128, 256], "depth": [3, 6, 3], "num_heads": [2, 4, 8],
             "mixer": ["Local"] * 6 + ["Global"] * 6, "local_mixer": [[7, 11], [7, 11], [7, 11]],
             "last_stage": True, "prenorm": False}


def release_weights(layout: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights for every key of ``layout`` ({key: shape}), the same on every run, scaled so that the output
    depends on the input: matrices and kernels normal with std 1/sqrt(fan-in), norm scales 1 + normal(0, 0.1),
    biases and means normal(0, 0.1), BatchNorm variances 1 + uniform(0, 0.2), batch counts 0."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for key, shape in layout.items():
        noise = torch.randn(shape, generator=generator)
        if key.endswith("num_batches_tracked"):
            out[key] = torch.zeros(shape, dtype=torch.long)
        elif key.endswith("running_var"):
            out[key] = 1 + 0.2 * torch.rand(shape, generator=generator)
        elif len(shape) >= 2 and key.endswith("weight"):
            out[key] = noise / math.sqrt(math.prod(shape[1:]))
        elif len(shape) == 1 and key.endswith("weight"):
            out[key] = 1 + 0.1 * noise
        else:
            out[key] = 0.1 * noise
    return out


def parseq_baseline_weights(name: str, layout: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    """``release_weights`` for baudm/parseq's TRBA, TRBC or CRNN (``name``), with two changes that keep a random
    model's reading meaningful: TPS's localisation starts from the release's initial fiducial points (RARE's, as
    parseq's code sets them) with small weights, so the grid depends on the image without folding it; TRBA's
    padding class ``[P]`` (the last) gets a bias of -100, as training leaves it (never a target, never read).
    TPS's grid constants (``P_hat``, ``inv_delta_C``) are what every file of theirs holds, not random."""
    from modules.transformation import GridGenerator

    weights = release_weights(layout, seed)
    fc2 = "model.Transformation.LocalizationNetwork.localization_fc2"
    if f"{fc2}.bias" in weights:
        grid = GridGenerator(layout[f"{fc2}.bias"][0] // 2, (32, 128))
        for buffer in ("P_hat", "inv_delta_C"):
            weights[f"model.Transformation.GridGenerator.{buffer}"] = getattr(grid, buffer).clone()
        half = weights[f"{fc2}.bias"].shape[0] // 4
        x = torch.linspace(-1.0, 1.0, half)
        top, bottom = torch.stack([x, torch.linspace(0.0, -1.0, half)], 1), torch.stack([x, torch.linspace(1.0, 0.0, half)], 1)
        weights[f"{fc2}.bias"] = torch.cat([top, bottom]).flatten()
        weights[f"{fc2}.weight"] = weights[f"{fc2}.weight"] * 0.1
    if name == "trba":
        weights["model.Prediction.generator.bias"][-1] = -100.0
    return weights


class FakeClock:
    """A clock for timing code under test: each read advances it by ``seconds`` (a timed step is two reads)."""

    def __init__(self, seconds: float):
        self.now, self.step = 0.0, seconds

    def __call__(self) -> float:
        self.now += self.step
        return self.now
