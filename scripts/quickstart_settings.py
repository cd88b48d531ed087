"""quickstart.sh's settings and folders, checked before it installs or writes anything.

    python3 scripts/quickstart_settings.py check        # the settings (exit 2 if one is wrong) and the folders
    python3 scripts/quickstart_settings.py data         # → "reuse" or "generate" for $OUT/data (exit 1: not ours)
    python3 scripts/quickstart_settings.py data-done    # $OUT/data is complete: record its settings
    python3 scripts/quickstart_settings.py claim DIR    # DIR is the quickstart's to (re)write (exit 1: not ours)

The quickstart's settings are its flags: ``TRAIN_MINUTES``, ``NUM_ITER``, ``NUM_TRAIN``, ``AMP``, ``WORKERS`` and
``OUT`` are checked here, first, so a slip (``NUM_TRAIN=abc``) is one line naming the variable before the install
and the data generation, not a traceback minutes later.

The quickstart never deletes what it did not write. What it writes carries a record
(``quickstart.json``): ``$OUT/data/quickstart.json`` holds the settings the data was generated with, so a second
run reuses data that matches and regenerates (``--overwrite``, dataset by dataset) data that does not; a folder
without the record holds the user's files and is refused, never removed.

Standard library only: it runs before scripts/setup.sh has made the virtual environment.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

RECORD = "quickstart.json"
MODEL_FOLDER = Path("saved_models/quickstart")  # train.py --exp_name quickstart
AMP_SETTINGS = ("auto", "off", "bf16", "fp16")  # auto: train.py --amp auto times fp32 against native bf16
# The data's own settings (quickstart.sh passes the same numbers to create_synth_dataset.py).
NUM_VALID, NUM_EVAL, SEED = 500, 1000, 0
# What create_synth_dataset.py --layout tree writes: the data is complete when all three are.
DATASETS = ("training/synth", "validation/synth_val", "evaluation/synth_heldout_fonts")


class SettingError(ValueError):
    """A quickstart setting that cannot be used: exit status 2, naming the variable."""


class NotOursError(ValueError):
    """A folder the quickstart would write that holds files it did not write: exit status 1."""


@dataclass(frozen=True)
class DataSettings:
    """What decides the bytes of $OUT/data (WORKERS does not: the same seed gives the same bytes)."""
    num_train: int
    num_valid: int = NUM_VALID
    num_eval: int = NUM_EVAL
    seed: int = SEED


def integer(env: dict[str, str], name: str, default: str, at_least: int) -> int:
    value = env.get(name, "") or default
    try:
        number = int(value)
    except ValueError:
        raise SettingError(f"{name}={value!r} is not a whole number; give e.g. {name}={default}") from None
    if number < at_least:
        raise SettingError(f"{name} must be at least {at_least}, got {value}")
    return number


def check_settings(env: dict[str, str]) -> DataSettings:
    """Every setting quickstart.sh reads, with the defaults it uses: a SettingError naming the first bad one."""
    num_train = integer(env, "NUM_TRAIN", "100000", 1)
    integer(env, "WORKERS", "2", 1)
    if env.get("NUM_ITER"):
        integer(env, "NUM_ITER", "6000", 1)
    minutes = env.get("TRAIN_MINUTES", "") or "9"
    try:
        finite = math.isfinite(float(minutes))
    except ValueError:
        finite = False
    if not finite or float(minutes) <= 0:
        raise SettingError(f"TRAIN_MINUTES must be a number of minutes above 0 (e.g. TRAIN_MINUTES=3), got {minutes!r}")
    amp = env.get("AMP", "") or "auto"
    if amp not in AMP_SETTINGS:
        raise SettingError(f"AMP={amp!r} is not one of {', '.join(AMP_SETTINGS)}")
    out = Path(env.get("OUT", "") or "quickstart_out")
    for path in (out, *out.parents):
        if path.exists() and not path.is_dir():
            raise SettingError(f"OUT={out}: {path} is a file, not a folder; point OUT at a folder")
    return DataSettings(num_train)


def read_record(folder: Path) -> dict | None:
    """The quickstart's record in ``folder``, or None where there is none (the folder is not the quickstart's)."""
    try:
        record = json.loads((folder / RECORD).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # damaged: it is still the quickstart's file, in the quickstart's folder
        return {}
    return record if isinstance(record, dict) else {}


def is_ours(folder: Path) -> bool:
    """A folder the quickstart may (re)write: absent, empty, or holding its record."""
    return not folder.exists() or (folder.is_dir() and not any(folder.iterdir())) or read_record(folder) is not None


def refuse(folder: Path, what: str) -> NotOursError:
    return NotOursError(f"{folder} holds files the quickstart did not write (no {RECORD} in it): it {what}. "
                        f"Move them away, or set OUT to another folder; nothing was changed")


def data_plan(data: Path, settings: DataSettings) -> str:
    """``reuse`` when ``data`` is the quickstart's, complete and of these settings; ``generate`` when it is
    absent, empty or the quickstart's own of other settings (or cut short); a NotOursError otherwise."""
    if not is_ours(data):
        raise refuse(data, "would be overwritten by the synthetic data")
    record = read_record(data) or {}
    complete = record.get("complete") is True and all((data / d / "data.mdb").is_file() for d in DATASETS)
    return "reuse" if complete and record.get("settings") == asdict(settings) else "generate"


def write_record(folder: Path, **fields) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{RECORD}.tmp"
    tmp.write_text(json.dumps(fields, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, folder / RECORD)


def claim(folder: Path) -> None:
    """``folder`` empty and the quickstart's (recorded before anything is written): what an earlier quickstart
    wrote there is removed; a NotOursError if it holds files of someone else."""
    if not is_ours(folder):
        raise refuse(folder, "is where the quickstart writes")
    if folder.is_dir():
        shutil.rmtree(folder)
    write_record(folder, written_by="quickstart.sh")


def main(argv: list[str]) -> int:
    env = dict(os.environ)
    try:
        settings = check_settings(env)
        data = Path(env.get("OUT", "") or "quickstart_out") / "data"
        if argv[:1] == ["data"]:
            plan = data_plan(data, settings)
            if plan == "generate":  # ours from now on, and incomplete until data-done
                write_record(data, settings=asdict(settings), complete=False)
            print(plan)
        elif argv[:1] == ["data-done"]:
            write_record(data, settings=asdict(settings), complete=True)
        elif argv[:1] == ["claim"] and len(argv) == 2:
            claim(Path(argv[1]))
        elif argv == ["check"]:  # the folders too, before the install: a refusal then costs nothing
            for folder, what in ((data, "would be overwritten by the synthetic data"),
                                 (MODEL_FOLDER, "is where the quickstart trains its model"),
                                 (data.parent / "demo_images", "is where the quickstart writes demo images")):
                if not is_ours(folder):
                    raise refuse(folder, what)
        else:
            print(f"usage: {sys.argv[0]} check | data | data-done | claim DIR", file=sys.stderr)
            return 2
    except SettingError as e:
        print(f"quickstart.sh: error: {e}", file=sys.stderr)
        return 2
    except NotOursError as e:
        print(f"quickstart.sh: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
