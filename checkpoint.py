"""Checkpoints: self-describing files, the reference's bare state_dicts, and clear mismatch errors.

A checkpoint written by this toolkit is a plain dict (loadable with ``weights_only=True``)::

    {"format": "str-toolkit", "version": 1, "config": ModelConfig.to_dict(),
     "model": state_dict (no "module." prefix), ...training state for last.pth...}

The reference (and EasyOCR) save ``DataParallel(model).state_dict()``: a bare dict of tensors whose
keys start with ``module.``. Both load here; ``export_reference`` writes the bare form back out.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

import plugins
import releases
from errors import UserError
from model import (STAGES, Model, ModelConfig, build_model, config_from_flags, config_from_name,
                   stage_widths)
from modules.registry import KINDS, combination_stages, head
from fileio import atomic_write, cache_folder
from pretrained import REGISTRY, resolve_saved_model
from runtime import UsageError
from utils import resolve_character

FORMAT = "str-toolkit"
VERSION = 1


class CheckpointError(UserError):
    """A checkpoint that cannot be used as asked; the message says why and what to do."""


def atomic_save(obj, path: str | os.PathLike) -> None:
    """torch.save through :func:`fileio.atomic_write`: a crash (or a full disk) during the write leaves the
    previous file intact; a full disk or an I/O error raises :class:`fileio.DiskFullError`, which says so."""
    with atomic_write(path, what="the checkpoint", needed=tensor_bytes(obj)) as f:
        torch.save(obj, f)


def tensor_bytes(obj) -> int:
    """The size of the tensors in ``obj`` (nested dicts, lists, tuples): about the size of its file."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def save_checkpoint(path: str | os.PathLike, model: Model, **extra) -> None:
    """A self-describing checkpoint; a model with a plugin's stages also records the plugins it needs."""
    model = unwrap(model)
    needs = plugins.required(model.config)
    atomic_save({"format": FORMAT, "version": VERSION, "config": model.config.to_dict(),
                 **({"plugins": needs} if needs else {}), "model": model.state_dict(), **extra}, path)


def export_reference(path: str | os.PathLike, model: Model) -> None:
    """Write a bare reference-format state_dict (``module.`` prefix), as the original train.py saves."""
    atomic_save(to_reference_state_dict(unwrap(model).state_dict()), path)


def to_reference_state_dict(state_dict: dict) -> dict:
    return {"module." + k: v for k, v in state_dict.items()}


def unwrap(model: torch.nn.Module) -> Model:
    while hasattr(model, "module"):  # DataParallel / DistributedDataParallel
        model = model.module
    return getattr(model, "_orig_mod", model)  # torch.compile


def read_checkpoint(path: str | os.PathLike, hints: dict | None = None) -> dict:
    """Load a checkpoint file safely (``weights_only=True``) and normalise it.

    Returns ``{"config": dict | None, "model": state_dict without 'module.', ...}``; ``config`` is None
    for a bare reference state_dict. Another project's release (``releases.py``: baudm/parseq's PARSeq,
    OpenOCR's SVTR) is converted to this toolkit's keys and configuration, with ``"release"``: where it came
    from and a line that says what was recognised. ``hints``: the model flags given, which choose where a
    release's weights alone cannot (its character set, its attention heads).
    """
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.pth"))
        hint = (f"pass one of the .pth files in it: {', '.join(inside[:5])}" if inside else "it holds no .pth file")
        raise CheckpointError(f"checkpoint {path} is a folder, not a checkpoint file; {hint} (--saved_model)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; check --saved_model "
                              "(a file path, or a pretrained model name listed by `python pretrained.py`)")
    kind = file_kind(path)
    if kind != "torch":
        raise CheckpointError(f"{path} is {kind}, not a PyTorch checkpoint" + (
            ": an exported model runs in demo.py and test.py (--saved_model), and cannot be trained or resumed"
            if kind == "an ONNX model" else ""))
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the reason
        raise CheckpointError(f"cannot load {path} as a PyTorch checkpoint with weights_only=True "
                              f"({weights_only_reason(e)}). Only state_dicts and this toolkit's checkpoints are "
                              "accepted; pickled model objects are refused because they can run arbitrary code.") from e
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        plugins.check_required(obj.get("plugins", []), path)
        return obj
    if isinstance(obj, dict) and obj.get("format") is None and not reference_layout(obj):
        found = releases.recognise(obj, hints)
        if found is not None:
            return {"config": found.config, "model": found.state_dict,
                    "release": {**found.provenance(), "file": path.name, "description": found.describe()}}
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"config": None, "model": strip_prefix(obj)}
    raise CheckpointError(f"{path} is neither a state_dict nor a {FORMAT} checkpoint, nor a release this toolkit "
                          f"reads ({releases.KNOWN})")


def reference_layout(obj: dict) -> bool:
    """Keys of this toolkit's (and the reference's) model: each under a stage's name, perhaps after ``module.``."""
    return bool(obj) and all(isinstance(k, str) and k.removeprefix("module.").split(".")[0] in KINDS for k in obj)


def file_kind(path: Path) -> str:
    """'torch' for what torch.save writes (a zip, or a legacy pickle); else what the file looks like."""
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        return "torch"
    if not head:
        return "an empty file"
    if path.suffix.lower() == ".onnx" or head[:1] == b"\x08":  # ONNX: a protobuf opening with ir_version
        return "an ONNX model"
    return "neither a zip nor a pickle"


def weights_only_reason(error: Exception) -> str:
    """torch's own reason without its advice to retry with weights_only=False (unsafe for unknown files)."""
    match = re.search(r"WeightsUnpickler error:\s*([^\n]+?)(?:\. |\n|$)", str(error))
    return match[1].strip() if match else str(error).splitlines()[0]


TRAINING_STATE = ("iteration", "optimizer", "scheduler", "scaler", "data", "rng")  # what last.pth adds


def read_training_state(path: str | os.PathLike) -> dict:
    """``last.pth`` for ``train.py --resume``: the weights and the state a run needs to continue exactly.
    Any other file (best_accuracy.pth, a bare state_dict, an .onnx) is refused with the flag that takes it."""
    path = Path(path)
    try:
        ckpt = read_checkpoint(path)
    except CheckpointError as e:
        raise CheckpointError(f"--resume: {e}. --resume takes a run's last.pth (or 'auto')") from None
    if all(key in ckpt for key in TRAINING_STATE):
        return ckpt
    what = ("a bare state_dict (weights only)" if ckpt.get("config") is None else
            "a model checkpoint (weights only, like best_accuracy.pth or iter_N.pth)")
    raise CheckpointError(f"--resume {path} is {what}, not a training state: --resume takes a run's last.pth, which "
                          "also holds the optimizer, the schedule and the data position. To start a new run from "
                          f"these weights, pass --saved_model {path} (with --FT to fine-tune on new data)")


def strip_prefix(state_dict: dict, prefix: str = "module.") -> dict:
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def infer_architecture(state_dict: dict) -> dict:
    """Read the stage choices and sizes off a bare state_dict, to explain a mismatch in user terms:
    ``{"FeatureExtraction": "VGG", ..., "sizes": {kind: {flag: value}}, "candidates": {kind: [names]}}``.

    Each registered stage recognises its own weights (``Stage.recognise``, or by the key names of a freshly
    built one); a kind whose weights more than one stage or none claims is left out, with its candidates.
    """
    info: dict = {"sizes": {}, "candidates": {}}
    for kind in KINDS:
        part = {k[len(kind) + 1:]: v for k, v in state_dict.items() if k.startswith(kind + ".")}
        found = {}
        for name, cls in STAGES[kind].items():
            sizes = recognise(cls, part)
            if sizes is not None:
                found[name] = sizes
        info["candidates"][kind] = list(found)
        if len(found) == 1:
            (name, sizes), = found.items()
            info[kind] = name
            info["sizes"][kind] = sizes
    return info


def recognise(cls, part: dict) -> dict | None:
    """``cls``'s sizes read off ``part`` (its keys without the stage prefix), or None when they are not its."""
    sizes = cls.recognise(part)
    if sizes is NotImplemented:
        sizes = cls.read_sizes(part) if set(part) == probe_keys(cls) else None
    return sizes


@functools.cache
def probe_keys(cls) -> frozenset[str]:
    """The state_dict key names of ``cls`` built small (key names do not depend on the widths of the reference's
    stages; a stage whose names do declares ``recognise``)."""
    stages = {**{kind: next(iter(STAGES[kind])) for kind in KINDS}, cls.kind: cls.name}
    config = config_from_name("-".join(stages.values()), output_channel=32, hidden_size=32)
    width = stage_widths(config)[cls.kind]
    return frozenset(cls.from_config(config, width).state_dict())


def explain_mismatch(model: Model, state_dict: dict) -> str | None:
    """None when the state_dict fits ``model``; else a message in the user's terms."""
    config = model.config
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in state_dict.items()}
    if expected == got:
        return None
    found = infer_architecture(state_dict)
    problems = []
    for kind in KINDS:
        chosen = getattr(config, kind)
        if kind in found and found[kind] != chosen:
            problems.append(f"it was trained with --{kind} {found[kind]}, not {chosen}")
        elif kind not in found and chosen not in found["candidates"][kind]:
            candidates = found["candidates"][kind]
            what = (f"weights that fit --{kind} {' or '.join(candidates)}" if candidates else
                    f"weights no registered --{kind} stage recognises (a plugin's stage? load it with --plugin)")
            problems.append(f"its {kind} has {what}, not {chosen}")
    if not problems:
        for cls in combination_stages(config):
            sizes = dict(found["sizes"].get(cls.kind, {}))
            num_class = sizes.pop("num_class", None)
            problems += cls.mismatch(sizes, config)
            if num_class is not None and num_class != config.num_class:
                problems.append(class_count_problem(num_class, config))
    if not problems:
        missing = sorted(set(expected) - set(got))[:3]
        unexpected = sorted(set(got) - set(expected))[:3]
        shapes = [f"{k}: checkpoint {got[k]} vs model {expected[k]}" for k in expected
                  if k in got and got[k] != expected[k]][:3]
        problems.append(f"state_dict differs (missing {missing}, unexpected {unexpected}, shapes {shapes})")
    return "the checkpoint does not fit the model options: " + "; ".join(problems) + "."


def class_count_problem(num_class: int, config: ModelConfig) -> str:
    n_chars = num_class - head(config.Prediction).converter.num_special
    hint = ""
    if n_chars == 94:
        hint = " Was it trained with --sensitive?"
    elif len(config.character) == 94 and n_chars == 36:
        hint = " It looks case-insensitive: drop --sensitive."
    return (f"the checkpoint predicts {num_class} classes ({n_chars} characters) but the character set gives "
            f"{config.num_class} ({len(config.character)} characters).{hint} Pass the character set it was "
            "trained with via --character (a string or a file)")


def load_state(model: Model, state_dict: dict) -> None:
    problem = explain_mismatch(model, state_dict)
    if problem:
        raise CheckpointError(problem)
    model.load_state_dict(state_dict)


def remap_characters(state_dict: dict, old_config: ModelConfig, new_config: ModelConfig,
                     fresh: Model) -> tuple[dict, dict]:
    """Carry prediction weights across character sets, by character rather than by index.

    Rows of the head's classifier (its ``class_rows``) and what its ``remap_inputs`` carries (the one-hot input
    columns of the attention LSTM, PARSeq's token embedding) are copied for every character both sets share
    (and for the special tokens); new characters keep ``fresh``'s initial weights. Returns
    ``(state_dict for new_config, report)`` where report lists kept / added / dropped characters.
    """
    old_chars, new_chars = old_config.character, new_config.character
    prediction = head(new_config.Prediction)
    special = prediction.converter.num_special
    old_index = {c: i + special for i, c in enumerate(old_chars)}
    pairs = [(i, i) for i in range(special)]  # [CTCblank] / [GO], [s] / [E]
    pairs += [(old_index[c], j + special) for j, c in enumerate(new_chars) if c in old_index]
    new_state = dict(state_dict)
    fresh_state = fresh.state_dict()
    src = torch.tensor([p[0] for p in pairs])
    dst = torch.tensor([p[1] for p in pairs])
    for row in prediction.class_rows:
        for part in ("weight", "bias"):
            name = ".".join(filter(None, ("Prediction", row, part)))
            out = fresh_state[name].clone()
            out[dst] = state_dict[name][src].to(out.dtype)
            new_state[name] = out
    prediction.remap_inputs(new_state, state_dict, fresh_state, src, dst, old_config, new_config)
    new_set = set(new_chars)
    report = {
        "kept": "".join(c for c in new_chars if c in old_index),
        "added": "".join(c for c in new_chars if c not in old_index),
        "dropped": "".join(c for c in old_chars if c not in new_set),
    }
    return new_state, report


@dataclass
class LoadedModel:
    """A model ready to use, the configuration it was built from, and where its weights came from."""

    model: Model
    config: ModelConfig
    source: Path
    checkpoint: dict  # read_checkpoint's dict: the weights, and the training state of a last.pth


def load_model(saved_model: str | os.PathLike, flags: dict | None = None, device: torch.device | str = "cpu", *,
               fine_tune: bool = False, log: Callable[[str], None] = lambda message: None,
               allow_onnx: bool = True, amp: str = "off") -> LoadedModel:
    """The one way to load a model: a checkpoint of this toolkit, a bare reference state_dict, a
    registered name (``pretrained.py``), or an ``.onnx`` file written by ``export.py --format onnx``
    (an ``onnx_model.OnnxModel`` run by ONNX Runtime; inference only, so not with ``allow_onnx=False``).
    Returns it in eval mode on ``device``.

    The configuration is decided once (``trained_config``, then the flags on top) and the model is
    built once; a state_dict that does not fit it is explained in terms of flags. ``fine_tune``
    (train.py ``--FT``) allows a new character set (weights remapped by character) and loads a bare
    state_dict tolerantly (tensors of other shapes keep their fresh initialisation). ``flags`` are the model
    flags the user gave (``model.model_flags(opt)``: ``{"Prediction": "CTC", "imgH": 64, ...}``); ``amp`` is
    the script's ``--amp``, which an ONNX model cannot follow.
    """
    flags = flags or {}
    if Path(saved_model).suffix.lower() == ".onnx":
        return load_onnx_model(Path(saved_model), flags, device, fine_tune or not allow_onnx, log, amp)
    path, registered = resolve_saved_model(str(saved_model))
    ckpt = read_checkpoint(path, release_hints(flags))
    if "release" in ckpt:
        release = ckpt["release"]
        converted = f"converted from {release['file']}, " if ckpt.get("format") == FORMAT else ""
        log(f"{path.name}: {converted}{release['description']}")
    named = str(saved_model) in REGISTRY and not Path(saved_model).exists()
    if named and "release" in ckpt:
        check_release(ckpt, registered, str(saved_model), path)
    trained = trained_config(ckpt, registered, named, path, flags, log)
    config = config_from_flags(flags, trained, allow_character_change=fine_tune)
    model = build_model(config, init=fine_tune)  # fresh rows for new characters need the reference's init
    load_weights(model, ckpt["model"], trained, fine_tune, log)
    return LoadedModel(model.to(device).eval(), config, path, ckpt)


def check_release(ckpt: dict, registered: dict, name: str, path: Path) -> None:
    """A release file found under a registered name must be that release's model (not another family's)."""
    keys = ("Transformation", "FeatureExtraction", "SequenceModeling", "Prediction", "imgH", "imgW", "vit_embed_dim",
            "vit_patch_h")
    got = ModelConfig.from_dict(ckpt["config"])
    expected = ModelConfig.from_dict(registered)
    if any(getattr(got, k) != getattr(expected, k) for k in keys):
        raise CheckpointError(f"{path} (registered as {name!r}) is {ckpt['release']['description']}, not the "
                              f"{expected.name} {expected.imgH}x{expected.imgW} that {name!r} is: put the file of "
                              f"{name!r} there (python pretrained.py lists the files)")


def release_hints(flags: dict) -> dict:
    """The flags that choose what a release file's weights do not say (``releases.recognise``'s hints)."""
    hints = {k: flags[k] for k in ("imgH", "imgW", "vit_heads", "parseq_dec_heads", "batch_max_length")
             if flags.get(k) is not None}
    if flags.get("character") is not None:
        hints["character"] = resolve_character(flags["character"], bool(flags.get("sensitive")))
    return hints


def load_onnx_model(path: Path, flags: dict, device, training: bool, log, amp: str = "off") -> LoadedModel:
    """An exported model: its configuration comes from the file; flags may only repeat it."""
    from onnx_model import OnnxModel

    if training:
        raise UsageError(f"{path} is an exported ONNX model, which runs inference only: train or export from "
                         "the PyTorch checkpoint it was exported from")
    if amp not in ("off", None):
        raise UsageError(f"--amp {amp} applies to PyTorch models; {path.name} runs in the precision it was "
                         "exported in (for int8: export.py --format onnx --quantize int8 --calib_data DIR)")
    model = OnnxModel(path, device=torch.device(device))
    config = config_from_flags(flags, model.config)
    if config != model.config:
        changed = [f"--{k} {getattr(config, k)!r} (exported with {getattr(model.config, k)!r})"
                   for k in model.config.to_dict() if getattr(config, k) != getattr(model.config, k)]
        raise UsageError(f"{path} is an exported model: its input size, decoder length and character set are fixed "
                         f"in the graph, so these flags cannot apply: {'; '.join(changed)}. Drop them, or export "
                         "again with them")
    log(f"ONNX Runtime model {config.name} from {path} ({', '.join(model.session.get_providers())})")
    return LoadedModel(model, config, path, {})


RUNTIMES = ("torch", "onnx")
RUNTIME_FLAGS = ("auto", *RUNTIMES)  # auto: measured.choose_runtime, then one of RUNTIMES
RUNTIME_HELP = ("auto (default): PyTorch or ONNX Runtime, both fp32, whichever this machine measured faster on this "
                "model (cached per machine; PyTorch where the work is too small to pay for the export); torch: run the "
                "checkpoint in PyTorch; onnx: export it to ONNX once (cached by its content under the toolkit's cache "
                "folder) and run it with ONNX Runtime (fp32)")


def load_model_for_runtime(saved_model: str | os.PathLike, flags: dict | None, device: torch.device | str,
                           runtime: str = "torch", *, log: Callable[[str], None] = lambda message: None,
                           amp: str = "off") -> LoadedModel:
    """``--runtime torch``: :func:`load_model`. ``--runtime onnx``: the checkpoint exported once to ONNX
    (fp32) under ``cache_root()/onnx/``, keyed by the checkpoint's bytes and the flags, and run by ONNX
    Runtime; later runs reuse the file. An ``.onnx`` ``--saved_model`` runs as it is either way."""
    if runtime not in RUNTIMES:
        raise UsageError(f"--runtime {runtime!r} is not one of {', '.join(RUNTIMES)}")
    flags = flags or {}
    if runtime == "torch" or Path(saved_model).suffix.lower() == ".onnx":
        return load_model(saved_model, flags, device, log=log, amp=amp)
    if amp != "off":
        raise UsageError(f"--runtime onnx runs the model in fp32; --amp {amp} applies to --runtime torch")
    from onnx_model import OnnxModelError, export_onnx

    cached = onnx_cache_path(saved_model, flags)
    if cached.exists():
        try:
            return load_onnx_model(cached, flags, device, False, log)
        except OnnxModelError as e:  # the toolkit's own file, not the user's: rebuilt, not reported
            log(f"the --runtime onnx cache file {cached} is damaged ({e}); exporting it again")
    log(f"exporting {saved_model} to ONNX once: {cached}")
    model = load_model(saved_model, flags, "cpu", log=log, allow_onnx=False).model
    export_onnx(model, cached, trimmed=trimmable(model.config))
    return load_onnx_model(cached, flags, device, False, log)


def trimmable(config: ModelConfig) -> bool:
    """Whether a reading can skip the repeated padding of ``config``'s batches (trimming.py): its feature
    extractor declares its column window and its graph takes any width."""
    from model import width_fixed_by
    from trimming import column_window

    return column_window(config) is not None and width_fixed_by(config) is None


def onnx_cache_path(saved_model: str | os.PathLike, flags: dict) -> Path:
    """cache_root()/onnx/<checkpoint stem>-<sha256 of its bytes, the flags and the export format>.onnx"""
    from onnx_model import DEFAULT_OPSET, VERSION as ONNX_VERSION

    path, _ = resolve_saved_model(str(saved_model))
    if not path.is_file():
        raise FileNotFoundError(f"--saved_model {saved_model}: {path} is not a file; give a checkpoint or a "
                                "registered name (python pretrained.py lists them)")
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    # "trimmed": the cache's graphs take trimming.py's cut where the model allows it (files before did not)
    digest.update(json.dumps([flags, ONNX_VERSION, DEFAULT_OPSET, "trimmed"], sort_keys=True, default=str).encode())
    return cache_folder("onnx") / f"{path.stem}-{digest.hexdigest()[:16]}.onnx"  # checked before the export


def trained_config(ckpt: dict, registered: dict | None, named: bool, path: Path, flags: dict, log
                   ) -> ModelConfig | None:
    """The configuration the weights were trained with, where it is known without the flags.

    A self-describing checkpoint says it. A registry entry's configuration applies when the model is
    named (``--saved_model english_g2``), or for a bare file with a registered name given without any
    stage flag. A bare state_dict given with stage flags is built from the flags and the reference's
    defaults, exactly as the reference does, whatever the file is called.
    """
    if ckpt.get("config") is not None:
        return ModelConfig.from_dict(ckpt["config"])
    if registered is None:
        return None
    stage_flags = [s for s in STAGES if flags.get(s) is not None]
    if named:
        return ModelConfig.from_dict(registered)
    if not stage_flags:
        log(f"using the registered configuration of {path.stem} (the file's name; give the stage flags to "
            "build the model from the flags instead)")
        return ModelConfig.from_dict(registered)
    return None


def load_weights(model: Model, state: dict, trained: ModelConfig | None, fine_tune: bool, log) -> None:
    if trained is not None and trained.character != model.config.character:
        state, report = remap_characters(state, trained, model.config, model)
        log(f"character set remapped by character: kept {len(report['kept'])}, added {len(report['added'])} "
            f"{report['added']!r}, dropped {len(report['dropped'])} {report['dropped']!r}")
    if fine_tune and trained is None:
        load_matching(model, state, log)  # reference --FT: strict=False, but tolerant of shape changes
    else:
        load_state(model, state)


def load_matching(model: Model, state: dict, log) -> None:
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    skipped = sorted(set(state) - set(usable))
    model.load_state_dict(usable, strict=False)
    log(f"fine-tuning: loaded {len(usable)} of {len(own)} tensors" + (f"; skipped {skipped}" if skipped else ""))
