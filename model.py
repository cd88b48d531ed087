"""The four-stage STR model: Transformation → FeatureExtraction → SequenceModeling → Prediction."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from modules.feature_extraction import FEATURE_EXTRACTORS
from modules.prediction import PREDICTIONS
from modules.sequence_modeling import SEQUENCE_MODELS
from modules.transformation import TRANSFORMATIONS
from runtime import UsageError
from utils import CONVERTERS, DEFAULT_CHARACTER, resolve_character

STAGES = {
    "Transformation": TRANSFORMATIONS,
    "FeatureExtraction": FEATURE_EXTRACTORS,
    "SequenceModeling": SEQUENCE_MODELS,
    "Prediction": PREDICTIONS,
}

# The smallest input (imgH, imgW) each stage runs on, and the smallest --output_channel of each feature
# extractor: found by running each stage on ever smaller inputs; tests/test_arguments.py checks both
# sides of every edge, so a change in modules/ that moves one fails there.
MIN_INPUT_SIZE = {"VGG": (32, 8), "RCNN": (32, 4), "ResNet": (32, 4), "TPS": (8, 8)}
MIN_OUTPUT_CHANNEL = {"VGG": 8, "RCNN": 8, "ResNet": 16}


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

    def __post_init__(self):
        for stage, table in STAGES.items():
            value = getattr(self, stage)
            if value not in table:
                raise ValueError(f"--{stage} {value!r} is not one of {', '.join(table)}")
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
            raise ValueError(f"unknown model options in checkpoint: {sorted(unknown)}")
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
        self.FeatureExtraction = FEATURE_EXTRACTORS[c.FeatureExtraction](c.input_channel, c.output_channel)
        self.FeatureExtraction_output = c.output_channel
        self.AdaptiveAvgPool = nn.AdaptiveAvgPool2d((None, 1))  # mean over the feature map's height
        self.SequenceModeling = SEQUENCE_MODELS[c.SequenceModeling](self.FeatureExtraction_output, c.hidden_size)
        self.SequenceModeling_output = getattr(self.SequenceModeling, "output_size", self.FeatureExtraction_output)
        self.Prediction = PREDICTIONS[c.Prediction](self.SequenceModeling_output, c.hidden_size, c.num_class)
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

    def forward(self, input: torch.Tensor, text: torch.Tensor | None = None, is_train: bool = True) -> torch.Tensor:
        """input [B, C, imgH, W] → logits: CTC [B, T, num_class], Attn [B, batch_max_length + 1, num_class].

        ``text`` (the encoded labels, [GO]-first) is used only by Attn in training (teacher forcing).
        """
        return self.Prediction(self.encode(input), text, is_train, batch_max_length=self.config.batch_max_length)


def init_weights(model: nn.Module) -> None:
    """The reference's initialisation: Kaiming-normal weights, zero biases, BN weights 1.

    ``localization_fc2`` is skipped so that TPS starts from its initial fiducial points.
    """
    for name, param in model.named_parameters():
        if "localization_fc2" in name:
            continue
        if "bias" in name:
            nn.init.constant_(param, 0.0)
        elif "weight" in name:
            if param.dim() < 2:
                nn.init.constant_(param, 1.0)  # BatchNorm weights (kaiming_normal_ needs 2-D)
            else:
                nn.init.kaiming_normal_(param)


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
    """
    preds = preds.float()
    if prediction == "CTC":
        frames = torch.full((preds.size(0),), preds.size(1), dtype=torch.int32)
        return F.ctc_loss(preds.log_softmax(2).permute(1, 0, 2), text, frames, length, zero_infinity=True)
    target = text[:, 1:]
    return F.cross_entropy(preds.reshape(-1, preds.shape[-1]), target.reshape(-1), ignore_index=0)


def compute_loss(model: nn.Module, image: torch.Tensor, labels: list[str], converter, config: ModelConfig,
                 amp_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Training forward (teacher forcing for Attn; CTC ignores ``text``) and its loss."""
    text, length = converter.encode(labels, config.batch_max_length, device=image.device)
    with torch.autocast(image.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        preds = model(image, text[:, :-1])  # Attn: [GO] + label, without the last column
    return sequence_loss(preds, text, length, config.Prediction)


def count_parameters(model: nn.Module) -> int:
    if hasattr(model, "num_parameters"):  # an exported model (onnx_model.OnnxModel) says it in its metadata
        return model.num_parameters
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# Architecture flags; None means "not given" so that a self-describing checkpoint can supply them.
ARCHITECTURE_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ModelConfig) if f.type == "int"}
# Options that may differ from the checkpoint's at test/demo time (they change the input, not the weights).
INPUT_OPTIONS = ("imgH", "imgW", "PAD", "batch_max_length")


def add_model_arguments(parser) -> None:
    """The stage and size flags shared by train.py, test.py and demo.py (reference names and defaults)."""
    g = parser.add_argument_group("model (not needed with a checkpoint written by this toolkit)")
    for stage, table in STAGES.items():
        g.add_argument(f"--{stage}", choices=list(table), default=None, help=f"stage: {' | '.join(table)}")
    for name, default in ARCHITECTURE_DEFAULTS.items():
        g.add_argument(f"--{name}", type=int, default=None, help=f"default {default}")
    g.add_argument("--rgb", action="store_true", default=None, help="use 3-channel input (sets input_channel 3)")
    g.add_argument("--character", type=str, default=None,
                   help=f"character set, or a UTF-8 file of it (one per line or all on one line); default "
                        f"{DEFAULT_CHARACTER!r}")
    g.add_argument("--sensitive", action="store_true", default=None,
                   help="case-sensitive: the 94 printable characters (unless --character is given), labels keep case")
    g.add_argument("--PAD", action="store_true", default=None, help="keep aspect ratio, replicate-pad to imgW")


MODEL_FLAGS = (*STAGES, *ARCHITECTURE_DEFAULTS, "rgb", "character", "sensitive", "PAD")


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
    given = {k: v for k, v in flags.items() if v is not None and k not in ("rgb", "character")}
    if flags.get("rgb"):
        given["input_channel"] = 3
    character = flags.get("character")
    if character is not None or given.get("sensitive"):
        given["character"] = resolve_character(character or DEFAULT_CHARACTER, bool(given.get("sensitive")))

    if base is None:
        missing = [s for s in STAGES if s not in given]
        if missing:
            raise ValueError("these flags are required (or use a checkpoint written by this toolkit): "
                             + " ".join(f"--{s} {{{','.join(STAGES[s])}}}" for s in missing))
        return ModelConfig(**{**ARCHITECTURE_DEFAULTS, **given})

    conflicts = []
    for key, value in given.items():
        current = getattr(base, key)
        if value == current or key in INPUT_OPTIONS or (key == "sensitive"):
            continue
        if key == "character" and allow_character_change:
            continue
        shown = "(a different set)" if key == "character" else value
        conflicts.append(f"--{key} {shown} (the checkpoint has {current!r})")
    if conflicts:
        raise ValueError("the checkpoint was trained with other options than the flags ask for: "
                         + "; ".join(conflicts) + ". Drop these flags: the checkpoint describes its model"
                         + (", or add --FT to fine-tune to a new character set" if not allow_character_change else ""))
    return base.replace(**given)
