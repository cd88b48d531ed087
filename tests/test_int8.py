"""int8 that reads the same on CPUs with and without VNNI: the settings in the graph and its metadata, the
warning for files that saturate on this CPU, and export.py's accuracy check (--max_drop, --on_drop).

Why 7-bit weights: on x86 CPUs without VNNI, ONNX Runtime's u8s8 kernels add pairs of uint8 x int8
products into int16, which saturates past 32767; with |weight| <= 64 no pair can (2 x 255 x 64 = 32640).
This CPU-independent bound is what the first test checks, so a file exported here reads the same on an
AVX2-only CPU; where qemu-user is installed, the emulated-CPU tests run both exports on one (qemu-x86_64 -cpu
EPYC-Rome: AVX2, no VNNI) and show the 7-bit file reading as fp32 and the 8-bit one saturating. The saturation itself cannot happen on a VNNI CPU, so the accuracy check is tested with a
model whose int8 reading collapses on any CPU: one first-layer channel scaled by 1e4 (and the next layer's
input scaled back, so fp32 reads the same) takes the whole per-tensor activation range, and every other
channel quantises to zero.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

import onnx_model
import runtime
from checkpoint import load_model, save_checkpoint
from helpers import WORDS, make_gt_folder
from onnx_model import Int8Settings, OnnxModel, export_onnx, int8_saturation_warning, quantize_int8
from test_onnx import calibrated_model, tiny_config, word_batch

READER = Path(__file__).parent / "fixtures" / "tiny_reader_ctc.pth"  # reads WORDS; see train_reader()
NO_VNNI = {"sse2", "avx2", "avx512f"}  # an AVX-512 CPU without VNNI (Skylake-SP), or add nothing: AVX2 only
INT16_MAX = 32767


def train_reader(path: Path = READER, iterations: int = 200) -> None:
    """The fixture: a None-VGG-None-CTC (output_channel 32) trained until it reads the 16 WORDS exactly, so
    that its readings have margins int8 keeps (a random model's readings are near-ties). Regenerate with
    ``python tests/test_int8.py`` (a minute on 2 cores)."""
    from model import build_model, compute_loss
    from utils import make_converter

    torch.manual_seed(0)
    config = tiny_config("None-VGG-None-CTC")
    model, images = build_model(config).train(), word_batch(config, WORDS)
    converter, optimizer = make_converter("CTC", config.character), torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(iterations):
        loss = compute_loss(model, images, WORDS, converter, config)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    save_checkpoint(path, model.eval())


def scale_first_channel(model: torch.nn.Module, factor: float = 1e4) -> torch.nn.Module:
    """Same fp32 function (ReLU and max pooling commute with a positive scale), int8-hostile activations."""
    conv0, conv1 = model.FeatureExtraction.ConvNet[0], model.FeatureExtraction.ConvNet[3]
    with torch.no_grad():
        conv0.weight[0] *= factor
        conv0.bias[0] *= factor
        conv1.weight[:, 0] /= factor
    return model


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("int8")


@pytest.fixture(scope="module")
def calib(work) -> Path:
    """Rendered WORDS with their gt.txt beside images/ (labelled: the check compares accuracies)."""
    return make_gt_folder(work / "calib", copies=1)


@pytest.fixture(scope="module")
def readers(work) -> dict[str, Path]:
    """The trained reader as a checkpoint, and its first-channel-scaled twin."""
    if not READER.exists():
        pytest.fail(f"{READER} is missing: run `python tests/test_int8.py` to make it")
    model = load_model(READER).model
    paths = {"plain": work / "reader.pth", "scaled": work / "scaled.pth"}
    save_checkpoint(paths["plain"], model)
    save_checkpoint(paths["scaled"], scale_first_channel(load_model(READER).model))
    return paths


@pytest.fixture(scope="module")
def lstm_files(work, calib) -> dict[str, Path]:
    """A BiLSTM model exported fp32, and int8 with the default (7-bit) and 8-bit weights."""
    model = calibrated_model(tiny_config("None-VGG-BiLSTM-CTC"))
    fp32 = export_onnx(model, work / "lstm.onnx")
    return {"fp32": fp32, "7bit": quantize_int8(fp32, work / "lstm_7bit.onnx", calib / "images"),
            "8bit": quantize_int8(fp32, work / "lstm_8bit.onnx", calib / "images", settings=Int8Settings(False))}


def int8_weights(path: Path) -> list[np.ndarray]:
    proto = onnx.load(path)
    return [numpy_helper.to_array(t) for t in proto.graph.initializer if t.data_type == onnx.TensorProto.INT8]


def quantized_metadata(path: Path) -> dict:
    return json.loads({p.key: p.value for p in onnx.load(path).metadata_props}[onnx_model.METADATA_KEY])["quantized"]


def test_default_weights_are_7bit_so_no_pair_saturates_without_vnni(lstm_files):
    weights = int8_weights(lstm_files["7bit"])
    ops = {n.op_type for n in onnx.load(lstm_files["7bit"]).graph.node}
    assert "DynamicQuantizeLSTM" in ops  # the LSTM weights are among those checked
    largest = max(int(np.abs(w.astype(np.int32)).max()) for w in weights)
    assert largest <= 64 and 2 * 255 * largest <= INT16_MAX, largest
    assert max(int(np.abs(w.astype(np.int32)).max()) for w in int8_weights(lstm_files["8bit"])) > 64


def test_weights_are_per_channel(lstm_files):
    """Every Conv's weight Dequantize has one scale per output channel."""
    proto = onnx.load(lstm_files["7bit"])
    inits = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    producers = {o: n for n in proto.graph.node for o in n.output}
    convs = [n for n in proto.graph.node if n.op_type == "Conv"]
    assert convs
    for conv in convs:
        dq = producers[conv.input[1]]
        assert dq.op_type == "DequantizeLinear"
        scale, weight = inits[dq.input[1]], inits[dq.input[0]]
        assert scale.shape == (weight.shape[0],), (conv.name, scale.shape)


def test_settings_are_recorded_in_the_metadata(lstm_files, calib):
    seven, eight = quantized_metadata(lstm_files["7bit"]), quantized_metadata(lstm_files["8bit"])
    assert seven["reduce_range"] is True and seven["weight_bits"] == 7 and seven["weights"] == "int8 per channel"
    assert eight["reduce_range"] is False and eight["weight_bits"] == 8
    assert seven["activations"] == "uint8" and seven["lstm"] == "DynamicQuantizeLSTM"
    assert seven["calib_images"] == len(list((calib / "images").iterdir()))
    assert "Conv" in seven["ops"] and seven["calibration"].startswith("percentile")


@pytest.mark.parametrize("quantized, flags, machine, warns", [
    ({"reduce_range": False}, NO_VNNI, "x86_64", True),
    ({"reduce_range": False}, {"avx2"}, "AMD64", True),
    ("int8 static QDQ", NO_VNNI, "x86_64", True),  # written before the settings were recorded: 8-bit
    ({"reduce_range": True}, NO_VNNI, "x86_64", False),
    ({"reduce_range": False}, NO_VNNI | {"avx512_vnni"}, "x86_64", False),
    ({"reduce_range": False}, {"avx2", "avx_vnni"}, "x86_64", False),
    ({"reduce_range": False}, {"fp", "asimd"}, "aarch64", False),
    ({"reduce_range": False}, set(), "x86_64", False),  # flags unknown: no guess
    (None, NO_VNNI, "x86_64", False),  # fp32
])
def test_saturation_warning_rules(quantized, flags, machine, warns):
    info = {"quantized": quantized} if quantized else {}
    message = int8_saturation_warning(info, flags, machine)
    assert (message is not None) == warns
    if warns:
        assert "VNNI" in message and "export.py" in message


def test_loading_an_8bit_file_warns_on_a_cpu_without_vnni(lstm_files, monkeypatch, capsys):
    monkeypatch.setattr(onnx_model.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(runtime, "cpu_flags", lambda: set(NO_VNNI))
    OnnxModel(lstm_files["7bit"])
    assert "warning" not in capsys.readouterr().out
    OnnxModel(lstm_files["8bit"])
    assert "8-bit weights" in capsys.readouterr().out
    monkeypatch.setattr(runtime, "cpu_flags", lambda: NO_VNNI | {"avx512_vnni"})
    OnnxModel(lstm_files["8bit"])
    assert "warning" not in capsys.readouterr().out


def test_onnx_infer_warns_too(lstm_files, monkeypatch, capsys):
    import onnx_infer

    monkeypatch.setattr(onnx_infer, "cpu_flags", lambda: set(NO_VNNI))
    monkeypatch.setattr(onnx_infer.platform, "machine", lambda: "x86_64")
    onnx_infer.load(str(lstm_files["8bit"]))
    assert "8-bit weights" in capsys.readouterr().err
    onnx_infer.load(str(lstm_files["7bit"]))
    assert "warning" not in capsys.readouterr().err


def export_int8(saved: Path, out: Path, calib_images: Path, *extra: str):
    from export import main

    return main(["--saved_model", str(saved), "--format", "onnx", "--output", str(out), "--quantize", "int8",
                 "--calib_data", str(calib_images), *extra])


def test_a_reader_passes_the_check(readers, calib, work, capsys):
    out = work / "reader_int8.onnx"
    export_int8(readers["plain"], out, calib / "images")
    printed = capsys.readouterr().out
    assert "int8 check: on 16 labelled calibration images" in printed and "drop 0.00 points" in printed, printed
    assert out.exists()


@pytest.mark.parametrize("labelled", [True, False])
def test_an_int8_file_that_reads_worse_is_refused_and_not_written(readers, calib, work, labelled, capsys):
    from runtime import UserErrorExit

    images = calib / "images"
    if not labelled:  # the same images without gt.txt: the drop is estimated from fp32's confident readings
        images = work / "unlabelled"
        images.mkdir(exist_ok=True)
        for f in (calib / "images").iterdir():
            (images / f.name).write_bytes(f.read_bytes())
    out = work / f"scaled_{labelled}.onnx"
    with pytest.raises(UserErrorExit) as e:
        export_int8(readers["scaled"], out, images)
    assert e.value.code == 1
    assert "more than --max_drop 1" in str(e.value) and "was not written" in str(e.value)
    assert ("labelled" if labelled else "unlabelled") in str(e.value)
    assert not out.exists() and not list(work.glob("*.tmp*"))


def test_the_scaled_reader_reads_all_words_in_fp32(readers, work):
    """So the drop that the check refuses above is int8's alone."""
    from decoding import decode
    from export import main

    fp32 = work / "scaled_fp32.onnx"
    main(["--saved_model", str(readers["scaled"]), "--format", "onnx", "--output", str(fp32)])
    config = OnnxModel(fp32).config
    assert decode(OnnxModel(fp32), word_batch(tiny_config("None-VGG-None-CTC"), WORDS), config).texts == WORDS


def test_on_drop_warn_writes_the_file_with_a_warning(readers, calib, work, capsys):
    out = work / "scaled_warn.onnx"
    export_int8(readers["scaled"], out, calib / "images", "--on_drop", "warn")
    assert "warning: the int8 model loses" in capsys.readouterr().out
    assert out.exists() and quantized_metadata(out)["reduce_range"] is True


def test_a_larger_max_drop_lets_it_through(readers, calib, work):
    out = work / "scaled_100.onnx"
    export_int8(readers["scaled"], out, calib / "images", "--max_drop", "100")
    assert out.exists()


# --- on an emulated AVX2-only CPU (qemu-user): where 8-bit weights saturate ----------------------------

@pytest.fixture(scope="module")
def emulated(readers, calib, work) -> dict:
    """The trained reader exported fp32, int8 with the default (7-bit) and with 8-bit weights, each read
    natively and under ``qemu-x86_64 -cpu EPYC-Rome`` (one emulated child, a few seconds), with the
    MatMulInteger probe that shows the emulated CPU takes the saturating kernels."""
    from cpu_emulation import emulation_unavailable, probe_input, run_emulated, saturation_probe_model
    from export import main

    if reason := emulation_unavailable("avx2"):
        pytest.skip(reason)
    fp32 = work / "emulated_fp32.onnx"
    main(["--saved_model", str(readers["plain"]), "--format", "onnx", "--output", str(fp32)])
    files = {"fp32": fp32, "7bit": quantize_int8(fp32, work / "emulated_7bit.onnx", calib / "images"),
             "8bit": quantize_int8(fp32, work / "emulated_8bit.onnx", calib / "images", settings=Int8Settings(False))}
    images = word_batch(tiny_config("None-VGG-None-CTC"), WORDS)
    native = {name: OnnxModel(path, warn=False)(images) for name, path in files.items()}
    jobs = {name: (path, [images.numpy()]) for name, path in files.items()}
    jobs["probe"] = (saturation_probe_model(work / "probe.onnx"), [probe_input()])
    outputs = run_emulated(jobs, "avx2", timeout=600)
    return {"native": native, "emulated": {name: torch.from_numpy(out[0]) for name, out in outputs.items()},
            "config": OnnxModel(fp32).config}


def test_emulation_says_why_it_cannot_run(monkeypatch):
    import cpu_emulation

    monkeypatch.setattr(cpu_emulation.shutil, "which", lambda name: None)
    assert "apt-get install qemu-user" in cpu_emulation.emulation_unavailable("avx2")
    assert "unknown CPU to emulate" in cpu_emulation.emulation_unavailable("avx9")
    with pytest.raises(cpu_emulation.EmulationError, match="qemu-x86_64 is not installed"):
        cpu_emulation.run_emulated({}, "avx2")


def texts(logits: torch.Tensor, config) -> list[str]:
    from decoding import DecodeOptions, decode_logits

    return [d.text for d in decode_logits(logits, config, DecodeOptions())]


def test_the_emulated_cpu_takes_the_saturating_int8_kernels(emulated):
    """Without this the two tests below would prove nothing: qemu must hide VNNI from ONNX Runtime."""
    from cpu_emulation import PROBE_SATURATED

    assert int(emulated["emulated"]["probe"].item()) == PROBE_SATURATED


def test_the_default_7bit_export_reads_like_fp32_on_an_avx2_only_cpu(emulated):
    native, emulated_, config = emulated["native"], emulated["emulated"], emulated["config"]
    assert texts(native["fp32"], config) == WORDS
    assert texts(emulated_["7bit"], config) == texts(native["7bit"], config) == WORDS
    # Integer kernels without a saturating step give the same sums: the logits agree to float rounding.
    assert torch.allclose(emulated_["7bit"], native["7bit"], atol=1e-3)


def test_an_8bit_export_saturates_on_an_avx2_only_cpu(emulated):
    """The failure the 7-bit default prevents, shown on the same model and images (so the test above can fail)."""
    native, emulated_, config = emulated["native"], emulated["emulated"], emulated["config"]
    # Compared with fp32, not with the native 8-bit reading: a host without VNNI saturates natively too.
    assert (emulated_["8bit"] - native["fp32"]).abs().max() > 1.0
    assert sum(a != b for a, b in zip(texts(emulated_["8bit"], config), WORDS)) >= len(WORDS) // 2


@pytest.mark.parametrize("args, message", [
    (["--max_drop", "2"], "--max_drop applies to --quantize int8 only"),
    (["--quantize", "int8", "--calib_data", ".", "--max_drop", "-1"], "--max_drop is a number of accuracy points"),
])
def test_max_drop_flags_are_checked(args, message, tmp_path):
    from export import export
    from runtime import UsageError

    with pytest.raises(UsageError, match=message):
        export(["--saved_model", "x.pth", "--format", "onnx", "--output", str(tmp_path / "x.onnx"), *args])


if __name__ == "__main__":
    train_reader()
    print(f"wrote {READER}")
