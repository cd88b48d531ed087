"""The recipe options that other projects' training and reading use: stochastic depth (--drop_path, ViT and SVTR),
CTC's loss reduction (--ctc_reduction) and the greedy confidence's end token (--confidence_with_end)."""
import math

import pytest
import torch

from decoding import greedy, greedy_attention
from model import ModelConfig, build_model, config_from_flags, sequence_loss
from modules.parseq import EOS_INDEX as PARSEQ_END
from modules.prediction import CTC
from modules.vit import DropPath
from runtime import UsageError


def small_vit(**options) -> ModelConfig:
    return ModelConfig("None", "ViT", "None", "PARSeq", imgH=32, imgW=64, input_channel=1, vit_embed_dim=32,
                       vit_depth=3, vit_heads=2, vit_patch_h=8, vit_patch_w=8, batch_max_length=5, **options)


def svtr(**options) -> ModelConfig:
    return ModelConfig("None", "SVTR", "None", "CTC", imgH=32, imgW=32, input_channel=1, **options)


# --- --drop_path ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [small_vit, svtr], ids=["ViT", "SVTR"])
def test_drop_path_is_random_in_training_the_identity_in_eval_and_keeps_the_keys(make):
    torch.manual_seed(0)
    plain = build_model(make())
    dropping = build_model(make(drop_path=0.5))
    assert list(plain.state_dict()) == list(dropping.state_dict())
    dropping.load_state_dict(plain.state_dict())
    x = torch.randn(4, 1, 32, plain.config.imgW)
    extractor = dropping.FeatureExtraction
    dropping.train()
    assert not torch.equal(extractor(x), extractor(x))  # a new draw of dropped blocks each call
    dropping.load_state_dict(plain.state_dict())  # the running BatchNorm statistics (SVTR) as they were
    plain.eval(), dropping.eval()
    with torch.no_grad():
        assert torch.equal(extractor(x), extractor(x))
        assert torch.allclose(extractor(x), plain.FeatureExtraction(x), atol=1e-6)


def test_drop_path_rates_rise_linearly_over_the_blocks():
    vit = build_model(small_vit(drop_path=0.2)).FeatureExtraction
    assert [b.drop_path.rate for b in vit.blocks] == pytest.approx([0.0, 0.1, 0.2])
    blocks = [*build_model(svtr(drop_path=0.11)).FeatureExtraction.blocks1,
              *build_model(svtr(drop_path=0.11)).FeatureExtraction.blocks2,
              *build_model(svtr(drop_path=0.11)).FeatureExtraction.blocks3]
    assert [b.drop_path.rate for b in blocks] == pytest.approx([i * 0.01 for i in range(12)])  # OpenOCR's, over 12


def test_drop_path_drops_whole_samples_and_scales_the_kept():
    torch.manual_seed(1)
    drop = DropPath(0.5).train()
    out = drop(torch.ones(64, 3, 5))
    per_sample = out.flatten(1)
    assert set(per_sample.unique().tolist()) == {0.0, 2.0}  # dropped, or kept and scaled by 1 / (1 - 0.5)
    assert (per_sample == per_sample[:, :1]).all()


def test_drop_path_is_checked_and_belongs_to_the_transformers():
    with pytest.raises(UsageError, match="--drop_path must be between 0 and 1"):
        small_vit(drop_path=1.5)
    with pytest.raises(UsageError, match="--drop_path applies to --FeatureExtraction ViT or SVTR only"):
        config_from_flags({"Transformation": "None", "FeatureExtraction": "VGG", "SequenceModeling": "BiLSTM",
                           "Prediction": "CTC", "drop_path": 0.1})


def test_drop_path_may_differ_from_the_checkpoints():
    """It changes no weight: fine-tuning a checkpoint trained without it may use it."""
    assert config_from_flags({"drop_path": 0.1}, base=small_vit()).drop_path == 0.1


# --- --ctc_reduction ----------------------------------------------------------------------------------------

def test_ctc_reductions_on_a_hand_computed_example():
    """Uniform probabilities over (blank, a, b), 2 frames: "a" has 3 paths (a a, a -, - a) of (1/3)^2, so its loss
    is log 3; "ab" has one path, loss 2 log 3. The reference's mean divides by the label lengths, then averages:
    (log 3 / 1 + 2 log 3 / 2) / 2 = log 3; OpenOCR's sum_mean averages the sums: (log 3 + 2 log 3) / 2."""
    preds = torch.zeros(2, 2, 3)  # [B, T, C]
    text, length = torch.tensor([[1, 0], [1, 2]]), torch.tensor([1, 2])
    assert CTC.loss(preds, text, length).item() == pytest.approx(math.log(3), rel=1e-5)
    assert CTC.loss(preds, text, length, reduction="sum_mean").item() == pytest.approx(1.5 * math.log(3), rel=1e-5)
    config = ModelConfig("None", "VGG", "BiLSTM", "CTC", character="ab", ctc_reduction="sum_mean")
    assert sequence_loss(preds, text, length, "CTC", config).item() == pytest.approx(1.5 * math.log(3), rel=1e-5)
    assert sequence_loss(preds, text, length, "CTC").item() == pytest.approx(math.log(3), rel=1e-5)


def test_ctc_reduction_is_checked():
    with pytest.raises(UsageError, match="--ctc_reduction 'sum' is not one of mean, sum_mean"):
        ModelConfig("None", "VGG", "BiLSTM", "CTC", ctc_reduction="sum")


# --- --confidence_with_end ----------------------------------------------------------------------------------

def parseq_confidence(probs: torch.Tensor) -> list[float]:
    """baudm/parseq's: Tokenizer.decode's greedy ids and probabilities, ``_filter`` (probs[:eos_idx + 1]: the
    [E]'s probability included when there is one), then ``prod()`` as its test.py."""
    out = []
    for p, ids in zip(*probs.max(-1)):
        ids = ids.tolist()
        eos = ids.index(PARSEQ_END) if PARSEQ_END in ids else len(ids)
        out.append(p[:eos + 1].prod().item())
    return out


def test_confidence_with_end_is_parseqs_convention():
    # [E], a, b; three readings: "a" then [E], no [E] at all, [E] first (the empty reading).
    probs = torch.tensor([[[0.2, 0.6, 0.2], [0.7, 0.2, 0.1], [0.1, 0.4, 0.5]],
                          [[0.1, 0.8, 0.1], [0.2, 0.3, 0.5], [0.3, 0.6, 0.1]],
                          [[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.5, 0.3, 0.2]]])
    logits = probs.log()
    character = ["[E]", "a", "b"]
    with_end = greedy_attention(logits, character, eos_index=PARSEQ_END, with_end=True)
    assert [d.confidence for d in with_end] == pytest.approx(parseq_confidence(probs))
    assert [d.confidence for d in with_end] == pytest.approx([0.6 * 0.7, 0.8 * 0.5 * 0.6, 0.9])
    default = greedy_attention(logits, character, eos_index=PARSEQ_END)
    assert [d.confidence for d in default] == pytest.approx([0.6, 0.8 * 0.5 * 0.6, 0.9])  # the reference's
    assert [d.text for d in default] == [d.text for d in with_end] == ["a", "aba", ""]
    assert [d.char_confidences for d in with_end] == [d.char_confidences for d in default]


@pytest.mark.parametrize("prediction", ["PARSeq", "ViTSTR", "Attn"])
def test_confidence_with_end_is_an_option_of_the_heads_that_end(prediction):
    config = ModelConfig("None", "VGG", "BiLSTM", prediction, character="ab", confidence_with_end=True)
    probs = torch.tensor([[[0.1, 0.2, 0.6, 0.1], [0.1, 0.7, 0.1, 0.1], [0.4, 0.2, 0.2, 0.2]]])[..., :config.num_class]
    probs = probs / probs.sum(-1, keepdim=True)
    end = 1 if prediction == "Attn" else 0  # [s] after [GO]; [E] first
    logits = probs.log()
    steps = probs.max(-1).values[0]
    ids = probs.argmax(-1)[0].tolist()
    first_end = ids.index(end) if end in ids else len(ids)
    expected = steps[:first_end + 1].prod().item()
    assert greedy(logits, config)[0].confidence == pytest.approx(expected)
    assert greedy(logits, config.replace(confidence_with_end=False))[0].confidence == \
        pytest.approx(steps[:max(first_end, 1)].prod().item())


def test_confidence_with_end_is_refused_with_ctc():
    with pytest.raises(UsageError, match="--confidence_with_end applies to --Prediction Attn or PARSeq or ViTSTR"):
        config_from_flags({"Transformation": "None", "FeatureExtraction": "VGG", "SequenceModeling": "BiLSTM",
                           "Prediction": "CTC", "confidence_with_end": True})
