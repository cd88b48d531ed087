"""train.py at scale: DDP, mixed precision, exact resume, crash safety, schedules, logs.

Every run uses a tiny CRNN (--output_channel 32 --hidden_size 32) on LMDBs of PIL-rendered words
built here (helpers.make_word_lmdb), so the whole file runs on two CPU cores in about two minutes.
"""
from __future__ import annotations

import csv
import dataclasses
import os
import signal
import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch

import checkpoint
import train
from helpers import make_word_lmdb
from checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--select_data", "MJ", "--batch_ratio", "1", "--Transformation", "None", "--FeatureExtraction", "VGG",
        "--SequenceModeling", "BiLSTM", "--Prediction", "CTC", "--output_channel", "32", "--hidden_size", "32",
        "--workers", "0", "--batch_size", "4", "--progress", "off"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make_word_lmdb(root / "train" / "MJ", 48, seed=0, max_len=6)
    make_word_lmdb(root / "valid" / "v", 8, seed=1, max_len=6)
    return root


@pytest.fixture
def run(data, tmp_path, monkeypatch):
    """train.main in this process, in tmp_path; → the experiment folder and train()'s result."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STR_CACHE_DIR", str(tmp_path / "cache"))
    deterministic = torch.are_deterministic_algorithms_enabled()
    yield lambda *args, exp="exp": (tmp_path / "saved_models" / exp, train.main(
        ["--train_data", str(data / "train"), "--valid_data", str(data / "valid"), *TINY, "--exp_name", exp,
         *map(str, args)]))
    torch.use_deterministic_algorithms(deterministic)


def cli(data, tmp_path, *args, launcher=(), **popen) -> subprocess.Popen:
    """train.py in a subprocess (optionally under torchrun), cwd tmp_path."""
    env = {**os.environ, "STR_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, *launcher, str(ROOT / "train.py"), "--train_data", str(data / "train"),
               "--valid_data", str(data / "valid"), *TINY, *map(str, args)]
    return subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **popen)


def history(exp: Path) -> list[dict]:
    with open(exp / "log_valid.csv", newline="") as f:
        return list(csv.DictReader(f))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- DDP

def test_ddp_two_processes_gloo_under_a_time_budget(data, tmp_path):
    """Two gloo processes: rank 0 alone validates and logs; both train rank 0's --time_budget plan (a rank
    with another --num_iter would hang in a collective or fail)."""
    launcher = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(free_port())]
    proc = cli(data, tmp_path, "--time_budget", 0.03, "--valInterval", 20, "--exp_name", "ddp", launcher=launcher)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    exp = tmp_path / "saved_models" / "ddp"
    log = (exp / "log_dataset.txt").read_text()
    assert "effective batch size: 4 per process x 2 process(es) x 1 accumulation step(s) = 8" in log
    ckpt = read_checkpoint(exp / "last.pth")
    n = ckpt["budget"]["num_iter"]
    assert ckpt["iteration"] == n and ckpt["data"] == {"batches": n}
    assert out.count(f"-> --num_iter {n} ") == 2  # rank 0 alone logs the plan: its log line and its opt.txt
    # Only rank 0 validates and logs: one line per validation, one CSV row each.
    validated = ["1", *(str(i) for i in range(20, n + 1, 20))] if n > 1 else ["1"]
    assert (exp / "log_train.txt").read_text().count("Train loss") == len(validated)
    assert [r["iteration"] for r in history(exp)] == validated
    assert not any(k.startswith("module.") for k in ckpt["model"])  # saved unwrapped
    assert not list(exp.glob(".*.tmp"))


def test_stop_check_is_collective_only_every_n_iterations(monkeypatch):
    calls = []
    monkeypatch.setattr(train.dist, "all_reduce", lambda t, op=None: calls.append(int(t)))
    stop = train.StopRequest(world_size=2, check_every=5)
    stop.signum = signal.SIGTERM
    assert [stop.requested(i) for i in range(1, 11)] == [False] * 4 + [True] + [False] * 4 + [True]
    assert len(calls) == 2
    assert train.StopRequest(world_size=1).check_every == 1


# ---------------------------------------------------------------- mixed precision

def test_bf16_trains_on_cpu(run):
    exp, result = run("--num_iter", 2, "--valInterval", 2, "--amp", "bf16")
    assert result["iteration"] == 2
    rows = history(exp)
    assert all(torch.isfinite(torch.tensor(float(r["train_loss"]))) for r in rows)
    assert read_checkpoint(exp / "last.pth")["iteration"] == 2


def test_fp16_refused_on_cpu(run):
    with pytest.raises(SystemExit, match="--amp fp16 needs a CUDA GPU; on a CPU use --amp bf16"):
        run("--num_iter", 2, "--amp", "fp16", "--device", "cpu")


# ---------------------------------------------------------------- exact resume

def test_resume_gives_the_same_losses_as_an_uninterrupted_run(run):
    args = ("--valInterval", 2, "--deterministic", "--schedule", "constant")
    full, _ = run("--num_iter", 6, *args, exp="full")
    part, _ = run("--num_iter", 4, *args, exp="part")
    assert read_checkpoint(part / "last.pth")["iteration"] == 4
    _, result = run("--num_iter", 6, "--resume", "auto", *args, exp="part")
    assert result["iteration"] == 6
    columns = ("iteration", "train_loss", "valid_loss", "accuracy", "norm_ED", "lr")
    expected = [[r[c] for c in columns] for r in history(full)]
    assert [r["iteration"] for r in history(full)] == ["1", "2", "4", "6"]
    assert [[r[c] for c in columns] for r in history(part)] == expected
    assert (part / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Resuming at or past --num_iter returns at once, without touching the history.
    for num_iter in (6, 3):
        _, result = run("--num_iter", num_iter, "--resume", "auto", *args, exp="part")
        assert result["iteration"] == 6
    assert [[r[c] for c in columns] for r in history(part)] == expected


def test_resume_trims_history_written_after_last_checkpoint(run):
    exp, _ = run("--num_iter", 2, "--valInterval", 2, exp="trim")
    with open(exp / "log_valid.csv", "a") as f:  # as if killed between the CSV row and last.pth
        f.write("4,1.0,1.0,0.0,0.0,1.0,9.0\n")
    run("--num_iter", 4, "--valInterval", 2, "--resume", "auto", exp="trim")
    assert [r["iteration"] for r in history(exp)] == ["1", "2", "4"]
    assert history(exp)[-1]["elapsed"] != "9.0"


def test_resume_refuses_a_different_cosine_horizon(run):
    exp, _ = run("--num_iter", 2, "--valInterval", 2, "--schedule", "cosine", "--warmup_iters", 1, exp="cos")
    assert read_checkpoint(exp / "last.pth")["schedule"] == {"schedule": "cosine", "num_iter": 2, "warmup_iters": 1}
    with pytest.raises(SystemExit, match="--schedule cosine --num_iter 2 --warmup_iters 1"):
        run("--num_iter", 4, "--valInterval", 2, "--schedule", "cosine", "--warmup_iters", 1, "--resume", "auto",
            exp="cos")


def test_resume_missing_path_is_an_error(run):
    with pytest.raises(SystemExit, match="does not exist"):
        run("--num_iter", 2, "--resume", "nowhere/last.pth")


# ---------------------------------------------------------------- the time budget

def test_time_budget_chooses_num_iter_and_that_num_iter_repeats_the_run(run):
    """--time_budget fixes --num_iter and the one-cycle horizon before training, records them, and a run
    given that --num_iter logs the same losses (the timed warm-up leaves no trace in the run)."""
    args = ("--valInterval", 40, "--deterministic", "--schedule", "onecycle", "--adam", "--lr", "1e-3")
    exp, result = run("--time_budget", 0.03, *args, exp="budget")
    ckpt = read_checkpoint(exp / "last.pth")
    plan = ckpt["budget"]
    n = plan["num_iter"]
    assert result["iteration"] == ckpt["iteration"] == n and ckpt["schedule"] == {"schedule": "onecycle", "num_iter": n}
    assert n * plan["seconds_per_iter"] < 0.03 * 60  # the iterations fit the 1.8 s
    assert plan["timed_iters"] >= 2 and plan["seconds_per_validation"] > 0
    options = (exp / "opt.txt").read_text()
    assert f"num_iter: {n}\n" in options and "time_budget: 0.03\n" in options
    assert f"--num_iter {n} repeats this run" in options and f"-> --num_iter {n}" in (exp / "log_train.txt").read_text()
    fixed, result = run("--num_iter", n, *args, exp="fixed")
    assert result["iteration"] == n
    columns = ("iteration", "train_loss", "valid_loss", "accuracy", "norm_ED", "lr")
    assert [[r[c] for c in columns] for r in history(exp)] == [[r[c] for c in columns] for r in history(fixed)]


def test_time_budget_resume_keeps_the_first_runs_num_iter(run, monkeypatch):
    plan = train.BudgetPlan(minutes=0.05, num_iter=6, seconds_per_iter=0.01, seconds_per_validation=0.1,
                            timed_iters=2)
    args = ("--valInterval", 3, "--schedule", "onecycle", "--adam", "--lr", "1e-3")
    with monkeypatch.context() as m:
        m.setattr(train, "time_iterations", lambda run, start: plan)
        m.setattr(train.StopRequest, "requested", lambda self, done: done == 3)  # as if stopped after 3
        with pytest.raises(SystemExit):
            run("--time_budget", 0.05, *args, exp="budget")
    exp = Path("saved_models") / "budget"
    assert read_checkpoint(exp / "last.pth")["iteration"] == 3

    def no_new_timing(run, start):
        raise AssertionError("a resumed run must keep its plan, not time a new one")
    monkeypatch.setattr(train, "time_iterations", no_new_timing)
    _, result = run("--time_budget", 5, "--resume", "auto", *args, exp="budget")  # another budget: the plan stands
    assert result["iteration"] == 6 and read_checkpoint(exp / "last.pth")["budget"] == dataclasses.asdict(plan)
    assert (exp / "log_train.txt").read_text().count("-> --num_iter 6 ") == 2  # the first run's line, and the resume's


def test_time_budget_num_iter_is_a_cap_and_bad_values_are_refused(run, monkeypatch):
    monkeypatch.setattr(train, "CALIBRATION_SECONDS", 0.05)  # a short timing: 10 minutes fit far more than 3
    exp, result = run("--time_budget", 10, "--num_iter", 3, "--valInterval", 3, exp="cap")
    assert result["iteration"] == 3 and read_checkpoint(exp / "last.pth")["budget"]["num_iter"] == 3
    for bad in ("-1", "inf", "nan"):
        with pytest.raises(SystemExit, match="--time_budget must be 0 \\(off\\) or a number of minutes"):
            run("--time_budget", bad, exp="bad")


# ---------------------------------------------------------------- crash safety

def test_interrupted_checkpoint_write_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    checkpoint.atomic_save({"iteration": 1, "w": torch.ones(3)}, path)
    real_save = torch.save

    def half_then_crash(obj, f):
        real_save(obj, f)
        f.truncate(f.tell() // 2)
        raise KeyboardInterrupt  # a signal in the middle of the write

    monkeypatch.setattr(checkpoint.torch, "save", half_then_crash)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.atomic_save({"iteration": 2, "w": torch.zeros(1000)}, path)
    assert torch.load(path, weights_only=True)["iteration"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]


def test_sigkill_during_a_save_keeps_the_previous_file(tmp_path):
    path = tmp_path / "big.pth"
    checkpoint.atomic_save({"iteration": 1}, path)
    code = ("import torch, checkpoint; "
            f"checkpoint.atomic_save({{'iteration': 2, 'w': torch.ones(1 << 28, dtype=torch.uint8)}}, {str(path)!r})")
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)})
    deadline = time.time() + 60
    while not any(p.name.endswith(".tmp") for p in tmp_path.iterdir()) and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert torch.load(path, weights_only=True) == {"iteration": 1}
    # A SIGKILL cannot clean up: the temp file is left behind, hidden, never mistaken for the checkpoint.
    assert all(p.name == "big.pth" or (p.name.startswith(".big.pth.") and p.name.endswith(".tmp"))
               for p in tmp_path.iterdir())


def test_sigterm_saves_a_loadable_last_pth_and_resume_continues(data, tmp_path, run):
    proc = cli(data, tmp_path, "--num_iter", 100000, "--valInterval", 3, "--exp_name", "term")
    exp = tmp_path / "saved_models" / "term"
    deadline = time.time() + 60
    while time.time() < deadline and "Current_accuracy" not in _read(exp / "log_train.txt"):
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "continue with --resume auto" in out
    stopped = read_checkpoint(exp / "last.pth")["iteration"]
    assert stopped > 0
    _, result = run("--num_iter", stopped + 2, "--valInterval", 3, "--resume", "auto", exp="term")
    assert result["iteration"] == stopped + 2


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


# ---------------------------------------------------------------- schedules and accumulation

@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_schedules_shape(schedule):
    opt = types.SimpleNamespace(schedule=schedule, num_iter=20, warmup_iters=5, lr=1.0)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = train.make_scheduler(opt, optimizer)
    lrs = []
    for _ in range(20):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    peak = lrs.index(max(lrs))
    assert 0 < peak < 19 and lrs[0] < lrs[peak] and lrs[-1] < 0.05
    assert all(a <= b for a, b in zip(lrs[:peak], lrs[1:peak + 1]))  # rises to the peak
    assert all(a >= b for a, b in zip(lrs[peak:], lrs[peak + 1:]))  # then falls
    if schedule == "cosine":
        assert lrs[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])


class FixedBatches:
    def __init__(self, batches):
        self.batches = list(batches)

    def get_batch(self):
        return self.batches.pop(0)


def _one_step(batches, accum_steps: int) -> torch.Tensor:
    from model import ModelConfig, build_model
    from utils import make_converter

    torch.manual_seed(0)
    config = ModelConfig("None", "VGG", "None", "CTC", output_channel=32, hidden_size=32)
    model = build_model(config).eval()  # eval: BatchNorm uses its running statistics, so no batch coupling
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    run = types.SimpleNamespace(
        model=model, opt=types.SimpleNamespace(accum_steps=accum_steps, grad_clip=1e9),
        train_data=FixedBatches(batches), device=torch.device("cpu"), world_size=1,
        converter=make_converter("CTC", config.character), config=config, amp_dtype=None, optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0),
        scaler=torch.amp.GradScaler("cpu", enabled=False))
    train.train_iteration(run)
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_accumulation_equals_one_big_batch():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(8, 1, 32, 100, generator=generator) * 2 - 1
    labels = ["ab", "cde", "f1", "xyz9", "q", "hello", "w0", "mn"]
    big = _one_step([(images, labels)], accum_steps=1)
    halves = _one_step([(images[:4], labels[:4]), (images[4:], labels[4:])], accum_steps=2)
    assert torch.allclose(big, halves, atol=1e-6)


def test_accumulation_runs_and_logs_effective_batch(run):
    exp, result = run("--num_iter", 2, "--valInterval", 2, "--accum_steps", 2)
    assert result["iteration"] == 2
    assert "4 per process x 1 process(es) x 2 accumulation step(s) = 8" in (exp / "log_dataset.txt").read_text()
    assert read_checkpoint(exp / "last.pth")["data"] == {"batches": 4}  # two batches per iteration


# ---------------------------------------------------------------- seeing the run

def test_logs_csv_and_plot(run):
    exp, _ = run("--num_iter", 5, "--valInterval", 2)
    rows = history(exp)
    assert [r["iteration"] for r in rows] == ["1", "2", "4"]
    assert list(rows[0]) == ["iteration", "train_loss", "valid_loss", "accuracy", "norm_ED", "lr", "elapsed"]
    assert (exp / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert read_checkpoint(exp / "last.pth")["iteration"] == 5  # also written at the end
    assert {"best_accuracy.pth", "best_norm_ED.pth", "opt.txt", "log_train.txt"} <= {p.name for p in exp.iterdir()}


def test_tensorboard_missing_is_a_clear_error(run, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if not installed
    with pytest.raises(SystemExit, match="pip install tensorboard"):
        run("--num_iter", 2, "--tensorboard", exp="tb")
    assert not (Path("saved_models") / "tb").exists()  # refused before anything is written


def test_progress_bar_only_on_a_terminal(monkeypatch):
    opt = types.SimpleNamespace(progress="auto", num_iter=10)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert train.progress_bar(opt, 0, rank=0) is None
    opt.progress = "on"
    assert train.progress_bar(opt, 0, rank=1) is None
    bar = train.progress_bar(opt, 3, rank=0)
    assert bar.n == 3 and bar.total == 10
    bar.close()
