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
from utils import SENSITIVE_CHARACTER, UsageError, make_converter

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
