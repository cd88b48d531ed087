"""study.py end to end on a tiny study (2 combinations x 2 seeds, tiny widths, a few iterations),
killed mid-cell and rerun; a failing cell; a changed protocol; the submitit path; bad input; and the
report's frontiers and module-wise table on made-up numbers.

One trained study (module scope) serves most checks: it is started, killed with SIGKILL while its
second cell trains, and run again to the end.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import study
import study_report
from helpers import make_gt_folder, make_word_lmdb, run_main

ROOT = Path(__file__).resolve().parents[1]
MODELS = "None-VGG-None-CTC,None-ResNet-None-CTC"
CELLS = ["None-VGG-None-CTC-Seed1", "None-VGG-None-CTC-Seed2", "None-ResNet-None-CTC-Seed1",
         "None-ResNet-None-CTC-Seed2"]
TINY = ["--output_channel", "16", "--hidden_size", "16", "--imgW", "32", "--batch_size", "4", "--workers", "0",
        "--device", "cpu", "--profile_warmup", "1", "--profile_repeats", "2"]
NUM_ITER = 20


def study_args(name: str = "tiny", *extra: str) -> list[str]:
    return ["--name", name, "--models", MODELS, "--seeds", "1,2", "--train_data", "data/train", "--valid_data",
            "data/valid", "--select_data", "MJ", "--batch_ratio", "1", "--eval_data", "data/eval",
            "--num_iter", str(NUM_ITER), "--valInterval", "10", *TINY, *extra]


def environment() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def start(cwd: Path, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "study.py"), *args], cwd=cwd, env=environment(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def run(cwd: Path, args: list[str]) -> subprocess.CompletedProcess:
    """study.py run to its end, in this process (its cells still train in processes of their own), with
    the environment that ``start`` gives, for its processes; the environment is restored after."""
    env = environment()
    with pytest.MonkeyPatch.context() as patch:
        for name in ("OMP_NUM_THREADS", "PYTHONPATH"):
            patch.setenv(name, env[name])
        return run_main("study.py", *args, cwd=cwd, check=False)


def make_data(root: Path) -> None:
    make_word_lmdb(root / "data" / "train" / "MJ", 32, seed=0, max_len=6)
    make_word_lmdb(root / "data" / "valid" / "v", 4, seed=1, max_len=6)
    make_word_lmdb(root / "data" / "eval" / "setA", 8, seed=2, max_len=6)
    make_gt_folder(root / "data" / "eval" / "setB", copies=1)


def wait_for(condition, timeout: float = 120.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, set[str]]:
    """The study (two cells at a time), killed with kill -9 while its second cell trains, then run again
    to the end; → (its folder, the cells that were not interrupted)."""
    cwd = tmp_path_factory.mktemp("study")
    make_data(cwd)
    second = cwd / "saved_models" / "tiny" / CELLS[1]
    proc = start(cwd, study_args("tiny", "--parallel", "2"))
    assert wait_for(lambda: (second / "last.pth").exists() or proc.poll() is not None), proc.communicate()[0]
    assert proc.poll() is None, f"the study ended before the kill:\n{proc.communicate()[0]}"
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    # Cells not started at the kill, or finished by then, are started once in all.
    once = {c for c in CELLS if not (cell_dir(cwd, c) / "study_cell.log").exists()
            or (cell_dir(cwd, c) / "study_result.json").exists()}
    # Its train.py processes learn of it (SIGTERM when their parent dies), save last.pth and let go of their locks.
    assert wait_for(lambda: not any((cell_dir(cwd, c) / "train.lock").exists() for c in CELLS), timeout=60)
    rerun = run(cwd, study_args("tiny", "--parallel", "2"))
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    return cwd, once


def cell_dir(cwd: Path, cell: str) -> Path:
    return cwd / "saved_models" / "tiny" / cell


def test_every_cell_is_trained_and_every_column_filled(tiny):
    tiny = tiny[0]
    rows = [json.loads((cell_dir(tiny, c) / "study_result.json").read_text()) for c in CELLS]
    for row in rows:
        assert row["iterations"] == NUM_ITER
        assert set(row["accuracy"]) == {"setA", "setB"} and row["samples"] == {"setA": 8, "setB": 16}
        for key in (*study_report.COST_COLUMNS, "total_accuracy"):
            assert isinstance(row[key], float) and row[key] >= 0, key
    with open(tiny / "studies" / "tiny" / "results.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["kind"] for r in table] == ["cell"] * 4 + ["mean", "std"] * 2
    for line in table:
        for key in ("acc:setA", "acc:setB", "total_accuracy", *study_report.COST_COLUMNS):
            assert line[key] != "", (line["cell"], key)
    summary = json.loads((tiny / "studies" / "tiny" / "results.json").read_text())
    assert [c["seeds"] for c in summary["combinations"]] == [2, 2]
    report = (tiny / "studies" / "tiny" / "report.md").read_text()
    assert "T1" in report and "P1" in report and "| FeatureExtraction | VGG → ResNet | 1 |" in report
    for png in ("accuracy_vs_time.png", "accuracy_vs_params.png", "accuracy_vs_gflops.png"):
        assert (tiny / "studies" / "tiny" / png).read_bytes()[:4] == b"\x89PNG"


def test_a_killed_study_resumes_the_interrupted_cells_and_trains_none_twice(tiny):
    """Cells finished before the kill are not started again; the interrupted ones resume from last.pth."""
    cwd, once = tiny
    logs = {c: (cell_dir(cwd, c) / "study_cell.log").read_text() for c in CELLS}
    starts = {c: logs[c].count("train.py --") for c in CELLS}
    assert starts[CELLS[1]] == 2 and "resumed from" in logs[CELLS[1]]
    for cell in CELLS:
        assert starts[cell] == (1 if cell in once else 2), starts
        if starts[cell] == 2:
            assert logs[cell].count("resumed from") == 1, cell
        with open(cell_dir(cwd, cell) / "log_valid.csv") as f:
            iterations = [int(line.split(",")[0]) for line in f.read().splitlines()[1:]]
        assert iterations == sorted(set(iterations)) and iterations[-1] == NUM_ITER


def test_a_rerun_trains_nothing_and_report_only_rebuilds(tiny, monkeypatch, capsys):
    tiny = tiny[0]
    monkeypatch.chdir(tiny)
    results = {c: (cell_dir(tiny, c) / "study_result.json").stat().st_mtime_ns for c in CELLS}
    study.main(study_args())
    assert "4 cells, 4 finished before, 0 to run" in capsys.readouterr().out
    assert results == {c: (cell_dir(tiny, c) / "study_result.json").stat().st_mtime_ns for c in CELLS}
    (tiny / "studies" / "tiny" / "report.md").unlink()
    study.main(["--name", "tiny", "--report_only"])
    assert "None-ResNet-None-CTC" in (tiny / "studies" / "tiny" / "report.md").read_text()


def test_a_changed_protocol_is_refused_naming_the_flags(tiny, monkeypatch, capsys):
    tiny = tiny[0]
    monkeypatch.chdir(tiny)
    with pytest.raises(SystemExit) as info:
        study.main(study_args("tiny", "--lr", "0.5"))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--lr (recorded 1, now 0.5)" in err and "--num_iter" not in err


def test_checkpoints_named_as_the_reference_are_evaluated_and_profiled(tiny, monkeypatch):
    tiny = tiny[0]
    monkeypatch.chdir(tiny)
    folder = tiny / "published"
    folder.mkdir()
    shutil.copy(cell_dir(tiny, CELLS[2]) / "best_accuracy.pth", folder / "None-ResNet-None-CTC-case-sensitive.pth")
    study.main(["--name", "published", "--checkpoints", "published", "--eval_data", "data/eval/setA", *TINY[6:]])
    summary = json.loads((tiny / "studies" / "published" / "results.json").read_text())
    assert [c["cell"] for c in summary["cells"]] == ["None-ResNet-None-CTC-case-sensitive"]
    trained = json.loads((cell_dir(tiny, CELLS[2]) / "study_result.json").read_text())
    again = summary["cells"][0]
    assert again["accuracy"] == {"setA": trained["accuracy"]["setA"]} and again["params_m"] == trained["params_m"]


def test_profile_only_with_a_failing_cell(tmp_path, monkeypatch, capsys):
    """--output_channel 8 is too narrow for ResNet: its cell fails, the other is profiled, exit 1 lists it."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        study.main(["--name", "costs", "--models", MODELS, "--profile_only", *TINY, "--output_channel", "8"])
    assert info.value.code == 1
    err = capsys.readouterr().err
    log = Path("studies", "costs", "cells", "None-ResNet-None-CTC", "study_cell.log")
    assert "1 cell(s) failed" in err and "None-ResNet-None-CTC: " in err and str(log) in err
    assert "--output_channel must be at least 16" in log.read_text()
    summary = json.loads(Path("studies", "costs", "results.json").read_text())
    assert [c["cell"] for c in summary["cells"]] == ["None-VGG-None-CTC"]
    assert all(summary["cells"][0][k] > 0 for k in ("params_m", "gflops", "latency_ms"))
    assert 1 <= summary["cells"][0]["latency_runs"] <= 2 and 1 <= summary["cells"][0]["throughput_runs"] <= 2
    assert "latency_runs" in Path("studies", "costs", "results.csv").read_text().splitlines()[0]
    assert "## Failed cells" in Path("studies", "costs", "report.md").read_text()
    assert Path("studies", "costs", "costs.png").is_file()


def test_profile_budget_is_checked_and_recorded(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        study.main(["--name", "costs", "--models", "None-VGG-None-CTC", "--profile_only", *TINY, "--profile_budget", "0"])
    assert info.value.code == 2 and "--profile_budget" in capsys.readouterr().err


def test_one_cell_through_submitits_local_executor(tmp_path):
    make_data(tmp_path)
    args = ["--name", "sub", "--models", "None-VGG-None-CTC", "--seeds", "3", "--train_data", "data/train",
            "--valid_data", "data/valid", "--select_data", "MJ", "--batch_ratio", "1", "--eval_data", "data/eval",
            "--num_iter", "2", "--valInterval", "1", *TINY, "--launcher", "submitit_local"]
    proc = run(tmp_path, args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    row = json.loads((tmp_path / "saved_models" / "sub" / "None-VGG-None-CTC-Seed3" / "study_result.json").read_text())
    assert row["iterations"] == 2 and row["seed"] == 3
    assert list((tmp_path / "studies" / "sub" / "submitit").glob("*/*_result.pkl"))  # submitit's own job files


# ---------------------------------------------------------------- bad input: one line, exit 2

@pytest.mark.parametrize("args, message", [
    (["--models", "None-VGG-BiLSTM-CTX"], "'None-VGG-BiLSTM-CTX' names no combination. The paper's 24: None-VGG-None-CTC"),
    (["--models", "XYZ-*"], "'XYZ-*' names no combination"),
    (["--seeds", "1,x"], "--seeds '1,x': give whole numbers"),
    (["--seeds", "1,1"], "each seed once"),
    (["--Prediction", "CTC"], "--Prediction: the study sets these for each cell"),
    (["--name", "a/b"], "--name 'a/b': give a folder name"),
])
def test_bad_flags_exit_2_with_one_line(tmp_path, monkeypatch, capsys, args, message):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        study.main(["--name", "bad", "--profile_only", "--models", "None-VGG-None-CTC", "--imgW", "999999", *args])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_an_unwritable_study_folder_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("studies").write_text("a file where the study folder should be")
    with pytest.raises(SystemExit) as info:
        study.main(["--name", "bad", "--profile_only"])
    assert info.value.code == 2
    assert "cannot write the study folder studies/bad" in capsys.readouterr().err


def test_checkpoints_that_fit_no_combination_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("ckpts").mkdir()
    Path("ckpts", "TPS-ResNet-BiLSTM-Attn.pth").write_bytes(b"")
    Path("ckpts", "my_model.pth").write_bytes(b"")
    with pytest.raises(SystemExit) as info:
        study.main(["--name", "bad", "--checkpoints", "ckpts", "--eval_data", "."])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "my_model.pth fit no combination" in err and "TPS-ResNet-BiLSTM-Attn.pth," not in err.split(":")[1]


def test_models_all_patterns_and_the_transformer_stages():
    assert len(study.resolve_models("all")) == 24
    assert study.resolve_models("TPS-*-BiLSTM-*") == [n for n in study.REFERENCE_NAMES
                                                      if n.startswith("TPS") and "BiLSTM" in n]
    assert study.resolve_models("*-SVTR-None-CTC") == ["None-SVTR-None-CTC", "TPS-SVTR-None-CTC"]
    assert study.resolve_models("None-ViT-None-PARSeq,None-VGG-None-CTC") == ["None-ViT-None-PARSeq",
                                                                               "None-VGG-None-CTC"]


def test_a_flag_that_sizes_another_stage_is_left_out_of_the_cells_it_does_not_fit(tmp_path, monkeypatch):
    """--output_channel sizes VGG, not SVTR (whose width is its own, and train.py refuses it there); --vit_size
    sizes ViT only. Each cell gets the flags that fit it, and its own train.py parses them."""
    import train
    from model import config_from_args

    argv = ["--name", "mixed", "--models", "None-VGG-None-CTC,None-SVTR-None-CTC,None-ViT-None-CTC",
            "--seeds", "1", "--train_data", "t", "--valid_data", "v", "--eval_data", "e",
            "--output_channel=128", "--hidden_size", "64", "--vit_size", "tiny", "--imgW", "128", "--num_iter", "5"]
    monkeypatch.chdir(tmp_path)
    make_gt_folder(tmp_path / "e", copies=1)
    opt, forwarded, train_opt = study.parse_args(argv)
    protocol = study.make_protocol(opt, train_opt, study.check_args(opt, train_opt))
    cells = {c.combination: c for c in study.plan_cells("mixed", protocol, forwarded, train_opt, 0, 1)}
    vgg, svtr, vit = (cells[f"None-{fe}-None-CTC"] for fe in ("VGG", "SVTR", "ViT"))
    assert "--output_channel=128" in vgg.train_argv and "--vit_size" not in vgg.train_argv
    assert vgg.model_flags["output_channel"] == 128 and "vit_size" not in vgg.model_flags
    assert not any(a.startswith("--output_channel") for a in svtr.train_argv + vit.train_argv)
    assert "output_channel" not in svtr.model_flags and "--vit_size" not in svtr.train_argv
    assert vit.train_argv[vit.train_argv.index("--vit_size") + 1] == "tiny"
    for cell in cells.values():
        assert cell.train_argv[cell.train_argv.index("--hidden_size") + 1] == "64"
        config = config_from_args(train.parse_args(cell.train_argv))  # what train.py builds; raises if refused
        assert config.FeatureExtraction == cell.combination.split("-")[1] and config.hidden_size == 64


# ---------------------------------------------------------------- the report on made-up numbers

def row(name: str, seed: int, acc: float, ms: float, params: float) -> dict:
    return {"cell": f"{name}-Seed{seed}", "combination": name, "seed": seed, "accuracy": {"x": acc},
            "total_accuracy": acc, "latency_ms": ms, "params_m": params, "gflops": params * 2}


def test_frontiers_and_the_module_wise_table():
    rows = [row("None-VGG-None-CTC", 1, 70, 1.0, 5), row("None-VGG-None-CTC", 2, 72, 1.2, 5),
            row("TPS-VGG-None-CTC", 1, 75, 2.0, 7), row("None-ResNet-None-CTC", 1, 74, 3.0, 40),
            row("TPS-ResNet-None-CTC", 1, 80, 4.0, 42), row("None-RCNN-None-CTC", 1, 60, 5.0, 2)]
    combos = study_report.combine(rows)
    vgg = combos[0]
    assert vgg.mean["total_accuracy"] == 71 and round(vgg.std["total_accuracy"], 3) == 1.414
    time = study_report.pareto_frontier(combos, "latency_ms", "total_accuracy")
    assert [c.name for c in time] == ["None-VGG-None-CTC", "TPS-VGG-None-CTC", "TPS-ResNet-None-CTC"]
    params = study_report.pareto_frontier(combos, "params_m", "total_accuracy")
    assert [c.name for c in params] == ["None-RCNN-None-CTC", "None-VGG-None-CTC", "TPS-VGG-None-CTC",
                                        "TPS-ResNet-None-CTC"]
    table = {(r["stage"], r["from"], r["to"]): r for r in study_report.module_wise(combos, "total_accuracy")}
    tps = table[("Transformation", "None", "TPS")]
    assert tps["pairs"] == 2 and tps["total_accuracy"] == pytest.approx((75 - 71 + 80 - 74) / 2)
    assert tps["latency_ms"] == pytest.approx((2.0 - 1.1 + 4.0 - 3.0) / 2)
    assert table[("FeatureExtraction", "VGG", "ResNet")]["pairs"] == 2
    assert table[("FeatureExtraction", "VGG", "RCNN")]["pairs"] == 1
    assert ("SequenceModeling", "None", "BiLSTM") not in table
