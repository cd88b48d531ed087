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
