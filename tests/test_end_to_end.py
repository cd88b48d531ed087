"""gt.txt → create_lmdb_dataset.py → train.py → test.py / demo.py with no architecture flags."""
import re
import shutil

import pytest
import torch

from checkpoint import export_reference, load_model
from helpers import make_gt_folder, run_main, run_script

SMALL = ["--output_channel", "64", "--hidden_size", "64"]
STAGES = ["--Transformation", "None", "--FeatureExtraction", "VGG", "--SequenceModeling", "BiLSTM",
          "--Prediction", "CTC"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    work = tmp_path_factory.mktemp("e2e")
    make_gt_folder(work / "words")
    run_main("create_lmdb_dataset.py", "--inputPath", work / "words", "--gtFile", work / "words" / "gt.txt",
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
    out = run_main("test.py", "--eval_data", "lmdb", "--saved_model", "saved_models/e2e/best_accuracy.pth",
                   "--workers", "0", cwd=trained).stdout
    accuracy = float(re.search(r"accuracy: ([\d.]+)", out).group(1))
    assert accuracy >= 90.0, out
    assert (trained / "result" / "e2e_best_accuracy.pth" / "log_evaluation.txt").is_file()


def demo_predictions(stdout: str) -> dict:
    rows = [line.split("\t") for line in stdout.splitlines() if line.count("\t") == 2 and "image_path" not in line]
    return {path.strip(): (pred.strip(), float(conf)) for path, pred, conf in rows}


def test_demo_needs_no_architecture_flags_and_matches_reference_format(trained):
    out = run_main("demo.py", "--image_folder", "words/images", "--saved_model",
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
    out = run_main("demo.py", "--image_folder", "words/images", "--saved_model", "reference.pth",
                   "--workers", "0", *STAGES, *SMALL, cwd=trained).stdout
    theirs = demo_predictions(out)
    assert theirs.keys() == ours.keys()
    for path in ours:
        assert theirs[path][0] == ours[path][0]
        assert theirs[path][1] == pytest.approx(ours[path][1], abs=1e-4)


def test_bare_checkpoint_without_flags_is_a_clear_error(trained):
    proc = run_main("test.py", "--eval_data", "lmdb", "--saved_model", "reference.pth", "--workers", "0",
                    cwd=trained, check=False)
    assert proc.returncode != 0
    assert "--Transformation" in proc.stderr and "Traceback" not in proc.stderr


def test_checkpoint_that_does_not_fit_the_flags_is_explained(trained):
    proc = run_main("demo.py", "--image_folder", "words/images", "--saved_model", "reference.pth",
                    "--workers", "0", *STAGES, *SMALL, "--sensitive", cwd=trained, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "37 classes" in proc.stderr and "95" in proc.stderr, proc.stderr
    proc = run_main("demo.py", "--image_folder", "words/images", "--saved_model", "reference.pth",
                    "--workers", "0", *STAGES[:-1], "Attn", *SMALL, cwd=trained, check=False)
    assert "--Prediction CTC" in proc.stderr, proc.stderr


def test_benchmark_all_eval_reports_both_totals(trained):
    from evaluation import BENCHMARKS
    bench = trained / "bench"
    for name in BENCHMARKS:
        (bench / name).mkdir(parents=True, exist_ok=True)
        if not (bench / name / "data.mdb").exists():  # a copy: LMDB opens each file once per process
            shutil.copy(trained / "lmdb" / "train" / "data.mdb", bench / name / "data.mdb")
    out = run_main("test.py", "--eval_data", "bench", "--benchmark_all_eval", "--saved_model",
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
    proc = run_main("test.py", "--eval_data", "partial", "--benchmark_all_eval", "--saved_model",
                    "saved_models/e2e/best_accuracy.pth", "--workers", "0", cwd=trained, check=False)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "IIIT5k_3000" in proc.stderr and "CUTE80" in proc.stderr


def copy_lmdb(trained, folder):
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "data.mdb").exists():  # a copy: LMDB opens each file once per process
        shutil.copy(trained / "lmdb" / "train" / "data.mdb", folder / "data.mdb")


def test_benchmark_union14m_table_average_and_missing_subsets(trained):
    from dataset import read_lmdb_samples
    from lmdb_store import LmdbWriter
    from evaluation import UNION14M_BENCHMARKS
    bench = trained / "u14m"
    for name in ["curve", "artistic", "general"]:
        copy_lmdb(trained, bench / name)
    # "salient": the same images with every label wrong, so the mean of the sets differs from any one set
    (bench / "salient").mkdir(parents=True, exist_ok=True)
    with LmdbWriter(bench / "salient" / "lmdb", overwrite=True) as writer:
        for _, image, label in read_lmdb_samples(trained / "lmdb" / "train", 20):
            writer.add(image, label + "zz")
    out = run_main("test.py", "--eval_data", "u14m", "--benchmark", "union14m", "--saved_model",
                   "saved_models/e2e/best_accuracy.pth", "--workers", "0", cwd=trained).stdout
    line = next(l for l in out.splitlines() if l.startswith("accuracy: "))
    fields = {k: float(v) for k, v in (f.split(": ") for f in line[len("accuracy: "):].strip().split("\t"))}
    assert list(fields)[:4] == [n for n in UNION14M_BENCHMARKS if n in ("curve", "artistic", "salient", "general")]
    assert fields["salient"] == 0.0 and fields["curve"] >= 90.0
    assert fields["average"] == pytest.approx(sum(fields[n] for n in ("curve", "artistic", "salient", "general")) / 4,
                                              abs=2e-3)
    assert fields["weighted"] > fields["average"]  # salient has 20 samples, the others 64
    for name in ("multi_oriented", "contextless", "multi_words", "incomplete"):
        assert re.search(rf"^{name}\s+missing", out, re.M), name
    assert "missing from --benchmark union14m: multi_oriented, contextless, multi_words, incomplete" in out


def test_benchmark_union14m_asks_for_conversion_of_the_shipped_json(trained):
    (trained / "u14m_raw" / "curve").mkdir(parents=True, exist_ok=True)
    (trained / "u14m_raw" / "curve" / "annotation.json").write_text('{"data_list": []}')
    proc = run_main("test.py", "--eval_data", "u14m_raw", "--benchmark", "union14m", "--saved_model",
                    "saved_models/e2e/best_accuracy.pth", "--workers", "0", cwd=trained, check=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "convert_real_dataset.py --format union14m" in proc.stderr
    proc = run_main("test.py", "--eval_data", "nowhere", "--benchmark", "union14m", "--saved_model",
                    "saved_models/e2e/best_accuracy.pth", "--workers", "0", cwd=trained, check=False)
    assert proc.returncode == 1 and "curve, multi_oriented" in proc.stderr


def test_benchmark_long_text_refuses_labels_the_model_cannot_hold(trained):
    from dataset import read_lmdb_samples
    from lmdb_store import LmdbWriter
    copy_lmdb(trained, trained / "long" / "short_words")
    out = run_main("test.py", "--eval_data", "long", "--benchmark", "long_text", "--saved_model",
                   "saved_models/e2e/best_accuracy.pth", "--workers", "0", cwd=trained).stdout
    assert re.search(r"^accuracy: short_words: [\d.]+\taverage: ", out, re.M)
    (trained / "long" / "long_words").mkdir()
    with LmdbWriter(trained / "long" / "long_words" / "lmdb") as writer:
        for index, image, label in read_lmdb_samples(trained / "lmdb" / "train", 6):
            writer.add(image, "x" * 30 if index <= 3 else label)  # filtering would keep the 3 short ones
    proc = run_main("test.py", "--eval_data", "long", "--benchmark", "long_text", "--saved_model",
                    "saved_models/e2e/best_accuracy.pth", "--workers", "0", cwd=trained, check=False)
    assert proc.returncode == 1 and "3 labels are longer than the model's batch_max_length 25" in proc.stderr
    proc = run_main("test.py", "--eval_data", "long", "--benchmark", "long_text", "--benchmark_all_eval",
                    "--saved_model", "saved_models/e2e/best_accuracy.pth", cwd=trained, check=False)
    assert proc.returncode == 2 and "give one of them" in proc.stderr


def test_decoders_and_word_lists_on_the_command_line(trained):
    """test.py: beam 5 and a word list read the trained words at least as well as greedy (decoding.py)."""
    from helpers import WORDS
    (trained / "words.txt").write_text("\n".join(WORDS + ["c@t"]) + "\n", encoding="utf-8")

    def accuracy(*flags):
        out = run_main("test.py", "--eval_data", "lmdb", "--saved_model", "saved_models/e2e/best_accuracy.pth",
                       "--workers", "0", *flags, cwd=trained).stdout
        return float(re.search(r"accuracy: ([\d.]+)", out).group(1)), out

    greedy, _ = accuracy()
    beam, out = accuracy("--decoder", "beam", "--beam_size", "5")
    assert "decoder: beam 5" in out
    constrained, out = accuracy("--decoder", "beam", "--lexicon", "words.txt")
    assert "dropped 1 word" in out and "'c@t'" in out  # '@' is not in the model's set
    snapped, _ = accuracy("--lexicon", "words.txt", "--lexicon_mode", "snap")
    assert min(beam, constrained, snapped) >= greedy - 5.0
    assert constrained >= greedy and snapped >= greedy


def test_demo_prints_the_k_best_and_character_confidences(trained):
    from helpers import WORDS
    (trained / "words.txt").write_text("\n".join(WORDS) + "\n", encoding="utf-8")
    out = run_main("demo.py", "--image_folder", "words/images", "--saved_model", "saved_models/e2e/best_accuracy.pth",
                   "--workers", "0", "--decoder", "beam", "--topk", "3", "--char_conf", "--lexicon", "words.txt",
                   cwd=trained).stdout
    rows = demo_predictions(out)
    assert len(rows) == 64 and all(pred in WORDS for pred, _ in rows.values())
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if line.count("\t") == 2 and "image_path" not in line:
            pred = line.split("\t")[1].strip()
            chars = lines[i + 1].split()[1:]
            assert lines[i + 1].startswith("    chars: ") and "".join(c.split(":")[0] for c in chars) == pred
            assert lines[i + 2].startswith(f"    1. {pred!r} score ")
            # Up to 3 readings (a constrained beam may complete fewer words), ranked 1, 2, 3.
            ranks = [int(line.split(".")[0]) for line in lines[i + 2:i + 5] if re.match(r"    \d\. ", line)]
            assert ranks == list(range(1, len(ranks) + 1)) and len(ranks) <= 3
    assert "    3. " in out  # some image had three words in its beam


@pytest.mark.parametrize("flags, code, message", [
    (["--decoder", "beam", "--beam_size", "0"], 2, "--beam_size 0: must be an integer from 1"),
    (["--lexicon", "missing.txt", "--decoder", "beam"], 1, "--lexicon missing.txt: no such file"),
    (["--lexicon", "words.txt"], 2, "--lexicon_mode constrain needs --decoder beam"),
    (["--decoder", "beam", "--beam_size", "2", "--topk", "3"], 2, "--topk 3 is more than --beam_size 2"),
])
def test_bad_decoding_flags_are_clear_errors(trained, flags, code, message):
    (trained / "words.txt").write_text("cat\n", encoding="utf-8")
    proc = run_main("demo.py", "--image_folder", "words/images", "--saved_model",
                    "saved_models/e2e/best_accuracy.pth", "--workers", "0", *flags, cwd=trained, check=False)
    assert proc.returncode == code and "Traceback" not in proc.stderr
    assert message in proc.stderr, proc.stderr
