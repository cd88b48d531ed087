"""gt.txt → create_lmdb_dataset.py → train.py → test.py / demo.py with no architecture flags."""
import re
import shutil

import pytest
import torch

from checkpoint import export_reference, load_model
from helpers import make_gt_folder, run_script

SMALL = ["--output_channel", "64", "--hidden_size", "64"]
STAGES = ["--Transformation", "None", "--FeatureExtraction", "VGG", "--SequenceModeling", "BiLSTM",
          "--Prediction", "CTC"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    make_gt_folder(work / "words")
    run_script("create_lmdb_dataset.py", "--inputPath", work / "words", "--gtFile", work / "words" / "gt.txt",
               "--outputPath", work / "lmdb" / "train", cwd=work)
    run_script("train.py", "--train_data", "lmdb", "--valid_data", "lmdb", "--select_data", "/",
               "--batch_ratio", "1", *STAGES, *SMALL, "--num_iter", "300", "--valInterval", "100",
               "--batch_size", "16", "--workers", "0", "--adam", "--lr", "0.003", "--exp_name", "e2e", cwd=work)
    # The same weights as a bare reference state_dict ('module.' prefix), as the original train.py saves.
    model = load_model(work / "saved_models" / "e2e" / "best_accuracy.pth").model
    export_reference(work / "reference.pth", model)
    return work


def test_training_reads_its_words(trained):
    log = (trained / "saved_models" / "e2e" / "log_train.txt").read_text()
    assert "[300/300] Train loss:" in log
    for name in ("best_accuracy.pth", "best_norm_ED.pth", "last.pth", "opt.txt", "log_dataset.txt"):
        assert (trained / "saved_models" / "e2e" / name).is_file(), name
    out = run_script("test.py", "--eval_data", "lmdb", "--saved_model", "saved_models/e2e/best_accuracy.pth",
                     "--workers", "0", cwd=trained).stdout
    accuracy = float(re.search(r"accuracy: ([\d.]+)", out).group(1))
    assert accuracy >= 90.0, out
    assert (trained / "result" / "e2e_best_accuracy.pth" / "log_evaluation.txt").is_file()


def demo_predictions(stdout: str) -> dict:
    rows = [line.split("\t") for line in stdout.splitlines() if line.count("\t") == 2 and "image_path" not in line]
    return {path.strip(): (pred.strip(), float(conf)) for path, pred, conf in rows}


def test_demo_needs_no_architecture_flags_and_matches_reference_format(trained):
    out = run_script("demo.py", "--image_folder", "words/images", "--saved_model",
                     "saved_models/e2e/best_accuracy.pth", "--workers", "0", cwd=trained).stdout
    ours = demo_predictions(out)
    assert len(ours) == 64
    gt = dict(line.split("\t") for line in (trained / "words" / "gt.txt").read_text().splitlines())
    correct = sum(ours[f"words/{path}"][0] == label for path, label in gt.items())
    assert correct >= 58
    assert (trained / "log_demo_result.txt").is_file()

    # The bare reference-format copy loads with the stage flags and reads the same.
    raw = torch.load(trained / "reference.pth", weights_only=True)
    assert all(k.startswith("module.") for k in raw)
    out = run_script("demo.py", "--image_folder", "words/images", "--saved_model", "reference.pth",
                     "--workers", "0", *STAGES, *SMALL, cwd=trained).stdout
    theirs = demo_predictions(out)
    assert theirs.keys() == ours.keys()
    for path in ours:
        assert theirs[path][0] == ours[path][0]
        assert theirs[path][1] == pytest.approx(ours[path][1], abs=1e-4)


def test_bare_checkpoint_without_flags_is_a_clear_error(trained):
    proc = run_script("test.py", "--eval_data", "lmdb", "--saved_model", "reference.pth", "--workers", "0",
                      cwd=trained, check=False)
    assert proc.returncode != 0
    assert "--Transformation" in proc.stderr and "Traceback" not in proc.stderr


def test_checkpoint_that_does_not_fit_the_flags_is_explained(trained):
    proc = run_script("demo.py", "--image_folder", "words/images", "--saved_model", "reference.pth",
                      "--workers", "0", *STAGES, *SMALL, "--sensitive", cwd=trained, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "37 classes" in proc.stderr and "95" in proc.stderr, proc.stderr
    proc = run_script("demo.py", "--image_folder", "words/images", "--saved_model", "reference.pth",
                      "--workers", "0", *STAGES[:-1], "Attn", *SMALL, cwd=trained, check=False)
    assert "--Prediction CTC" in proc.stderr, proc.stderr


def test_benchmark_all_eval_reports_both_totals(trained):
    from test import BENCHMARKS
    bench = trained / "bench"
    for name in BENCHMARKS:
        (bench / name).mkdir(parents=True, exist_ok=True)
        if not (bench / name / "data.mdb").exists():  # a copy: LMDB opens each file once per process
            shutil.copy(trained / "lmdb" / "train" / "data.mdb", bench / name / "data.mdb")
    out = run_script("test.py", "--eval_data", "bench", "--benchmark_all_eval", "--saved_model",
                     "saved_models/e2e/best_accuracy.pth", "--workers", "0", cwd=trained).stdout
    line = next(l for l in out.splitlines() if l.startswith("accuracy: IIIT5k_3000:"))
    fields = dict(f.split(": ") for f in line[len("accuracy: "):].split("\t"))
    assert list(fields)[:10] == BENCHMARKS
    assert {"total_accuracy", "averaged_infer_time", "# parameters"} <= fields.keys()
    assert float(fields["total_accuracy"]) == pytest.approx(float(fields["SVT"]), abs=1e-3)  # same data in each
    assert "paper 7-set total" in out
    log = trained / "result" / "e2e_best_accuracy.pth" / "log_all_evaluation.txt"
    assert line in log.read_text()


def test_benchmark_all_eval_names_missing_folders(trained):
    (trained / "partial" / "SVT").mkdir(parents=True, exist_ok=True)
    proc = run_script("test.py", "--eval_data", "partial", "--benchmark_all_eval", "--saved_model",
                      "saved_models/e2e/best_accuracy.pth", "--workers", "0", cwd=trained, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "IIIT5k_3000" in proc.stderr and "CUTE80" in proc.stderr
