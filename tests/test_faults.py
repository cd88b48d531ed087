"""Full disks, kills and a second run: failures say what happened and lose nothing."""
from __future__ import annotations

import errno
import io
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import lmdb
import pytest
import torch

import checkpoint
import create_lmdb_dataset
import dataset
from helpers import make_gt_folder, make_word_lmdb
from fileio import DiskFullError, disk_errno
from runtime import run_cli

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- full disk

def enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_checkpoint_save_on_a_full_disk_says_what_and_keeps_the_previous(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    checkpoint.atomic_save({"iteration": 1, "w": torch.ones(3)}, path)
    monkeypatch.setattr(checkpoint.torch, "save", enospc)
    with pytest.raises(DiskFullError) as info:
        checkpoint.atomic_save({"iteration": 2, "w": torch.zeros(250_000)}, path)
    message = str(info.value)
    assert message.startswith(f"could not write the checkpoint {path}: No space left on device (ENOSPC)")
    assert "It needs about 1.0 MB;" in message and " is free there." in message  # 250000 float32
    assert "The previous last.pth is intact." in message
    assert info.value.errno == errno.ENOSPC
    assert torch.load(path, weights_only=True)["iteration"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]  # no temporary file left


@pytest.mark.parametrize("code", [errno.EFBIG, errno.EIO])
def test_a_failed_write_inside_torch_save_is_found(tmp_path, monkeypatch, code):
    """torch.save turns the file's OSError into a RuntimeError; the errno is found on the chain."""
    real_save = torch.save

    class FailingFile(io.RawIOBase):
        def writable(self):
            return True

        def write(self, b):
            raise OSError(code, os.strerror(code))

    monkeypatch.setattr(checkpoint.torch, "save", lambda obj, f: real_save(obj, FailingFile()))
    with pytest.raises(DiskFullError, match=f"could not write the checkpoint .*{errno.errorcode[code]}.*"
                                            "No previous new.pth existed"):
        checkpoint.atomic_save({"w": torch.ones(10)}, tmp_path / "new.pth")
    assert not (tmp_path / "new.pth").exists()


def test_other_errors_are_not_called_a_full_disk():
    assert disk_errno(OSError(errno.EACCES, "denied")) is None
    assert disk_errno(RuntimeError("boom")) is None
    try:
        try:
            raise OSError(errno.ENOSPC, "full")
        except OSError:
            raise RuntimeError("file write failed")
    except RuntimeError as e:
        assert disk_errno(e) == errno.ENOSPC


class FullDiskEnv:
    """A real LMDB environment whose commit of the ``num-samples`` key fails as on a full disk."""

    def __init__(self, env, error):
        self.env, self.error = env, error

    def begin(self, write=False):
        return FullDiskTxn(self.env.begin(write=write), self.error)

    def __getattr__(self, name):
        return getattr(self.env, name)


class FullDiskTxn:
    def __init__(self, txn, error):
        self.txn, self.error, self.final = txn, error, False

    def put(self, key, value):
        self.final |= key == b"num-samples"
        return self.txn.put(key, value)

    def commit(self):
        if self.final:
            self.txn.abort()
            raise self.error
        return self.txn.commit()

    def __getattr__(self, name):
        return getattr(self.txn, name)


def lmdb_error(cls, code: int) -> Exception:
    error = cls(f"mdb_txn_commit: {os.strerror(code)}")
    error.code = code  # as the lmdb extension sets it
    return error


@pytest.mark.parametrize("error", [lmdb.DiskError("mdb_txn_commit: No space left on device"),
                                   lmdb_error(lmdb.Error, errno.ENOSPC),
                                   OSError(errno.ENOSPC, "No space left on device")])
def test_lmdb_final_commit_on_a_full_disk_exits_1_with_the_story(tmp_path, monkeypatch, capsys, error):
    real_open = lmdb.open
    monkeypatch.setattr(dataset.lmdb, "open", lambda *a, **k: FullDiskEnv(real_open(*a, **k), error))
    folder = make_gt_folder(tmp_path / "in", copies=1)
    with pytest.raises(SystemExit) as info:
        create_lmdb_dataset.main([str(folder), str(folder / "gt.txt"), str(tmp_path / "out")])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert f"error: could not write the LMDB dataset (16 samples) {tmp_path / 'out' / 'data.mdb'}: " in err
    assert "(ENOSPC). It needs about" in err and "is free there" in err
    assert "marked incomplete" in err and "Traceback" not in err
    monkeypatch.setattr(dataset.lmdb, "open", real_open)
    with pytest.raises(ValueError, match="no 'num-samples' key"):  # readers refuse the incomplete dataset
        dataset.LmdbDataset(tmp_path / "out", dataset.DataConfig())


# ---------------------------------------------------------------- training: kills, a second run, a full disk

TINY = ["--select_data", "MJ", "--batch_ratio", "1", "--Transformation", "None", "--FeatureExtraction", "VGG",
        "--SequenceModeling", "None", "--Prediction", "CTC", "--output_channel", "32", "--hidden_size", "32",
        "--workers", "0", "--batch_size", "4", "--progress", "off"]

# train.py with every fsync slowed down, so that a kill can be aimed at the middle of a checkpoint write.
SLOW_FSYNC_TRAIN = ("import os, runpy, sys, time; real_fsync = os.fsync; "
                    "os.fsync = lambda fd: (time.sleep(0.1), real_fsync(fd))[1]; "
                    "sys.argv = [{script!r}] + sys.argv[1:]; runpy.run_path({script!r}, run_name='__main__')")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make_word_lmdb(root / "train" / "MJ", 32, seed=0, max_len=6)
    make_word_lmdb(root / "valid" / "v", 4, seed=1, max_len=6)
    return root


def start_training(data: Path, cwd: Path, *args, slow_fsync: bool = False) -> subprocess.Popen:
    env = {**os.environ, "STR_CACHE_DIR": str(cwd / "cache"), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": str(ROOT)}  # the -c launcher runs train.py from another folder
    script = str(ROOT / "train.py")
    launcher = ["-c", SLOW_FSYNC_TRAIN.format(script=script)] if slow_fsync else [script]
    log = open(cwd / f"out-{time.monotonic_ns()}.txt", "w+")
    proc = subprocess.Popen([sys.executable, *launcher, "--train_data", str(data / "train"), "--valid_data",
                             str(data / "valid"), *TINY, *map(str, args)], cwd=cwd, env=env, stdout=log,
                            stderr=subprocess.STDOUT, text=True)
    proc.log = log
    return proc


def output(proc: subprocess.Popen) -> str:
    proc.log.seek(0)
    return proc.log.read()


def wait_for(condition, timeout: float = 60.0, step: float = 0.005) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(step)
    return False


def iteration_of(exp: Path) -> int:
    path = exp / "last.pth"
    return torch.load(path, weights_only=True)["iteration"] if path.exists() else 0


def assert_every_pth_loads(exp: Path) -> None:
    for path in exp.glob("*.pth"):
        torch.load(path, weights_only=True)  # raises on a torn file


def test_kill_9_at_random_moments_then_resume_auto(data, tmp_path):
    """Killed four times (twice inside a checkpoint write), resumed each time: the run ends, its
    iteration count only moves forward, and every .pth in the folder loads."""
    rng = random.Random(11)
    exp = tmp_path / "saved_models" / "kill"
    # Fewer than 6 + 6 iterations for the counted kills and 4 validations (12 iterations) per write kill: the
    # killed runs cannot reach --num_iter, so every kill lands in a live run.
    args = ("--exp_name", "kill", "--num_iter", 42, "--valInterval", 3, "--saveInterval", 6, "--resume", "auto",
            "--log_interval", 1)
    saved, progress = 0, []
    for moment in ("write", "random", "write", "random"):
        left_behind = {p.name for p in exp.glob(".*.tmp")}  # by earlier kills
        proc = start_training(data, tmp_path, *args, slow_fsync=True)
        if moment == "write":  # inside the n-th checkpoint write: its hidden temporary file exists only then
            seen, n = set(), rng.randint(2, 4)

            def in_nth_write() -> bool:
                now = {p.name for p in exp.glob(".*.tmp")} - left_behind
                seen.update(now)
                return bool(now) and len(seen) >= n

            assert wait_for(lambda: in_nth_write() or proc.poll() is not None), output(proc)
        else:  # anywhere in the loop: a few iterations in (counted, so a fast machine cannot finish first)
            k = rng.randint(2, 6)
            assert wait_for(lambda: output(proc).count("] loss ") >= k or proc.poll() is not None, step=0.02)
            time.sleep(rng.uniform(0.0, 0.3))
        assert proc.poll() is None, f"the run ended before the kill:\n{output(proc)}"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if "resumed from" in output(proc):  # unless killed before it got that far
            assert f"resumed from {Path('saved_models', 'kill', 'last.pth')} at iteration {saved}" in output(proc)
        now = iteration_of(exp)
        assert now >= saved  # a kill never takes the run back
        saved = now
        progress.append(now)
        assert_every_pth_loads(exp)
    print("last.pth iteration after each kill:", progress)
    assert progress[-1] > 0  # later runs resumed from a checkpoint (else nothing was tested)
    proc = start_training(data, tmp_path, *args)
    assert proc.wait(timeout=180) == 0, output(proc)
    out = output(proc)
    if saved:
        assert f"resumed from {Path('saved_models', 'kill', 'last.pth')} at iteration {saved}" in out
    assert "taking over the lock of pid" in out  # the killed run left its lock file behind
    assert iteration_of(exp) == 42
    assert_every_pth_loads(exp)
    with open(exp / "log_valid.csv") as f:
        iterations = [int(line.split(",")[0]) for line in f.read().splitlines()[1:]]
    assert iterations == sorted(set(iterations)) and iterations[-1] == 42  # no row twice, none out of order
    assert not (exp / "train.lock").exists()


def test_a_second_run_on_the_same_folder_is_refused(data, tmp_path, monkeypatch, capsys):
    import train

    exp = tmp_path / "saved_models" / "busy"
    first = start_training(data, tmp_path, "--exp_name", "busy", "--num_iter", 100000, "--valInterval", 2)
    assert wait_for(lambda: "Current_accuracy" in _read(exp / "log_train.txt") or first.poll() is not None)
    assert (exp / "train.lock").read_text().startswith(f"pid {first.pid} on host ")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STR_CACHE_DIR", str(tmp_path / "cache"))
    argv = ["--train_data", str(data / "train"), "--valid_data", str(data / "valid"), *TINY, "--exp_name", "busy",
            "--num_iter", "2"]
    with pytest.raises(SystemExit) as info:
        train.main(argv)
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert f"{Path('saved_models') / 'busy'} is in use by pid {first.pid} on host" in err
    assert "or choose another --exp_name" in err
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=60) == 128 + signal.SIGTERM, output(first)
    assert not (exp / "train.lock").exists()  # released on exit

    # A lock file left by a dead process is taken over.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (exp / "train.lock").write_text(f"pid {dead.pid} on host elsewhere\n")
    result = train.main([*argv, "--resume", "auto", "--num_iter", str(iteration_of(exp) + 1)])
    assert result["iteration"] == iteration_of(exp)
    assert f"taking over the lock of pid {dead.pid} on host elsewhere" in capsys.readouterr().out
    assert not (exp / "train.lock").exists()


def _read(path: Path) -> str:
    return path.read_text() if path.exists() else ""


def test_training_on_a_full_disk_exits_1_and_keeps_the_last_checkpoint(data, tmp_path, monkeypatch, capsys):
    import train

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("STR_CACHE_DIR", str(tmp_path / "cache"))
    argv = ["--train_data", str(data / "train"), "--valid_data", str(data / "valid"), *TINY, "--exp_name", "full",
            "--valInterval", "2"]
    train.main([*argv, "--num_iter", "2"])
    monkeypatch.setattr(checkpoint.torch, "save", enospc)
    with pytest.raises(SystemExit) as info:
        train.main([*argv, "--num_iter", "4", "--resume", "auto"])
    assert info.value.code == 1
    err = capsys.readouterr().err
    exp = Path("saved_models") / "full"
    assert "error: could not write the checkpoint saved_models/full/" in err and "(ENOSPC)" in err
    assert "It needs about" in err and "is free there" in err and ".pth is intact." in err
    monkeypatch.undo()
    assert torch.load(tmp_path / exp / "last.pth", weights_only=True)["iteration"] == 2
    assert not (tmp_path / exp / "train.lock").exists()  # released on the way out


def test_lock_without_flock_judges_by_the_pid(tmp_path, monkeypatch):
    """On a file system without flock the lock falls back to the pid: live owners refuse, dead ones not."""
    import fcntl
    import socket

    from fileio import FolderInUseError, FolderLock

    def no_flock(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_flock)
    lock_file = tmp_path / "train.lock"
    parent = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        lock_file.write_text(f"pid {parent.pid} on host {socket.gethostname()}\n")
        with pytest.raises(FolderInUseError, match=f"is in use by pid {parent.pid} on host"):
            FolderLock(tmp_path).acquire()
    finally:
        parent.kill()
        parent.wait()
    with FolderLock(tmp_path) as lock:  # the owner is dead now
        assert lock.previous_owner.startswith(f"pid {parent.pid}")
        assert lock_file.read_text() == f"pid {os.getpid()} on host {socket.gethostname()}\n"
    assert not lock_file.exists()


def test_any_write_a_full_disk_breaks_exits_1(capsys):
    def write_csv(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "log_valid.csv")

    with pytest.raises(SystemExit) as info:
        run_cli(write_csv, [])
    assert info.value.code == 1
    assert "No space left on device: 'log_valid.csv'; the disk is full or failing" in capsys.readouterr().err
    with pytest.raises(PermissionError):  # other OS errors keep their traceback
        run_cli(lambda argv: (_ for _ in ()).throw(PermissionError(errno.EACCES, "denied")), [])
