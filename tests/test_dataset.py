"""dataset.py: filtering, discovery, batching, collation, raw and gt-folder inputs."""
from __future__ import annotations

import io
import itertools
import logging
import pickle
import string
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import dataset
from dataset import (AlignCollate, BatchBalancedDataset, FilterStats, GtFolderDataset, InfiniteBatchSampler,
                     LmdbDataset, RawDataset, hierarchical_dataset)
from helpers import train_config
from lmdb_store import LmdbWriter

LOWER = string.digits + string.ascii_lowercase
SENSITIVE = string.printable[:-6]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("STR_CACHE_DIR", str(tmp_path / "filter-cache"))
    return tmp_path / "filter-cache" / "filter"


def make_opt(**kw):
    opt = dict(character=LOWER, sensitive=False, batch_max_length=25, data_filtering_off=False, rgb=False,
               imgH=32, imgW=100, PAD=False, workers=0, batch_size=8, manualSeed=1111,
               total_data_usage_ratio="1.0")
    opt.update(kw)
    return types.SimpleNamespace(**opt)


def png(width=40, height=16, mode="L", value=128) -> bytes:
    buffer = io.BytesIO()
    color = value if mode == "L" else (value, 255 - value, value // 2)
    Image.new(mode, (width, height), color).save(buffer, format="PNG")
    return buffer.getvalue()


def make_lmdb(path: Path, labels, images=None) -> Path:
    with LmdbWriter(path) as writer:
        for i, label in enumerate(labels):
            writer.add(images[i] if images else png(20 + i % 7 * 5), label)
    return path


# The reference's verified example (spec 3.3) with `a\b` added to the dropped kinds.
EXAMPLE = ["hello", "World", "don't", "a\\b", "x" * 30, "Mixed Case", "abc123", "zz"]


# --- filtering and labels -------------------------------------------------------------------

def test_default_filtering_matches_reference(tmp_path):
    ds = LmdbDataset(make_lmdb(tmp_path / "db", EXAMPLE), make_opt())
    assert [ds[i][1] for i in range(len(ds))] == ["hello", "world", "abc123", "zz"]
    assert ds.stats == FilterStats(total=8, kept=4, too_long=1, out_of_charset=3)
    assert str(ds.stats) == "kept 4 of 8 (dropped: 1 too long, 3 with characters outside the set)"


def test_sensitive_keeps_case_apostrophe_and_backslash(tmp_path):
    ds = LmdbDataset(make_lmdb(tmp_path / "db", EXAMPLE), make_opt(character=SENSITIVE, sensitive=True))
    # Reference bug #13 dropped 'a\\b' here; space is still outside the set.
    assert [ds[i][1] for i in range(len(ds))] == ["hello", "World", "don't", "a\\b", "abc123", "zz"]
    assert (ds.stats.too_long, ds.stats.out_of_charset) == (1, 1)


def test_charset_with_regex_metacharacters(tmp_path):
    labels = ["a-b", "x^y", "]a[", "p\\q", "a b", "ab", "a.b"]
    ds = LmdbDataset(make_lmdb(tmp_path / "db", labels), make_opt(character="abpqxy\\]^-[ "))
    assert [ds[i][1] for i in range(len(ds))] == labels[:6]
    assert ds.stats.out_of_charset == 1


def test_filtering_off_normalises_and_drops_only_too_long(tmp_path):
    ds = LmdbDataset(make_lmdb(tmp_path / "db", EXAMPLE), make_opt(data_filtering_off=True))
    assert [ds[i][1] for i in range(len(ds))] == ["hello", "world", "dont", "ab", "mixedcase", "abc123", "zz"]
    assert ds.stats.too_long == 1 and ds.stats.kept == 7
    assert "too long even with --data_filtering_off" in str(ds.stats)


def test_all_filtered_raises_with_reasons(tmp_path):
    db = make_lmdb(tmp_path / "db", ["ABC!", "x" * 40, "?"])
    with pytest.raises(ValueError) as err:
        LmdbDataset(db, make_opt())
    message = str(err.value)
    for part in ("1 labels longer", "2 with characters outside", repr(LOWER), "--character", "--sensitive",
                 "--batch_max_length", "--data_filtering_off", str(db)):
        assert part in message


def test_not_an_lmdb(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="not an LMDB dataset"):
        LmdbDataset(tmp_path / "empty", make_opt())


def test_index_past_the_end(tmp_path):
    ds = LmdbDataset(make_lmdb(tmp_path / "db", ["ab", "cd"]), make_opt())
    with pytest.raises(IndexError):
        ds[2]


# --- filter cache ---------------------------------------------------------------------------

def test_filter_cache_is_used_and_keyed(tmp_path, cache_dir, monkeypatch):
    db = make_lmdb(tmp_path / "db", EXAMPLE)
    first = LmdbDataset(db, make_opt())
    assert len(list(cache_dir.glob("*.npz"))) == 1

    def no_scan(*args):
        raise AssertionError("labels were rescanned despite the cache")

    monkeypatch.setattr(dataset, "iter_lmdb_labels", no_scan)
    cached = LmdbDataset(db, make_opt())
    assert np.array_equal(cached.filtered_index_list, first.filtered_index_list)
    assert cached.stats == first.stats
    with pytest.raises(AssertionError, match="rescanned"):  # another charset is another key
        LmdbDataset(db, make_opt(character=SENSITIVE, sensitive=True))


def test_filter_cache_invalidated_by_recreate(tmp_path):
    db = make_lmdb(tmp_path / "db", ["ab", "cd"])
    assert len(LmdbDataset(db, make_opt())) == 2
    with LmdbWriter(db, overwrite=True) as writer:
        for label in ["ab", "cd", "ef"]:
            writer.add(png(), label)
    ds = LmdbDataset(db, make_opt())
    assert len(ds) == 3 and ds[2][1] == "ef"


def test_unwritable_cache_dir_falls_back(tmp_path, monkeypatch, caplog):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("STR_CACHE_DIR", str(blocker / "sub"))
    with caplog.at_level(logging.WARNING):
        ds = LmdbDataset(make_lmdb(tmp_path / "db", EXAMPLE), make_opt())
    assert len(ds) == 4
    assert "could not write the filter cache" in caplog.text


# --- images, unreadable samples, pickling -------------------------------------------------

def test_getitem_modes(tmp_path):
    db = make_lmdb(tmp_path / "db", ["ab"], images=[png(30, 10, mode="RGB")])
    img, _ = LmdbDataset(db, make_opt())[0]
    assert img.mode == "L" and img.size == (30, 10)
    img, _ = LmdbDataset(db, make_opt(rgb=True))[0]
    assert img.mode == "RGB"


def test_unreadable_image_is_skipped(tmp_path, caplog):
    db = make_lmdb(tmp_path / "db", ["ab", "cd", "ef"], images=[png(), b"garbage", png()])
    ds = LmdbDataset(db, make_opt())
    with caplog.at_level(logging.WARNING):
        assert ds[1] is None
    assert ds.stats.unreadable == 1
    assert str(db) in caplog.text and "index 1" in caplog.text
    images, labels = AlignCollate()([ds[i] for i in range(3)])
    assert images.shape == (2, 1, 32, 100) and labels == ("ab", "ef")


def test_pickle_without_environment(tmp_path):
    ds = LmdbDataset(make_lmdb(tmp_path / "db", ["ab", "cd"]), make_opt())
    assert ds[0][1] == "ab"  # opens the environment in this process
    state = ds.__getstate__()
    assert not any(type(v).__module__.startswith("lmdb") for v in state.values())
    clone = pickle.loads(pickle.dumps(ds))
    assert clone[1][1] == "cd"


def test_spawn_worker_reads(tmp_path):
    ds = LmdbDataset(make_lmdb(tmp_path / "db", ["ab", "cd", "ef"]), make_opt())
    ds[0]
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=1, collate_fn=AlignCollate(),
                                         multiprocessing_context="spawn")
    images, labels = next(iter(loader))
    assert labels == ("ab", "cd", "ef") and images.shape == (3, 1, 32, 100)


# --- discovery ------------------------------------------------------------------------------

@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "MJroot"  # 'MJ' in the root path must not select everything (quirk #14)
    make_lmdb(root / "ST", [f"st{i}" for i in range(5)])
    make_lmdb(root / "MJ" / "MJ_valid", [f"mv{i}" for i in range(3)])
    make_lmdb(root / "MJ" / "MJ_train", [f"mt{i}" for i in range(4)])
    (root / "notes").mkdir()
    return root


def test_hierarchical_select_and_log(tree):
    data, log = hierarchical_dataset(tree, make_opt(), select_data=["MJ"], log=None)
    assert len(data) == 7
    assert log.splitlines() == [
        f"dataset_root:    {tree}\t dataset: MJ",
        "sub-directory:\t/MJ/MJ_train\t num samples: 4",
        "\tkept 4 of 4 (dropped: 0 too long, 0 with characters outside the set)",
        "sub-directory:\t/MJ/MJ_valid\t num samples: 3",
        "\tkept 3 of 3 (dropped: 0 too long, 0 with characters outside the set)",
    ]
    assert [data[i][1] for i in range(len(data))] == ["mt0", "mt1", "mt2", "mt3", "mv0", "mv1", "mv2"]


def test_hierarchical_all_and_errors(tree, tmp_path):
    data, log = hierarchical_dataset(tree, make_opt(), log=None)
    assert len(data) == 12 and log.count("sub-directory") == 3
    data, _ = hierarchical_dataset(tree / "ST", make_opt(), log=None)  # the root itself is the leaf
    assert len(data) == 5
    with pytest.raises(FileNotFoundError, match="nowhere"):
        hierarchical_dataset(tmp_path / "nowhere", make_opt())
    with pytest.raises(FileNotFoundError, match="/MJ/MJ_train"):  # lists what was found
        hierarchical_dataset(tree, make_opt(), select_data=["IC15"])


def gt_folder(path: Path, lines: list[str], images: dict[str, bytes]) -> Path:
    path.mkdir(parents=True)
    for name, data in images.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_bytes(data)
    (path / "gt.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_gt_folder_dataset(tmp_path, caplog):
    root = gt_folder(tmp_path / "gt", ["img/a.png\tHello", "img/b.png\tdon't", "bad line",
                                       "img/c.png\tx\ty", "img/missing.png\tgone"],
                     {"img/a.png": png(), "img/b.png": png(), "img/c.png": png()})
    ds = GtFolderDataset(root, make_opt(character=LOWER + "\t"))
    assert len(ds) == 3 and ds.stats.out_of_charset == 1 and len(ds.problems) == 1
    assert ds[0][1] == "hello" and ds[1][1] == "x\ty"
    with caplog.at_level(logging.WARNING):
        assert ds[2] is None
    assert "missing.png" in caplog.text
    data, log = hierarchical_dataset(tmp_path, make_opt(), log=None)
    assert "sub-directory:\t/gt\t num samples: 2" in log and len(data) == 2


# --- batching -------------------------------------------------------------------------------

def test_infinite_batch_sampler_stream():
    full = InfiniteBatchSampler(10, 4, seed=3)
    batches = list(itertools.islice(iter(full), 5))
    stream = sum(batches, [])
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:20]) == list(range(10))
    assert stream[:10] != stream[10:20]  # a fresh permutation per epoch
    assert next(iter(InfiniteBatchSampler(10, 4, seed=3, start=3))) == batches[3]
    r0 = list(itertools.islice(iter(InfiniteBatchSampler(10, 2, seed=3, rank=0, world_size=2)), 2))
    r1 = list(itertools.islice(iter(InfiniteBatchSampler(10, 2, seed=3, rank=1, world_size=2)), 2))
    assert r0[0] + r1[0] + r0[1] + r1[1] == stream[:8]  # ranks interleave over the one stream
    with pytest.raises(ValueError):
        InfiniteBatchSampler(0, 4)


@pytest.fixture
def train_opt(tmp_path):
    root = tmp_path / "train"
    make_lmdb(root / "MJ", [f"mj{i:03d}" for i in range(23)])
    make_lmdb(root / "ST", [f"st{i:03d}" for i in range(17)])
    return make_opt(train_data=str(root), select_data=["MJ", "ST"], batch_ratio=["0.5", "0.25"], batch_size=8)


def test_batch_balanced_sizes_and_log(train_opt):
    lines = []
    bbd = BatchBalancedDataset(train_config(train_opt), log=lines.append)
    assert bbd.batch_sizes == [4, 2] and bbd.batch_size == 6 and train_opt.batch_size == 8
    text = "\n".join(lines)
    assert text.startswith("-" * 80 + f"\ndataset_root: {train_opt.train_data}\n"
                           "opt.select_data: ['MJ', 'ST']\nopt.batch_ratio: ['0.5', '0.25']")
    assert "num total samples of MJ: 23 x 1.0 (total_data_usage_ratio) = 23" in text
    assert "num samples of MJ per batch: 8 x 0.5 (batch_ratio) = 4" in text
    assert "num samples of ST per batch: 8 x 0.25 (batch_ratio) = 2" in text
    assert text.endswith("-" * 80 + "\nTotal_batch_size: 4+2 = 6\n" + "-" * 80)
    images, labels = bbd.get_batch()
    assert images.shape == (6, 1, 32, 100) and len(labels) == 6
    assert all(label.startswith("mj") for label in labels[:4]) and all(l.startswith("st") for l in labels[4:])


def test_batch_balanced_usage_ratio_and_mismatch(train_opt):
    train_opt.total_data_usage_ratio = "0.5"
    bbd = BatchBalancedDataset(train_config(train_opt), log=lambda s: None)
    seen = {label for _ in range(20) for label in bbd.get_batch()[1]}
    assert {l for l in seen if l.startswith("mj")} == {f"mj{i:03d}" for i in range(11)}  # the first 11
    train_opt.batch_ratio = ["1.0"]
    with pytest.raises(ValueError, match="same number"):
        BatchBalancedDataset(train_config(train_opt), log=lambda s: None)


def test_batch_balanced_exact_resume(train_opt):
    original = BatchBalancedDataset(train_config(train_opt), log=lambda s: None)
    for _ in range(7):
        original.get_batch()
    state = original.state_dict()
    assert state == {"batches": 7}
    resumed = BatchBalancedDataset(train_config(train_opt), log=lambda s: None)
    resumed.load_state_dict(state)
    for _ in range(5):
        (a_img, a_lab), (b_img, b_lab) = original.get_batch(), resumed.get_batch()
        assert a_lab == b_lab and torch.equal(a_img, b_img)


def test_batch_balanced_ranks_are_disjoint(train_opt):
    ranks = [BatchBalancedDataset(train_config(train_opt), log=lambda s: None, rank=r, world_size=2) for r in (0, 1)]
    # 3 steps x 2 ranks x 4 = 24 > 23 MJ samples: compare within the first epoch only (2 steps).
    seen = [[label for _ in range(2) for label in bbd.get_batch()[1] if label.startswith("mj")] for bbd in ranks]
    assert len(seen[0]) == len(seen[1]) == 8
    assert not set(seen[0]) & set(seen[1])


def test_batch_balanced_with_workers(train_opt):
    train_opt.workers = 1
    bbd = BatchBalancedDataset(train_config(train_opt), log=lambda s: None)
    train_opt.workers = 0
    reference = BatchBalancedDataset(train_config(train_opt), log=lambda s: None)
    assert bbd.get_batch()[1] == reference.get_batch()[1]


# --- collation ------------------------------------------------------------------------------

def to_tensor(img):
    """torchvision's, as the reference collates with it (imported here: torchvision pulls in torch._dynamo,
    seconds that every test worker would otherwise pay while collecting)."""
    from torchvision.transforms.functional import to_tensor as reference_to_tensor
    return reference_to_tensor(img)


def reference_resize_normalize(img, imgH=32, imgW=100):
    return to_tensor(img.resize((imgW, imgH), Image.BICUBIC)).sub_(0.5).div_(0.5)


def reference_normalize_pad(img, imgH=32, imgW=100):
    w, h = img.size
    resized_w = min(imgW, int(np.ceil(imgH * w / h)))
    x = to_tensor(img.resize((resized_w, imgH), Image.BICUBIC)).sub_(0.5).div_(0.5)
    out = torch.zeros(x.shape[0], imgH, imgW)
    out[:, :, :resized_w] = x
    if resized_w != imgW:
        out[:, :, resized_w:] = x[:, :, resized_w - 1:resized_w].expand(-1, -1, imgW - resized_w)
    return out


def noise_image(width, height, mode, seed):
    rng = np.random.default_rng(seed)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    return Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_collate_default_matches_torchvision(mode):
    items = [(noise_image(w, h, mode, i), f"l{i}") for i, (w, h) in enumerate([(50, 20), (200, 31), (7, 40)])]
    images, labels = AlignCollate(32, 100)(items)
    channels = 3 if mode == "RGB" else 1
    assert images.shape == (3, channels, 32, 100) and images.dtype == torch.float32
    assert labels == ("l0", "l1", "l2")
    assert images.min() >= -1 and images.max() <= 1
    expected = torch.stack([reference_resize_normalize(img) for img, _ in items])
    assert torch.equal(images, expected)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_collate_pad_matches_reference(mode):
    items = [(noise_image(w, h, mode, i), "x") for i, (w, h) in enumerate([(50, 20), (400, 32), (10, 30)])]
    images, _ = AlignCollate(32, 100, keep_ratio_with_pad=True)(items + [None])
    assert images.shape[0] == 3
    expected = torch.stack([reference_normalize_pad(img) for img, _ in items])
    assert torch.equal(images, expected)
    resized_w = 80  # ceil(32 * 50 / 20)
    assert torch.equal(images[0, :, :, resized_w:], images[0, :, :, resized_w - 1:resized_w].expand(-1, -1, 20))


def test_collate_dynamic_width():
    collate = AlignCollate(32, 100, keep_ratio_with_pad=True, dynamic_width=True)
    narrow = [(noise_image(30, 20, "L", 0), "a"), (noise_image(20, 20, "L", 1), "b")]
    images, _ = collate(narrow)  # max ratio 1.5 -> ceil 2 -> 64 columns
    assert images.shape == (2, 1, 32, 64)
    assert torch.equal(images[0], reference_normalize_pad(narrow[0][0], 32, 64))
    images, _ = collate([(noise_image(10, 20, "L", 2), "c")])  # ratio < 1 counts as 1
    assert images.shape == (1, 1, 32, 32)
    images, _ = collate([(noise_image(300, 20, "L", 3), "d")])  # capped at imgW
    assert images.shape == (1, 1, 32, 100)


def test_collate_empty_batch():
    images, labels = AlignCollate(32, 100)([None, None])
    assert images.shape == (0, 1, 32, 100) and labels == ()


# --- RawDataset -----------------------------------------------------------------------------

def test_raw_dataset(tmp_path, caplog):
    folder = tmp_path / "demo"
    (folder / "sub").mkdir(parents=True)
    for name in ["demo_10.png", "demo_2.JPG", "demo_1.jpeg", "sub/x.webp", "sub/y.TIFF", "z.bmp"]:
        Image.new("RGB", (20, 10)).save(folder / name, format=Image.registered_extensions()[Path(name).suffix.lower()])
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.png").write_bytes(b"nope")
    ds = RawDataset(folder, make_opt())
    names = [str(Path(p).relative_to(folder)) for p in ds.image_path_list]
    assert names == ["broken.png", "demo_1.jpeg", "demo_2.JPG", "demo_10.png", "sub/x.webp", "sub/y.TIFF", "z.bmp"]
    img, path = ds[1]
    assert img.mode == "L" and path.endswith("demo_1.jpeg")
    assert RawDataset(folder, make_opt(rgb=True))[1][0].mode == "RGB"
    with caplog.at_level(logging.WARNING):
        assert ds[0] is None
    assert ds.unreadable == [str(folder / "broken.png")] and "broken.png" in caplog.text
    single = RawDataset([folder / "z.bmp", folder / "sub"], make_opt())
    assert [Path(p).name for p in single.image_path_list] == ["z.bmp", "x.webp", "y.TIFF"]


def test_raw_dataset_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        RawDataset(tmp_path / "missing", make_opt())
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no image"):
        RawDataset(tmp_path / "empty", make_opt())
