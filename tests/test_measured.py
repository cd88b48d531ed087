"""measured.py: choices by timing, cached per machine (timings injected: nothing here is timed), and
train.py --amp auto choosing and recording its precision."""
from __future__ import annotations

import pytest
import torch

import measured
import runtime
from helpers import FakeClock


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STR_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def constant(seconds: float, calls: list | None = None):
    def measure():
        if calls is not None:
            calls.append(seconds)
        return seconds
    return measure


def test_the_faster_candidate_is_chosen_and_said_in_one_line():
    decision = measured.decide("--amp auto (training)", {"model": "a"}, {"off": constant(0.1), "bf16": constant(0.2)})
    assert decision.choice == "off" and not decision.cached
    line = decision.line()
    assert "\n" not in line and line.startswith("--amp auto (training): off (measured off 10.00 steps/s; bf16 5.00")
    assert measured.decide("q", {}, {"off": constant(0.3), "bf16": constant(0.2)}).choice == "bf16"


def test_a_decision_is_cached_per_work_and_machine(monkeypatch):
    calls = []
    first = measured.decide("q", {"model": "a"}, {"off": constant(0.1, calls), "bf16": constant(0.2, calls)})
    again = measured.decide("q", {"model": "a"}, {"off": constant(0.9, calls), "bf16": constant(0.2, calls)})
    assert len(calls) == 2 and again.cached and again.choice == first.choice == "off"
    assert "cached decision for this machine" in again.line()
    other_work = measured.decide("q", {"model": "b"}, {"off": constant(0.9, calls), "bf16": constant(0.2, calls)})
    assert not other_work.cached and other_work.choice == "bf16"
    monkeypatch.setattr(runtime, "cpu_model", lambda: "another CPU")
    other_cpu = measured.decide("q", {"model": "a"}, {"off": constant(0.9, calls), "bf16": constant(0.2, calls)})
    assert not other_cpu.cached and other_cpu.choice == "bf16"


def test_a_damaged_cache_is_measured_again(cache):
    (cache / "measured").mkdir(parents=True)
    (cache / "measured" / measured.CACHE_FILE).write_text("{not json")
    assert measured.decide("q", {}, {"off": constant(0.1), "bf16": constant(0.2)}).choice == "off"


def test_one_candidate_is_chosen_without_timing():
    decision = measured.decide("q", {}, {"off": lambda: pytest.fail("timed")}, reason="bf16 is emulated")
    assert decision.choice == "off" and decision.line() == "q: off (bf16 is emulated)"


@pytest.mark.parametrize("step_s, steps", [(0.5, 6), (10.0, 3), (0.001, 50)])
def test_time_per_step_stops_on_its_budget(step_s, steps):
    calls = []
    seconds = measured.time_per_step(lambda: calls.append(1), warmup=2, budget_s=3.0, clock=FakeClock(step_s))
    assert seconds == pytest.approx(step_s) and len(calls) == 2 + steps


def test_reading_with_amp_auto_keeps_fp32(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx2", "avx512_bf16", "amx_bf16"})
    assert runtime.check_amp("auto", "cpu") is None


def run_tiny_training(tmp_path, *extra: str) -> str:
    import train
    from helpers import make_word_lmdb

    make_word_lmdb(tmp_path / "data" / "train" / "MJ", 32)
    make_word_lmdb(tmp_path / "data" / "valid", 16)
    train.main(["--train_data", "data/train", "--valid_data", "data/valid", "--select_data", "MJ", "--batch_ratio",
                "1", "--Transformation", "None", "--FeatureExtraction", "VGG", "--SequenceModeling", "None",
                "--Prediction", "CTC", "--output_channel", "16", "--hidden_size", "16", "--imgW", "32",
                "--batch_size", "4", "--workers", "0", "--num_iter", "2", "--valInterval", "2", "--device", "cpu",
                "--amp", "auto", "--exp_name", "auto", *extra])
    return (tmp_path / "saved_models" / "auto" / "opt.txt").read_text()


def test_train_amp_auto_times_real_iterations(monkeypatch, tmp_path):
    """The real timing path (a throwaway copy, the loader rewound): it runs and records a choice, whichever."""
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx2", "avx512_bf16"})
    monkeypatch.setattr(measured, "TIMING_BUDGET_S", 0.1)
    monkeypatch.chdir(tmp_path)
    options = run_tiny_training(tmp_path)
    assert "amp_auto: --amp auto (training): " in options and "steps/s" in options


@pytest.mark.parametrize("flags, timings, expected", [
    ({"avx2"}, {}, "off"),  # bf16 emulated: not timed
    ({"avx2", "avx512_bf16"}, {None: 0.1, torch.bfloat16: 0.2}, "off"),  # AVX512-BF16 without AMX: fp32 faster
    ({"avx2", "amx_bf16"}, {None: 0.2, torch.bfloat16: 0.1}, "bf16"),
])
def test_train_amp_auto_chooses_by_timing_and_records_it(flags, timings, expected, monkeypatch, tmp_path):
    import train

    monkeypatch.setattr(runtime, "cpu_flags", lambda: set(flags))
    monkeypatch.setattr(train, "time_training_steps", lambda run, dtype: timings[dtype])
    monkeypatch.chdir(tmp_path)
    options = run_tiny_training(tmp_path)
    assert f"amp: {expected}\n" in options and f"amp_auto: --amp auto (training): {expected} (" in options
    assert f"--amp auto (training): {expected} (" in (tmp_path / "saved_models" / "auto" / "log_train.txt").read_text()


# --- --runtime auto (demo.py, test.py): PyTorch or ONNX Runtime fp32 by measured speed ------------------------

@pytest.fixture(scope="module")
def word_folder(tmp_path_factory):
    from helpers import make_gt_folder

    return make_gt_folder(tmp_path_factory.mktemp("runtime_auto") / "words", copies=1)


def fake_reading(monkeypatch, seconds: dict[str, float]) -> None:
    """time_reading returns the injected seconds for the model's kind (OnnxModel or a PyTorch model)."""
    import onnx_model

    monkeypatch.setattr(measured, "time_reading",
                        lambda model, batch: seconds["onnx" if isinstance(model, onnx_model.OnnxModel) else "torch"])


@pytest.mark.parametrize("seconds, expected", [({"torch": 0.1, "onnx": 0.05}, "onnx"),
                                               ({"torch": 0.05, "onnx": 0.1}, "torch")])
def test_demo_runtime_auto_reads_with_the_faster_and_logs_it(word_folder, seconds, expected, monkeypatch, tmp_path,
                                                             cache):
    from demo import main
    from test_int8 import READER

    monkeypatch.setattr(measured, "MIN_IMAGES_FOR_ONNX", 1)
    fake_reading(monkeypatch, seconds)
    argv = ["--image_folder", str(word_folder / "images"), "--saved_model", str(READER), "--workers", "0",
            "--log_file", str(tmp_path / "log.txt")]
    auto = main(argv)
    log = (tmp_path / "log.txt").read_text()
    assert f"--runtime auto: {expected} (measured torch " in log
    assert list((cache / "onnx").glob("*.onnx"))  # exported once to be timed, whichever wins
    forced = main([*argv, "--runtime", expected])
    assert [t for _, t, _ in auto] == [t for _, t, _ in forced]
    monkeypatch.setattr(measured, "time_reading", lambda model, batch: pytest.fail("timed again"))
    again = main(argv)  # cached for this machine and model
    assert [t for _, t, _ in again] == [t for _, t, _ in auto]
    assert "cached decision for this machine" in (tmp_path / "log.txt").read_text().split("-" * 80)[-3]


def test_few_images_read_in_pytorch_without_export_or_timing(word_folder, monkeypatch, tmp_path, cache):
    from demo import main
    from test_int8 import READER

    monkeypatch.setattr(measured, "time_reading", lambda model, batch: pytest.fail("timed"))
    main(["--image_folder", str(word_folder / "images"), "--saved_model", str(READER), "--workers", "0",
          "--log_file", str(tmp_path / "log.txt")])
    assert "--runtime auto: torch (16 images: too few" in (tmp_path / "log.txt").read_text()
    assert not list((cache / "onnx").glob("*.onnx"))


@pytest.mark.parametrize("device, amp, saved, reason", [
    ("cuda", "off", "x.pth", "CPUs only"),
    ("cpu", "bf16", "x.pth", "--amp bf16 runs in PyTorch"),
    ("cpu", "off", "x.onnx", "an .onnx model runs in ONNX Runtime"),
])
def test_runtime_auto_rules_that_need_no_timing(device, amp, saved, reason):
    decision = measured.choose_runtime(saved, {}, None, device, amp, 10_000, 64)
    assert reason in decision.line() and not decision.seconds


def test_test_py_runtime_auto_counts_the_samples_and_logs_its_choice(word_folder, monkeypatch, tmp_path, cache):
    import test as test_script
    from test_int8 import READER

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(measured, "MIN_IMAGES_FOR_ONNX", 16)
    fake_reading(monkeypatch, {"torch": 0.1, "onnx": 0.05})
    result = test_script.main(["--eval_data", str(word_folder), "--saved_model", str(READER), "--workers", "0"])
    logs = "".join(p.read_text() for p in tmp_path.rglob("log_evaluation.txt"))
    assert "--runtime auto: onnx (measured" in logs and result["n_samples"] == 16
    monkeypatch.setattr(measured, "MIN_IMAGES_FOR_ONNX", 17)
    test_script.main(["--eval_data", str(word_folder), "--saved_model", str(READER), "--workers", "0"])
    assert "--runtime auto: torch (16 images: too few" in "".join(p.read_text() for p in tmp_path.rglob("log_evaluation.txt"))


# --- train.py --measure_loader: loader workers and torch threads by timing ----------------------------------

@pytest.fixture
def keep_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_loader_candidates_leave_a_core_to_the_worker():
    import train

    assert train.loader_candidates(2) == {"workers 0, threads 2": (0, 2), "workers 1, threads 2": (1, 2),
                                          "workers 1, threads 1": (1, 1)}
    assert list(train.loader_candidates(1).values()) == [(0, 1), (1, 1)]


@pytest.mark.parametrize("fast_workers", [0, 1])
def test_measure_loader_trains_with_the_faster_and_records_it(fast_workers, monkeypatch, tmp_path, keep_threads):
    import train

    seen = []

    def fake(run, dtype):
        seen.append((run.train_data.workers, torch.get_num_threads()))
        return 0.1 if run.train_data.workers == fast_workers else 0.2

    monkeypatch.setattr(train, "time_training_steps", fake)
    monkeypatch.setattr(runtime, "cpu_flags", lambda: {"avx2"})
    monkeypatch.chdir(tmp_path)
    options = run_tiny_training(tmp_path, "--measure_loader")
    assert {w for w, _ in seen} == {0, 1}  # each setting timed on a loader rebuilt with its workers
    assert f"\nworkers: {fast_workers}\n" in options and "\ntorch_threads: " in options
    assert f"measure_loader_choice: --measure_loader: workers {fast_workers}, threads" in options
