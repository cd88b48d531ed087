"""The four-stage STR model: Transformation → FeatureExtraction → SequenceModeling → Prediction."""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from modules.feature_extraction import FEATURE_EXTRACTORS
from modules.parseq import permutation_loss, permutations_for
from modules.prediction import PREDICTIONS
from modules.svtr import DOWNSAMPLE as SVTR_DOWNSAMPLE, FRAME_WIDTH as SVTR_FRAME_WIDTH
from modules.vit import VIT_SIZES
from modules.sequence_modeling import SEQUENCE_MODELS
from modules.transformation import TRANSFORMATIONS
from errors import UserError
from runtime import UsageError
from utils import CONVERTERS, DEFAULT_CHARACTER, resolve_character

STAGES = {
    "Transformation": TRANSFORMATIONS,
    "FeatureExtraction": FEATURE_EXTRACTORS,
    "SequenceModeling": SEQUENCE_MODELS,
    "Prediction": PREDICTIONS,
}

# deep-text-recognition-benchmark's own choices: its 24 combinations (the tables above add ViT, SVTR, PARSeq).
REFERENCE_CHOICES = {
    "Transformation": ("None", "TPS"),
    "FeatureExtraction": ("VGG", "RCNN", "ResNet"),
    "SequenceModeling": ("None", "BiLSTM"),
    "Prediction": ("CTC", "Attn"),
}
# Their names, "None-VGG-None-CTC" ... "TPS-ResNet-BiLSTM-Attn" (config_from_name builds any of them).
REFERENCE_NAMES = tuple("-".join(p) for p in itertools.product(*REFERENCE_CHOICES.values()))

# The smallest input (imgH, imgW) each stage runs on, and the smallest --output_channel of each feature
# extractor: found by running each stage on ever smaller inputs; tests/test_arguments.py checks both
# sides of every edge, so a change in modules/ that moves one fails there.
MIN_INPUT_SIZE = {"VGG": (32, 8), "RCNN": (32, 4), "ResNet": (32, 4), "TPS": (8, 8)}
MIN_OUTPUT_CHANNEL = {"VGG": 8, "RCNN": 8, "ResNet": 16}
PARSEQ_DECODE = ("ar", "nar")
# Options that only some stages read: given with another stage they are refused, not ignored.
STAGE_OPTIONS = {
    ("FeatureExtraction", "ViT"): ("vit_size", "vit_embed_dim", "vit_depth", "vit_heads", "vit_patch_h", "vit_patch_w"),
    ("Prediction", "PARSeq"): ("parseq_dec_depth", "parseq_dec_heads", "parseq_dec_mlp_ratio", "parseq_perm_num",
                               "parseq_refine_iters", "parseq_decode"),
}
# Feature extractors whose width is their own (--output_channel sizes the convolutional ones only).
OWN_WIDTH = ("ViT", "SVTR")
# Stages whose weights fix an input option: a learned position embedding fixes the image size, PARSeq's
# position queries the longest label.
FIXED_INPUT = {"ViT": ("imgH", "imgW"), "SVTR": ("imgH", "imgW"), "PARSeq": ("batch_max_length",)}


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines a model's architecture and its input; stored in checkpoints as plain types."""

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
    # --FeatureExtraction ViT (defaults: PARSeq-S's encoder; --vit_size tiny sets 192, 12, 3)
    vit_embed_dim: int = 384
    vit_depth: int = 12
    vit_heads: int = 6
    vit_patch_h: int = 4
    vit_patch_w: int = 8
    # --Prediction PARSeq: the decoder (heads 0: its width / 32, PARSeq's 12 for 384), its training
    # objective (permutations per batch) and its reading (ar | nar, then refinement rounds)
    parseq_dec_depth: int = 1
    parseq_dec_heads: int = 0
    parseq_dec_mlp_ratio: int = 4
    parseq_perm_num: int = 6
    parseq_refine_iters: int = 1
    parseq_decode: str = "ar"

    def __post_init__(self):
        for stage, table in STAGES.items():
            value = getattr(self, stage)
            if value not in table:
                raise UserError(f"--{stage} {value!r} is not one of {', '.join(table)}")
        check_sizes(self)

    @property
    def name(self) -> str:
        return "-".join([self.Transformation, self.FeatureExtraction, self.SequenceModeling, self.Prediction])

    @property
    def num_class(self) -> int:
        return len(self.character) + CONVERTERS[self.Prediction].num_special

    @property
    def rgb(self) -> bool:
        return self.input_channel == 3

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise UserError(f"unknown model options in checkpoint: {sorted(unknown)}")
        return cls(**d)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)


def check_sizes(config: ModelConfig) -> None:
    """Refuse sizes the stages cannot run with (a UsageError naming the flag and the range), instead
    of a shape error in the first forward pass."""
    stages = [s for s in (config.Transformation, config.FeatureExtraction) if s in MIN_INPUT_SIZE]
    for flag, axis in (("imgH", 0), ("imgW", 1)):
        low, stage = max(((MIN_INPUT_SIZE[s][axis], s) for s in stages), default=(1, None))
        if getattr(config, flag) < low:
            kind = "--Transformation" if stage == "TPS" else "--FeatureExtraction"
            raise UsageError(f"--{flag} {getattr(config, flag)} is too small for {kind} {stage}: it needs "
                             f"--{flag} of at least {low}")
    at_least = {"output_channel": MIN_OUTPUT_CHANNEL.get(config.FeatureExtraction, 1), "hidden_size": 1,
                "batch_max_length": 1}
    for flag, low in at_least.items():
        if getattr(config, flag) < low:
            raise UsageError(f"--{flag} must be at least {low} (with --FeatureExtraction {config.FeatureExtraction}), "
                             f"got {getattr(config, flag)}")
    if config.input_channel not in (1, 3):
        raise UsageError(f"--input_channel must be 1 (grey) or 3 (--rgb), got {config.input_channel}")
    if config.Transformation == "TPS" and (config.num_fiducial < 4 or config.num_fiducial % 2):
        raise UsageError(f"--num_fiducial must be an even number of at least 4 for TPS, got {config.num_fiducial}")
    check_transformer_sizes(config)


def check_transformer_sizes(config: ModelConfig) -> None:
    """The transformer stages' own rules: patches and merging that tile the image, heads that divide widths."""
    if config.FeatureExtraction == "ViT":
        for flag, patch in (("imgH", "vit_patch_h"), ("imgW", "vit_patch_w")):
            size, step = getattr(config, flag), getattr(config, patch)
            if step < 1 or size % step:
                raise UsageError(f"--{patch} {step} does not divide --{flag} {size}: ViT's patches must tile the "
                                 f"image (PARSeq: 4 x 8 patches on 32 x 128)")
        if config.vit_heads < 1 or config.vit_embed_dim < 1 or config.vit_embed_dim % config.vit_heads:
            raise UsageError(f"--vit_heads {config.vit_heads} must divide --vit_embed_dim {config.vit_embed_dim}")
        if config.vit_depth < 1:
            raise UsageError(f"--vit_depth must be at least 1, got {config.vit_depth}")
    if config.FeatureExtraction == "SVTR" and (config.imgH % SVTR_DOWNSAMPLE or config.imgW % SVTR_FRAME_WIDTH):
        raise UsageError(f"--FeatureExtraction SVTR needs --imgH a multiple of {SVTR_DOWNSAMPLE} and --imgW a multiple "
                         f"of {SVTR_FRAME_WIDTH}, got {config.imgH} x {config.imgW} (SVTR-Tiny: 32 x 100)")
    if config.Prediction == "PARSeq":
        if config.parseq_decode not in PARSEQ_DECODE:
            raise UsageError(f"--parseq_decode {config.parseq_decode!r} is not one of {', '.join(PARSEQ_DECODE)}")
        at_least = {"parseq_dec_depth": 1, "parseq_dec_heads": 0, "parseq_dec_mlp_ratio": 1, "parseq_perm_num": 2,
                    "parseq_refine_iters": 0}
        for flag, low in at_least.items():
            if getattr(config, flag) < low:
                raise UsageError(f"--{flag} must be at least {low}, got {getattr(config, flag)}")
        if config.parseq_perm_num % 2:
            raise UsageError(f"--parseq_perm_num {config.parseq_perm_num} must be even: each order is trained "
                             "with its mirror")


class Model(nn.Module):
    """The reference architecture; attribute names match its checkpoints (``spec/state_dict``).

    Every stage comes from its table (``"None"`` is ``nn.Identity``), so the forward pass is the
    four stage calls and the pooling between stages 2 and 3.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = c = config
        self.Transformation = TRANSFORMATIONS[c.Transformation](
            F=c.num_fiducial, I_size=(c.imgH, c.imgW), I_r_size=(c.imgH, c.imgW), I_channel_num=c.input_channel)
        self.FeatureExtraction = FEATURE_EXTRACTORS[c.FeatureExtraction].from_config(c)
        self.FeatureExtraction_output = getattr(self.FeatureExtraction, "output_size", c.output_channel)
        self.AdaptiveAvgPool = nn.AdaptiveAvgPool2d((None, 1))  # mean over the feature map's height
        self.SequenceModeling = SEQUENCE_MODELS[c.SequenceModeling](self.FeatureExtraction_output, c.hidden_size)
        self.SequenceModeling_output = getattr(self.SequenceModeling, "output_size", self.FeatureExtraction_output)
        self.Prediction = PREDICTIONS[c.Prediction].from_config(c, self.SequenceModeling_output)
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

    def visual_features(self, input: torch.Tensor) -> torch.Tensor:
        """Stages 1-2 and the mean over the height: input [B, C, imgH, W] → visual features [B, T, C]."""
        x = self.Transformation(input)
        visual = self.FeatureExtraction(x)  # [B, C, H', T]
        return self.AdaptiveAvgPool(visual.permute(0, 3, 1, 2)).squeeze(3)  # [B, T, C]

    def encode(self, input: torch.Tensor) -> torch.Tensor:
        """Stages 1-3: input [B, C, imgH, W] → contextual features [B, T, hidden or C]."""
        return self.SequenceModeling(self.visual_features(input)).contiguous()

    def forward(self, input: torch.Tensor, text: torch.Tensor | None = None, is_train: bool = True,
                perms: torch.Tensor | None = None) -> torch.Tensor:
        """input [B, C, imgH, W] → logits: CTC [B, T, num_class], Attn and PARSeq [B, batch_max_length + 1, num_class].

        ``text`` (the encoded labels, [GO]/[B]-first) is used only by Attn and PARSeq in training (teacher
        forcing); ``perms`` [K, L + 2] only by PARSeq in training (then the logits are [K, B, L + 1, num_class]).
        """
        return self.Prediction(self.encode(input), text, is_train, batch_max_length=self.config.batch_max_length,
                               perms=perms)


def init_weights(model: nn.Module) -> None:
    """The reference's initialisation: Kaiming-normal weights, zero biases, BN weights 1.

    ``localization_fc2`` is skipped so that TPS starts from its initial fiducial points, and so are the
    transformer stages (``has_own_init``), which start from their papers' initialisation.
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


# Sizes a stage needs where the reference's 32 x 100 does not fit it: ViT's 4 x 8 patches tile PARSeq's 32 x 128.
NAME_DEFAULTS = {("FeatureExtraction", "ViT"): {"imgW": 128}}


def config_from_name(name: str, **options) -> ModelConfig:
    """A combination name, Transformation-FeatureExtraction-SequenceModeling-Prediction as the reference names
    its models ("TPS-ResNet-BiLSTM-Attn", "None-ViT-None-PARSeq"), → its config with the reference's default
    widths (``NAME_DEFAULTS`` where a stage needs another size); ``options`` override any field."""
    parts = name.split("-")
    if len(parts) != 4:
        raise UsageError(f"model name {name!r} is not Transformation-FeatureExtraction-SequenceModeling-Prediction, "
                         "e.g. None-VGG-BiLSTM-CTC")
    stages = dict(zip(STAGES, parts))
    for stage, value in stages.items():
        if value not in STAGES[stage]:
            raise UsageError(f"model name {name!r}: {stage} {value!r} is not one of {', '.join(STAGES[stage])}")
    defaults = {k: v for (stage, value), sizes in NAME_DEFAULTS.items() if stages[stage] == value
                for k, v in sizes.items()}
    return ModelConfig(**{**stages, **defaults, **options})


def build_model(config: ModelConfig, init: bool = True) -> Model:
    model = Model(config)
    if init:
        init_weights(model)
    return model


def sequence_loss(preds: torch.Tensor, text: torch.Tensor, length: torch.Tensor, prediction: str) -> torch.Tensor:
    """The one loss for both heads, in fp32 whatever the autocast dtype of ``preds`` [B, T, num_class].

    CTC: ``text`` [B, batch_max_length] zero-padded, ``length`` [B]; every sample uses all T frames.
    Attn: ``text`` [B, batch_max_length + 2] ([GO] label [s] padding); the target is ``text`` without
    [GO], and [GO] (0) also marks padding, which the loss ignores.
    PARSeq: ``text`` [B] label [E] [P]...; ``preds`` [K, B, L + 1, C] for K orders (training) or
    [B, L + 1, C]; the permutation objective's loss (``modules.parseq.permutation_loss``).
    """
    preds = preds.float()
    if prediction == "CTC":
        frames = torch.full((preds.size(0),), preds.size(1), dtype=torch.int32)
        return F.ctc_loss(preds.log_softmax(2).permute(1, 0, 2), text, frames, length, zero_infinity=True)
    if prediction == "PARSeq":
        orders = preds if preds.dim() == 4 else preds[None]
        return permutation_loss(orders, text[:, 1:], pad_index=preds.size(-1) + 1)  # [P] = num_class + 1
    target = text[:, 1:]
    return F.cross_entropy(preds.reshape(-1, preds.shape[-1]), target.reshape(-1), ignore_index=0)


def compute_loss(model: nn.Module, image: torch.Tensor, labels: list[str], converter, config: ModelConfig,
                 amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Training forward (teacher forcing for Attn, K permutations for PARSeq; CTC ignores ``text``) and its loss.

    PARSeq's orders are drawn from torch's global generator, whose state a training checkpoint keeps.
    """
    text, length = converter.encode(labels, config.batch_max_length, device=image.device)
    perms = None
    if config.Prediction == "PARSeq":
        text = text[:, :int(length.max()) + 1]  # [B] label [E], padded to the batch's longest as the reference
        perms = permutations_for(text.size(1) - 2, config.parseq_perm_num).to(image.device)
    with torch.autocast(image.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        preds = model(image, text[:, :-1], perms=perms)  # Attn: [GO] + label, without the last column
    return sequence_loss(preds, text, length, config.Prediction)


def count_parameters(model: nn.Module) -> int:
    if hasattr(model, "num_parameters"):  # an exported model (onnx_model.OnnxModel) says it in its metadata
        return model.num_parameters
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# Architecture flags; None means "not given" so that a self-describing checkpoint can supply them.
ARCHITECTURE_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelConfig) if f.type == "int"}
# Options that may differ from the checkpoint's at test/demo time (they change the input, not the weights).
# Fixed by the weights for some stages (FIXED_INPUT); PARSeq's objective and reading may change too.
INPUT_OPTIONS = ("imgH", "imgW", "PAD", "batch_max_length", "parseq_perm_num", "parseq_refine_iters", "parseq_decode")
OPTION_HELP = {
    "vit_embed_dim": "ViT: token width (--vit_size small 384, tiny 192)",
    "vit_depth": "ViT: transformer blocks (12)",
    "vit_heads": "ViT: attention heads (small 6, tiny 3)",
    "vit_patch_h": "ViT: patch height in pixels (PARSeq 4); must divide --imgH",
    "vit_patch_w": "ViT: patch width in pixels (PARSeq 8); must divide --imgW",
    "parseq_dec_depth": "PARSeq: decoder layers (1)",
    "parseq_dec_heads": "PARSeq: decoder heads (default 0: the decoder width / 32, PARSeq's 12 for 384)",
    "parseq_dec_mlp_ratio": "PARSeq: decoder feed-forward width / its width (4)",
    "parseq_perm_num": "PARSeq training: permutations per batch, an even number (6: left-to-right, its mirror, "
                       "2 random and their mirrors)",
    "parseq_refine_iters": "PARSeq reading: cloze refinement rounds after decoding (1)",
}


def add_model_arguments(parser) -> None:
    """The stage and size flags shared by train.py, test.py and demo.py (reference names and defaults)."""
    g = parser.add_argument_group("model (not needed with a checkpoint written by this toolkit)")
    for stage, table in STAGES.items():
        g.add_argument(f"--{stage}", choices=list(table), default=None, help=f"stage: {' | '.join(table)}")
    for name, default in ARCHITECTURE_DEFAULTS.items():
        g.add_argument(f"--{name}", type=int, default=None, help=OPTION_HELP.get(name, f"default {default}"))
    g.add_argument("--vit_size", choices=list(VIT_SIZES), default=None,
                   help="ViT: " + ", ".join(f"{k} = width {w}, depth {d}, heads {h}" for k, (w, d, h) in VIT_SIZES.items())
                        + " (default small; --vit_embed_dim/--vit_depth/--vit_heads override)")
    g.add_argument("--parseq_decode", choices=PARSEQ_DECODE, default=None,
                   help="PARSeq reading: ar (autoregressive, default) or nar (all positions at once)")
    g.add_argument("--rgb", action="store_true", default=None, help="use 3-channel input (sets input_channel 3)")
    g.add_argument("--character", type=str, default=None,
                   help=f"character set, or a UTF-8 file of it (one per line or all on one line); default "
                        f"{DEFAULT_CHARACTER!r}")
    g.add_argument("--sensitive", action="store_true", default=None,
                   help="case-sensitive: the 94 printable characters (unless --character is given), labels keep case")
    g.add_argument("--PAD", action="store_true", default=None, help="keep aspect ratio, replicate-pad to imgW")


MODEL_FLAGS = (*STAGES, *ARCHITECTURE_DEFAULTS, "rgb", "character", "sensitive", "PAD", "vit_size", "parseq_decode")


def model_flags(opt) -> dict:
    """The model flags (``add_model_arguments``) the user gave, as ``{name: value}``: what a script passes to
    ``config_from_flags`` and ``checkpoint.load_model``. A flag not given is absent (its parsed value is None)."""
    return {k: v for k, v in vars(opt).items() if k in MODEL_FLAGS and v is not None}


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
    unknown = sorted(set(flags) - set(MODEL_FLAGS))
    if unknown:
        raise TypeError(f"not model flags: {', '.join(unknown)}")
    given = {k: v for k, v in flags.items() if v is not None and k not in ("rgb", "character", "vit_size")}
    stages = {s: given.get(s, getattr(base, s, None)) for s in STAGES}
    vit_size = flags.get("vit_size")
    check_stage_options({**given, **({"vit_size": vit_size} if vit_size else {})}, stages)
    if vit_size:
        for key, value in zip(("vit_embed_dim", "vit_depth", "vit_heads"), VIT_SIZES[vit_size]):
            given.setdefault(key, value)
    if flags.get("rgb"):
        given["input_channel"] = 3
    character = flags.get("character")
    if character is not None or given.get("sensitive"):
        given["character"] = resolve_character(character or DEFAULT_CHARACTER, bool(given.get("sensitive")))

    if base is None:
        missing = [s for s in STAGES if s not in given]
        if missing:
            raise UserError("these flags are required (or use a checkpoint written by this toolkit): "
                            + " ".join(f"--{s} {{{','.join(STAGES[s])}}}" for s in missing))
        return ModelConfig(**{**ARCHITECTURE_DEFAULTS, **given})

    conflicts = []
    fixed = {option for stage in STAGES for option in FIXED_INPUT.get(getattr(base, stage), ())}
    for key, value in given.items():
        current = getattr(base, key)
        if value == current or (key in INPUT_OPTIONS and key not in fixed) or (key == "sensitive"):
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


def width_fixed_by(config: ModelConfig) -> str | None:
    """The stage that fixes the input width (TPS's sampling grid, a learned position embedding), or None."""
    for stage in STAGES:
        name = getattr(config, stage)
        if name == "TPS" or "imgW" in FIXED_INPUT.get(name, ()):
            return name
    return None


def check_stage_options(given: dict, stages: dict) -> None:
    """Refuse a stage's own flags given with another stage (``--parseq_decode nar`` with ``--Prediction Attn``)
    and ``--output_channel`` with an extractor whose width is its own; a value equal to the default changes
    nothing and passes (a config written out as flags)."""
    defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    for (stage, name), options in STAGE_OPTIONS.items():
        used = [o for o in options if o in given and given[o] != defaults.get(o)]
        if used and stages[stage] is not None and stages[stage] != name:
            raise UsageError(f"--{used[0]} applies to --{stage} {name} only, not --{stage} {stages[stage]}: "
                             f"drop it, or use --{stage} {name}")
    if stages["FeatureExtraction"] in OWN_WIDTH and given.get("output_channel", defaults["output_channel"]) != \
            defaults["output_channel"]:
        hint = "--vit_size or --vit_embed_dim" if stages["FeatureExtraction"] == "ViT" else "SVTR-Tiny's 192"
        raise UsageError(f"--output_channel sizes the convolutional extractors, not --FeatureExtraction "
                         f"{stages['FeatureExtraction']} (its width is {hint}): drop --output_channel")
