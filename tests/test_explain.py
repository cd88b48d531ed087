"""explain.py: each stage's views are what the stage computed, the spans are where the characters were read,
the panels and spans.json agree, the page sorts and filters in a real browser (Chromium, when installed)."""
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import checkpoint
from decoding import forward_logits, greedy
from explain import (PALETTE, SCALE_HEIGHT, draw_panel, error_kinds, explain_batch, explaining, model_views,
                     write_explanations)
from model import build_model, config_from_name
from modules.parseq import cross_attention_weights
from modules.registry import REGISTRY, VIEWS
from tests.helpers import make_gt_folder, run_main

SMALL = dict(output_channel=32, hidden_size=32)
PARSEQ_SMALL = dict(vit_embed_dim=32, vit_depth=1, vit_heads=2)


def small_model(name: str, seed: int = 0, **options):
    torch.manual_seed(seed)
    config = config_from_name(name, **({**PARSEQ_SMALL, **options} if "ViT" in name else {**SMALL, **options}))
    return build_model(config).eval(), config


def images(config, n: int = 3, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, config.input_channel, config.imgH, config.imgW, generator=generator) * 2 - 1


def test_tps_views_are_the_transformation_stage_output():
    model, config = small_model("TPS-VGG-None-CTC")
    x = images(config)
    with explaining(model) as record, torch.inference_mode():
        forward_logits(model, x, config)
    with torch.inference_mode():
        assert torch.equal(record["rectified"][0], model.Transformation(x))
        assert torch.equal(record["fiducials"][0], model.Transformation.LocalizationNetwork(x))
        resampled = torch.nn.functional.grid_sample(x, record["sampling_grid"][0], padding_mode="border",
                                                    align_corners=True)
    torch.testing.assert_close(resampled, record["rectified"][0], atol=1e-5, rtol=0)
    ex = explain_batch(model, x, config)[1]
    assert ex.rectified.shape == ex.image.shape and ex.fiducials.shape == (config.num_fiducial, 2)


def test_hooks_only_inside_the_context_and_the_reading_unchanged():
    model, config = small_model("TPS-ResNet-BiLSTM-Attn")
    x = images(config)
    with torch.inference_mode():
        plain = forward_logits(model, x, config)
    with explaining(model), torch.inference_mode():
        watched = forward_logits(model, x, config)
    assert torch.equal(plain, watched)
    hooks = [m for m in model.modules() if m._forward_hooks or m._forward_pre_hooks]
    assert hooks == [], "explaining left hooks behind"
    assert [e.decoded.text for e in explain_batch(model, x, config)] == [d.text for d in greedy(plain, config)]


def test_attn_maps_are_the_decoders_weights_one_per_character():
    model, config = small_model("None-VGG-BiLSTM-Attn", seed=3)
    x = images(config)
    with explaining(model) as record, torch.inference_mode():
        logits = forward_logits(model, x, config)
        contextual = model.encode(x)
        h = contextual.new_zeros(x.size(0), model.Prediction.hidden_size)
        go = torch.nn.functional.one_hot(torch.zeros(x.size(0), dtype=torch.long), config.num_class).float()
        prediction = model.Prediction
        _, alpha0 = prediction.attention_cell((h, h), contextual, prediction.attention_cell.i2h(contextual), go)
    attention = record["attention"][0]  # [B, steps, T]; the extra call above came after the forward's hook
    assert len(record["attention"]) == 1
    torch.testing.assert_close(attention[:, 0], alpha0.squeeze(2))
    torch.testing.assert_close(attention.sum(2), torch.ones(attention.shape[:2]))
    for ex, d in zip(explain_batch(model, x, config), greedy(logits, config)):
        assert len(ex.attention) == 1 and len(ex.spans) == len(d.text)
        assert ex.attention[0].shape[0] >= len(d.text)  # one map per character (and the end's, when read)


@pytest.mark.parametrize("decode,refine", [("ar", 1), ("nar", 2), ("ar", 0)])
def test_parseq_cross_attention_per_pass(decode, refine):
    model, config = small_model("None-ViT-None-PARSeq", parseq_decode=decode, parseq_refine_iters=refine)
    x = images(config, n=2)
    exs = explain_batch(model, x, config)
    steps = config.batch_max_length + 1
    for ex in exs:
        assert len(ex.attention) == 1 + refine
        assert ex.grid == (config.imgH // config.vit_patch_h, config.imgW // config.vit_patch_w)
        for p in ex.attention:
            assert p.shape[1] == ex.grid[0] * ex.grid[1] and p.shape[0] <= steps
            np.testing.assert_allclose(p.sum(1), 1, atol=1e-5)
        assert len(ex.spans) == len(ex.greedy_text)
    # The weights are those MultiheadAttention itself returns when asked.
    cross = model.Prediction.decoder.layers[-1].cross_attn
    q, k = torch.randn(2, 5, 32), torch.randn(2, 128, 32)
    with torch.inference_mode():
        expected = cross(q, k, k, need_weights=True)[1]
    torch.testing.assert_close(cross_attention_weights(cross, q, k), expected)


def test_ctc_spans_ordered_inside_and_cover_their_frames():
    model, config = small_model("None-VGG-None-CTC", seed=1)
    x = images(config, n=6, seed=1)
    for ex in explain_batch(model, x, config):
        W, T = config.imgW, len(ex.frames[0])
        assert [s.char for s in ex.spans] == list(ex.greedy_text)
        for a, b in zip(ex.spans, ex.spans[1:]):
            assert a.x1 <= b.x0 + 1e-6 and a.source[1] < b.source[0]
        for s in ex.spans:
            assert 0 <= s.x0 < s.x1 <= W
            assert s.x0 <= s.source[0] * W / T + 1e-6 and s.x1 >= (s.source[1] + 1) * W / T - 1e-6
            assert all(ex.frames[0][t] == ex.classes.index(s.char) for t in range(s.source[0], s.source[1] + 1))


def test_spans_json_agrees_with_the_panels(tmp_path):
    model, config = small_model("TPS-VGG-None-CTC", seed=2)
    exs = explain_batch(model, images(config, n=4, seed=2), config)
    for ex in exs:
        ex.label = "ab"
    write_explanations(exs, tmp_path)
    records = json.loads((tmp_path / "spans.json").read_text(encoding="utf-8"))
    assert len(records) == len(exs) and len(list((tmp_path / "panels").glob("*.png"))) == len(exs)
    for ex, record in zip(exs, records):
        assert record["text"] == ex.decoded.text and record["coordinates"] == "model input"
        assert [(c["char"], c["x0"], c["x1"]) for c in record["chars"]] == [
            (s.char, round(s.x0, 1), round(s.x1, 1)) for s in ex.spans]
        panel = np.asarray(draw_panel(ex))
        scale = SCALE_HEIGHT / config.imgH
        for k, colour in enumerate(PALETTE):  # each span's bar in its colour (the input is grey), at its place
            spans = [(c["x0"] * scale - 1.5, c["x1"] * scale + 8) for c in record["chars"][k::len(PALETTE)]]
            columns = np.flatnonzero((panel == colour).all(axis=2).any(axis=0)) - 96
            assert all(any(a <= x <= b for a, b in spans) for x in columns)
            assert all(any(a <= x <= b for x in columns) for a, b in spans)


def test_every_registered_stage_records_what_it_declares():
    for kind in ("Transformation", "Prediction"):
        for name, cls in REGISTRY[kind].items():
            assert set(cls.views) <= set(VIEWS), f"{name} declares views that VIEWS does not describe"
            combination = {"Transformation": f"{name}-VGG-None-CTC", "Prediction": f"None-VGG-None-{name}"}[kind]
            model, config = small_model(combination, batch_max_length=8)  # ViTSTR: a position per frame (24 here)
            with explaining(model) as record, torch.inference_mode():
                forward_logits(model, images(config, n=1), config)
            hooked = {v for v in cls.views if v != "frames"}  # frames are the logits themselves
            assert hooked <= set(record), f"{name} declares {cls.views} but recorded {sorted(record)}"
            assert set(model_views(config)) >= set(cls.views)


def test_error_kinds():
    assert error_kinds("hello", "hello") == []
    assert error_kinds("Hello", "hello") == ["case"]
    assert error_kinds("hello", "hallo") == ["substitution"]
    assert error_kinds("hello", "helloo") == ["insertion"]
    assert error_kinds("hello", "helo") == ["deletion"]
    assert error_kinds("hello", "hxllo!") == ["substitution", "insertion"]


def test_demo_explain_and_char_boxes(tmp_path):
    model_path = tmp_path / "model.pth"
    torch.manual_seed(0)
    checkpoint.save_checkpoint(model_path, build_model(config_from_name("TPS-VGG-None-CTC", **SMALL)))
    folder = make_gt_folder(tmp_path / "words", copies=1)
    out = tmp_path / "explained"
    proc = run_main("demo.py", "--image_folder", folder / "images", "--saved_model", model_path, "--explain", out,
                    "--char_boxes", "--log_file", tmp_path / "log.txt", "--device", "cpu", "--workers", "0", cwd=tmp_path)
    records = json.loads((out / "spans.json").read_text(encoding="utf-8"))
    assert (out / "index.html").is_file() and len(records) == len(list((folder / "images").iterdir()))
    for record in records:
        assert record["coordinates"] == "original"
        width, _ = Image.open(record["image"]).size
        assert record["width"] == width
        assert all(0 <= c["x0"] <= c["x1"] <= width for c in record["chars"])
        boxes = " ".join(f"{c['char']}:{c['x0']:g}-{c['x1']:g}" for c in record["chars"])
        assert f"    boxes: {boxes}" in proc.stdout
    refused = run_main("demo.py", "--image_folder", folder / "images", "--saved_model", model_path, "--explain", out,
                       "--runtime", "onnx", cwd=tmp_path, check=False)
    assert refused.returncode == 2 and "--runtime torch" in refused.stderr


def test_demo_without_the_flags_reads_the_same(tmp_path):
    model_path = tmp_path / "model.pth"
    torch.manual_seed(0)
    checkpoint.save_checkpoint(model_path, build_model(config_from_name("None-VGG-BiLSTM-Attn", **SMALL)))
    folder = make_gt_folder(tmp_path / "words", copies=1)
    args = ["--image_folder", folder / "images", "--saved_model", model_path, "--device", "cpu", "--workers", "0", "--log_file",
            tmp_path / "log.txt"]
    plain = run_main("demo.py", *args, cwd=tmp_path).stdout
    explained = run_main("demo.py", *args, "--explain", tmp_path / "x", cwd=tmp_path).stdout
    def table(out: str) -> str:  # the readings, without the lines that say what was chosen or written
        return "".join(line for line in out.splitlines(True) if not line.startswith(("wrote ", "--runtime auto")))

    assert table(plain) == table(explained) and "image_path" in table(plain)


# ----------------------------------------------------------------------------- in a real browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                           "--disable-dev-shm-usage", *args], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def gallery(tmp_path_factory):
    model, config = small_model("None-VGG-None-CTC", seed=4)
    exs = explain_batch(model, images(config, n=6, seed=4), config)
    for i, (ex, confidence) in enumerate(zip(exs, [0.5, 0.9, 0.1, 0.7, 0.3, 0.8])):
        ex.decoded.confidence = confidence
        ex.label = ex.decoded.text if i % 2 else ex.decoded.text + "x"
        ex.dataset = "even" if i % 2 == 0 else "odd"
    out = tmp_path_factory.mktemp("gallery")
    write_explanations(exs, out)
    return out, exs


def _shown_order(dom: str) -> list[tuple[int, bool]]:
    import re
    return [(int(i), "hidden" in classes) for classes, i in re.findall(r'class="card ([^"]*)" id="card(\d+)"', dom)]


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
def test_page_sorts_and_filters_in_chromium(gallery):
    out, exs = gallery
    url = (out / "index.html").resolve().as_uri()
    dom = chromium("--dump-dom", url + "#sort=conf-asc").stdout
    order = [i for i, _ in _shown_order(dom)]
    assert sorted(order) == list(range(len(exs)))
    confidences = [exs[i].decoded.confidence for i in order]
    assert confidences == sorted(confidences) == [0.1, 0.3, 0.5, 0.7, 0.8, 0.9]
    descending = [i for i, _ in _shown_order(chromium("--dump-dom", url + "#sort=conf-desc").stdout)]
    assert [exs[i].decoded.confidence for i in descending] == sorted(confidences, reverse=True)
    wrong = _shown_order(chromium("--dump-dom", url + "#show=wrong").stdout)
    assert {i for i, hidden in wrong if not hidden} == {0, 2, 4}
    odd = _shown_order(chromium("--dump-dom", url + "#set=odd").stdout)
    assert {i for i, hidden in odd if not hidden} == {1, 3, 5}


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
def test_page_screenshot_is_not_blank(gallery, tmp_path):
    out, _ = gallery
    shot = tmp_path / "shot.png"
    chromium(f"--screenshot={shot}", "--window-size=1200,900", (out / "index.html").resolve().as_uri())
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert (pixels < 128).mean() > 0.01, "the page rendered (nearly) blank"
    # The panels are drawn (not broken-image boxes): the screenshot holds their grey input pictures.
    assert len(np.unique(pixels)) > 50


def test_test_py_explain_and_save_errors_panels(tmp_path):
    model_path = tmp_path / "model.pth"
    torch.manual_seed(0)
    checkpoint.save_checkpoint(model_path, build_model(config_from_name("TPS-VGG-None-CTC", **SMALL)))
    folder = make_gt_folder(tmp_path / "words", copies=1)
    run_main("test.py", "--eval_data", folder, "--saved_model", model_path, "--workers", "0", "--device", "cpu",
             "--save_errors", tmp_path / "errors", "--explain", tmp_path / "explained", cwd=tmp_path)
    rows = (tmp_path / "errors" / "errors.tsv").read_text(encoding="utf-8").splitlines()[1:]
    assert rows, "an untrained model reads these words wrong"
    panels = sorted(p.name for p in (tmp_path / "errors" / "panels").iterdir())
    assert panels == sorted(f"{int(row.split(chr(9))[0]):06d}.png" for row in rows)
    page = (tmp_path / "errors" / "index.html").read_text(encoding="utf-8")
    assert f"{len(rows)} wrong" in page and "substitution: " in page and 'data-status="correct"' not in page
    explained = json.loads((tmp_path / "explained" / "spans.json").read_text(encoding="utf-8"))
    labels = dict(line.split("\t") for line in (folder / "gt.txt").read_text(encoding="utf-8").splitlines())
    assert len(explained) == len(labels)
    everything = (tmp_path / "explained" / "index.html").read_text(encoding="utf-8")
    assert everything.count('data-status="wrong"') == len(rows)
    assert everything.count('class="card ') == len(labels)


def test_study_explain_shows_each_cells_worst_words_through_every_cell(tmp_path, monkeypatch):
    import study
    monkeypatch.chdir(tmp_path)
    (tmp_path / "published").mkdir()
    for seed, name in enumerate(["None-VGG-None-CTC", "TPS-VGG-None-CTC"]):
        torch.manual_seed(seed)
        checkpoint.save_checkpoint(tmp_path / "published" / f"{name}.pth", build_model(config_from_name(name, **SMALL)))
    folder = make_gt_folder(tmp_path / "words", copies=1)
    study.main(["--name", "look", "--checkpoints", "published", "--eval_data", str(folder), "--explain", "2",
                "--batch_size", "4", "--workers", "0", "--device", "cpu", "--profile_warmup", "1",
                "--profile_repeats", "2"])
    out = tmp_path / "studies" / "look" / "explain"
    page = (out / "index.html").read_text(encoding="utf-8")
    words = {p.name for p in (out / "panels" / "None-VGG-None-CTC").iterdir()}
    assert 2 <= len(words) <= 4  # two per cell, the same word counted once
    assert words == {p.name for p in (out / "panels" / "TPS-VGG-None-CTC").iterdir()}
    assert page.count("<tr><td>#") == len(words) and "of 2 misread" in page
