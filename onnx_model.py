"""ONNX export of any of the 24 models, and an ONNX Runtime model that stands in for the PyTorch one.

    export_onnx(model, "model.onnx")            # opset 17, dynamic batch (and width, unless TPS)
    onnx_model = OnnxModel("model.onnx")         # .config from the file's metadata
    logits = onnx_model(image)                   # [B, C, imgH, W] tensor → [B, T, num_class] tensor

The exported graph is ``image → logits``. The attention decoder runs a fixed ``batch_max_length + 1``
greedy steps (no early stop, no teacher-forcing input): an early stop is data-dependent control
flow that a tracer would freeze into the graph. Its strings equal the eager early-stopping path's,
because decoding cuts at the first ``[s]`` and every step before it is the same computation.

The model's configuration (``ModelConfig.to_dict()``) is stored as JSON in the ONNX metadata under
``str_toolkit``, so the file alone is enough to preprocess, run and decode.
"""
from __future__ import annotations

import json
import os
import platform
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

import plugins
from errors import UserError
from fileio import atomic_write
from model import Model, ModelConfig, count_parameters, repeat_column, width_fixed_by
from modules.registry import combination_stages, head
from modules.sequence_modeling import BidirectionalLSTM
from runtime import UsageError

FORMAT = "str-toolkit-onnx"
VERSION = 1
METADATA_KEY = "str_toolkit"
DEFAULT_OPSET = 17
EXPORTER_OPSET = 18  # the lowest opset torch.onnx's dynamo exporter writes; 17 is converted from it
MAX_OPSET = 23
MIN_OPSET = 16  # 16 through onnx's version converter (from 17); older opsets are not tested
GRID_SAMPLE_OPSET = 16  # TPS's F.grid_sample is ONNX GridSample, new in opset 16
MIN_WIDTH = 32  # the smallest dynamic width exported (every extractor needs a few columns)
OPSET_HELP = (f"ONNX opset (default {DEFAULT_OPSET}; {MIN_OPSET} to {MAX_OPSET}). {DEFAULT_OPSET} is the default "
              "because GridSample (TPS) is GridSample-16 there, which TensorRT and older ONNX Runtime builds "
              "parse; opset 20 replaces it with GridSample-20 (new mode names, N-D), which many deployed "
              "runtimes reject.")


class OnnxExportError(UsageError):
    """A model or option that cannot be exported as asked; the message says why and what to do."""


class OnnxModelError(UserError):
    """An .onnx file that cannot be used here; the message says why and what to do."""


# --- the BiLSTM as one ONNX LSTM node -------------------------------------------------------
# torch.onnx would also turn nn.LSTM into an ONNX LSTM, but with a dynamic sequence length it first
# traces a while_loop decomposition of it through fake tensors, which takes minutes per model.
# This op has an O(1) shape function and a one-node translation; the weights are laid out for ONNX
# once, at export. ONNX gate order is i, o, f, c; PyTorch's is i, f, g(=c), o.
TORCH_TO_ONNX_GATES = (0, 3, 1, 2)
ONNX_TO_TORCH_GATES = (0, 2, 3, 1)


def reorder_gates(weight: torch.Tensor, order: tuple[int, ...]) -> torch.Tensor:
    chunks = weight.chunk(4, dim=0)
    return torch.cat([chunks[i] for i in order], dim=0)


@torch.library.custom_op("str_toolkit::onnx_bilstm", mutates_args=())
def onnx_bilstm(x: torch.Tensor, W: torch.Tensor, R: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """One bidirectional LSTM layer with ONNX-layout weights: x [B, T, C] → [B, T, 2 * hidden]."""
    hidden = R.size(-1)
    params = []
    for d in range(2):  # forward, backward: W_ih, W_hh, b_ih, b_hh in PyTorch's gate order
        params += [reorder_gates(t, ONNX_TO_TORCH_GATES) for t in (W[d], R[d], B[d, :4 * hidden], B[d, 4 * hidden:])]
    h0 = x.new_zeros(2, x.size(0), hidden)
    output, _, _ = torch.lstm(x, (h0, h0), params, True, 1, 0.0, False, True, True)
    return output


@onnx_bilstm.register_fake
def _(x, W, R, B):
    return x.new_empty(x.size(0), x.size(1), 2 * R.size(-1))


def onnx_bilstm_translation(x, W, R, B):
    """The ONNX graph for ``str_toolkit::onnx_bilstm`` (traced by torch.onnx's onnxscript)."""
    from onnxscript import opset18 as op

    hidden = W.shape[1] // 4
    y, _, _ = op.LSTM(op.Transpose(x, perm=[1, 0, 2]), W, R, B, direction="bidirectional", hidden_size=hidden)
    y = op.Transpose(y, perm=[2, 0, 1, 3])  # [T, 2, B, H] → [B, T, 2, H]
    return op.Reshape(y, op.Constant(value_ints=[0, 0, -1]))


class ExportBidirectionalLSTM(nn.Module):
    """``BidirectionalLSTM`` with its weights in ONNX layout, run as ``str_toolkit::onnx_bilstm``."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        rnn = layer.rnn
        directions = [(rnn.weight_ih_l0, rnn.weight_hh_l0, rnn.bias_ih_l0, rnn.bias_hh_l0),
                      (rnn.weight_ih_l0_reverse, rnn.weight_hh_l0_reverse, rnn.bias_ih_l0_reverse,
                       rnn.bias_hh_l0_reverse)]
        with torch.no_grad():
            onnx = [[reorder_gates(t.detach().float(), TORCH_TO_ONNX_GATES) for t in d] for d in directions]
        self.register_buffer("W", torch.stack([d[0] for d in onnx]))  # [2, 4H, C]
        self.register_buffer("R", torch.stack([d[1] for d in onnx]))  # [2, 4H, H]
        self.register_buffer("B", torch.stack([torch.cat([d[2], d[3]]) for d in onnx]))  # [2, 8H]
        self.linear = layer.linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(onnx_bilstm(x, self.W, self.R, self.B))


class ExportModule(nn.Module):
    """``image → logits`` with every decoding step run (the head's ``read_every_step``: no data-dependent
    control flow). Each ``BidirectionalLSTM`` runs in ONNX layout (the graph's LSTM op)."""

    def __init__(self, model: Model):
        super().__init__()
        self.model = model
        self.num_steps = model.config.batch_max_length + 1
        self.sequence_modeling = export_form(model.SequenceModeling)

    def forward(self, image: torch.Tensor, cut: torch.Tensor | None = None,
                repeat: torch.Tensor | None = None) -> torch.Tensor:
        """image → logits; with ``cut`` (int64 [1]) and ``repeat`` ([k + 1], only its length counts): feature
        column ``cut`` repeated k more times before the sequence model (trimming.py's trimmed reading)."""
        m = self.model
        visual = m.visual_features(image)
        if cut is not None:
            visual = repeat_column(visual, cut, repeat.size(0) - 1)
        contextual = self.sequence_modeling(visual)  # [B, T, hidden or C]
        return m.Prediction.read_every_step(contextual, self.num_steps)  # [B, T or steps, num_class]


def export_form(stage: nn.Module) -> nn.Module:
    """``stage`` with each of its ``BidirectionalLSTM`` layers (the stage itself, or its children) in ONNX
    layout; other modules as they are (sharing their weights)."""
    if isinstance(stage, BidirectionalLSTM):
        return ExportBidirectionalLSTM(stage)
    if isinstance(stage, nn.Sequential) and any(isinstance(m, BidirectionalLSTM) for m in stage):
        return nn.Sequential(*[export_form(m) for m in stage])
    return stage


def check_opset(config: ModelConfig, opset: int) -> None:
    for cls in combination_stages(config):
        if cls.min_opset and opset < cls.min_opset[0]:
            raise OnnxExportError(f"--opset {opset} cannot export {config.name}: {cls.name} {cls.min_opset[1]}, "
                                  f"which ONNX has only from opset {cls.min_opset[0]}. Use --opset {DEFAULT_OPSET} "
                                  "(the default)")
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise OnnxExportError(f"--opset {opset} is not supported: use {MIN_OPSET} to {MAX_OPSET} "
                              f"(default {DEFAULT_OPSET})")


def export_onnx(model: Model, output: str | os.PathLike, opset: int = DEFAULT_OPSET,
                dynamic_width: bool | None = None, trimmed: bool = False) -> Path:
    """Write ``model`` as a single self-describing .onnx file (no external data); → its path.

    Batch is dynamic; width too unless the model has TPS (its sampling grid is fixed at imgW) or
    ``dynamic_width=False``. ``trimmed``: two more inputs, ``cut`` and ``repeat``, for trimming.py's
    reading (the --runtime onnx cache of a model whose feature extractor declares its column window).
    """
    config = model.config
    check_opset(config, opset)
    fixed_by = width_fixed_by(config)
    if dynamic_width is None:
        dynamic_width = fixed_by is None
    if dynamic_width and fixed_by is not None:
        raise OnnxExportError(f"{fixed_by.name} cannot take a dynamic width: {fixed_by.fixed_width} built for imgW "
                              f"{config.imgW}. Export it with a fixed width")
    module, example, dims = export_inputs(model, dynamic_width)
    examples, names, shapes = (example,), ["image"], {"image": dims}
    if trimmed:
        if not dynamic_width:
            raise OnnxExportError(f"{config.name}: a trimmed reading needs a graph of dynamic width")
        examples += (torch.tensor([3]), torch.zeros(5))
        names += ["cut", "repeat"]
        shapes.update(cut=None, repeat={0: torch.export.Dim("repeat", min=1)})
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the exporter's deprecation and tracing chatter
        program = torch.onnx.export(module, examples, dynamo=True, opset_version=max(opset, EXPORTER_OPSET),
                                    input_names=names, output_names=["logits"],
                                    dynamic_shapes=shapes, optimize=True, verbose=False,
                                    custom_translation_table={torch.ops.str_toolkit.onnx_bilstm.default:
                                                              onnx_bilstm_translation})
    proto = program.model_proto
    name_output_dims(proto, config)
    if opset < EXPORTER_OPSET:
        proto = convert_opset(proto, opset)
    set_metadata(proto, config, dynamic_width, count_parameters(model))
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    import onnx

    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        if opset >= EXPORTER_OPSET:
            raise
        raise OnnxExportError(f"this model cannot be written at opset {opset} ({str(e).splitlines()[0]}): "
                              f"use --opset {EXPORTER_OPSET} or later") from e
    with atomic_write(output, what="the ONNX model") as f:
        f.write(proto.SerializeToString())  # one file, no external data: every model here is < 2 GB
    return output


def name_output_dims(proto, config: ModelConfig) -> None:
    """Declare logits [batch, steps, num_class]; the exporter writes the example's step count even
    when the width (so the CTC frame count) is dynamic, and ONNX Runtime warns on every call."""
    dims = proto.graph.output[0].type.tensor_type.shape.dim
    dims[0].dim_param = "batch"
    if head(config.Prediction).end_index is None:  # one class per frame: as many as the width gives
        dims[1].dim_param = "frames"
    else:
        dims[1].dim_value = config.batch_max_length + 1


def export_inputs(model: Model, dynamic_width: bool) -> tuple[ExportModule, torch.Tensor, dict]:
    """The module to trace, an example batch, and its dynamic dimensions (batch; width unless fixed)."""
    config = model.config
    example = torch.zeros(2, config.input_channel, config.imgH, max(config.imgW, MIN_WIDTH))
    dims = {0: torch.export.Dim("batch", min=1)}
    if dynamic_width:
        dims[3] = torch.export.Dim("width", min=MIN_WIDTH)
    return ExportModule(model.float().eval().cpu()), example, dims


def torch_export(model: Model, dynamic_width: bool | None = None) -> torch.export.ExportedProgram:
    """The same graph as the ONNX export, as a ``torch.export`` program (PyTorch's maintained path;
    TorchScript is deprecated). ``torch.export.save(program, "model.pt2")`` writes it to a file."""
    if dynamic_width is None:
        dynamic_width = width_fixed_by(model.config) is None
    module, example, dims = export_inputs(model, dynamic_width)
    with torch.inference_mode(False), torch.no_grad():
        return torch.export.export(module, (example,), dynamic_shapes={"image": dims}, strict=False,
                                   prefer_deferred_runtime_asserts_over_guards=True)


def convert_opset(proto, opset: int):
    """Opset 18 (the exporter's floor) → ``opset``.

    18 → 17 is done here: onnx's version converter fails on these graphs (Reduce* whose axes it
    cannot find, Split's ``num_outputs`` left in place). The nodes that changed are the Reduce*
    family (axes moved from an attribute to an input in 18) and Split (``num_outputs`` added in 18;
    17 splits equally into the number of outputs). Below 17, onnx's converter takes over.
    """
    import onnx
    from onnx import helper, numpy_helper

    constants = {init.name: numpy_helper.to_array(init) for init in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    reduce_ops = {"ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                  "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare"}
    for node in proto.graph.node:
        if node.op_type in reduce_ops and len(node.input) > 1 and node.input[1]:
            if node.input[1] not in constants:
                raise OnnxExportError(f"cannot write opset {opset}: {node.op_type} {node.name} reduces over axes "
                                      f"computed at run time. Use --opset {EXPORTER_OPSET}")
            axes = [int(a) for a in constants[node.input[1]].reshape(-1)]
            del node.input[1:]
            kept = [a for a in node.attribute if a.name != "noop_with_empty_axes"]  # 18's; axes are given
            del node.attribute[:]
            node.attribute.extend([*kept, helper.make_attribute("axes", axes)])
        elif node.op_type == "Split":
            kept = [a for a in node.attribute if a.name != "num_outputs"]
            del node.attribute[:]
            node.attribute.extend(kept)
    used = {name for node in proto.graph.node for name in node.input}
    unused = [init for init in proto.graph.initializer if init.name not in used]  # the moved Reduce* axes
    for init in unused:
        proto.graph.initializer.remove(init)
    for entry in proto.opset_import:
        if entry.domain in ("", "ai.onnx"):
            entry.version = 17
    if opset < 17:
        try:
            proto = onnx.version_converter.convert_version(proto, opset)
        except Exception as e:  # noqa: BLE001 - re-raised with the fix
            raise OnnxExportError(f"onnx cannot convert this model to opset {opset} ({e}). "
                                  f"Use --opset {DEFAULT_OPSET}") from e
    return proto


def set_metadata(proto, config: ModelConfig, dynamic_width: bool, parameters: int) -> None:
    needs = plugins.required(config)
    info = {"format": FORMAT, "version": VERSION, "config": config.to_dict(), "dynamic_width": dynamic_width,
            "parameters": parameters, "torch": torch.__version__, "readout": readout(config),
            **({"plugins": needs} if needs else {})}
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(info, ensure_ascii=False)
    proto.producer_name = "str-toolkit export.py"


def readout(config: ModelConfig) -> dict:
    """How the logits read as text, for a reader without the toolkit (onnx_infer.py): the class names in order
    (the head's special tokens, then the characters are ``config.character``) and the reading rule: "frames"
    (merge repeats, drop class ``blank``) or "steps" (cut at class ``end``)."""
    prediction = head(config.Prediction)
    specials = prediction.converter(config.character).character[:prediction.converter.num_special]
    if prediction.end_index is None:
        return {"rule": "frames", "specials": specials, "blank": 0}
    return {"rule": "steps", "specials": specials, "end": prediction.end_index}


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def read_metadata(path: str | os.PathLike) -> dict:
    """The ``str_toolkit`` metadata of an .onnx file written by :func:`export_onnx`, once the file is
    known to be a checked ONNX graph whose output classes match the metadata's character set (``onnx``'s
    checker; ``OnnxModel`` asks ONNX Runtime's loader instead, without importing ``onnx``)."""
    import onnx

    path = check_onnx_file(path)
    try:
        proto = onnx.load_model(path, load_external_data=False)
        onnx.checker.check_model(proto)
    except Exception as e:  # noqa: BLE001 - protobuf and the checker raise many types; re-raised with the reason
        raise OnnxModelError(f"{path} is not a readable ONNX model ({first_line(e)}): a truncated or damaged "
                             "file? Export it again with export.py") from e

    def dims(values, name: str) -> list[int]:
        found = [v for v in values if v.name == name]
        return [d.dim_value for d in found[0].type.tensor_type.shape.dim] if found else []

    return parse_metadata(path, {p.key: p.value for p in proto.metadata_props}, dims(proto.graph.input, "image"),
                          dims(proto.graph.output, "logits"))


def check_onnx_file(path: str | os.PathLike) -> Path:
    """``path`` as a Path, once it is an existing, non-empty regular file (else OnnxModelError, naming it)."""
    from fileio import special_kind

    path = Path(path)
    if not path.exists():
        raise OnnxModelError(f"{path} does not exist; check --saved_model")
    if special_kind(path) is not None:
        raise OnnxModelError(f"{path} is {special_kind(path)}, not an .onnx file")
    if path.stat().st_size == 0:
        raise OnnxModelError(f"{path} is empty (0 bytes): an interrupted copy or export? Export it again with "
                             "`python export.py --saved_model <checkpoint> --format onnx`")
    return path


def parse_metadata(path: Path, props: dict[str, str], image: list[int], logits: list[int]) -> dict:
    """The toolkit's metadata among a graph's ``props``, checked against its ``image`` input and ``logits``
    output dimensions (0 where symbolic)."""
    if METADATA_KEY not in props:
        raise OnnxModelError(f"{path} has no '{METADATA_KEY}' metadata, so its character set and input size "
                             "are unknown: it was not written by this toolkit's export.py. Export the model "
                             "with `python export.py --saved_model <checkpoint> --format onnx`")
    try:
        info = json.loads(props[METADATA_KEY])
        if info.get("format") != FORMAT:
            raise ValueError(f"format {info.get('format')!r}")
        plugins.check_required(info.get("plugins", []), path)
        config = ModelConfig.from_dict(info["config"])
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise OnnxModelError(f"{path}: its '{METADATA_KEY}' metadata is not a model configuration of this "
                             f"toolkit ({e}); re-export the model with export.py") from e
    check_classes(path, image, logits, config)
    return info


def check_classes(path: Path, image: list[int], logits: list[int], config: ModelConfig) -> None:
    """The graph's image input and logits must have the sizes the metadata gives: [batch, input_channel,
    imgH, W] in, [batch, steps, num_class] out. Otherwise decoding would index characters that do not
    exist (or never read some), or every batch would fail inside ONNX Runtime."""
    if len(image) != 4 or len(logits) != 3:
        raise OnnxModelError(f"{path} has no 'image' input [batch, channels, height, width] and 'logits' output "
                             "[batch, steps, classes]; re-export it with export.py")
    # 0 where a dimension is symbolic (batch, a dynamic width): nothing to compare there
    if logits[2] and logits[2] != config.num_class:
        raise OnnxModelError(f"{path}: the graph predicts {logits[2]} classes but its metadata's character set "
                             f"({len(config.character)} characters, {config.Prediction}) gives {config.num_class}; "
                             "the metadata does not belong to this graph. Re-export the model with export.py")
    for axis, name, value in ((1, "input_channel", config.input_channel), (2, "imgH", config.imgH)):
        if image[axis] and image[axis] != value:
            raise OnnxModelError(f"{path}: the graph takes images with {image[axis]} at axis {axis} but its metadata "
                                 f"says {name} {value}; re-export the model with export.py")


def session_metadata(path: Path, session) -> dict:
    """``read_metadata``'s answer from an ONNX Runtime session of ``path`` (its loader checked the graph)."""
    def dims(values, name: str) -> list[int]:
        found = [v for v in values if v.name == name]
        return [d if isinstance(d, int) else 0 for d in found[0].shape] if found else []

    return parse_metadata(path, dict(session.get_modelmeta().custom_metadata_map),
                          dims(session.get_inputs(), "image"), dims(session.get_outputs(), "logits"))


TRIMMED_INPUTS = ["image", "cut", "repeat"]


class OnnxModel:
    """An exported model run by ONNX Runtime, called like ``Model`` at inference.

    ``model(image, text=None, is_train=False)`` takes a float tensor [B, C, imgH, W] and returns
    the logits as a float32 tensor on the image's device. ``.config`` is the model's ModelConfig.
    """

    def __init__(self, path: str | os.PathLike, device: torch.device | str = "cpu", threads: int | None = None,
                 warn: bool = True):
        import onnxruntime as ort

        self.source = check_onnx_file(path)
        providers = ["CPUExecutionProvider"]
        if torch.device(device).type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise UsageError(f"--device {device}: this onnxruntime has no CUDA provider (it has "
                                 f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu or use "
                                 "--device cpu")
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = ort.InferenceSession(str(self.source), options, providers=providers)
        except Exception as e:  # noqa: BLE001 - onnxruntime's errors have no common public base
            raise OnnxModelError(f"{self.source} is not a readable ONNX model, or ONNX Runtime cannot run it "
                                 f"({first_line(e)}): a truncated or damaged file? Export it again with "
                                 "export.py") from e
        info = session_metadata(self.source, self.session)
        warning = int8_saturation_warning(info) if warn else None
        if warning:
            from runtime import get_logger

            get_logger("onnx").warning(f"warning: {self.source}: {warning}")
        self.config = ModelConfig.from_dict(info["config"])
        self.dynamic_width = bool(info.get("dynamic_width"))
        self.num_parameters = int(info.get("parameters", 0))
        inputs = [i.name for i in self.session.get_inputs()]
        if inputs not in (["image"], TRIMMED_INPUTS):
            raise OnnxModelError(f"{self.source} takes {inputs}, not one 'image' input; re-export it with export.py")
        self.trimmed = inputs == TRIMMED_INPUTS  # trimming.py's reading: cut and repeat

    def check_input(self, image: torch.Tensor) -> None:
        c = self.config
        expected = (c.input_channel, c.imgH)
        if image.dim() != 4 or (image.size(1), image.size(2)) != expected:
            raise ValueError(f"{self.source} takes images [B, {c.input_channel}, {c.imgH}, W]; got "
                             f"{list(image.shape)}")
        if not self.dynamic_width and image.size(3) != c.imgW:
            raise UsageError(f"{self.source} was exported with a fixed width of {c.imgW} "
                             f"({getattr(width_fixed_by(c), 'name', 'fixed-width export')}), but the batch is "
                             f"{image.size(3)} wide. Drop --dynamic_width (batches are then padded or resized "
                             f"to {c.imgW}), or export a model without TPS for dynamic widths")
        if self.dynamic_width and image.size(3) < MIN_WIDTH:
            raise ValueError(f"{self.source} takes widths from {MIN_WIDTH} pixels; the batch is {image.size(3)}")

    def __call__(self, image: torch.Tensor, text: torch.Tensor | None = None, is_train: bool = False,
                 cut: tuple[int, int] = (0, 0)) -> torch.Tensor:
        """→ logits; ``cut`` (a graph exported ``trimmed``): (feature column, repeats), trimming.TrimmedReader's."""
        if is_train:
            raise UserError("an exported ONNX model runs inference only; train the PyTorch checkpoint instead")
        self.check_input(image)
        array = image.detach().to("cpu", torch.float32).contiguous().numpy()
        feed = {"image": array}
        if self.trimmed:
            feed.update(cut=np.array([cut[0]], dtype=np.int64), repeat=np.zeros(cut[1] + 1, dtype=np.float32))
        elif cut[1]:
            raise ValueError(f"{self.source} has no 'cut' input: it reads whole batches")
        try:
            (logits,) = self.session.run(["logits"], feed)
        except Exception as e:  # noqa: BLE001 - onnxruntime's errors have no common public base
            raise OnnxModelError(f"{self.source}: ONNX Runtime failed on a batch {list(array.shape)} "
                                 f"({first_line(e)}); re-export the model with export.py") from e
        return torch.from_numpy(logits).to(image.device)

    # The bits of nn.Module that the evaluation scripts touch.
    def eval(self) -> "OnnxModel":
        return self

    def to(self, *args, **kwargs) -> "OnnxModel":
        return self


# --- int8 ---------------------------------------------------------------------------------------

def calibration_items(folder: str | os.PathLike, config: ModelConfig, count: int, batch_size: int = 16):
    """(images [B, C, imgH, imgW], paths) batches of the folder's first ``count`` readable images,
    preprocessed as demo.py does."""
    from dataset import AlignCollate, DataConfig, RawDataset

    data = DataConfig.for_model(config)
    dataset = RawDataset(folder, data)
    collate = AlignCollate.for_data(data)
    items = [item for item in (dataset[i] for i in range(min(count, len(dataset)))) if item is not None]
    if not items:
        raise UserError(f"--calib_data {folder}: no readable image to calibrate on")
    for start in range(0, len(items), batch_size):
        yield collate(items[start:start + batch_size])


def calibration_batches(folder: str | os.PathLike, config: ModelConfig, count: int, batch_size: int = 16):
    """Batches of the folder's images ({"image": float32 array}) for ONNX Runtime's calibrator."""
    for images, _ in calibration_items(folder, config, count, batch_size):
        yield {"image": images.numpy()}


# Quantised statically (calibrated ranges); everything between two convolutions is among them.
STATIC_INT8_OPS = ["Conv", "MatMul", "Gemm", "Relu", "MaxPool", "AveragePool", "GlobalAveragePool", "Add",
                   "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Concat"]
CALIBRATION_PERCENTILE = 99.999
# x86 CPUs whose u8s8 int8 kernels accumulate in int32 (no int16 intermediate that can saturate).
VNNI_CPU_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@dataclass(frozen=True)
class Int8Settings:
    """How ``quantize_int8`` quantises; written into the .onnx metadata (``quantized``).

    ``reduce_range`` (7-bit weights, -64..64): on x86 CPUs without VNNI, ONNX Runtime's u8s8 kernels
    multiply uint8 activations by int8 weights and add adjacent pairs into int16 (``vpmaddubsw``),
    which saturates once a pair exceeds 32767; with 8-bit weights 2 x 255 x 127 = 64770 can, with
    7-bit weights 2 x 255 x 64 = 32640 cannot. VNNI CPUs accumulate in int32 either way, so one
    file reads the same on every x86 CPU. Per-channel weights keep the 7-bit grid fine enough:
    english_g2 read 0.27 points below fp32 on svt_647 + ic03_860, 8-bit weights 0.20
    (docs/cpus.md).
    """

    reduce_range: bool = True
    per_channel: bool = True

    def to_dict(self, calib_images: int) -> dict:
        return {"scheme": "int8 static QDQ", "weights": "int8 per channel" if self.per_channel else "int8 per tensor",
                "reduce_range": self.reduce_range, "weight_bits": 7 if self.reduce_range else 8,
                "activations": "uint8", "ops": STATIC_INT8_OPS, "lstm": "DynamicQuantizeLSTM",
                "calibration": f"percentile {CALIBRATION_PERCENTILE}", "calib_images": calib_images}


def quantize_int8(fp32_path: str | os.PathLike, output: str | os.PathLike, calib_data: str | os.PathLike,
                  calib_size: int = 256, settings: Int8Settings = Int8Settings()) -> Path:
    """Static QDQ int8 quantisation (ONNX Runtime), calibrated on ``calib_data``; keeps the metadata
    and records ``settings`` in it.

    Convolutions, MatMul and Gemm get int8 weights (per channel, 7-bit: :class:`Int8Settings`) and
    uint8 activations, and the ops between them (ReLU, pooling, reshapes, the residual Add) are
    quantised too, so that the tensors stay int8 from one convolution to the next (ONNX Runtime
    folds a ReLU into the range of the convolution before it; quantising only the convolutions left
    a Dequantize → Relu → Quantize pair after each, 17 % of the int8 model's time on english_g2). ONNX Runtime has no
    static int8 LSTM, so a second pass gives the LSTMs int8 weights with activations quantised
    on the fly (``DynamicQuantizeLSTM``; LSTM time on english_g2: 36 % of the model → 19 %).
    Activation ranges are the 99.999th percentile of the calibration activations: with MinMax
    ranges english_g2 lost 1.5 points on svt_647 + ic03_860.
    """
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)

    info = read_metadata(fp32_path)
    config = ModelConfig.from_dict(info["config"])
    seen = []

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = calibration_batches(calib_data, config, calib_size)

        def get_next(self):
            batch = next(self.batches, None)
            seen.append(0 if batch is None else len(batch["image"]))
            return batch

    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{output.name}.", dir=output.parent) as work:
        tmp = Path(work) / "int8.onnx"  # onnxruntime's quantisers write to a path, not a file object
        quantize_static(str(fp32_path), str(tmp), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        per_channel=settings.per_channel, reduce_range=settings.reduce_range,
                        op_types_to_quantize=STATIC_INT8_OPS, calibrate_method=CalibrationMethod.Percentile,
                        extra_options={"CalibPercentile": CALIBRATION_PERCENTILE})
        proto = onnx.load_model(tmp)
        if any(node.op_type == "LSTM" for node in proto.graph.node):
            quantize_dynamic(str(tmp), str(tmp), op_types_to_quantize=["LSTM"], weight_type=QuantType.QInt8,
                             reduce_range=settings.reduce_range)
            proto = onnx.load_model(tmp)
    info["quantized"] = settings.to_dict(calib_images=sum(seen))
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(info, ensure_ascii=False)
    with atomic_write(output, what="the ONNX model") as f:
        f.write(proto.SerializeToString())
    return output


def int8_saturation_warning(info: dict, flags: set[str] | None = None, machine: str | None = None) -> str | None:
    """Why an int8 file may read worse on this CPU than where it was checked, or None.

    Files quantised with 8-bit weights (``reduce_range`` false; every int8 file whose metadata does not
    say, as export.py wrote them before the setting was recorded) saturate in ONNX Runtime's u8s8
    kernels on x86 CPUs without VNNI (:class:`Int8Settings`). Other CPUs (ARM) and unknown flags: None.
    """
    quantized = info.get("quantized")
    if not quantized or (isinstance(quantized, dict) and quantized.get("reduce_range")):
        return None
    from runtime import cpu_flags

    flags = cpu_flags() if flags is None else flags
    machine = (machine or platform.machine()).lower()
    if machine not in ("x86_64", "amd64", "i386", "i686") or not flags or flags & set(VNNI_CPU_FLAGS):
        return None
    return ("this int8 model was quantised with 8-bit weights (without reduce_range), and this CPU has no VNNI "
            f"({', '.join(VNNI_CPU_FLAGS)} absent from /proc/cpuinfo): ONNX Runtime's int8 kernels saturate here "
            "and the model can read several points worse than fp32. Re-export it with this toolkit's export.py "
            "--quantize int8 (7-bit weights by default), or use the fp32 .onnx")


@dataclass(frozen=True)
class Int8Check:
    """int8 against fp32 on the calibration images. With labels (a gt.txt in the calibration folder or
    its parent): ``drop`` is fp32's accuracy minus int8's; without: the share of fp32's confident
    readings (confidence >= ``CONFIDENT``) that int8 reads otherwise, an estimate of the points lost."""

    images: int
    labelled: bool
    agreement: float  # % of images read the same (case-insensitive alphanumeric)
    fp32_accuracy: float | None
    int8_accuracy: float | None
    confident_changed: float  # % of fp32's confident readings that int8 reads otherwise
    confident: int  # how many of fp32's readings are confident

    @property
    def drop(self) -> float:
        return self.fp32_accuracy - self.int8_accuracy if self.labelled else self.confident_changed

    def describe(self) -> str:
        if self.labelled:
            return (f"on {self.images} labelled calibration images int8 reads {self.int8_accuracy:.2f} % against "
                    f"fp32's {self.fp32_accuracy:.2f} % (drop {self.drop:.2f} points; {self.agreement:.1f} % of "
                    "readings equal)")
        if not self.confident:
            return (f"on {self.images} unlabelled calibration images fp32 reads none with confidence {CONFIDENT} or "
                    f"more, so the drop cannot be estimated ({self.agreement:.1f} % of readings equal); add a gt.txt")
        return (f"on {self.images} unlabelled calibration images int8 reads {self.drop:.2f} % of fp32's {self.confident} "
                f"confident readings otherwise (estimated drop {self.drop:.2f} points; {self.agreement:.1f} % of "
                "readings equal)")


CONFIDENT = 0.9


def calibration_labels(folder: str | os.PathLike) -> dict[str, str]:
    """Resolved image path → label from a gt.txt in ``folder`` or its parent (the layout of
    create_lmdb_dataset.py's input: ``images/<file>\tlabel``); empty when there is none."""
    from dataset import parse_gt_file

    folder = Path(folder)
    for gt in (folder / "gt.txt", folder.parent / "gt.txt"):
        if gt.is_file():
            samples, _ = parse_gt_file(gt)
            return {str((gt.parent / image).resolve()): label for _, image, label in samples}
    return {}


def compare_int8(fp32_path: str | os.PathLike, int8_path: str | os.PathLike, calib_data: str | os.PathLike,
                 calib_size: int = 256) -> Int8Check:
    """Read the calibration images with both files (greedy, as demo.py) → :class:`Int8Check`."""
    from decoding import DecodeOptions, decode
    from evaluation import normalize_for_scoring as norm

    fp32, int8 = OnnxModel(fp32_path, warn=False), OnnxModel(int8_path, warn=False)
    config, labels = fp32.config, calibration_labels(calib_data)
    rows = []  # (fp32 text, fp32 confidence, int8 text, label or None)
    for images, paths in calibration_items(calib_data, config, calib_size):
        a, b = (decode(m, images, config, DecodeOptions()).results for m in (fp32, int8))
        rows += [(x.text, x.confidence, y.text, labels.get(str(Path(p).resolve())))
                 for x, y, p in zip(a, b, paths)]
    labelled = bool(rows) and all(label is not None for *_, label in rows)
    confident = [(x, y) for x, c, y, _ in rows if c >= CONFIDENT]
    n = len(rows)
    return Int8Check(
        images=n, labelled=labelled, agreement=100 * sum(norm(x) == norm(y) for x, _, y, _ in rows) / n,
        fp32_accuracy=100 * sum(norm(x) == norm(g) for x, _, _, g in rows) / n if labelled else None,
        int8_accuracy=100 * sum(norm(y) == norm(g) for _, _, y, g in rows) / n if labelled else None,
        confident_changed=100 * sum(norm(x) != norm(y) for x, y in confident) / max(len(confident), 1),
        confident=len(confident))
