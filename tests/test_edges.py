"""Dependable at the newest edges: the quickstart's settings and data, the study's records and
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
    demo = tmp_path / "out" / "demo_images"
    demo.mkdir(parents=True)
    (demo / "gt.txt").write_text("the user's labels\n")
    assert quickstart_settings("check", cwd=tmp_path, OUT="out").returncode == 1
    assert quickstart_settings("claim", "out/demo_images", cwd=tmp_path).returncode == 1
    assert (demo / "gt.txt").read_text() == "the user's labels\n"


# --- 2. the study's records and folders -------------------------------------------------------

def study_exit(argv: list[str], capsys) -> tuple[int, str]:
    import study

    with pytest.raises(SystemExit) as info:
        study.main(argv)
    return info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--models", "XYZ-*", "--profile_only"], "'XYZ-*' names no combination"),
    (["--checkpoints", "empty", "--eval_data", "."], "--checkpoints empty holds no .pth or .pt file"),
    (["--checkpoints", "nothere", "--eval_data", "."], "--checkpoints nothere is not a folder"),
    (["--profile_only", "--eval_data", "nothere", "--checkpoints", "x"], "--profile_only and --checkpoints"),
    (["--models", "None-VGG-None-CTC", "--eval_data", "nothere", "--train_data", "t", "--valid_data", "v"],
     "--eval_data nothere"),
    (["--profile_only", "--gpus_per_cell", "-1"], "--gpus_per_cell must be 0 or more, got -1"),
    (["--profile_only", "--device", "cpu", "--gpus_per_cell", "2"], "--gpus_per_cell 2: only 0 GPU(s)"),
    (["--profile_only", "--gpus_per_node", "-2"], "--gpus_per_node must be 0 or more"),
])
def test_a_study_that_never_starts_leaves_no_folder(tmp_path, monkeypatch, capsys, extra, message):
    monkeypatch.chdir(tmp_path)
    Path("empty").mkdir()
    code, err = study_exit(["--name", "never", *extra], capsys)
    assert code == 2 and message in err and err.count("\n") == 1, err
    assert not Path("studies").exists() and not Path("saved_models").exists()


def test_launcher_slurm_without_slurm_is_refused(tmp_path, monkeypatch, capsys):
    """submitit's AutoExecutor would fall back to running every cell here at once."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch
    code, err = study_exit(["--name", "cluster", "--profile_only", "--launcher", "slurm"], capsys)
    assert code == 2 and "--launcher slurm: Slurm is not installed here (no sbatch" in err
    assert not Path("studies").exists()


@pytest.mark.parametrize("content, what", [('{"protocol": {"mode": "profile_only", "mod', "JSONDecodeError"),
                                           ("[1, 2]", "TypeError"), ('{"protocol": {"mode": "train"}}', "no models"),
                                           ('{"command": []}', "no protocol"), (b"\xff\xfe{", "UnicodeDecodeError")])
def test_a_damaged_protocol_json_is_named(tmp_path, monkeypatch, capsys, content, what):
    monkeypatch.chdir(tmp_path)
    path = Path("studies", "damaged", "protocol.json")
    path.parent.mkdir(parents=True)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    for extra in ([], ["--report_only"]):
        code, err = study_exit(["--name", "damaged", "--profile_only", "--models", "None-VGG-None-CTC", *extra], capsys)
        assert code == 1 and f"{path} is damaged ({what}" in err and err.count("\n") == 1, err
    assert path.read_bytes() == (content if isinstance(content, bytes) else content.encode())


def test_checkpoints_with_models_all_takes_every_file_transformers_too(tmp_path):
    import study

    folder = tmp_path / "published"
    folder.mkdir()
    for name in ("None-ViT-None-PARSeq", "None-VGG-BiLSTM-CTC", "TPS-ResNet-BiLSTM-Attn-case-sensitive"):
        (folder / f"{name}.pth").write_bytes(b"")
    found = study.find_checkpoints(str(folder))
    chosen = study.resolve_models("all", [f["combination"] for f in found.values()])
    assert chosen == ["None-VGG-BiLSTM-CTC", "TPS-ResNet-BiLSTM-Attn", "None-ViT-None-PARSeq"]
    assert len(study.resolve_models("all")) == 24  # training: the paper's 24, as documented


# --- 4. flags whose values name things --------------------------------------------------------

TRAIN_STAGES = ["--Transformation", "None", "--FeatureExtraction", "VGG", "--SequenceModeling", "None",
                "--Prediction", "CTC"]


@pytest.mark.parametrize("flags, message", [
    (["--freeze", "FeatureExtractor"], "--freeze 'FeatureExtractor': ['FeatureExtractor'] are not stages"),
    (["--freeze", "Transformation-FeatureExtraction-SequenceModeling-Prediction"], "names every stage"),
    (["--character", "charsets/latin.txt"], "--character charsets/latin.txt: no such file"),
    (["--character", "nothere.TXT"], "--character nothere.TXT: no such file"),
    (["--character", "data/chars"], "--character data/chars: no such file"),
])
def test_a_flag_naming_a_missing_thing_exits_2_naming_flag_and_value(flags, message, tmp_path, monkeypatch, capsys):
    """Before any data is read (the data folders do not exist) and with or without --saved_model."""
    import train

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    with pytest.raises(SystemExit) as info:
        train.main(["--train_data", "missing/train", "--valid_data", "missing/valid", *TRAIN_STAGES, "--exp_name",
                    "x", *flags])
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "saved_models").exists()


def test_a_character_set_that_is_not_a_path_is_still_the_set(tmp_path, monkeypatch):
    """Literal sets with '/' or '.' stay literal unless they look like a path (see utils.looks_like_a_path)."""
    from utils import SENSITIVE_CHARACTER, load_character

    monkeypatch.chdir(tmp_path)
    (tmp_path / "set.txt").write_text("abc\n", encoding="utf-8")
    assert load_character("set.txt") == "abc"
    for literal in ("0123456789/-.", "ab/cd", SENSITIVE_CHARACTER, "abc.tx"):
        assert load_character(literal) == literal


def test_freeze_without_saved_model_freezes_the_fresh_model():
    import train

    opt = train.parse_args(["--train_data", "t", "--valid_data", "v", *TRAIN_STAGES, "--output_channel", "32",
                            "--hidden_size", "32", "--freeze", "FeatureExtraction"])
    _, model, _ = train.build_config_and_model(opt, lambda message: None)
    assert model.frozen == ("FeatureExtraction",)
    assert not any(p.requires_grad for p in model.FeatureExtraction.parameters())
    assert all(p.requires_grad for p in model.Prediction.parameters())


# --- 5. the toolkit's own caches ---------------------------------------------------------------

@pytest.mark.parametrize("damage", [b"", b"\x08\x07garbage", None])
def test_a_damaged_onnx_cache_file_is_rebuilt_not_blamed_on_the_user(damage, tmp_path, monkeypatch):
    from checkpoint import load_model_for_runtime, onnx_cache_path
    from helpers import save_tiny_checkpoint

    monkeypatch.setenv("STR_CACHE_DIR", str(tmp_path / "cache"))
    saved = save_tiny_checkpoint(tmp_path / "tiny.pth")
    load_model_for_runtime(saved, {}, "cpu", "onnx")
    cached = onnx_cache_path(saved, {})
    good = cached.read_bytes()
    cached.write_bytes(good[:len(good) // 2] if damage is None else damage)  # None: cut short
    messages = []
    loaded = load_model_for_runtime(saved, {}, "cpu", "onnx", log=messages.append)
    assert any(f"the --runtime onnx cache file {cached} is damaged" in m and "exporting it again" in m
               for m in messages)
    assert loaded.config.name == "None-VGG-None-CTC" and cached.stat().st_size == len(good)


@pytest.mark.parametrize("variable", ["STR_CACHE_DIR", "STR_TOOLKIT_CACHE"])
def test_a_cache_root_that_cannot_be_made_is_named_before_the_export(variable, tmp_path, monkeypatch):
    import onnx_model
    from checkpoint import load_model_for_runtime
    from helpers import save_tiny_checkpoint

    saved = save_tiny_checkpoint(tmp_path / "tiny.pth")
    (tmp_path / "a_file").write_text("not a folder\n")
    monkeypatch.delenv("STR_CACHE_DIR", raising=False)
    monkeypatch.setenv(variable, str(tmp_path / "a_file"))

    def no_export(*args, **kwargs):
        raise AssertionError("exported before the cache folder was checked")

    monkeypatch.setattr(onnx_model, "export_onnx", no_export)
    with pytest.raises(UserError) as info:
        load_model_for_runtime(saved, {}, "cpu", "onnx")
    message = str(info.value)
    assert f"cache folder {tmp_path / 'a_file' / 'onnx'} cannot be made" in message
    assert f"${variable} is {tmp_path / 'a_file'}" in message and "set STR_CACHE_DIR" in message
    assert (tmp_path / "a_file").read_text() == "not a folder\n"


def test_docs_failures_names_only_tests_of_this_file():
    text = (ROOT / "docs" / "failures.md").read_text(encoding="utf-8").split("(`tests/test_edges.py::`)", 1)[1]
    text = text.split("\n### ", 1)[0]  # this file's section only
    import re

    named = set(re.findall(r"`(test_\w+)`", text))
    assert named and named <= {n for n in globals() if n.startswith("test_")}
