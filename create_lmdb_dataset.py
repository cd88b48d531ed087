"""Turn a folder of word images and a gt.txt into an LMDB dataset.

The LMDB layout is the reference's: ``image-%09d`` (raw encoded image bytes),
``label-%09d`` (UTF-8 label), 1-based, and ``num-samples`` (decimal count) written
last, so an interrupted run never looks complete.
"""
from __future__ import annotations

import os
from pathlib import Path

import lmdb

MAP_SIZE = 1 << 40  # 1 TiB address space; the file on disk stays sparse


class DatasetExistsError(FileExistsError):
    pass


def lmdb_is_dataset(path: str | os.PathLike) -> bool:
    return (Path(path) / "data.mdb").is_file()


class LmdbWriter:
    """Writes samples into a new LMDB; ``num-samples`` is committed only on a clean exit.

    Use as a context manager::

        with LmdbWriter("out/train") as w:
            w.add(png_bytes, "hello")
    """

    def __init__(self, output_path: str | os.PathLike, overwrite: bool = False, commit_every: int = 1000):
        self.output_path = Path(output_path)
        if lmdb_is_dataset(self.output_path):
            if not overwrite:
                raise DatasetExistsError(
                    f"{self.output_path} already holds an LMDB dataset; refusing to overwrite it. "
                    "Choose another output path, or pass --overwrite to replace it.")
            for name in ("data.mdb", "lock.mdb"):
                (self.output_path / name).unlink(missing_ok=True)
        self.output_path.mkdir(parents=True, exist_ok=True)
        self.commit_every = commit_every
        self.count = 0
        self._env = None
        self._txn = None

    def __enter__(self) -> "LmdbWriter":
        self._env = lmdb.open(str(self.output_path), map_size=MAP_SIZE)
        self._txn = self._env.begin(write=True)
        return self

    def add(self, image_bytes: bytes, label: str) -> int:
        """Store one sample; returns its 1-based index."""
        self.count += 1
        self._txn.put(f"image-{self.count:09d}".encode(), image_bytes)
        self._txn.put(f"label-{self.count:09d}".encode(), label.encode("utf-8"))
        if self.count % self.commit_every == 0:
            self._txn.commit()
            self._txn = self._env.begin(write=True)
        return self.count

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._txn.put(b"num-samples", str(self.count).encode())
                self._txn.commit()
                self._env.sync()
            else:
                # Keep what was written for inspection, but never mark it complete.
                self._txn.commit()
        finally:
            self._env.close()
