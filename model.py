"""The four-stage STR model: Transformation → FeatureExtraction → SequenceModeling → Prediction."""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import torch
import torch.nn as nn

import modules.builtin  # noqa: F401  registers the repository's stages
import plugins
from modules.registry import (KINDS, REGISTRY, Option, all_options, builtin, combination_stages, head,
                              option_owners, reference_choices)
from errors import UserError
from runtime import UsageError
from utils import DEFAULT_CHARACTER, resolve_character

# The registered stages: kind → {name: stage class}. A plugin's stages join it when the plugin is imported.
STAGES = REGISTRY
# deep-text-recognition-benchmark's own choices (the stages declared ``reference``) and their 24 names,
# "None-VGG-None-CTC" ... "TPS-ResNet-BiLSTM-Attn" (config_from_name builds any of them).
REFERENCE_CHOICES = reference_choices()
REFERENCE_NAMES = tuple("-".join(p) for p in itertools.product(*REFERENCE_CHOICES.values()))


def all_names() -> list[str]:
    """Every combination of the registered stages (the reference's, the transformers', a plugin's)."""
    return ["-".join(p) for p in itertools.product(*(list(table) for table in STAGES.values()))]


@dataclass(frozen=True, init=False)
class ModelConfig:
    """Everything that defines a model's architecture and its input; stored in checkpoints as plain types.

    The fields are the reference's; a stage's own options (``Option`` on its class: ``vit_depth``,
    ``parseq_decode``, a plugin's) are keyword arguments too, read as attributes (``config.vit_depth``, its
    default when not given), and kept in ``options`` where they differ from their defaults.
    """

    Transformation: str
    FeatureExtraction: str
    SequenceModeling: str
    Prediction: str
    num_fiducial: int = 20
    imgH: int = 32
    imgW: int = 100
    input_channel: int = 1
    output_channel: int = 512
    hidden_size: int = 256
    batch_max_length: int = 25
    character: str = DEFAULT_CHARACTER
    sensitive: bool = False  # labels keep their case (else they are lower-cased before encoding)
    PAD: bool = False  # keep-ratio resize with replicate padding (else plain resize to imgW × imgH)
    # How a picture becomes the input (a released model's own preprocessing; datasets.AlignCollate and
    # onnx_infer.preprocess follow them): the channel order of colour input, and the resize.
    channel_order: str = "RGB"  # "RGB", or "BGR" (OpenOCR and PaddleOCR read images with cv2)
    resize: str = "bicubic"  # "bicubic" (Pillow's, as the reference), or "bilinear" (cv2's INTER_LINEAR)
    options: tuple = ()  # ((name, value), ...) of the stages' own options that differ from their defaults

    def __init__(self, *args, **kwargs):
        names = [f.name for f in dataclasses.fields(self) if f.name != "options"]
        if len(args) > len(names):
            raise TypeError(f"ModelConfig takes at most {len(names)} positional arguments")
        values = dict(zip(names, args))
        registered = all_options()
        options = dict(kwargs.pop("options", ()))
        for key, value in kwargs.items():
            if key in values:
                raise TypeError(f"ModelConfig got two values for {key!r}")
            if key in names:
                values[key] = value
            elif key in registered:
                options[key] = value
            else:
                raise TypeError(f"unknown model option {key!r}")
        missing = [n for n in KINDS if n not in values]
        if missing:
            raise TypeError(f"ModelConfig needs {', '.join(missing)}")
        for f in dataclasses.fields(self):
            if f.name != "options":
                object.__setattr__(self, f.name, values.get(f.name, f.default))
        kept = tuple(sorted((k, v) for k, v in options.items() if v != registered[k][1].default))
        object.__setattr__(self, "options", kept)
        check_input_options(self)
        check_sizes(self)

    def __getattr__(self, name: str):
        """A stage option's value (its default when not set)."""
        if name.startswith("_") or name == "options":
            raise AttributeError(name)
        option = all_options().get(name)
        if option is None:
            raise AttributeError(f"ModelConfig has no option {name!r}")
        return dict(self.__dict__.get("options", ())).get(name, option[1].default)

    @property
    def name(self) -> str:
        return "-".join(getattr(self, kind) for kind in KINDS)

    @property
    def num_class(self) -> int:
        return len(self.character) + head(self.Prediction).converter.num_special

    @property
    def rgb(self) -> bool:
        return self.input_channel == 3

    def stage_options(self) -> dict:
        """The options of this configuration's stages, with their values."""
        return {o.name: getattr(self, o.name) for cls in combination_stages(self) for o in cls.options}

    def to_dict(self) -> dict:
        """Plain types: the fields, then the options of every stage of this repository and of this
        configuration's stages (a checkpoint keeps the keys it always had: the input fields that came later,
        ``channel_order`` and ``resize``, only where they differ from their defaults)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name != "options" and not (f.name in LATER_FIELDS and getattr(self, f.name) == f.default)}
        used = set(combination_stages(self))
        for name in all_options():
            if any(builtin(cls) or cls in used for cls in option_owners(name)):
                out[name] = getattr(self, name)
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)} | set(all_options())
        unknown = set(d) - known
        if unknown:
            raise UserError(f"unknown model options in checkpoint: {sorted(unknown)} (options of a stage that is "
                             "not registered: load the plugin that defines it with --plugin)")
        return cls(**d)

    def replace(self, **changes) -> "ModelConfig":
        return ModelConfig(**{**self.to_dict(), **dict(self.options), **changes})


# Fields added after checkpoints were first written: to_dict leaves them out at their defaults.
LATER_FIELDS = ("channel_order", "resize")
CHANNEL_ORDERS = ("RGB", "BGR")
RESIZES = ("bicubic", "bilinear")


def check_input_options(config: ModelConfig) -> None:
    if config.channel_order not in CHANNEL_ORDERS:
        raise UsageError(f"channel_order {config.channel_order!r} is not one of {', '.join(CHANNEL_ORDERS)}")
    if config.resize not in RESIZES:
        raise UsageError(f"resize {config.resize!r} is not one of {', '.join(RESIZES)}")


def stage_widths(config: ModelConfig) -> dict[str, int]:
    """The width of what each stage is fed (the image's channels for the first two)."""
    widths, width = {}, config.input_channel
    for cls in combination_stages(config):
        widths[cls.kind] = width
        if cls.kind != "Transformation":
            width = cls.output_width(config, width)
    return widths


def check_sizes(config: ModelConfig) -> None:
    """Refuse sizes and options the stages cannot run with (a UsageError naming the flag and the range),
    instead of a shape error in the first forward pass: the reference's flags, then each stage's own options
    and checks (declared on its class)."""
    for kind in KINDS:
        value = getattr(config, kind)
        if value not in STAGES[kind]:
            raise UsageError(f"--{kind} {value!r} is not one of {', '.join(STAGES[kind])}")
    stages = combination_stages(config)
    for flag, axis in (("imgH", 0), ("imgW", 1)):
        low, _, cls = max((s.min_input[axis], i, s) for i, s in enumerate(stages))  # a tie names the later stage
        if getattr(config, flag) < low:
            raise UsageError(f"--{flag} {getattr(config, flag)} is too small for --{cls.kind} {cls.name}: it needs "
                             f"--{flag} of at least {low}")
    extractor = stages[1]
    at_least = {"output_channel": 1 if extractor.own_width else extractor.min_output_channel, "hidden_size": 1,
                "batch_max_length": 1}
    for flag, low in at_least.items():
        if getattr(config, flag) < low:
            raise UsageError(f"--{flag} must be at least {low} (with --FeatureExtraction {config.FeatureExtraction}), "
                             f"got {getattr(config, flag)}")
    if config.input_channel not in (1, 3):
        raise UsageError(f"--input_channel must be 1 (grey) or 3 (--rgb), got {config.input_channel}")
    widths = stage_widths(config)
    for cls in stages:
        for option in cls.options:
            option.check(getattr(config, option.name), f"--{cls.kind} {cls.name}")
        cls.check(config, widths[cls.kind])


class Model(nn.Module):
    """The reference architecture; attribute names match its checkpoints (``spec/state_dict``).

    Every stage comes from its table (``"None"`` is ``nn.Identity``), so the forward pass is the
    four stage calls and the pooling between stages 2 and 3.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        widths = stage_widths(config)
        for cls in combination_stages(config):
            setattr(self, cls.kind, cls.from_config(config, widths[cls.kind]))
            if cls.kind == "FeatureExtraction":
                self.AdaptiveAvgPool = nn.AdaptiveAvgPool2d((None, 1))  # mean over the feature map's height
        self.FeatureExtraction_output = widths["SequenceModeling"]
        self.SequenceModeling_output = widths["Prediction"]
        self.frozen: tuple[str, ...] = ()  # stages kept fixed (train.py --freeze)

    def freeze(self, stages: tuple[str, ...] | list[str]) -> None:
        """Keep ``stages`` fixed: no gradients, and in eval mode whatever ``train()`` asks (BatchNorm keeps
        its running statistics)."""
        for name in stages:
            getattr(self, name).requires_grad_(False)
        self.frozen = tuple(dict.fromkeys((*self.frozen, *stages)))
        self.train(self.training)

    def train(self, mode: bool = True) -> "Model":
        super().train(mode)
        for name in self.frozen:
            getattr(self, name).eval()
        return self

    def visual_features(self, input: torch.Tensor, cut: tuple[int, int] = (0, 0)) -> torch.Tensor:
        """Stages 1-2 and the mean over the height: input [B, C, imgH, W] → visual features [B, T, C]. ``cut``
        (column, repeats): feature column ``column`` repeated ``repeats`` more times (trimming.py's reading of
        images whose repeated padding columns were removed)."""
        x = self.Transformation(input)
        visual = self.FeatureExtraction(x)  # [B, C, H', T]
        features = self.AdaptiveAvgPool(visual.permute(0, 3, 1, 2)).squeeze(3)  # [B, T, C]
        if cut[1]:
            features = repeat_column(features, torch.tensor([cut[0]], device=features.device), cut[1])
        return features

    def encode(self, input: torch.Tensor, cut: tuple[int, int] = (0, 0)) -> torch.Tensor:
        """Stages 1-3: input [B, C, imgH, W] → contextual features [B, T, hidden or C] (``cut``: visual_features')."""
        return self.SequenceModeling(self.visual_features(input, cut)).contiguous()

    def forward(self, input: torch.Tensor, text: torch.Tensor | None = None, is_train: bool = True,
                perms: torch.Tensor | None = None, cut: tuple[int, int] = (0, 0)) -> torch.Tensor:
        """input [B, C, imgH, W] → logits: CTC [B, T, num_class], Attn and PARSeq [B, batch_max_length + 1, num_class].

        ``text`` (the encoded labels, [GO]/[B]-first) is used only by Attn and PARSeq in training (teacher
        forcing); ``perms`` [K, L + 2] only by PARSeq in training (then the logits are [K, B, L + 1, num_class]);
        ``cut``: ``visual_features``'.
        """
        return self.Prediction(self.encode(input, cut), text, is_train, batch_max_length=self.config.batch_max_length,
                               perms=perms)


def repeat_column(visual: torch.Tensor, column: torch.Tensor, repeats) -> torch.Tensor:
    """visual features [B, T, C] with column ``column`` (an int64 tensor [1]) repeated ``repeats`` more times
    (an int, or a size of the exported graph) → [B, T + repeats, C]; (0, 0) gives ``visual``."""
    r = torch.arange(visual.size(1) + repeats, device=visual.device)
    index = torch.where(r < column, r, torch.where(r < column + repeats, column, r - repeats))
    return visual.index_select(1, index)


def init_weights(model: nn.Module) -> None:
    """The reference's initialisation: Kaiming-normal weights, zero biases, BN weights 1.

    ``localization_fc2`` is skipped so that TPS starts from its initial fiducial points, and so are the
    stages that declare ``has_own_init`` (the transformers), which start from their papers' initialisation.
    """
    own = tuple(f"{name}." for name, m in model.named_modules() if getattr(m, "has_own_init", False))
    for name, param in model.named_parameters():
        if "localization_fc2" in name or name.startswith(own):
            continue
        if "bias" in name:
            nn.init.constant_(param, 0.0)
        elif "weight" in name:
            if param.dim() < 2:
                nn.init.constant_(param, 1.0)  # BatchNorm weights (kaiming_normal_ needs 2-D)
            else:
                nn.init.kaiming_normal_(param)


def config_from_name(name: str, **options) -> ModelConfig:
    """A combination name, Transformation-FeatureExtraction-SequenceModeling-Prediction as the reference names
    its models ("TPS-ResNet-BiLSTM-Attn", "None-ViT-None-PARSeq"), → its config with the reference's default
    widths (and the sizes a stage's ``name_defaults`` ask for); ``options`` override any field."""
    parts = name.split("-")
    if len(parts) != 4:
        raise UsageError(f"model name {name!r} is not Transformation-FeatureExtraction-SequenceModeling-Prediction, "
                         "e.g. None-VGG-BiLSTM-CTC")
    stages = dict(zip(KINDS, parts))
    for kind, value in stages.items():
        if value not in STAGES[kind]:
            raise UsageError(f"model name {name!r}: {kind} {value!r} is not one of {', '.join(STAGES[kind])}")
    defaults = {k: v for kind, value in stages.items() for k, v in STAGES[kind][value].name_defaults.items()}
    return ModelConfig(**{**stages, **defaults, **options})


def build_model(config: ModelConfig, init: bool = True) -> Model:
    model = Model(config)
    if init:
        init_weights(model)
    return model


def sequence_loss(preds: torch.Tensor, text: torch.Tensor, length: torch.Tensor, prediction: str,
                  config: ModelConfig | None = None) -> torch.Tensor:
    """The one loss for every head (its ``loss``), in fp32 whatever the autocast dtype of ``preds``; ``config``
    gives the head's loss options (``--ctc_reduction``), their defaults without it.

    CTC: ``preds`` [B, T, num_class], ``text`` [B, batch_max_length] zero-padded, ``length`` [B].
    Attn: ``text`` [B, batch_max_length + 2] ([GO] label [s] padding). PARSeq: ``text`` [B] label [E] [P]...;
    ``preds`` [K, B, L + 1, C] for K orders (training) or [B, L + 1, C].
    """
    cls = head(prediction)
    return cls.loss(preds.float(), text, length, **(cls.loss_options(config) if config is not None else {}))


def compute_loss(model: nn.Module, image: torch.Tensor, labels: list[str], converter, config: ModelConfig,
                 amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Training forward (teacher forcing for Attn, K permutations for PARSeq; CTC ignores ``text``) and its loss.

    The head prepares its batch (``training_batch``: PARSeq draws its orders from torch's global generator,
    whose state a training checkpoint keeps).
    """
    text, length = converter.encode(labels, config.batch_max_length, device=image.device)
    text, extra = head(config.Prediction).training_batch(text, length, config)
    with torch.autocast(image.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        preds = model(image, text[:, :-1], **extra)  # Attn: [GO] + label, without the last column
    return sequence_loss(preds, text, length, config.Prediction, config)


def count_parameters(model: nn.Module) -> int:
    if hasattr(model, "num_parameters"):  # an exported model (onnx_model.OnnxModel) says it in its metadata
        return model.num_parameters
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# Architecture flags; None means "not given" so that a self-describing checkpoint can supply them.
ARCHITECTURE_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelConfig) if f.type == "int"}
# Options that may differ from the checkpoint's at test/demo time (they change the input, not the weights),
# unless a stage's weights fix them (its ``fixed_input``); a stage's ``input_only`` options join them.
INPUT_OPTIONS = ("imgH", "imgW", "PAD", "batch_max_length")
FLAG_TYPES = {int: int, float: float, str: str}


def input_options() -> set[str]:
    return {*INPUT_OPTIONS, *(name for name, (_, o) in all_options().items() if o.input_only)}


def add_model_arguments(parser) -> None:
    """The stage and size flags shared by train.py, test.py and demo.py (reference names and defaults), and the
    options of every registered stage (plugins included: load them before the parser is built)."""
    g = parser.add_argument_group("model (not needed with a checkpoint written by this toolkit)")
    for kind, table in STAGES.items():
        g.add_argument(f"--{kind}", choices=list(table), default=None, help=f"stage: {' | '.join(table)}")
    for name, default in ARCHITECTURE_DEFAULTS.items():
        g.add_argument(f"--{name}", type=int, default=None, help=f"default {default}")
    for _, option in all_options().values():
        add_option_argument(g, option)
    for cls in (cls for table in STAGES.values() for cls in table.values()):
        for preset in cls.presets:
            g.add_argument(f"--{preset.name}", choices=list(preset.values), default=None, help=preset.help)
    g.add_argument("--rgb", action="store_true", default=None, help="use 3-channel input (sets input_channel 3)")
    g.add_argument("--character", type=str, default=None,
                   help=f"character set, or a UTF-8 file of it (one per line or all on one line); default "
                        f"{DEFAULT_CHARACTER!r}")
    g.add_argument("--sensitive", action="store_true", default=None,
                   help="case-sensitive: the 94 printable characters (unless --character is given), labels keep case")
    g.add_argument("--PAD", action="store_true", default=None, help="keep aspect ratio, replicate-pad to imgW")
    plugins.add_plugin_argument(g)


def add_option_argument(group, option: Option) -> None:
    if option.type is bool:
        group.add_argument(f"--{option.name}", action="store_true", default=None, help=option.help)
    elif option.choices:
        group.add_argument(f"--{option.name}", choices=list(option.choices), default=None, help=option.help)
    else:
        group.add_argument(f"--{option.name}", type=FLAG_TYPES[option.type], default=None, help=option.help)


def model_flag_names() -> tuple[str, ...]:
    """The flags of ``add_model_arguments``: the stages, the reference's sizes, every stage option and preset."""
    presets = [p.name for table in STAGES.values() for cls in table.values() for p in cls.presets]
    return (*STAGES, *ARCHITECTURE_DEFAULTS, "rgb", "character", "sensitive", "PAD", *all_options(), *presets)


def model_flags(opt) -> dict:
    """The model flags (``add_model_arguments``) the user gave, as ``{name: value}``: what a script passes to
    ``config_from_flags`` and ``checkpoint.load_model``. A flag not given is absent (its parsed value is None)."""
    names = set(model_flag_names())
    return {k: v for k, v in vars(opt).items() if k in names and v is not None}


def config_from_args(opt, base: ModelConfig | None = None, allow_character_change: bool = False) -> ModelConfig:
    """``config_from_flags`` of a script's parsed arguments."""
    return config_from_flags(model_flags(opt), base, allow_character_change)


def config_from_flags(flags: dict, base: ModelConfig | None = None,
                      allow_character_change: bool = False) -> ModelConfig:
    """The model config: ``base`` (from a checkpoint) with the flags the user gave (``model_flags``), or the
    flags alone.

    Flags that would change the weights' shapes conflict with a checkpoint: that is an error naming
    the flag, not a silent override.
    """
    unknown = sorted(set(flags) - set(model_flag_names()))
    if unknown:
        raise TypeError(f"not model flags: {', '.join(unknown)}")
    presets = {p.name: (cls, p) for table in STAGES.values() for cls in table.values() for p in cls.presets}
    given = {k: v for k, v in flags.items() if v is not None and k not in ("rgb", "character", *presets)}
    stages = {kind: given.get(kind, getattr(base, kind, None)) for kind in KINDS}
    check_stage_options({**given, **{k: v for k, v in flags.items() if k in presets and v}}, stages)
    for name, (cls, preset) in presets.items():
        if flags.get(name):
            for key, value in preset.values[flags[name]].items():
                given.setdefault(key, value)
    if flags.get("rgb"):
        given["input_channel"] = 3
    character = flags.get("character")
    if character is not None or given.get("sensitive"):
        given["character"] = resolve_character(character or DEFAULT_CHARACTER, bool(given.get("sensitive")))

    if base is None:
        missing = [kind for kind in KINDS if kind not in given]
        if missing:
            raise UserError("these flags are required (or use a checkpoint written by this toolkit): "
                            + " ".join(f"--{kind} {{{','.join(STAGES[kind])}}}" for kind in missing))
        implied = {k: v for kind in KINDS for k, v in STAGES[kind][given[kind]].name_defaults.items()}
        return ModelConfig(**{**ARCHITECTURE_DEFAULTS, **implied, **given})  # ViT: --imgW 128 unless given

    conflicts = []
    fixed = {option for cls in combination_stages(base) for option in cls.fixed_input}
    free = input_options()
    for key, value in given.items():
        current = getattr(base, key)
        if value == current or (key in free and key not in fixed) or (key == "sensitive"):
            continue
        if key == "character" and allow_character_change:
            continue
        shown = "(a different set)" if key == "character" else value
        conflicts.append(f"--{key} {shown} (the checkpoint has {current!r})")
    if conflicts:
        raise UsageError("the checkpoint was trained with other options than the flags ask for: "
                         + "; ".join(conflicts) + ". Drop these flags: the checkpoint describes its model"
                         + (", or add --FT to fine-tune to a new character set" if not allow_character_change else ""))
    return base.replace(**given)


def width_fixed_by(config: ModelConfig):
    """The first stage that fixes the input width of an exported graph (TPS's sampling grid, a learned position
    embedding: its ``fixed_width``), or None."""
    return next((cls for cls in combination_stages(config) if cls.fixed_width), None)


def inapplicable_options(given: dict, stages: dict) -> list[tuple[str, type, type | None]]:
    """The flags in ``given`` that size a stage ``stages`` does not have → [(flag, the stage it belongs to, the
    stage of that kind chosen instead, or None)]: another stage's own option (``--parseq_decode`` with
    ``--Prediction Attn``), and ``--output_channel`` with an extractor whose width is its own. A value equal
    to the default changes nothing and passes (a config written out as flags)."""
    out = []
    for name, (cls, option) in all_options().items():
        chosen = stages.get(cls.kind)
        owners = [owner.name for owner in option_owners(name)]
        if name in given and given[name] != option.default and chosen is not None and chosen not in owners:
            out.append((name, cls, STAGES[cls.kind].get(chosen)))
    for table in STAGES.values():
        for cls in table.values():
            for preset in cls.presets:
                chosen = stages.get(cls.kind)
                if given.get(preset.name) and chosen is not None and chosen != cls.name:
                    out.append((preset.name, cls, STAGES[cls.kind].get(chosen)))
    extractor = STAGES["FeatureExtraction"].get(stages.get("FeatureExtraction"))
    default = ARCHITECTURE_DEFAULTS["output_channel"]
    if extractor is not None and extractor.own_width and given.get("output_channel", default) != default:
        out.append(("output_channel", None, extractor))
    return out


def check_stage_options(given: dict, stages: dict) -> None:
    """Refuse a stage's own flags given with another stage (``--parseq_decode nar`` with ``--Prediction Attn``)
    and ``--output_channel`` with an extractor whose width is its own (``inapplicable_options``)."""
    for flag, owner, chosen in inapplicable_options(given, stages):
        if owner is None:
            raise UsageError(f"--output_channel sizes the convolutional extractors, not --FeatureExtraction "
                             f"{chosen.name} (its width is {chosen.own_width}): drop --output_channel")
        owners = " or ".join(cls.name for cls in option_owners(flag)) or owner.name  # a preset: its stage
        raise UsageError(f"--{flag} applies to --{owner.kind} {owners} only, not --{owner.kind} {chosen.name}: "
                         f"drop it, or use --{owner.kind} {owners}")
