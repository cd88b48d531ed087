"""The transformer stages (ViT, SVTR, PARSeq): parity with the reference implementations, their
parameter counts, the permutation objective, and the flags around them.

The fixtures ``parseq_reference.pt`` and ``svtr_reference.pt`` were written once from baudm/parseq
(commit 1902db0, timm 0.9.16) and Topdu/OpenOCR's ``openrec/modeling/encoders/svtrnet.py`` on random
weights (stored in fp16, used in fp32 on both sides): a reduced PARSeq (width 32, encoder depth 2,
decoder depth 2) and a reduced SVTR (widths 16/32/64, depths 1/2/1), a few images, and the
references' outputs, attention masks and loss. The reference code is not part of the repository.
"""
import argparse
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from model import ModelConfig, build_model, compute_loss, config_from_args, count_parameters, sequence_loss
from modules.parseq import (EOS_INDEX, causal_masks, from_parseq_state_dict, permutation_loss, permutation_masks,
                            permutations_for)
from modules.prediction import CTC
from modules.svtr import SVTR, from_openocr_svtr_state_dict
from runtime import UsageError
from utils import SENSITIVE_CHARACTER, make_converter

FIXTURES = Path(__file__).parent / "fixtures"
TOLERANCE = 1e-4

# The references' parameter counts, computed by the fixture script from the reference code:
# PARSeq-S and PARSeq-Ti as baudm/parseq builds them (94 characters, 32 x 128 RGB, 4 x 8 patches;
# the paper's 23.8 M), SVTR-Tiny as OpenOCR's svtrnet_ctc_syn.yml with a CTC layer for 36 characters
# + blank (the paper's 4.0 M, which counts the backbone; 3-channel and 1-channel input).
REFERENCE_PARAMS = {"PARSeq-S": 23_832_671, "PARSeq-Ti": 6_018_143, "SVTR-T rgb": 4_167_749, "SVTR-T grey": 4_167_173}


@pytest.fixture(scope="module")
def parseq_ref():
    return torch.load(FIXTURES / "parseq_reference.pt", weights_only=True)


@pytest.fixture(scope="module")
def svtr_ref():
    return torch.load(FIXTURES / "svtr_reference.pt", weights_only=True)


def images_from(fixture) -> torch.Tensor:
    return fixture["images"].float() / 255 * 2 - 1  # the toolkit's (and both references') [-1, 1] input


def parseq_model(ref, **changes):
    c = ref["config"]
    config = ModelConfig("None", "ViT", "None", "PARSeq", imgH=c["imgH"], imgW=c["imgW"], input_channel=3,
                         character=c["charset"], batch_max_length=c["max_label_length"], vit_embed_dim=c["embed_dim"],
                         vit_depth=c["enc_depth"], vit_heads=c["enc_heads"], vit_patch_h=c["patch"][0],
                         vit_patch_w=c["patch"][1], parseq_dec_heads=c["dec_heads"], parseq_dec_depth=c["dec_depth"],
                         **changes)
    model = build_model(config)
    state = from_parseq_state_dict({k: v.float() for k, v in ref["state_dict"].items()})
    model.load_state_dict(state)
    return model.eval()


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a.float() - b.float()).abs().max())


@pytest.mark.parametrize("decode,refine", [("ar", 1), ("nar", 0), ("nar", 2), ("ar", 0)])
def test_parseq_reads_as_the_reference(parseq_ref, decode, refine):
    model = parseq_model(parseq_ref, parseq_decode=decode, parseq_refine_iters=refine)
    x = images_from(parseq_ref)
    with torch.inference_mode():
        memory = model.encode(x)
        logits = model(x, is_train=False)
    assert max_diff(memory, parseq_ref["memory"]) < TOLERANCE
    expected = parseq_ref[f"logits_{decode}_refine{refine}"]
    assert max_diff(logits, expected) < TOLERANCE


def test_parseq_permutation_training_matches_the_reference(parseq_ref):
    """The reference's orders, masks and loss for three labels; our forward with the same orders."""
    model = parseq_model(parseq_ref)  # eval mode: no dropout, so the outputs are comparable
    converter = make_converter("PARSeq", model.config.character)
    text, length = converter.encode(parseq_ref["labels"], model.config.batch_max_length)
    text = text[:, :int(length.max()) + 1]
    assert torch.equal(text, parseq_ref["tgt"])  # the same tokens: [B] label [E] [P]...
    with torch.inference_mode():
        logits = model(images_from(parseq_ref), text[:, :-1], perms=parseq_ref["perms"])
    assert max_diff(logits, parseq_ref["train_logits"]) < TOLERANCE
    loss = sequence_loss(logits, text, length, "PARSeq")
    assert abs(float(loss) - float(parseq_ref["train_loss"])) < TOLERANCE


@pytest.mark.parametrize("which", ["", "long_"])
def test_permutation_masks_equal_the_reference(parseq_ref, which):
    perms = parseq_ref[f"{which}perms"]
    assert len(perms) == 6
    for perm, content, query in zip(perms, parseq_ref[f"{which}content_masks"], parseq_ref[f"{which}query_masks"]):
        ours = permutation_masks(perm)
        assert torch.equal(ours[0], content) and torch.equal(ours[1], query)


@pytest.mark.parametrize("num_chars", [1, 2, 3, 4, 5, 9])
def test_permutations_follow_the_reference_rules(num_chars):
    perms = permutations_for(num_chars, 6, torch.Generator().manual_seed(0))
    L = num_chars
    assert (perms[:, 0] == 0).all()  # [B] first
    assert torch.equal(perms[0], torch.arange(L + 2))  # left to right
    if L == 1:
        assert len(perms) == 1
        return
    assert torch.equal(perms[1], torch.tensor([0, L + 1, *range(L, 0, -1)]))  # mirror, [E] after [B]
    for k in range(2, len(perms), 2):
        assert torch.equal(perms[k + 1, 1:-1], perms[k, 1:-1].flip(0))  # each random order with its mirror
        assert perms[k, -1] == L + 1
    assert len(perms) == {2: 2, 3: 6, 4: 6}.get(L, 6)
    assert len({tuple(p) for p in perms.tolist()}) == len(perms)  # no order twice
    for p in perms:
        assert sorted(p.tolist()) == list(range(L + 2))


def test_left_to_right_loss_is_teacher_forced_cross_entropy(parseq_ref):
    model = parseq_model(parseq_ref)
    converter = make_converter("PARSeq", model.config.character)
    text, length = converter.encode(["abc", "hello42", "x"], model.config.batch_max_length)
    x = images_from(parseq_ref)
    with torch.inference_mode():
        plm = model(x, text[:, :-1], perms=permutations_for(model.config.batch_max_length, 2)[:1])
        forced = model(x, text[:, :-1])  # no orders: the left-to-right (causal) masks
    assert max_diff(plm[0], forced) < 1e-6
    target = text[:, 1:]
    expected = F.cross_entropy(forced.flatten(end_dim=1), target.flatten(), ignore_index=converter.pad_index)
    assert torch.allclose(permutation_loss(plm, target, converter.pad_index), expected, atol=1e-6)
    assert torch.allclose(sequence_loss(forced, text, length, "PARSeq"), expected, atol=1e-6)
    content, query = permutation_masks(torch.arange(text.size(1)))
    assert torch.equal(content, causal_masks(text.size(1) - 1, "cpu")[0]) and torch.equal(query, content)


def test_svtr_matches_the_reference(svtr_ref):
    c = svtr_ref["config"]
    model = build_model(ModelConfig("None", "SVTR", "None", "CTC", imgH=c["imgH"], imgW=c["imgW"], input_channel=3))
    model.FeatureExtraction = SVTR(3, c["imgH"], c["imgW"], c["embed_dims"], c["depths"], c["heads"],
                                   tuple(c["mixers"]), c["out_channels"])
    model.Prediction = CTC(c["out_channels"], 0, c["num_class"])
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in svtr_ref["state_dict"].items()}
    model.load_state_dict(from_openocr_svtr_state_dict(state))
    with torch.inference_mode():
        logits = model.eval()(images_from(svtr_ref), is_train=False)
    assert max_diff(logits, svtr_ref["logits"]) < TOLERANCE


@pytest.mark.parametrize("name,config", [
    ("PARSeq-S", dict(stages=("None", "ViT", "None", "PARSeq"), vit_embed_dim=384, vit_heads=6)),
    ("PARSeq-Ti", dict(stages=("None", "ViT", "None", "PARSeq"), vit_embed_dim=192, vit_heads=3)),
    ("SVTR-T rgb", dict(stages=("None", "SVTR", "None", "CTC"), input_channel=3, imgW=100)),
    ("SVTR-T grey", dict(stages=("None", "SVTR", "None", "CTC"), input_channel=1, imgW=100)),
])
def test_parameter_counts_equal_the_references(name, config):
    stages = config.pop("stages")
    character = SENSITIVE_CHARACTER if stages[3] == "PARSeq" else "0123456789abcdefghijklmnopqrstuvwxyz"
    options = {"imgW": 128, "input_channel": 3, **config}
    model = build_model(ModelConfig(*stages, character=character, **options), init=False)
    assert count_parameters(model) == REFERENCE_PARAMS[name]


# ---------------------------------------------------------------- the stages in the toolkit

import os  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

import demo  # noqa: E402
import onnx_infer  # noqa: E402
import test as test_script  # noqa: E402
import train  # noqa: E402
from checkpoint import export_reference, load_model, read_checkpoint, save_checkpoint  # noqa: E402
from decoding import DecodeOptions, decode  # noqa: E402
from helpers import WORDS, make_gt_folder, make_word_lmdb, render_word, run_main  # noqa: E402
from onnx_model import OnnxExportError, OnnxModel, export_onnx  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY_VIT = ["--FeatureExtraction", "ViT", "--vit_embed_dim", "32", "--vit_depth", "1", "--vit_heads", "2",
            "--imgW", "128", "--batch_max_length", "8"]
TINY_PARSEQ = ["--Transformation", "None", *TINY_VIT, "--SequenceModeling", "None", "--Prediction", "PARSeq"]
TINY_OPTIONS = {"None-ViT-None-PARSeq": dict(imgW=128, batch_max_length=8, vit_embed_dim=32, vit_depth=1, vit_heads=2),
                "None-ViT-BiLSTM-PARSeq": dict(imgW=128, batch_max_length=8, vit_embed_dim=32, vit_depth=1,
                                               vit_heads=2, hidden_size=32),
                "None-VGG-None-PARSeq": dict(batch_max_length=8, output_channel=32),
                "None-SVTR-None-CTC": dict(imgW=100),  # SVTR-Tiny's own sizes
                "TPS-SVTR-BiLSTM-Attn": dict(imgW=100, hidden_size=16, batch_max_length=8),
                "None-ViT-None-CTC": dict(imgW=128, vit_embed_dim=32, vit_depth=1, vit_heads=2)}


def tiny(name: str, **changes) -> ModelConfig:
    return ModelConfig(*name.split("-"), **{**TINY_OPTIONS[name], **changes})


def word_images(config: ModelConfig, words) -> torch.Tensor:
    from dataset import AlignCollate
    collate = AlignCollate(config.imgH, config.imgW, keep_ratio_with_pad=config.PAD)
    return collate([(render_word(w, config.imgH).convert("RGB" if config.rgb else "L"), w) for w in words])[0]


@pytest.mark.parametrize("name", [n for n in TINY_OPTIONS if n != "None-SVTR-None-CTC"])  # its parts are in TPS-SVTR
def test_every_parameter_learns_through_the_one_loss(name):
    torch.manual_seed(0)
    config = tiny(name)
    model = build_model(config).train()
    loss = compute_loss(model, word_images(config, WORDS[:3]), WORDS[:3], make_converter(config.Prediction,
                                                                                         config.character), config)
    loss.backward()
    assert torch.isfinite(loss)
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing[:5]  # DDP needs no find_unused_parameters
    with torch.inference_mode():
        read = decode(model.eval(), word_images(config, WORDS[:2]), config)
    assert len(read.texts) == 2 and read.logits.size(-1) == config.num_class


def test_bf16_loss_is_close_to_fp32():
    torch.manual_seed(0)
    config = tiny("None-ViT-None-PARSeq")
    model = build_model(config).eval()  # eval: the same orders and no dropout in both runs
    images, converter = word_images(config, WORDS[:4]), make_converter("PARSeq", config.character)
    losses = []
    for dtype in (None, torch.bfloat16):
        torch.manual_seed(1)
        losses.append(float(compute_loss(model, images, WORDS[:4], converter, config, dtype).detach()))
    assert abs(losses[0] - losses[1]) < 0.05 * losses[0]


@pytest.fixture(scope="module")
def parseq_checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "parseq.pth"
    model = build_model(tiny("None-ViT-None-PARSeq"))
    save_checkpoint(path, model)
    return path, model.eval()


def test_checkpoint_describes_the_stages(parseq_checkpoint):
    path, model = parseq_checkpoint
    loaded = load_model(path)
    assert loaded.config == model.config
    assert read_checkpoint(path)["config"]["vit_embed_dim"] == 32
    image = word_images(model.config, WORDS[:2])
    with torch.inference_mode():
        assert torch.equal(loaded.model(image, is_train=False), model(image, is_train=False))
    nar = load_model(path, {"parseq_decode": "nar", "parseq_refine_iters": 0})
    assert nar.model.Prediction.decode_mode == "nar" and nar.model.Prediction.refine_iters == 0


@pytest.mark.parametrize("flags, message", [
    ({"vit_depth": 2}, "--vit_depth 2 (the checkpoint has 1)"),
    ({"imgW": 160}, "--imgW 160 (the checkpoint has 128)"),  # the position embedding fixes the width
    ({"batch_max_length": 25}, "--batch_max_length 25 (the checkpoint has 8)"),  # PARSeq's position queries
    ({"Prediction": "Attn"}, "--Prediction Attn"),
])
def test_checkpoint_refuses_flags_that_change_the_stages(parseq_checkpoint, flags, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_model(parseq_checkpoint[0], flags)


def test_fine_tuning_remaps_the_parseq_rows(parseq_checkpoint):
    path, model = parseq_checkpoint
    new = "abcxyz!"
    loaded = load_model(path, {"character": new}, fine_tune=True)
    old_state, state = model.state_dict(), loaded.model.state_dict()
    old_index = {c: i + 1 for i, c in enumerate(model.config.character)}
    for j, c in enumerate(new, 1):
        if c in old_index:
            assert torch.equal(state["Prediction.head.weight"][j], old_state["Prediction.head.weight"][old_index[c]])
            assert torch.equal(state["Prediction.text_embed.embedding.weight"][j],
                               old_state["Prediction.text_embed.embedding.weight"][old_index[c]])
    n, old_n = len(new) + 1, model.config.num_class
    for offset in (0, 1):  # [B] and [P] follow the head's classes in both sets
        assert torch.equal(state["Prediction.text_embed.embedding.weight"][n + offset],
                           old_state["Prediction.text_embed.embedding.weight"][old_n + offset])
    assert loaded.model.Prediction.head.out_features == n


def test_beam_search_is_refused_with_the_supported_choices(parseq_checkpoint):
    _, model = parseq_checkpoint
    with pytest.raises(UsageError, match="--decoder beam is not supported for --Prediction PARSeq"):
        decode(model, word_images(model.config, WORDS[:1]), model.config, DecodeOptions("beam"))


@pytest.mark.parametrize("name, changes", [("None-ViT-None-PARSeq", {"batch_max_length": 3}),  # AR: every step
                                           ("None-ViT-None-PARSeq", {"parseq_decode": "nar"}),
                                           ("None-SVTR-None-CTC", {})])
def test_onnx_export_reads_as_pytorch(name, changes, tmp_path):
    torch.manual_seed(0)
    config = tiny(name, **changes)
    model = build_model(config).eval()
    with torch.no_grad():  # a sharper head than random init, so that readings end with [E] at different steps
        model.Prediction.weight.mul_(20) if name.endswith("CTC") else model.Prediction.head.weight.mul_(20)
    onnx_model = OnnxModel(export_onnx(model, tmp_path / "m.onnx"))
    assert not onnx_model.dynamic_width
    image = word_images(config, WORDS[:6])
    with torch.inference_mode():
        eager, exported = decode(model, image, config), decode(onnx_model, image, config)
    logits, strings, onnx_logits, onnx_strings = eager.logits, eager.texts, exported.logits, exported.texts
    assert onnx_strings == strings
    assert max_diff(onnx_logits, logits) < TOLERANCE  # refinement reads every position in both
    assert onnx_infer.decode(onnx_logits.numpy(), config.to_dict()) == strings  # the torch-free reader too


def test_onnx_refuses_a_dynamic_width_for_a_position_embedding(tmp_path):
    with pytest.raises(OnnxExportError, match="ViT cannot take a dynamic width"):
        export_onnx(build_model(tiny("None-ViT-None-CTC")), tmp_path / "m.onnx", dynamic_width=True)


# ---------------------------------------------------------------- scripts

def exit_code_and_error(capsys, main, argv) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        main(argv)
    return e.value.code, capsys.readouterr().err.strip()


@pytest.mark.parametrize("flags, message", [
    (["--FeatureExtraction", "ViT", "--imgW", "100"], "--vit_patch_w 8 does not divide --imgW 100"),
    (["--FeatureExtraction", "ViT", "--imgW", "128", "--vit_heads", "5"], "--vit_heads 5 must divide --vit_embed_dim"),
    (["--FeatureExtraction", "VGG", "--vit_size", "tiny"], "--vit_size applies to --FeatureExtraction ViT only"),
    (["--FeatureExtraction", "SVTR", "--imgH", "40"], "SVTR needs --imgH a multiple of 16"),
    (["--FeatureExtraction", "SVTR", "--output_channel", "256"], "drop --output_channel"),
    (["--FeatureExtraction", "VGG", "--Prediction", "Attn", "--parseq_decode", "nar"],
     "--parseq_decode applies to --Prediction PARSeq only, not --Prediction Attn"),
    (["--FeatureExtraction", "VGG", "--Prediction", "PARSeq", "--parseq_perm_num", "3"], "must be even"),
    # Decoder heads that do not divide its width: given, or the default (width / 32) of a width set elsewhere.
    (["--FeatureExtraction", "ViT", "--vit_size", "tiny", "--Prediction", "PARSeq", "--parseq_dec_heads", "5"],
     "--parseq_dec_heads 5 does not divide the decoder's width 192"),
    (["--FeatureExtraction", "ViT", "--vit_embed_dim", "100", "--vit_heads", "4", "--Prediction", "PARSeq"],
     "the default --parseq_dec_heads (3 = the width / 32) does not divide the decoder's width 100"),
    (["--FeatureExtraction", "VGG", "--SequenceModeling", "BiLSTM", "--hidden_size", "100", "--Prediction",
      "PARSeq"], "does not divide the decoder's width 100"),
    (["--FeatureExtraction", "ViT", "--Prediction", "PARSeq", "--parseq_refine_iters", "1000000"],
     "--parseq_refine_iters must be between 0 and 10 (--Prediction PARSeq), got 1000000"),
])
def test_bad_flags_are_one_line_and_exit_2(capsys, tmp_path, monkeypatch, flags, message):
    monkeypatch.chdir(tmp_path)
    stages = {"--Transformation": "None", "--SequenceModeling": "None", "--Prediction": "CTC"}
    for flag, value in zip(flags[::2], flags[1::2]):
        stages.pop(flag, None)
    argv = ["--train_data", "missing", "--valid_data", "missing", *flags,
            *[x for kv in stages.items() for x in kv]]
    code, err = exit_code_and_error(capsys, train.main, argv)
    assert code == 2 and message in err and len(err.splitlines()) == 1, err


def test_vit_takes_parseqs_width_when_no_imgw_is_given():
    """A combination's name defaults apply to flags too: --FeatureExtraction ViT without --imgW is 32 x 128."""
    from model import config_from_flags

    flags = {"Transformation": "None", "FeatureExtraction": "ViT", "SequenceModeling": "None", "Prediction": "CTC"}
    assert config_from_flags(flags).imgW == 128
    assert config_from_flags({**flags, "imgW": 256}).imgW == 256


@pytest.mark.parametrize("flags, message", [
    (["--imgW", "96"], "its position embedding has 128 patches of 4 x 8 pixels, but --imgH 32 x --imgW 96 gives 96: "
                       "use the image size it was trained with"),
    (["--vit_embed_dim", "64"], "it has --vit_embed_dim 32, not 64"),
    (["--batch_max_length", "10"], "it has --batch_max_length 8, not 10"),
    (["--vit_depth", "2"], "it has --vit_depth 1, not 2"),
])
def test_a_bare_parseq_state_dict_names_the_flag_that_differs(tmp_path, flags, message):
    """A bare PARSeq state_dict loaded with another image size or width: the flag to change, not tensor shapes."""
    model = build_model(tiny("None-ViT-None-PARSeq"))
    export_reference(tmp_path / "bare.pth", model)
    given = dict(zip(flags[::2], flags[1::2]))
    argv = [a for i, a in enumerate(TINY_PARSEQ) if not (a in given or (i and TINY_PARSEQ[i - 1] in given))]
    make_gt_folder(tmp_path / "words", WORDS[:2], copies=1)
    proc = run_main("demo.py", "--image_folder", "words/images", "--saved_model", "bare.pth", *argv, *flags,
                    cwd=tmp_path, check=False)
    assert proc.returncode == 1 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_test_py_refuses_wrong_flags_and_beam_for_a_parseq_checkpoint(capsys, tmp_path, monkeypatch,
                                                                      parseq_checkpoint):
    monkeypatch.chdir(tmp_path)
    folder = make_gt_folder(tmp_path / "eval", WORDS[:2], copies=1)
    base = ["--eval_data", str(folder), "--saved_model", str(parseq_checkpoint[0]), "--workers", "0"]
    code, err = exit_code_and_error(capsys, test_script.main, [*base, "--vit_depth", "3"])
    assert code == 2 and "--vit_depth 3 (the checkpoint has 1)" in err
    code, err = exit_code_and_error(capsys, test_script.main, [*base, "--decoder", "beam"])
    assert code == 2 and "--decoder greedy" in err


def test_benchmark_all_eval_and_demo_read_a_parseq_checkpoint(tmp_path, monkeypatch, parseq_checkpoint):
    monkeypatch.chdir(tmp_path)
    for name in test_script.BENCHMARKS:
        make_gt_folder(tmp_path / "bench" / name, WORDS[:2], copies=1)
    result = test_script.main(["--eval_data", str(tmp_path / "bench"), "--benchmark_all_eval", "--saved_model",
                               str(parseq_checkpoint[0]), "--workers", "0", "--parseq_decode", "nar"])
    assert set(result["accuracy"]) == set(test_script.BENCHMARKS)
    demo.main(["--image_folder", str(tmp_path / "bench" / "SVT" / "images"), "--saved_model",
               str(parseq_checkpoint[0]), "--log_file", str(tmp_path / "demo.txt"), "--workers", "0"])
    assert "0.png" in (tmp_path / "demo.txt").read_text()


# ---------------------------------------------------------------- training

@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make_word_lmdb(root / "train" / "MJ", 24, seed=0, max_len=6)
    make_word_lmdb(root / "valid" / "v", 4, seed=1, max_len=6)
    return root


def train_args(data: Path, *args) -> list[str]:
    return ["--train_data", str(data / "train"), "--valid_data", str(data / "valid"), "--select_data", "MJ",
            "--batch_ratio", "1", *TINY_PARSEQ, "--workers", "0", "--batch_size", "4", "--progress", "off",
            "--adam", "--lr", "0.001", "--parseq_decode", "nar", *map(str, args)]  # nar: validation is quicker


def test_parseq_resume_is_exact(data, tmp_path, monkeypatch):
    """The permutations come from torch's generator, whose state last.pth keeps: a resumed run draws the same."""
    monkeypatch.chdir(tmp_path)
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        common = ("--valInterval", 2, "--deterministic")
        train.main(train_args(data, "--num_iter", 4, *common, "--exp_name", "full"))
        train.main(train_args(data, "--num_iter", 2, *common, "--exp_name", "part"))
        train.main(train_args(data, "--num_iter", 4, *common, "--exp_name", "part", "--resume", "auto"))
    finally:
        torch.use_deterministic_algorithms(deterministic)
    full, part = ([line.rsplit(",", 1)[0] for line in (tmp_path / "saved_models" / e / "log_valid.csv").read_text()
                   .splitlines()] for e in ("full", "part"))  # all but the elapsed-time column
    assert len(full) == 4 and full == part  # header + iterations 1, 2, 4: losses, accuracy, lr identical


def test_parseq_ddp_two_processes_gloo(data, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(port), str(ROOT / "train.py"),
               *train_args(data, "--num_iter", 2, "--valInterval", 2, "--exp_name", "ddp", "--amp", "bf16")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "STR_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert read_checkpoint(tmp_path / "saved_models" / "ddp" / "last.pth")["iteration"] == 2
