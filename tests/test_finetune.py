"""Fine-tuning across character sets: rows (and attention one-hot columns) follow their character."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from PIL import Image, ImageDraw, ImageFont

from checkpoint import remap_characters, save_checkpoint
from dataset import AlignCollate
from model import ModelConfig, build_model
from decoding import decode
from utils import make_converter

OLD_CHARACTER = "abcdefghij"
NEW_CHARACTER = "xedcbayz"  # keeps a-e (reordered), drops f-j, adds x, y, z
WORDS = ["abc", "bad", "cede", "ace"]


def tiny_config(prediction: str, character: str = OLD_CHARACTER) -> ModelConfig:
    sequence = "BiLSTM" if prediction == "CTC" else "None"
    return ModelConfig("None", "VGG", sequence, prediction, imgH=32, imgW=64, output_channel=32, hidden_size=32,
                       batch_max_length=6, character=character)


def word_images() -> torch.Tensor:
    font = ImageFont.load_default()
    images = []
    for word in WORDS:
        img = Image.new("L", (64, 32), 255)
        ImageDraw.Draw(img).text((4, 8), word, fill=0, font=font)
        images.append((img, word))
    return AlignCollate(32, 64)(images)[0]  # [4, 1, 32, 64]


def trained_model(prediction: str):
    """A tiny model that reads WORDS off their images (only a-e occur)."""
    torch.manual_seed(0)
    config = tiny_config(prediction)
    model = build_model(config)
    converter = make_converter(prediction, config.character)
    images = word_images()
    text, length = converter.encode(WORDS, config.batch_max_length)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    ctc, xent = torch.nn.CTCLoss(zero_infinity=True), torch.nn.CrossEntropyLoss(ignore_index=0)
    for _ in range(300):
        if prediction == "CTC":
            preds = model(images).log_softmax(2)
            sizes = torch.full((len(WORDS),), preds.size(1), dtype=torch.int32)
            loss = ctc(preds.permute(1, 0, 2), text, sizes, length)
        else:
            preds = model(images, text[:, :-1])
            loss = xent(preds.reshape(-1, preds.shape[-1]), text[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return model, images


def read(model, images) -> list[str]:
    config = model.config
    with torch.inference_mode():
        return decode(model, images, config).texts


@pytest.fixture(scope="module", params=["CTC", "Attn"])
def trained(request):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a tiny model: extra threads only wait on each other (and on a busy machine)
    try:
        model, images = trained_model(request.param)
    finally:
        torch.set_num_threads(threads)
    assert read(model, images) == WORDS, "the tiny model should learn its four words"
    return model, images


def remapped(model):
    new_config = model.config.replace(character=NEW_CHARACTER)
    torch.manual_seed(1)
    fresh = build_model(new_config)
    state, report = remap_characters(model.state_dict(), model.config, new_config, fresh)
    new_model = build_model(new_config, init=False)
    new_model.load_state_dict(state)
    return new_model.eval(), fresh, report


def test_report_lists_kept_added_dropped(trained):
    _, _, report = remapped(trained[0])
    assert report == {"kept": "edcba", "added": "xyz", "dropped": "fghij"}


def test_kept_rows_follow_their_character_and_new_rows_are_fresh(trained):
    model, _ = trained
    new_model, fresh, _ = remapped(model)
    special = 1 if model.config.Prediction == "CTC" else 2
    head = "Prediction" if model.config.Prediction == "CTC" else "Prediction.generator"
    old_sd, new_sd, fresh_sd = model.state_dict(), new_model.state_dict(), fresh.state_dict()
    for name in (f"{head}.weight", f"{head}.bias"):
        for s in range(special):
            assert torch.equal(new_sd[name][s], old_sd[name][s])
        for j, c in enumerate(NEW_CHARACTER):
            source = old_sd if c in OLD_CHARACTER else fresh_sd
            i = OLD_CHARACTER.index(c) + special if c in OLD_CHARACTER else j + special
            assert torch.equal(new_sd[name][j + special], source[name][i]), (name, c)
    if model.config.Prediction == "Attn":
        name = "Prediction.attention_cell.rnn.weight_ih"
        width = new_sd[name].shape[1] - new_model.config.num_class
        assert torch.equal(new_sd[name][:, :width], old_sd[name][:, :width])
        for j, c in enumerate(NEW_CHARACTER):
            expected = (old_sd[name][:, width + OLD_CHARACTER.index(c) + special] if c in OLD_CHARACTER
                        else fresh_sd[name][:, width + j + special])
            assert torch.equal(new_sd[name][:, width + j + special], expected), c


def test_remapped_model_still_reads_shared_characters(trained):
    model, images = trained
    new_model, _, _ = remapped(model)
    assert read(new_model, images) == WORDS


def test_train_py_fine_tunes_across_character_sets(trained, tmp_path):
    from train import build_config_and_model
    model, images = trained
    path = tmp_path / "tiny.pth"
    save_checkpoint(path, model)
    logged = []
    opt = SimpleNamespace(saved_model=str(path), FT=True, character=NEW_CHARACTER, freeze="FeatureExtraction")
    config, new_model, _ = build_config_and_model(opt, logged.append)
    assert config.character == NEW_CHARACTER
    assert any("kept 5" in line and "added 3" in line and "dropped 5" in line for line in logged)
    assert read(new_model.eval(), images) == WORDS
    assert not any(p.requires_grad for p in new_model.FeatureExtraction.parameters())
    new_model.train()
    assert not new_model.FeatureExtraction.training and new_model.Prediction.training


def test_character_change_without_ft_is_refused(trained, tmp_path):
    from train import build_config_and_model
    path = tmp_path / "tiny.pth"
    save_checkpoint(path, trained[0])
    with pytest.raises(ValueError, match="--FT"):
        build_config_and_model(SimpleNamespace(saved_model=str(path), FT=False, character=NEW_CHARACTER),
                               lambda line: None)
