"""Dependable at the newest edges (issue 32): the quickstart's settings and data, the study's records and
folders, flags whose values name things, the toolkit's own caches, and user errors told apart from bugs.

Each slip ends in one ``error:`` line naming the flag, variable or file with the exit status of
docs/failures.md; nothing the user wrote is deleted; a bug keeps its traceback.
"""
from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

from errors import UsageError, UserError
from runtime import REPORT_BUG, UserErrorExit, run_cli

ROOT = Path(__file__).resolve().parents[1]


# --- 6. user errors by type ---------------------------------------------------------------------

TOOLKIT_MODULES = ("checkpoint", "dataset", "export", "fileio", "lexicon", "lmdb_store", "model", "onnx_model",
                   "pretrained", "real_datasets", "runtime", "study", "synth", "train", "utils")


def toolkit_error_classes():
    for name in TOOLKIT_MODULES:
        module = importlib.import_module(name)
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, Exception) and cls.__module__ == name:
                yield cls


def test_every_toolkit_error_that_is_a_valueerror_is_a_user_error():
    """The toolkit's own error classes share the base class run_cli turns into one line."""
    classes = list(toolkit_error_classes())
    assert {"CheckpointError", "OnnxModelError", "AnnotationError", "OutputPathError"} <= {c.__name__ for c in classes}
    assert [c.__name__ for c in classes if issubclass(c, ValueError) and not issubclass(c, UserError)] == []


def exit_of(error: BaseException) -> int | BaseException:
    def main(argv):
        raise error
    try:
        run_cli(main, [])
    except UserErrorExit as e:
        return e.code
    except Exception as e:  # noqa: BLE001 - the test looks at what came through
        return e
    raise AssertionError("run_cli returned")


@pytest.mark.parametrize("error, status", [(UsageError("--x 3: bad"), 2), (UserError("a.txt: bad"), 1),
                                           (FileNotFoundError("no a.txt"), 1), (FileExistsError("out exists"), 1)])
def test_user_errors_are_one_line_with_their_exit_status(error, status, capsys):
    assert exit_of(error) == status
    assert capsys.readouterr().err == f"error: {error}\n"


@pytest.mark.parametrize("error", [ValueError("too many values to unpack (expected 2)"), KeyError("config"),
                                   __import__("json").JSONDecodeError("Expecting value", "", 0)])
def test_python_own_errors_keep_their_traceback_with_a_pointer_to_report_them(error, capsys):
    raised = exit_of(error)
    assert raised is error and REPORT_BUG in getattr(raised, "__notes__", [])
    assert capsys.readouterr().err == ""


def test_an_internal_valueerror_in_a_script_shows_its_traceback(tmp_path):
    """A bug deep in a real script (injected: a ValueError from unpacking) is a traceback, not 'error: ...'."""
    code = ("import sys; sys.path.insert(0, '.'); import create_synth_dataset as c, runtime\n"
            "def broken(*a, **k):\n    a, b = [1, 2, 3]\n"
            "c.check_outputs_free = broken\n"
            f"c.main(['--output_dir', {str(tmp_path / 'x')!r}, '--num_samples', '1'])\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" in proc.stderr and "too many values to unpack" in proc.stderr
    assert REPORT_BUG in proc.stderr and "\nerror: " not in proc.stderr


# --- 1. the quickstart's settings and data ----------------------------------------------------

def quickstart_settings(*argv: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """scripts/quickstart_settings.py as quickstart.sh runs it: the settings in the environment."""
    environment = {"PATH": "/usr/bin:/bin", **env}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "quickstart_settings.py"), *argv], cwd=cwd,
                          env=environment, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("variable, value", [("NUM_TRAIN", "abc"), ("NUM_TRAIN", "-3"), ("TRAIN_MINUTES", "two"),
                                             ("TRAIN_MINUTES", "0"), ("TRAIN_MINUTES", "nan"), ("NUM_ITER", "1.5"),
                                             ("AMP", "fp8"), ("WORKERS", "two"), ("WORKERS", "0")])
def test_quickstart_refuses_a_bad_setting_first_naming_it(tmp_path, variable, value):
    """quickstart.sh checks its settings before the install: one line naming the variable, exit 2."""
    proc = subprocess.run(["bash", str(ROOT / "quickstart.sh")], env={"PATH": "/usr/bin:/bin", variable: value,
                          "OUT": str(tmp_path / "out")}, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and variable in proc.stderr and "error:" in proc.stderr
    assert "install" not in proc.stdout and not (tmp_path / "out").exists()


def test_quickstart_refuses_out_under_a_file(tmp_path):
    (tmp_path / "notes.txt").write_text("mine\n")
    proc = quickstart_settings("check", cwd=tmp_path, OUT="notes.txt/out")
    assert proc.returncode == 2 and "OUT=notes.txt/out" in proc.stderr


def fake_data(data: Path) -> None:
    """The three datasets of create_synth_dataset.py --layout tree, as far as the plan looks at them."""
    for name in ("training/synth", "validation/synth_val", "evaluation/synth_heldout_fonts"):
        (data / name).mkdir(parents=True, exist_ok=True)
        (data / name / "data.mdb").write_bytes(b"x")


def test_quickstart_never_touches_data_it_did_not_write(tmp_path):
    """OUT/data holding the user's files (even datasets of the same layout) is refused, not removed."""
    fake_data(tmp_path / "out" / "data")
    (tmp_path / "out" / "data" / "thesis.tex").write_text("mine\n")
    proc = quickstart_settings("data", cwd=tmp_path, OUT="out")
    assert proc.returncode == 1 and "out/data holds files the quickstart did not write" in proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stdout == ""
    assert (tmp_path / "out" / "data" / "thesis.tex").read_text() == "mine\n"
    assert quickstart_settings("check", cwd=tmp_path, OUT="out").returncode == 1  # before the install
    assert sorted(p.name for p in (tmp_path / "out" / "data").iterdir()) == ["evaluation", "thesis.tex", "training",
                                                                            "validation"]


def test_quickstart_reuses_matching_data_and_regenerates_other_settings(tmp_path):
    """A second run with another NUM_TRAIN regenerates; the same settings reuse; a cut-short run regenerates."""
    assert quickstart_settings("data", cwd=tmp_path, OUT="out", NUM_TRAIN="10").stdout == "generate\n"
    assert quickstart_settings("data", cwd=tmp_path, OUT="out", NUM_TRAIN="10").stdout == "generate\n"  # cut short
    fake_data(tmp_path / "out" / "data")
    assert quickstart_settings("data-done", cwd=tmp_path, OUT="out", NUM_TRAIN="10").returncode == 0
    assert quickstart_settings("data", cwd=tmp_path, OUT="out", NUM_TRAIN="10", WORKERS="1").stdout == "reuse\n"
    assert quickstart_settings("data", cwd=tmp_path, OUT="out", NUM_TRAIN="20").stdout == "generate\n"
    assert quickstart_settings("data", cwd=tmp_path, OUT="out", NUM_TRAIN="10").stdout == "generate\n"  # 20 was asked
    (tmp_path / "out" / "data" / "mine.txt").write_text("kept\n")  # regenerating is --overwrite, dataset by dataset
    quickstart_settings("data", cwd=tmp_path, OUT="out", NUM_TRAIN="10")
    assert (tmp_path / "out" / "data" / "mine.txt").read_text() == "kept\n"
    text = (ROOT / "quickstart.sh").read_text()
    assert "rm -rf" not in text and "--overwrite" in text


def test_quickstart_model_folder_is_claimed_only_if_ours(tmp_path):
    """saved_models/quickstart of the user's own run is refused; an earlier quickstart's is emptied."""
    folder = tmp_path / "saved_models" / "quickstart"
    folder.mkdir(parents=True)
    (folder / "best_accuracy.pth").write_bytes(b"the user's model")
    proc = quickstart_settings("claim", "saved_models/quickstart", cwd=tmp_path)
    assert proc.returncode == 1 and "saved_models/quickstart holds files" in proc.stderr
    assert (folder / "best_accuracy.pth").read_bytes() == b"the user's model"
    assert quickstart_settings("check", cwd=tmp_path).returncode == 1  # before the install
    (folder / "best_accuracy.pth").unlink()
    assert quickstart_settings("claim", "saved_models/quickstart", cwd=tmp_path).returncode == 0  # empty: ours
    (folder / "best_accuracy.pth").write_bytes(b"the quickstart's model")
    assert quickstart_settings("claim", "saved_models/quickstart", cwd=tmp_path).returncode == 0
    assert [p.name for p in folder.iterdir()] == ["quickstart.json"]
