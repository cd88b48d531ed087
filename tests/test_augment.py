"""augment.py and its hook in dataset.BatchBalancedDataset: off by default, reproducible, every op safe."""
from __future__ import annotations

import random
import types

import numpy as np
import pytest
import torch
from PIL import Image

from augment import OPS, RandAugment, make_augment, perspective_coefficients, sample_rng
from lmdb_store import LmdbWriter
from dataset import AlignCollate, BatchBalancedDataset, InfiniteBatchSampler, hierarchical_dataset
from tests.helpers import render_word, train_config

WORDS = ["cat", "dog", "sun", "tree", "blue", "red", "home", "star", "fish", "bird", "moon", "road"]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("STR_CACHE_DIR", str(tmp_path / "filter-cache"))


@pytest.fixture
def train_opt(tmp_path):
    import io
    root = tmp_path / "train"
    with LmdbWriter(root / "words") as writer:
        for word in WORDS * 2:
            buffer = io.BytesIO()
            render_word(word).save(buffer, format="PNG")
            writer.add(buffer.getvalue(), word)
    return types.SimpleNamespace(
        train_data=str(root), select_data=["words"], batch_ratio=["1"], character="abcdefghijklmnopqrstuvwxyz",
        sensitive=False, batch_max_length=25, data_filtering_off=False, rgb=False, imgH=32, imgW=100, PAD=False,
        workers=0, batch_size=6, manualSeed=1111, total_data_usage_ratio="1.0")


def batches(opt, count=3):
    bbd = BatchBalancedDataset(train_config(opt), log=lambda s: None)
    return [bbd.get_batch() for _ in range(count)]


def test_off_by_default_batches_are_todays(train_opt):
    """No --augment: the batches are exactly sampler order → dataset items → AlignCollate, as before."""
    dataset, _ = hierarchical_dataset(train_opt.train_data, train_opt, select_data=["words"])
    sampler = iter(InfiniteBatchSampler(len(dataset), 6, seed=1111))
    collate = AlignCollate(32, 100)
    default = batches(train_opt)
    train_opt.augment = "none"
    explicit = batches(train_opt)
    for (images, labels), (images2, labels2) in zip(default, explicit):
        want_images, want_labels = collate([dataset[i] for i in next(sampler)])
        assert labels == list(want_labels) == labels2
        assert images.numpy().tobytes() == want_images.numpy().tobytes() == images2.numpy().tobytes()


def test_same_seed_same_augmented_batch(train_opt):
    plain = batches(train_opt)
    train_opt.augment, train_opt.augment_n, train_opt.augment_m = "rand", 3, 9
    first, second = batches(train_opt), batches(train_opt)
    for (a, la), (b, lb), (p, lp) in zip(first, second, plain):
        assert la == lb == lp  # augmentation never changes which samples or labels come
        assert torch.equal(a, b)
    assert any(not torch.equal(a, p) for (a, _), (p, _) in zip(first, plain))
    train_opt.manualSeed = 7
    other_seed = batches(train_opt)
    assert any(not torch.equal(a, o) for (a, _), (o, _) in zip(first, other_seed))


def test_augmentation_is_independent_of_workers(train_opt):
    train_opt.augment, train_opt.augment_n, train_opt.augment_m = "rand", 3, 9
    in_process = batches(train_opt, 2)
    train_opt.workers = 1
    in_worker = batches(train_opt, 2)
    for (a, _), (b, _) in zip(in_process, in_worker):
        assert torch.equal(a, b)


def test_a_sample_coming_round_again_gets_a_new_augmentation(train_opt):
    """Per-sample generators hang on the stream position, not the index: epochs differ."""
    train_opt.augment, train_opt.augment_m = "rand", 9
    train_opt.batch_size = len(WORDS) * 2  # one batch = one epoch
    (first, labels1), (second, labels2) = batches(train_opt, 2)
    order1, order2 = np.argsort(labels1, kind="stable"), np.argsort(labels2, kind="stable")
    assert not torch.equal(first[order1], second[order2])


def odd_images():
    rng = np.random.default_rng(0)
    for w, h in [(1, 1), (2, 3), (7, 5), (37, 13), (101, 31)]:
        gray = rng.integers(0, 256, (h, w), dtype=np.uint8)
        yield Image.fromarray(gray, "L")
        yield Image.fromarray(np.stack([gray, 255 - gray, gray // 2], axis=-1), "RGB")


@pytest.mark.parametrize("name", sorted(OPS))
def test_every_op_keeps_size_and_mode(name):
    for img in odd_images():
        for level in (0.0, 0.5, 1.0):
            out = OPS[name](img, level, random.Random(3))
            assert isinstance(out, Image.Image)
            assert (out.size, out.mode) == (img.size, img.mode), (name, img.size, img.mode, level)


@pytest.mark.parametrize("name", sorted(set(OPS) - {"color"}))  # color is a no-op on gray images
def test_every_op_changes_a_word_image_at_full_magnitude(name):
    word = render_word("augment")
    changed = [np.asarray(OPS[name](word, 1.0, random.Random(seed))).tobytes() != word.tobytes()
               for seed in range(4)]
    assert any(changed), name


def test_perspective_sends_each_corner_where_it_was_drawn():
    """PIL's PERSPECTIVE maps output to input pixels: the solved coefficients must send every moved
    corner back to the image corner it came from."""
    start = [[0, 0], [99, 0], [99, 31], [0, 31]]
    end = [[7, 3], [90, 1], [95, 28], [4, 30]]
    a, b, c, d, e, f, g, h = perspective_coefficients(end, start)
    for (u, v), (x, y) in zip(end, start):
        denominator = g * u + h * v + 1
        assert (a * u + b * v + c) / denominator == pytest.approx(x, abs=1e-6)
        assert (d * u + e * v + f) / denominator == pytest.approx(y, abs=1e-6)


def test_motion_blur_keeps_a_flat_image_flat():
    """A mean along a line: a uniform image stays uniform, edges included (edge padding)."""
    flat = Image.new("L", (40, 16), 123)
    assert set(np.asarray(OPS["motion_blur"](flat, 1.0, random.Random(0))).ravel()) == {123}


def test_color_changes_rgb():
    img = render_word("colour").convert("RGB")
    img.paste((200, 30, 30), (0, 0, 20, 10))
    assert OPS["color"](img, 1.0, random.Random(0)).tobytes() != img.tobytes()


def test_policy_draws_n_distinct_ops_and_checks_its_arguments():
    calls = []
    ops = {name: (lambda img, level, rng, name=name: calls.append((name, level)) or img) for name in "abcde"}
    policy = RandAugment(n=3, m=5, prob=1.0, ops=ops)
    policy(Image.new("L", (8, 8)), random.Random(1))
    assert len(calls) == 3 and len({name for name, _ in calls}) == 3 and {lv for _, lv in calls} == {0.5}
    with pytest.raises(ValueError, match="augment_n 6"):
        RandAugment(n=6, ops=ops)
    with pytest.raises(ValueError, match="augment_m 11"):
        RandAugment(m=11)
    with pytest.raises(ValueError, match="'auto' is not one of"):
        make_augment("auto")
    assert make_augment("none") is None


def test_sample_rng_is_a_function_of_its_arguments():
    assert sample_rng(1, 0, 5).random() == sample_rng(1, 0, 5).random()
    assert len({sample_rng(*args).random() for args in [(1, 0, 5), (2, 0, 5), (1, 1, 5), (1, 0, 6)]}) == 4


def test_train_records_augment_flags():
    from train import parse_args
    opt = parse_args(["--train_data", "x", "--valid_data", "y"])
    assert (opt.augment, opt.augment_n, opt.augment_m) == ("none", 3, 5)
    with pytest.raises(SystemExit):
        parse_args(["--train_data", "x", "--valid_data", "y", "--augment", "auto"])


def test_contact_sheet_draws_augmented_samples(train_opt, tmp_path):
    from tests.helpers import run_main
    lmdb = f"{train_opt.train_data}/words"
    sheets = {}
    for name in ("none", "rand"):
        out = tmp_path / f"{name}.png"
        proc = run_main("scripts/make_contact_sheet.py", "--lmdb", lmdb, "--output", out, "--augment", name,
                        "--augment_m", "9", "--columns", "4", "--rows", "2", cwd=tmp_path)
        assert "8 samples" in proc.stdout
        sheets[name] = Image.open(out)
    assert sheets["none"].size == sheets["rand"].size
    assert sheets["none"].convert("RGB").tobytes() != sheets["rand"].convert("RGB").tobytes()


def test_resume_continues_with_the_same_augmentations(train_opt):
    train_opt.augment, train_opt.augment_m = "rand", 9
    whole = batches(train_opt, 3)
    resumed = BatchBalancedDataset(train_config(train_opt), log=lambda s: None)
    resumed.load_state_dict({"batches": 2})
    images, labels = resumed.get_batch()
    assert labels == whole[2][1] and torch.equal(images, whole[2][0])
    assert resumed.state_dict()["augment"] == {"policy": "RandAugment", "n": 3, "m": 9}
