"""Writing LMDB datasets: the reference's layout (``num-samples``, ``image-%09d``, ``label-%09d``,
1-based), committed in steps, ``num-samples`` last.

No torch here: ``create_synth_dataset.py`` writes its datasets without paying torch's import (over
a second, most of a small synthetic run's start-up). Import them from here (``dataset.py`` reads LMDBs).
"""
from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

import lmdb

from fileio import DiskFullError, check_output_folder, disk_errno

MAP_SIZE = 1 << 40  # 1 TiB address space; the file on disk stays sparse


class DatasetExistsError(FileExistsError):
    pass


def lmdb_is_dataset(path: str | os.PathLike) -> bool:
    return (Path(path) / "data.mdb").is_file()


def check_output_path(path: str | os.PathLike, overwrite: bool = False, flag: str = "the output") -> None:
    """Before any work: raise DatasetExistsError if ``path`` already holds a dataset and overwrite is
    off, and fileio.OutputPathError if it is a file or lies under one."""
    check_output_folder(path, flag)
    if lmdb_is_dataset(path) and not overwrite:
        raise DatasetExistsError(
            f"{path} already holds an LMDB dataset; refusing to overwrite it. "
            "Choose another output path, or pass --overwrite to replace it.")


class LmdbWriter:
    """Writes samples into a new LMDB; ``num-samples`` is committed only on a clean exit.

    Replacing a dataset (``overwrite``), the new one is written in a folder beside it and moved in
    only once complete: a run that fails, or writes nothing, leaves the previous dataset as it was.

    Use as a context manager::

        with LmdbWriter("out/train") as w:
            w.add(png_bytes, "hello")
    """

    def __init__(self, output_path: str | os.PathLike, overwrite: bool = False, commit_every: int = 1000):
        self.output_path = Path(output_path)
        check_output_path(self.output_path, overwrite)
        self.output_path.mkdir(parents=True, exist_ok=True)
        self.replacing = lmdb_is_dataset(self.output_path)
        self.work_path = (Path(tempfile.mkdtemp(prefix=f".{self.output_path.absolute().name}.new-",
                                                dir=self.output_path.absolute().parent))
                          if self.replacing else self.output_path)
        self.commit_every = commit_every
        self.count = 0
        self.committed = 0  # samples safely on disk
        self._pending_bytes = 0  # image and label bytes of the open transaction
        self._env = None
        self._txn = None

    def __enter__(self) -> "LmdbWriter":
        try:
            self._env = lmdb.open(str(self.work_path), map_size=MAP_SIZE)
        except BaseException:
            self._discard()
            raise
        self._txn = self._env.begin(write=True)
        return self

    def add(self, image_bytes: bytes, label: str) -> int:
        """Store one sample; returns its 1-based index."""
        self.count += 1
        label_bytes = label.encode("utf-8")
        self._txn.put(f"image-{self.count:09d}".encode(), image_bytes)
        self._txn.put(f"label-{self.count:09d}".encode(), label_bytes)
        self._pending_bytes += len(image_bytes) + len(label_bytes)
        if self.count % self.commit_every == 0:
            self._commit()
            self._txn = self._env.begin(write=True)
        return self.count

    def _commit(self, final: bool = False) -> None:
        """Commit the open transaction; a full disk or an I/O error becomes a DiskFullError that says
        what is on disk."""
        try:
            self._txn.commit()
            if final:
                self._env.sync()
        except (lmdb.Error, OSError) as e:
            code = disk_errno(e) or (errno.ENOSPC if isinstance(e, lmdb.DiskError) else None)
            if code is None:
                raise
            intact = (f"The previous dataset at {self.output_path} is untouched (the new one was written beside "
                      "it and is removed). " if self.replacing else
                      f"{self.committed} samples were committed before; the dataset has no num-samples key, "
                      "so it is marked incomplete and no reader will use it. ")
            intact += "The input images and labels are untouched; re-create it with --overwrite."
            raise DiskFullError(code, f"the LMDB dataset ({self.count} samples)", self.output_path / "data.mdb",
                                self._pending_bytes, intact) from e
        self.committed = self.count
        self._pending_bytes = 0

    def __exit__(self, exc_type, exc, tb) -> None:
        complete = False
        try:
            if exc_type is None:
                self._txn.put(b"num-samples", str(self.count).encode())
                self._commit(final=True)
                complete = True
            else:
                # A new dataset keeps what was written for inspection, never marked complete; a
                # replacement is discarded, leaving the previous dataset as it was.
                try:
                    self._txn.commit()
                except lmdb.Error:
                    pass  # already failed (e.g. a full disk): the error being raised says so
        finally:
            self._env.close()
            if self.replacing and complete:
                self._swap_in()
            else:
                self._discard()

    def _swap_in(self) -> None:
        """Move the complete new dataset over the old one (data.mdb by one rename; other files stay)."""
        try:
            for name in ("data.mdb", "lock.mdb"):
                os.replace(self.work_path / name, self.output_path / name)
        finally:
            self._discard()

    def _discard(self) -> None:
        if self.replacing:
            shutil.rmtree(self.work_path, ignore_errors=True)
