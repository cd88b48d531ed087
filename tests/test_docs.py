"""The commands the README and docs/ show exist as written.

Convention: every fenced block opened with ```bash in README.md or docs/*.md is *runnable*: each
command in it must run as written from a fresh clone (after ``bash scripts/setup.sh`` and
``source .venv/bin/activate``). Blocks that only illustrate (output, Python, a sketch with
placeholders) use another fence: ```text, ```python, ```console. For every command line of a
runnable block (backslash continuations joined, ``#`` comments dropped, split at ``&&``, ``||``,
``;`` and ``|``) the test checks:

- ``python SCRIPT ...`` (also ``.venv/bin/python``, ``time python``, ``torchrun [its options] SCRIPT``):
  SCRIPT exists in the repository and every ``--flag`` given appears in ``SCRIPT --help``;
- ``python -m MODULE ...``: every ``--flag`` appears in ``python -m MODULE --help``;
- a script that hands the flags it does not know to another script (``FORWARDS_FLAGS_TO``: study.py
  to train.py) may take that script's flags too;
- ``bash SCRIPT.sh``: the script exists and takes no ``--flags``; every ``NAME=value`` before it is
  a variable the script reads (``${NAME`` in its text);
- ``NAME=value`` before a Python command names a variable the repository's code reads (or one of
  a few that PyTorch and OpenMP read);
- no ``<placeholder>`` in a runnable command (it would not run as written);
- any other program is one of a short list of ordinary shell commands (cd, git, source, ...).

Each script's ``--help`` is produced once per test run, as ``python`` would run it (the script's
own folder first on the import path), in one process per such folder so that torch is imported
only a few times. Every user document (README.md, docs/*.md) is also checked for
what belongs only in development notes: temporary-folder paths, the CPU-lock prefix, issue
numbers and this repository's commit hashes; and every relative link (``[text](docs/page.md#anchor)``)
must name a file that exists and, with an anchor, one of its headings.
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE_BLOCK = re.compile(r"^```bash[ \t]*\n(.*?)^```", re.S | re.M)
FLAG = re.compile(r"--[A-Za-z][A-Za-z0-9_-]*")
SEPARATORS = {"&&", "||", ";", "|"}
PYTHONS = {"python", "python3", ".venv/bin/python"}
PLAIN_SHELL = {"cd", "git", "source", "export", "ls", "cat", "mkdir", "pip", "tensorboard", "unzip", "tar"}
# Environment variables read by PyTorch, OpenMP or CUDA rather than by this repository's code.
FOREIGN_VARIABLES = {"OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES", "MASTER_ADDR", "MASTER_PORT"}
ASSIGNMENT = re.compile(r"^[A-Z_][A-Z0-9_]*=")
# Scripts that pass every flag they do not know on to another script, as their --help says.
FORWARDS_FLAGS_TO = {"study.py": "train.py"}


def runnable_blocks(path: Path) -> list[str]:
    return RUNNABLE_BLOCK.findall(path.read_text(encoding="utf-8"))


def command_lines(block: str) -> list[list[str]]:
    """The commands of one block, each a list of shell words."""
    text = block.replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        words = shlex.split(line, comments=True)
        current: list[str] = []
        for word in words:
            if word in SEPARATORS:
                commands.append(current)
                current = []
            elif word.endswith(";"):
                current.append(word[:-1])
                commands.append(current)
                current = []
            else:
                current.append(word)
        commands.append(current)
    return [command for command in commands if command]


def all_commands() -> list[tuple[str, list[str]]]:
    return [(f"{path.relative_to(ROOT)}: {' '.join(command)}", command)
            for path in DOCUMENTS for block in runnable_blocks(path) for command in command_lines(block)]


# Runs ``--help`` of several scripts in one process, each as ``python`` would run it: the folder that
# python puts first on sys.path (the script's own folder; the current folder for ``-m``) is the
# collector's argv[1], the same for every target of one call, so a script that could not import its
# modules from a shell cannot import them here either.
HELP_COLLECTOR = r"""
import contextlib, io, json, runpy, sys
sys.path[0] = sys.argv[1]
out = {}
for target in json.loads(sys.argv[2]):
    buffer = io.StringIO()
    kind, name = target.split(":", 1)
    name, _, plugins = name.partition("|")  # "script:train.py|pkg.a,pkg.b": --help with those plugins loaded
    sys.argv = [name, *[w for p in filter(None, plugins.split(",")) for w in ("--plugin", p)], "--help"]
    try:
        with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
            if kind == "module":
                runpy.run_module(name, run_name="__main__", alter_sys=True)
            else:
                runpy.run_path(name, run_name="__main__")
    except SystemExit:
        pass
    except BaseException as exc:
        buffer.write(f"\nHELP FAILED: {type(exc).__name__}: {exc}")
    out[target] = buffer.getvalue()
print(json.dumps(out))
"""


def first_on_path(target: str) -> Path:
    """The folder python puts first on sys.path for a target: the script's folder, or the current one."""
    kind, name = target.split(":", 1)
    return (ROOT / name.partition("|")[0]).parent if kind == "script" else ROOT


def process_of(target: str) -> tuple[str, bool]:
    """Targets run in one process share their first folder on sys.path, and plugins (a plugin's stages stay
    registered in the process that loaded it, so targets with plugins run apart from those without)."""
    return str(first_on_path(target)), "|" in target


def collect_help(targets: list[str]) -> dict[str, str]:
    """``--help`` of the targets, one process per first-on-path folder (torch imported once in each)."""
    texts = {}
    for key in sorted({process_of(t) for t in targets}):
        folder = Path(key[0])
        group = sorted(t for t in targets if process_of(t) == key)
        result = subprocess.run([sys.executable, "-c", HELP_COLLECTOR, str(folder), json.dumps(group)], cwd=ROOT,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        texts.update(json.loads(result.stdout.strip().splitlines()[-1]))
    return texts


@lru_cache(maxsize=1)
def documented_help_texts() -> dict[str, str]:
    """``--help`` of every script and module the documents run."""
    targets = set()
    for _, command in all_commands():
        target = python_target(strip_prefix(command)[1])
        if target is not None and not (target[0].startswith("script:")
                                        and not (ROOT / target[0][7:].partition("|")[0]).is_file()):
            targets.add(target[0])
    return collect_help(sorted(targets))


@lru_cache(maxsize=None)
def help_text(target: str) -> str:
    texts = documented_help_texts()
    return texts[target] if target in texts else collect_help([target])[target]


def strip_prefix(command: list[str]) -> tuple[list[str], list[str]]:
    """Split ``NAME=value`` assignments and a leading ``time`` off a command."""
    assignments = []
    words = list(command)
    while words and (ASSIGNMENT.match(words[0]) or words[0] == "time"):
        word = words.pop(0)
        if word != "time":
            assignments.append(word.split("=", 1)[0])
    return assignments, words


def python_target(words: list[str]) -> tuple[str, list[str]] | None:
    """(``script:PATH`` or ``module:NAME``, its arguments) for a Python command, else None."""
    if not words:
        return None
    if words[0] == "torchrun":
        scripts = [i for i, word in enumerate(words) if word.endswith(".py")]
        assert scripts, f"torchrun without a script: {' '.join(words)}"
        return f"script:{words[scripts[0]]}", words[scripts[0] + 1:]
    if words[0] not in PYTHONS or len(words) < 2:
        return None
    if words[1] == "-m":
        return f"module:{words[2]}", words[3:]
    if words[1] == "-c":
        return None
    plugins = [words[i + 1] for i in range(2, len(words) - 1) if words[i] == "--plugin"]
    return f"script:{words[1]}" + (f"|{','.join(plugins)}" if plugins else ""), words[2:]


def known_flags(help_text: str) -> tuple[set[str], set[str]]:
    """Flags a ``--help`` lists, and (case-folded) the positional names fire lists as flags."""
    flags = set(FLAG.findall(help_text))
    positional = set()
    section = re.search(r"POSITIONAL ARGUMENTS\n(.*?)(?:\n[A-Z][A-Z ]+\n|\Z)", help_text, re.S)
    if section:  # fire accepts its positional arguments by name: --inputPath for INPUTPATH
        positional = {name.lower() for name in re.findall(r"^\s{4}([A-Z_][A-Z0-9_]*)\s*$", section.group(1), re.M)}
    return flags, positional


@lru_cache(maxsize=None)
def variables_read_by_the_code() -> frozenset[str]:
    names = set()
    for path in [*ROOT.glob("*.py"), *ROOT.glob("*/*.py"), *ROOT.glob("*.sh"), *ROOT.glob("scripts/*.sh")]:
        if "tests" in path.parts:
            continue
        names.update(re.findall(r"[\"'{]([A-Z][A-Z0-9_]+)[\"'}:-]", path.read_text(encoding="utf-8")))
    return frozenset(names)


def check_command(command: list[str]) -> list[str]:
    """What is wrong with one documented command (empty when it runs as written)."""
    problems = [f"placeholder {word!r}" for word in command if re.search(r"<[^>]*>", word)]
    assignments, words = strip_prefix(command)
    if not words:
        return problems
    target = python_target(words)
    if target is not None:
        kind_name, arguments = target
        kind, name = kind_name.split(":", 1)
        name = name.partition("|")[0]
        if kind == "script" and not (ROOT / name).is_file():
            return problems + [f"no script {name}"]
        text = help_text(kind_name)
        if "HELP FAILED" in text:
            return problems + [f"{name} --help failed: {text[-500:]}"]
        flags, positional = known_flags(text)
        if kind == "script" and name in FORWARDS_FLAGS_TO:
            forwarded_to = FORWARDS_FLAGS_TO[name]
            assert forwarded_to in text, f"{name} --help no longer says it hands flags to {forwarded_to}"
            more_flags, more_positional = known_flags(help_text(f"script:{forwarded_to}"))
            flags, positional = flags | more_flags, positional | more_positional
        for argument in arguments:
            flag = argument.split("=", 1)[0]
            if FLAG.fullmatch(flag) and flag not in flags and flag[2:].lower() not in positional:
                problems.append(f"{name} has no flag {flag}")
        for variable in assignments:
            if variable not in FOREIGN_VARIABLES and variable not in variables_read_by_the_code():
                problems.append(f"nothing in the repository reads {variable}")
        return problems
    if words[0] == "bash":
        script = ROOT / words[1]
        if not script.is_file():
            return problems + [f"no script {words[1]}"]
        text = script.read_text(encoding="utf-8")
        problems += [f"{words[1]} takes no flags, given {word}" for word in words[2:] if word.startswith("--")]
        problems += [f"{words[1]} does not read {variable}" for variable in assignments
                     if "${" + variable not in text and variable not in FOREIGN_VARIABLES]
        return problems
    if words[0] in PLAIN_SHELL:
        return problems
    return problems + [f"unknown program {words[0]!r}: use python SCRIPT, bash SCRIPT.sh or a plain shell command"]


COMMANDS = all_commands()


def test_the_documents_hold_runnable_commands():
    """The convention is in use: the README alone shows the set-up, train, test and demo commands."""
    readme = [command for label, command in COMMANDS if label.startswith("README.md")]
    programs = {python_target(strip_prefix(c)[1])[0] for c in readme if python_target(strip_prefix(c)[1])}
    assert {"script:train.py", "script:test.py", "script:demo.py", "script:create_lmdb_dataset.py"} <= programs
    assert any(strip_prefix(c)[1][:2] == ["bash", "quickstart.sh"] for c in readme)


@pytest.mark.parametrize("label, command", COMMANDS, ids=[label[:120] for label, _ in COMMANDS])
def test_documented_command_runs_as_written(label, command):
    assert check_command(command) == [], label


def test_the_checker_catches_a_flag_a_script_lacks():
    assert check_command(["python", "train.py", "--num_iter", "5"]) == []
    assert check_command(["python", "train.py", "--no_such_flag", "5"]) == ["train.py has no flag --no_such_flag"]
    assert check_command(["python", "no_such_script.py"]) == ["no script no_such_script.py"]
    assert check_command(["NO_SUCH_VARIABLE=1", "bash", "quickstart.sh"]) == ["quickstart.sh does not read NO_SUCH_VARIABLE"]
    assert check_command(["python", "create_lmdb_dataset.py", "--inputPath", "a", "--gtFile", "b",
                          "--outputPath", "c", "--overwrite"]) == []
    assert check_command(["frobnicate", "x"]) != []


def test_command_lines_join_continuations_and_split_chains():
    block = "bash scripts/setup.sh && .venv/bin/python -m pytest -q   # tests\npython a.py \\\n    --x 1\n"
    assert command_lines(block) == [["bash", "scripts/setup.sh"], [".venv/bin/python", "-m", "pytest", "-q"],
                                    ["python", "a.py", "--x", "1"]]


@pytest.mark.parametrize("path", DOCUMENTS, ids=[p.name for p in DOCUMENTS])
def test_user_documents_hold_no_development_notes(path):
    text = path.read_text(encoding="utf-8")
    assert "/tmp/" not in text, "a temporary-folder path"
    assert "flock /tmp" not in text and "cpu_heavy.lock" not in text, "the development machine's CPU-lock prefix"
    assert not re.search(r"\b[Ii]ssues? \d+", text), "an issue number"


@pytest.mark.skipif(not (ROOT / ".git").exists() or shutil.which("git") is None,
                    reason="commit hashes can only be recognised in a git checkout")
@pytest.mark.parametrize("path", DOCUMENTS, ids=[p.name for p in DOCUMENTS])
def test_user_documents_name_no_commit_of_this_repository(path):
    candidates = set(re.findall(r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*[0-9])[0-9a-f]{7,40}\b", path.read_text(encoding="utf-8")))
    commits = [c for c in sorted(candidates)
               if subprocess.run(["git", "cat-file", "-e", f"{c}^{{commit}}"], cwd=ROOT,
                                 capture_output=True).returncode == 0]
    assert commits == [], f"commit hashes of this repository: {commits}"


# Pages other branches are writing, linked from the README already; a missing one is skipped (named),
# any other missing link target fails.
PAGES_BEING_WRITTEN: set[str] = set()
LINK = re.compile(r"\]\(([^)\s]+)\)")


def heading_anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings: lower case, punctuation dropped, spaces to '-'."""
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", path.read_text(encoding="utf-8"), re.M):
        anchors.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return anchors


def relative_links() -> list[tuple[str, Path, str]]:
    links = []
    for path in DOCUMENTS:
        for target in LINK.findall(path.read_text(encoding="utf-8")):
            if re.match(r"[a-z]+:", target):
                continue
            file, _, anchor = target.partition("#")
            links.append((f"{path.relative_to(ROOT)} -> {target}", (path.parent / file) if file else path, anchor))
    return links


@pytest.mark.parametrize("label, target, anchor", relative_links(), ids=[link[0] for link in relative_links()])
def test_relative_links_resolve(label, target, anchor):
    relative = target.resolve().relative_to(ROOT).as_posix()
    if not target.exists() and relative in PAGES_BEING_WRITTEN:
        pytest.skip(f"{relative} is being written on another branch")
    assert target.exists(), f"{label}: no such file"
    if anchor:
        assert anchor in heading_anchors(target), f"{label}: no heading with that anchor"


def test_heading_anchors_follow_github(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("# Results: every measurement\n## Recipes at the quickstart's budget\n## english_g2 and fine-tuning\n")
    assert heading_anchors(page) == {"results-every-measurement", "recipes-at-the-quickstarts-budget",
                                     "english_g2-and-fine-tuning"}
