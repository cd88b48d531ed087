"""Full disks, kills and a second run: failures say what happened and lose nothing (issue 11)."""
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
from utils import DiskFullError, disk_errno, run_cli

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
        run_cli(create_lmdb_dataset.main, [str(folder), str(folder / "gt.txt"), str(tmp_path / "out")])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert f"error: could not write the LMDB dataset (16 samples) {tmp_path / 'out' / 'data.mdb'}: " in err
    assert "(ENOSPC). It needs about" in err and "is free there" in err
    assert "marked incomplete" in err and "Traceback" not in err
    monkeypatch.setattr(dataset.lmdb, "open", real_open)
    with pytest.raises(ValueError, match="no 'num-samples' key"):  # readers refuse the incomplete dataset
        dataset.LmdbDataset(tmp_path / "out", dataset.data_options(
            __import__("model").ModelConfig("None", "VGG", "None", "CTC"), object()))
