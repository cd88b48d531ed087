"""test.py --benchmark presets: the six common benchmarks in both sizes (combined and average accuracy, the 36- and
94-character protocols, baudm/parseq's folder names), and the folder-found suites (Union14M, LTB, OST)."""
import pytest

import test as test_script
from evaluation import COMMON_BENCHMARKS, COMMON_GROUPS, SUITES, group_scores
from helpers import make_word_lmdb, save_tiny_checkpoint
from runtime import UsageError

SIZES = {"IIIT5k": 6, "SVT": 3, "IC13_857": 4, "IC13_1015": 5, "IC15_1811": 2, "IC15_2077": 3, "SVTP": 2, "CUTE80": 1}


def test_combined_weighs_by_samples_and_average_does_not():
    rows = {"IIIT5k": (90.0, 3000), "SVT": (80.0, 647), "CUTE80": (50.0, 288)}
    combined, average = group_scores(rows, ["IIIT5k", "SVT", "CUTE80"])
    assert combined == pytest.approx((90 * 3000 + 80 * 647 + 50 * 288) / (3000 + 647 + 288))
    assert average == pytest.approx((90 + 80 + 50) / 3)


def test_the_common_groups_are_parseqs():
    groups = dict(SUITES["common36"].groups)
    assert [list(sets) for sets in groups.values()] == list(COMMON_GROUPS.values())
    assert [s for s in COMMON_BENCHMARKS if s not in ("IC13_1015", "IC15_2077")] == list(groups[next(iter(groups))])


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    root = tmp_path_factory.mktemp("presets")
    for i, (name, n) in enumerate(SIZES.items()):
        folder = "IIIT5k_3000" if name == "IIIT5k" else name  # data_lmdb_release's name for it
        make_word_lmdb(root / "test" / folder, n, seed=i)
    return root, save_tiny_checkpoint(root / "tiny.pth")


@pytest.mark.parametrize("preset", ["common36", "common94"])
def test_common_preset_reports_each_set_and_both_groups(bench, monkeypatch, preset):
    root, checkpoint = bench
    monkeypatch.chdir(root)
    result = test_script.main(["--eval_data", "test", "--benchmark", preset, "--saved_model", checkpoint.name,
                               "--workers", "0"])
    assert list(result["accuracy"]) == COMMON_BENCHMARKS
    for group, names in COMMON_GROUPS.items():
        scores = result["groups"][group]
        assert scores["samples"] == sum(SIZES[n] for n in names)
        rows = {n: (result["accuracy"][n], SIZES[n]) for n in names}
        assert (scores["combined"], scores["average"]) == pytest.approx(group_scores(rows, names))
    log = (root / "result" / "tiny.pth" / "log_all_evaluation.txt").read_text()
    assert "6 sets, larger (IC13 1015, IC15 2077): combined" in log


def test_common_preset_names_the_missing_folders(bench, tmp_path, monkeypatch):
    root, checkpoint = bench
    monkeypatch.chdir(tmp_path)
    for name in ("SVT", "SVTP"):
        make_word_lmdb(tmp_path / "partial" / name, 1)
    with pytest.raises(FileNotFoundError) as e:
        test_script.evaluate(["--eval_data", str(tmp_path / "partial"), "--benchmark", "common36", "--saved_model",
                              str(checkpoint), "--workers", "0"])
    message = str(e.value)
    assert "\n" not in message and "missing: IIIT5k/IIIT5k_3000, IC13_857" in message and "CUTE80" in message
    assert "SVTP," not in message.split("missing:")[1]


def test_the_94_protocol_refuses_case_insensitive(bench):
    with pytest.raises(UsageError, match="--benchmark common94 scores case"):
        test_script.check_args(test_script.parse_args(["--eval_data", "x", "--saved_model", "y", "--benchmark",
                                                       "common94", "--case_insensitive"]))


@pytest.mark.parametrize("preset, folders", [("ost", ["heavy"]), ("ltb", ["ultra_long_26_35", "ultra_long_56"])])
def test_folder_suites_read_what_is_present(bench, tmp_path, monkeypatch, preset, folders):
    root, checkpoint = bench
    monkeypatch.chdir(tmp_path)
    for name in folders:
        make_word_lmdb(tmp_path / preset / name, 2, max_len=8)
    result = test_script.main(["--eval_data", str(tmp_path / preset), "--benchmark", preset, "--saved_model",
                               str(checkpoint), "--workers", "0"])
    assert list(result["accuracy"]) == folders
    assert result["missing"] == [n for n in SUITES[preset].sets if n not in folders]
