"""Other projects' released weights, read as they are: baudm/parseq's PARSeq and OpenOCR's SVTR-Tiny + CTC.

``checkpoint.read_checkpoint`` consults :func:`recognise` for a file that is neither this toolkit's checkpoint
nor a state_dict in the reference's keys. A release is recognised from its keys and shapes: the family, its
sizes, its character set (the release's own order: it fixes the class indices), its input size, colour order,
resize and normalisation; its weights are converted to this toolkit's keys, and the configuration it implies is
returned with its provenance, so the rest of the toolkit (test.py, demo.py, --FT, export.py, study.py) treats it
as a checkpoint of its own.

Each release's preprocessing, from its code:

- baudm/parseq (``strhub/data/module.py``): RGB, ``T.Resize(img_size, BICUBIC)`` on the Pillow image, then
  ``ToTensor`` and ``Normalize(0.5, 0.5)``: what this toolkit does by default.
- OpenOCR (``configs/rec/svtrs/svtrnet_ctc_syn.yml``: ``DecodeImage img_mode BGR``, ``SVTRResize``
  → ``resize_norm_img``): BGR from cv2, ``cv2.resize(INTER_LINEAR)`` without padding, then /255, -0.5, /0.5:
  here ``channel_order="BGR"``, ``resize="bilinear"``, the same normalisation.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from errors import UserError
from modules.parseq import from_parseq_state_dict
from modules.svtr import DEPTHS, EMBED_DIMS, OUT_CHANNELS, from_openocr_svtr_state_dict
from utils import DEFAULT_CHARACTER, SENSITIVE_CHARACTER

# baudm/parseq's configs/charset/*.yaml: the order fixes the class indices.
PARSEQ_CHARSETS = {94: SENSITIVE_CHARACTER,  # 94_full.yaml (= string.printable[:-6])
                   62: SENSITIVE_CHARACTER[:62],  # 62_mixed-case.yaml
                   36: DEFAULT_CHARACTER}  # 36_lowercase.yaml
# OpenOCR's tools/utils/EN_symbol_dict.txt (its English models' dictionary) is the same 94 in the same order;
# without a dictionary file its CTCLabelDecode uses the 36 lower-case alphanumerics. use_space_char adds ' '.
OPENOCR_CHARSETS = {94: SENSITIVE_CHARACTER, 95: SENSITIVE_CHARACTER + " ", 36: DEFAULT_CHARACTER,
                    37: DEFAULT_CHARACTER + " "}


KNOWN = "baudm/parseq's PARSeq, ViTSTR, TRBA, TRBC and CRNN files, OpenOCR's SVTR-Tiny + CTC"


class ReleaseError(UserError):
    """A release file that is recognised but cannot be used as it is; the message names the flag that helps."""


@dataclass(frozen=True)
class Recognised:
    """A release file read as this toolkit's checkpoint."""

    family: str  # "PARSeq-S"
    source: str  # "baudm/parseq"
    layout: str  # what the file holds: "PARSeq.model.state_dict()"
    config: dict  # model.ModelConfig keyword arguments
    state_dict: dict = field(repr=False)  # in this toolkit's keys

    def describe(self) -> str:
        """"a PARSeq-S state_dict from baudm/parseq: 94 characters, RGB 32x128"."""
        c = self.config
        colour = c.get("channel_order", "RGB") if c.get("input_channel", 1) == 3 else "grey"
        resize = "cv2 bilinear" if c.get("resize") == "bilinear" else "bicubic"
        return (f"a {self.family} {self.layout} from {self.source}: {len(c['character'])} characters, "
                f"{colour} {c['imgH']}x{c['imgW']}, {resize} resize, (x - 0.5) / 0.5")

    def provenance(self) -> dict:
        """Plain types, kept in a converted checkpoint (``export.py --format checkpoint``)."""
        return {"family": self.family, "source": self.source, "layout": self.layout}


def recognise(obj, hints: dict | None = None) -> Recognised | None:
    """The release ``obj`` (what ``torch.load`` returned) is, converted; None when it is none of those known.

    ``hints``: the flags the user gave (``--character``, ``--imgH``, ``--imgW``), which choose where the
    weights alone cannot (a character set not among the release's own).
    """
    hints = hints or {}
    for read in (read_parseq, read_vitstr, read_trba, read_crnn, refuse_abinet, read_openocr_svtr):
        found = read(obj, hints)
        if found is not None:
            return found
    return None


def tensors_only(obj) -> dict | None:
    return obj if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()) else None


def character_for(num_chars: int, known: dict[int, str], hints: dict, what: str) -> str:
    """The character set of ``num_chars`` classes: the release's own set of that size, else ``--character`` (which
    must have that many). With the release's own set, a ``--character`` given is the user's: fine-tuning to it
    (``--FT``) remaps the classes, and without --FT a different set is refused as for any checkpoint."""
    if num_chars in known:
        return known[num_chars]
    given = hints.get("character")
    sizes = ", ".join(str(n) for n in sorted(known))
    if given is None:
        raise ReleaseError(f"{what} predicts {num_chars} characters, not one of the release's own sets ({sizes}): "
                           f"pass the set it was trained with, in its order, with --character (a string or a file)")
    if len(given) != num_chars:
        raise ReleaseError(f"{what} predicts {num_chars} characters, but --character gives {len(given)}: pass "
                           f"the {num_chars} characters it was trained with, in its order")
    return given


# --- baudm/parseq ----------------------------------------------------------------------------------------

PARSEQ_KEYS = ("pos_queries", "head.weight", "text_embed.embedding.weight", "encoder.patch_embed.proj.weight",
               "encoder.pos_embed")


def read_parseq(obj, hints: dict) -> Recognised | None:
    """``PARSeq.model.state_dict()`` as the v1.0.0 release saves parseq, parseq-tiny and parseq-patch16-224
    (``model.``-prefixed in a Lightning checkpoint's state_dict)."""
    state = tensors_only(obj)
    if state is None:
        return None
    state = {k.removeprefix("model."): v for k, v in state.items()}
    if not all(k in state for k in PARSEQ_KEYS):
        return None
    proj = state["encoder.patch_embed.proj.weight"]  # [D, C, patch_h, patch_w]
    width, channels, patch_h, patch_w = proj.shape
    depth = len({k.split(".")[2] for k in state if k.startswith("encoder.blocks.")})
    num_chars = state["head.weight"].shape[0] - 1  # [E] and the characters
    imgH, imgW = parseq_image_size(state["encoder.pos_embed"].shape[1], patch_h, patch_w, hints)
    character = character_for(num_chars, PARSEQ_CHARSETS, hints, "this PARSeq file")
    sizes = {192: "Ti", 384: "S"}
    family = f"PARSeq-{sizes[width]}" if width in sizes and depth == 12 else f"PARSeq (width {width}, depth {depth})"
    if (patch_h, patch_w) != (4, 8):
        family += f" patch{patch_h}x{patch_w}-{imgH}x{imgW}" if patch_h != patch_w else f" patch{patch_h}-{imgH}"
    config = {"Transformation": "None", "FeatureExtraction": "ViT", "SequenceModeling": "None",
              "Prediction": "PARSeq", "imgH": imgH, "imgW": imgW, "input_channel": channels,
              "batch_max_length": state["pos_queries"].shape[1] - 1, "character": character,
              "sensitive": character != character.lower(),
              # Heads are not in the weights: the releases' are 64 wide in the encoder (timm), 32 in the decoder.
              "vit_embed_dim": width, "vit_depth": depth, "vit_heads": hints.get("vit_heads", max(1, width // 64)),
              "parseq_dec_heads": hints.get("parseq_dec_heads", 0),
              "vit_patch_h": patch_h, "vit_patch_w": patch_w,
              "parseq_dec_depth": len({k.split(".")[2] for k in state if k.startswith("decoder.layers.")}),
              "parseq_dec_mlp_ratio": state["decoder.layers.0.linear1.weight"].shape[0] // width}
    return Recognised(family, "baudm/parseq", "state_dict", config, from_parseq_state_dict(state))


def parseq_image_size(tokens: int, patch_h: int, patch_w: int, hints: dict) -> tuple[int, int]:
    """The image size of ``tokens`` patches: the releases' 32 x 128 (4 x 8 patches) and 224 x 224 (16 x 16),
    a square grid for square patches, else the --imgH/--imgW given."""
    if hints.get("imgH") and hints.get("imgW"):
        if (hints["imgH"] // patch_h) * (hints["imgW"] // patch_w) != tokens:
            raise ReleaseError(f"this PARSeq file has {tokens} patches of {patch_h} x {patch_w} pixels, which "
                               f"--imgH {hints['imgH']} --imgW {hints['imgW']} does not give")
        return hints["imgH"], hints["imgW"]
    if (patch_h, patch_w) == (4, 8) and tokens == 128:
        return 32, 128
    side = round(tokens ** 0.5)
    if patch_h == patch_w and side * side == tokens:
        return side * patch_h, side * patch_w
    grids = [(h, tokens // h) for h in range(1, tokens + 1) if tokens % h == 0 and h <= tokens // h][:4]
    shown = ", ".join(f"--imgH {h * patch_h} --imgW {w * patch_w}" for h, w in grids)
    raise ReleaseError(f"this PARSeq file has {tokens} patches of {patch_h} x {patch_w} pixels, which several image "
                       f"sizes give ({shown}, ...): pass the one it was trained with")


def read_vitstr(obj, hints: dict) -> Recognised | None:
    """The v1.0.0 release's ``vitstr``: the ViTSTR system's ``state_dict`` (``model.`` + timm's
    ``VisionTransformer``: ``cls_token``, ``pos_embed``, ``patch_embed``, ``blocks``, ``norm``, ``head``)."""
    state = tensors_only(obj)
    if state is None or not all(f"model.{k}" in state for k in ("cls_token", "pos_embed", "head.weight",
                                                                "patch_embed.proj.weight")):
        return None
    state = {k.removeprefix("model."): v for k, v in state.items()}
    width, channels, patch_h, patch_w = state["patch_embed.proj.weight"].shape
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    imgH, imgW = parseq_image_size(state["pos_embed"].shape[1] - 1, patch_h, patch_w, hints)
    character = character_for(state["head.weight"].shape[0] - 1, PARSEQ_CHARSETS, hints, "this ViTSTR file")
    sizes = {192: "Ti", 384: "S"}
    family = f"ViTSTR-{sizes[width]}" if width in sizes and depth == 12 else f"ViTSTR (width {width}, depth {depth})"
    config = {"Transformation": "None", "FeatureExtraction": "ViT", "SequenceModeling": "None",
              "Prediction": "ViTSTR", "imgH": imgH, "imgW": imgW, "input_channel": channels,
              "character": character, "sensitive": character != character.lower(),
              "vit_embed_dim": width, "vit_depth": depth, "vit_heads": hints.get("vit_heads", max(1, width // 64)),
              "vit_patch_h": patch_h, "vit_patch_w": patch_w, "vit_class_token": True}
    converted = {("Prediction." if k.startswith("head.") else "FeatureExtraction.") + k: v for k, v in state.items()}
    return Recognised(family, "baudm/parseq", "state_dict", config, converted)


def read_trba(obj, hints: dict) -> Recognised | None:
    """baudm/parseq's TRBA and TRBC (``strhub/models/trba``): the reference's TPS-ResNet-BiLSTM-Attn and -CTC,
    ``model.``-prefixed, RGB 32 x 128. TRBC's keys are the reference's own; TRBA's decoder embeds the previous
    character (``char_embeddings``, 256 wide) where the reference feeds it one-hot, and orders its classes
    ``[E]``, the characters, ``[B]``, ``[P]`` where the reference has ``[GO]``, ``[s]``, the characters. The
    embedding is folded into the LSTM's input columns (``W @ E.T``: the same products), the classes reordered,
    and ``[P]`` dropped (padding: never a target, so never read)."""
    state = tensors_only(obj)
    if state is None:
        return None
    attn = "model.Prediction.char_embeddings.weight" in state or "Prediction.char_embeddings.weight" in state
    if not attn and "model.Prediction.weight" not in state:
        return None  # an unprefixed TRBC is the reference's own layout: checkpoint.py reads it with its flags
    state = {k.removeprefix("model."): v for k, v in state.items()}
    if not all(k in state for k in ("Transformation.LocalizationNetwork.localization_fc2.bias",
                                    "Transformation.GridGenerator.P_hat", "FeatureExtraction.ConvNet.conv0_1.weight",
                                    "SequenceModeling.0.rnn.weight_hh_l0")):
        return None
    points = state["Transformation.GridGenerator.P_hat"].shape[0]  # imgH x imgW sampling points
    if hints.get("imgH") and hints.get("imgW"):
        imgH, imgW = hints["imgH"], hints["imgW"]
        if imgH * imgW != points:
            raise ReleaseError(f"this TRBA/TRBC file's TPS grid has {points} points, which --imgH {imgH} "
                               f"--imgW {imgW} does not give")
    elif points == 32 * 128:
        imgH, imgW = 32, 128
    else:
        raise ReleaseError(f"this TRBA/TRBC file's TPS grid has {points} points (imgH x imgW), not the release's "
                           "32 x 128: pass the --imgH and --imgW it was trained with")
    convs = [k for k, v in state.items() if k.startswith("FeatureExtraction.") and v.dim() == 4]
    config = {"Transformation": "TPS", "FeatureExtraction": "ResNet", "SequenceModeling": "BiLSTM",
              "Prediction": "Attn" if attn else "CTC", "imgH": imgH, "imgW": imgW,
              "num_fiducial": state["Transformation.LocalizationNetwork.localization_fc2.bias"].shape[0] // 2,
              "input_channel": state["FeatureExtraction.ConvNet.conv0_1.weight"].shape[1],
              "output_channel": state[convs[-1]].shape[0],
              "hidden_size": state["SequenceModeling.0.rnn.weight_hh_l0"].shape[1],
              "batch_max_length": hints.get("batch_max_length", 25)}  # parseq's max_label_length: not in weights
    if not attn:
        config["character"] = character_for(state["Prediction.weight"].shape[0] - 1, PARSEQ_CHARSETS, hints,
                                            "this TRBC file")
        return Recognised("TRBC", "baudm/parseq", "state_dict", finish(config), state)
    embeddings = state.pop("Prediction.char_embeddings.weight")  # [E, chars, B, P] x 256
    num_chars = embeddings.shape[0] - 3
    config["character"] = character_for(num_chars, PARSEQ_CHARSETS, hints, "this TRBA file")
    order = [num_chars + 1, 0, *range(1, num_chars + 1)]  # [GO] = parseq's [B], [s] = its [E], the characters
    for key in ("Prediction.generator.weight", "Prediction.generator.bias"):
        state[key] = state[key][order]
    weight = state["Prediction.attention_cell.rnn.weight_ih"]  # [4 hidden, context + 256]
    context = weight.shape[1] - embeddings.shape[1]
    state["Prediction.attention_cell.rnn.weight_ih"] = torch.cat(
        [weight[:, :context], weight[:, context:] @ embeddings[order].T], dim=1)
    return Recognised("TRBA", "baudm/parseq", "state_dict", finish(config), state)


def read_crnn(obj, hints: dict) -> Recognised | None:
    """baudm/parseq's CRNN (``strhub/models/crnn``, crnn.pytorch's network): ``cnn.*`` (the VGG), ``rnn.0``
    and ``rnn.1`` (two bidirectional LSTM layers, the second's projection giving the classes, blank first),
    ``model.``-prefixed; here ``--FeatureExtraction CRNN --SequenceModeling CRNNLSTM --Prediction CTC``.
    Its height is fixed at 32 (the features must end one row high); its width is not in the weights (the
    release's 128 unless --imgW says another)."""
    state = tensors_only(obj)
    if state is None:
        return None
    state = {k.removeprefix("model."): v for k, v in state.items()}
    if not all(k in state for k in ("cnn.conv0.weight", "cnn.conv6.weight", "rnn.0.rnn.weight_hh_l0",
                                    "rnn.1.linear.weight")):
        return None
    converted = {}
    for key, value in state.items():
        if key.startswith("cnn."):
            converted["FeatureExtraction." + key] = value
        elif key.startswith("rnn.1.linear."):
            converted["Prediction." + key.removeprefix("rnn.1.linear.")] = value
        elif key.startswith("rnn."):
            converted["SequenceModeling." + key.removeprefix("rnn.")] = value
        else:
            raise ReleaseError(f"this CRNN file has a key {key!r} that baudm/parseq's CRNN does not: it is another "
                               "network; pass the flags it was trained with to read it as a state_dict of theirs")
    config = {"Transformation": "None", "FeatureExtraction": "CRNN", "SequenceModeling": "CRNNLSTM",
              "Prediction": "CTC", "imgH": 32, "imgW": hints.get("imgW") or 128,
              "input_channel": state["cnn.conv0.weight"].shape[1],
              "output_channel": state["cnn.conv6.weight"].shape[0],
              "hidden_size": state["rnn.0.rnn.weight_hh_l0"].shape[1],
              "batch_max_length": hints.get("batch_max_length", 25),
              "character": character_for(state["rnn.1.linear.weight"].shape[0] - 1, PARSEQ_CHARSETS, hints,
                                         "this CRNN file")}
    return Recognised("CRNN", "baudm/parseq", "state_dict", finish(config), converted)


def refuse_abinet(obj, hints: dict) -> None:
    """baudm/parseq's ABINet (``vision.*``, ``language.*``, ``alignment.*``): recognised, to say so, and refused."""
    state = tensors_only(obj)
    if state is None:
        return None
    prefixes = {k.removeprefix("model.").split(".")[0] for k in state}
    if {"vision", "alignment"} <= prefixes or {"vision", "language"} <= prefixes:
        raise ReleaseError("this is an ABINet state_dict (baudm/parseq's abinet: a ResNet-45 vision model, a "
                           "bidirectional language model and iterative alignment); this toolkit has no ABINet "
                           "stages, so it cannot read it. Its other releases (parseq, parseq-tiny, vitstr, trba, "
                           "crnn) it reads")
    return None


def finish(config: dict) -> dict:
    """The case sensitivity its character set implies."""
    return {**config, "sensitive": config["character"] != config["character"].lower()}


# --- OpenOCR ---------------------------------------------------------------------------------------------

def read_openocr_svtr(obj, hints: dict) -> Recognised | None:
    """OpenOCR's SVTR-Tiny + CTC: its checkpoint (``tools/utils/ckpt.py``: ``{"state_dict", "config", "epoch",
    ...}``) or the bare state_dict (``encoder.*`` SVTRNet, ``decoder.fc.*`` the CTC layer)."""
    cfg = None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict) and "format" not in obj:
        cfg = obj.get("config") if isinstance(obj.get("config"), dict) else None
        obj = obj["state_dict"]
    state = tensors_only(obj)
    if state is None or "encoder.blocks1.0.norm1.weight" not in state or "decoder.fc.weight" not in state:
        return None
    encoder = (cfg or {}).get("Architecture", {}).get("Encoder", {})
    dims = tuple(state[f"encoder.blocks{i}.0.norm1.weight"].shape[0] if f"encoder.blocks{i}.0.norm1.weight" in state
                 else 0 for i in (1, 2, 3))
    depths = tuple(len({k.split(".")[2] for k in state if k.startswith(f"encoder.blocks{i}.")}) for i in (1, 2, 3))
    out = state["decoder.fc.weight"].shape[1]
    if dims != EMBED_DIMS or depths != DEPTHS or out != OUT_CHANNELS or encoder.get("prenorm"):
        raise ReleaseError(f"this is an OpenOCR SVTR checkpoint with widths {dims}, depths {depths} and {out} output "
                           f"channels{', pre-norm' if encoder.get('prenorm') else ''}; this toolkit builds SVTR-Tiny "
                           f"only (widths {EMBED_DIMS}, depths {DEPTHS}, {OUT_CHANNELS} channels)")
    tokens = state["encoder.pos_embed"].shape[1]
    imgH, imgW = encoder.get("img_size") or (32, tokens * 16 // 32)  # one token per 4 x 4 pixels; 32 high
    if (imgH // 4) * (imgW // 4) != tokens:
        raise ReleaseError(f"this OpenOCR SVTR checkpoint's config says img_size {imgH} x {imgW}, but its position "
                           f"embedding has {tokens} positions: the file is damaged")
    character = character_for(state["decoder.fc.weight"].shape[0] - 1, OPENOCR_CHARSETS, hints,
                              "this OpenOCR SVTR checkpoint")
    config = {"Transformation": "None", "FeatureExtraction": "SVTR", "SequenceModeling": "None",
              "Prediction": "CTC", "imgH": imgH, "imgW": imgW,
              "input_channel": state["encoder.patch_embed.proj.0.conv.weight"].shape[1],
              "batch_max_length": int((cfg or {}).get("Global", {}).get("max_text_length", 25)),
              "character": character, "sensitive": character != character.lower(),
              "channel_order": "BGR", "resize": "bilinear"}
    layout = "checkpoint" if cfg is not None else "state_dict"
    return Recognised("SVTR-Tiny + CTC", "Topdu/OpenOCR", layout, config, from_openocr_svtr_state_dict(state))
