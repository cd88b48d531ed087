"""The stage registry: everything the toolkit knows about a stage, declared on the stage's class.

A stage is an ``nn.Module`` that also derives from :class:`Stage` (a Prediction stage from :class:`Head`)
and is registered with ``@register``, in its own file::

    @register
    class MobileNetV3(Stage, nn.Module):
        kind, name = "FeatureExtraction", "MobileNetV3"
        own_width = "its 576 channels"            # --output_channel does not size it
        min_input = (32, 4)

        def __init__(self, config, input_size): ...
        @classmethod
        def output_width(cls, config, input_size): return 576

The tables the rest of the toolkit uses (argparse's ``choices=`` and flags, the checks, the checkpoint
reader's recognition, the study's combinations, the profiler's extra FLOPs) are derived from the
registered classes; nothing outside ``modules/`` lists stage names. The built-in stages register when
``modules.builtin`` is imported; a plugin (``--plugin pkg.module``, or an installed package's
``str_toolkit.stages`` entry point) registers its own the same way (``plugins.py``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from runtime import UsageError

KINDS = ("Transformation", "FeatureExtraction", "SequenceModeling", "Prediction")
# What each kind takes and gives: the tensor shapes of the contract (docs/models.md, "Adding a stage").
SHAPES = {
    "Transformation": "[B, C, imgH, imgW] → [B, C, imgH, imgW] (the rectified image)",
    "FeatureExtraction": "[B, C, imgH, imgW] → [B, output_width, H', T] (the model then averages over H')",
    "SequenceModeling": "[B, T, input_size] → [B, T, output_width]",
    "Prediction": "[B, T, input_size] → logits [B, T or steps, num_class]",
}
REGISTRY: dict[str, dict[str, type]] = {kind: {} for kind in KINDS}
# What a stage can show of one reading (its ``views``), recorded by its ``explain_hooks`` only inside
# ``explain.explaining(model)``: the record is {view: [what each forward call gave, on the CPU]}.
VIEWS = {
    "rectified": "the image it gives the next stage [B, C, imgH, W], and the record's 'sampling_grid' "
                 "[B, imgH, W, 2]: where each output pixel was sampled in the input (x, y in [-1, 1])",
    "fiducials": "[B, F, 2]: the control points the localisation network put in the input (x, y in [-1, 1])",
    "attention": "one [B, steps, T] per decoding pass: each step's weights over the T feature tokens (sum 1)",
    "frames": "its logits are one class distribution per feature column [B, T, C] (no hook: the logits)",
}


@dataclass(frozen=True)
class Option:
    """A stage's own flag (``--vit_depth``): a field of the model configuration, given only with that stage.

    Its type is its default's (int, float, str or bool). ``input_only``: it changes how the model reads or
    trains, not its weights, so it may differ from a checkpoint's (PARSeq's ``--parseq_decode``).
    """

    name: str
    default: Any
    help: str
    low: float | None = None  # smallest value allowed (inclusive)
    high: float | None = None  # largest value allowed (inclusive)
    choices: tuple = ()
    input_only: bool = False

    @property
    def type(self) -> type:
        return type(self.default)

    def check(self, value, stage: str) -> None:
        """UsageError naming the flag, the stage and the range, for a value the stage cannot use."""
        if self.choices and value not in self.choices:
            raise UsageError(f"--{self.name} {value!r} is not one of {', '.join(map(str, self.choices))}")
        if self.choices or self.type is bool:
            return
        if not isinstance(value, (int, float)) or value != value:  # NaN
            raise UsageError(f"--{self.name} must be a number, got {value!r}")
        if self.low is not None and value < self.low or self.high is not None and value > self.high:
            if self.high is None:
                allowed = f"at least {self.low:g}"
            elif self.low is None:
                allowed = f"at most {self.high:g}"
            else:
                allowed = f"between {self.low:g} and {self.high:g}"
            raise UsageError(f"--{self.name} must be {allowed} ({stage}), got {value}")


@dataclass(frozen=True)
class Preset:
    """A flag that sets several options at once (``--vit_size tiny``); the options it sets may still be given."""

    name: str
    values: dict[str, dict[str, Any]]
    help: str


class Stage:
    """What the toolkit knows about a stage. Subclasses override the class attributes and classmethods that
    differ from these defaults; the registry test (tests/test_registry.py) checks every declaration against
    the built module."""

    kind: ClassVar[str] = ""  # one of KINDS
    name: ClassVar[str] = ""  # its --<kind> choice and its part of a combination name
    reference: ClassVar[bool] = False  # one of deep-text-recognition-benchmark's own (its 24 combinations)
    options: ClassVar[tuple[Option, ...]] = ()
    presets: ClassVar[tuple[Preset, ...]] = ()
    # FeatureExtraction: "" when --output_channel sizes it; else what its width is instead (the refusal of
    # --output_channel says it: "--vit_size or --vit_embed_dim").
    own_width: ClassVar[str] = ""
    min_output_channel: ClassVar[int] = 1  # the smallest --output_channel it runs with (when it uses it)
    min_input: ClassVar[tuple[int, int]] = (1, 1)  # the smallest (imgH, imgW) it runs on
    # Options its weights fix (a learned position embedding fixes imgH and imgW): a checkpoint's values win,
    # a different flag is refused, and --dynamic_width cannot feed it.
    fixed_input: ClassVar[tuple[str, ...]] = ()
    # Why an exported graph cannot take another width ("its sampling grid is"), or "" when it can.
    fixed_width: ClassVar[str] = ""
    min_opset: ClassVar[tuple] = ()  # (the lowest ONNX opset that exports it, why): TPS (16, "samples ... GridSample")
    name_defaults: ClassVar[dict[str, Any]] = {}  # sizes a combination name implies (ViT: imgW 128)
    has_own_init: ClassVar[bool] = False  # model.init_weights leaves it to its own initialisation
    views: ClassVar[tuple[str, ...]] = ()  # what it can show of a reading (keys of VIEWS): explain.py draws them
    # FeatureExtraction: (stride, left, right) when its output column j depends only on the input columns
    # stride*j - left to stride*j + right and its column count is the width / stride plus a constant (a
    # convolutional network). A reading then computes a padded batch's replicated columns once (trimming.py);
    # None: every column is computed. tests/test_trimming.py checks each declaration against the module.
    column_window: ClassVar[tuple[int, int, int] | None] = None

    @classmethod
    def from_config(cls, config, input_size: int):
        """The module for ``config`` (a ``model.ModelConfig``), fed features of width ``input_size`` (the
        previous stage's output width; the image's channels for the first two stages)."""
        return cls(config, input_size)

    @classmethod
    def output_width(cls, config, input_size: int) -> int:
        """The width of what it gives to the next stage (channels, or features per frame)."""
        return input_size

    @classmethod
    def check(cls, config, input_size: int) -> None:
        """Refuse a configuration it cannot run with (UsageError naming the flag), before it is built.
        Its options' ranges (``Option.low`` ...) and ``min_input`` are checked for it."""

    @classmethod
    def token_grid(cls, config, tokens: int) -> tuple[int, int]:
        """FeatureExtraction: how the ``tokens`` features it gives lie over the image, (rows, columns) in
        row-major order; by default one row of columns, each ``imgW / tokens`` pixels wide."""
        return 1, tokens

    def explain_hooks(self, record: dict) -> list:
        """Hooks (``torch.utils.hooks.RemovableHandle``) that add its ``views`` to ``record``; installed by
        ``explain.explaining`` only while explaining, so that a plain reading runs no extra code."""
        return []

    @classmethod
    def recognise(cls, state_dict: dict):
        """Its options read off its weights (``state_dict`` keys without the stage's prefix), ``None`` when they
        are not its weights, or ``NotImplemented`` (the default): then the weights are its when their key
        names are those of a freshly built one, and ``read_sizes`` reads them."""
        return NotImplemented

    @classmethod
    def read_sizes(cls, state_dict: dict) -> dict:
        """The configuration values its weights show (``{"input_channel": 1, "output_channel": 512}``)."""
        return {}

    @classmethod
    def mismatch(cls, found: dict, config) -> list[str]:
        """What differs between the values ``read_sizes`` found and ``config``, in the user's terms."""
        problems = []
        for key, value in found.items():
            if hasattr(config, key) and value != getattr(config, key):
                hint = " (grey is 1, --rgb is 3)" if key == "input_channel" else ""
                problems.append(f"it has --{key} {value}, not {getattr(config, key)}{hint}")
        return problems


class Head(Stage):
    """A Prediction stage: besides the module, how its classes are laid out, trained and read.

    ``forward(features, text, is_train, batch_max_length, perms)`` gives logits; the rest is declared here,
    so that the loss, the readings (greedy, beam, an exported graph's), fine-tuning across character sets
    and the converters follow the head instead of its name.
    """

    kind = "Prediction"
    converter: ClassVar[type]  # utils' label converter class: text ↔ class indices (``num_special`` first)
    end_index: ClassVar[int | None] = None  # the class that ends a reading; None: one class per frame (CTC)
    end_layer: ClassVar[str] = ""  # the sub-module whose output carries the end class (the profiler's every step)
    class_rows: ClassVar[tuple[str, ...]] = ("",)  # sub-modules (under Prediction) whose output rows are the classes
    beam: ClassVar[str] = ""  # "logits": a beam over its output (CTC's prefix search); "decoder": step by step; ""
    beam_hint: ClassVar[str] = ""  # what to use instead, when it has no beam search

    @classmethod
    def training_batch(cls, text, length, config) -> tuple:
        """The encoded labels for a training forward → (text, the forward's extra keyword arguments)."""
        return text, {}

    @staticmethod
    def loss(preds, text, length):
        """The loss of ``preds`` (fp32) against the encoded labels (and ``loss_options``' keywords)."""
        raise NotImplementedError

    @classmethod
    def loss_options(cls, config) -> dict:
        """The keyword arguments its ``loss`` takes from the configuration (its own options: CTC's reduction)."""
        return {}

    def read_every_step(self, features, num_steps: int):
        """The inference reading with no data-dependent control flow (an exported graph's): every step run."""
        return self(features, None, is_train=False, batch_max_length=num_steps - 1)

    @classmethod
    def remap_inputs(cls, state: dict, old: dict, fresh: dict, src, dst, old_config, new_config) -> None:
        """Fine-tuning to a new character set: carry the weights indexed by class on the head's input side
        (the rows of ``class_rows`` are carried for it). ``src``/``dst``: class indices kept, old → new."""


def register(cls: type) -> type:
    """Class decorator: add a stage to the registry under its ``kind`` and ``name``."""
    if cls.kind not in KINDS:
        raise TypeError(f"{cls.__name__}.kind must be one of {', '.join(KINDS)}, not {cls.kind!r}")
    if not cls.name or "-" in cls.name or "/" in cls.name:
        raise TypeError(f"{cls.__name__}.name must be a non-empty name without '-' or '/', not {cls.name!r}")
    current = REGISTRY[cls.kind].get(cls.name)
    if current is not None and current is not cls and stage_id(current) != stage_id(cls):
        raise TypeError(f"--{cls.kind} {cls.name} is registered twice: by {stage_id(current)} and {stage_id(cls)}")
    # An option may be shared by stages of one kind (--drop_path: ViT's and SVTR's) when they declare it alike:
    # one flag, one configuration field.
    taken = {o.name: (s, o) for s in all_stages() if s.name != cls.name or s.kind != cls.kind for o in s.options}
    for option in cls.options:
        owner, declared = taken.get(option.name, (None, None))
        if owner is not None and (owner.kind != cls.kind or declared != option):
            raise TypeError(f"{cls.__name__}: option {option.name!r} is already {owner.name}'s"
                            + (", declared otherwise" if owner.kind == cls.kind else ""))
    table = REGISTRY[cls.kind]
    table[cls.name] = cls
    # The reference's stages first, then the others in the order they registered: the same order however the
    # modules happened to be imported.
    ordered = sorted(table.items(), key=lambda item: not item[1].reference)
    table.clear()
    table.update(ordered)
    return cls


def record_view(record: dict, view: str, value) -> None:
    """Add one forward call's ``value`` (a tensor) to ``record[view]``, detached, in fp32, on the CPU."""
    record.setdefault(view, []).append(value.detach().float().cpu())


def stage_id(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def stage(kind: str, name: str) -> type:
    return REGISTRY[kind][name]


def head(name: str) -> type[Head]:
    return REGISTRY["Prediction"][name]


def all_stages() -> list[type]:
    return [cls for table in REGISTRY.values() for cls in table.values()]


def all_options() -> dict[str, tuple[type, Option]]:
    """Every registered stage option: its name → (the first stage class that declares it, the option)."""
    out = {}
    for cls in all_stages():
        for o in cls.options:
            out.setdefault(o.name, (cls, o))
    return out


def option_owners(name: str) -> list[type]:
    """The stages that declare option ``name`` (several, of one kind, for a shared option)."""
    return [cls for cls in all_stages() if any(o.name == name for o in cls.options)]


def reference_choices() -> dict[str, tuple[str, ...]]:
    """deep-text-recognition-benchmark's own choices per kind (its 24 combinations)."""
    return {kind: tuple(n for n, cls in REGISTRY[kind].items() if cls.reference) for kind in KINDS}


def builtin(cls: type) -> bool:
    """A stage of this repository's ``modules/`` (not a plugin's)."""
    return cls.__module__.startswith("modules.")


def combination_stages(config) -> list[type]:
    """The four stage classes of ``config``, in order."""
    return [REGISTRY[kind][getattr(config, kind)] for kind in KINDS]


__all__ = ["KINDS", "SHAPES", "VIEWS", "REGISTRY", "Option", "Preset", "Stage", "Head", "register", "record_view", "stage", "head",
           "all_stages", "all_options", "option_owners", "reference_choices", "builtin", "combination_stages"]
