"""Turn a folder of word images and a gt.txt into an LMDB dataset.

    python create_lmdb_dataset.py --inputPath data/ --gtFile data/gt.txt --outputPath result/
    python create_lmdb_dataset.py data/ data/gt.txt result/ [--checkValid=False] [--overwrite] [--strict]

gt.txt holds one ``relative/image/path<TAB>label`` per line (UTF-8), paths relative to inputPath.

The LMDB layout is the reference's: ``image-%09d`` (raw encoded image bytes),
``label-%09d`` (UTF-8 label), 1-based, and ``num-samples`` (decimal count) written
last, so an interrupted run never looks complete.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Iterator

import fire
import lmdb
from PIL import Image

MAP_SIZE = 1 << 40  # 1 TiB address space; the file on disk stays sparse


class DatasetExistsError(FileExistsError):
    pass


def lmdb_is_dataset(path: str | os.PathLike) -> bool:
    return (Path(path) / "data.mdb").is_file()


def check_output_path(path: str | os.PathLike, overwrite: bool = False) -> None:
    """Raise DatasetExistsError if ``path`` already holds a dataset and overwrite is off."""
    if lmdb_is_dataset(path) and not overwrite:
        raise DatasetExistsError(
            f"{path} already holds an LMDB dataset; refusing to overwrite it. "
            "Choose another output path, or pass --overwrite to replace it.")


class LmdbWriter:
    """Writes samples into a new LMDB; ``num-samples`` is committed only on a clean exit.

    Use as a context manager::

        with LmdbWriter("out/train") as w:
            w.add(png_bytes, "hello")
    """

    def __init__(self, output_path: str | os.PathLike, overwrite: bool = False, commit_every: int = 1000):
        self.output_path = Path(output_path)
        check_output_path(self.output_path, overwrite)
        if lmdb_is_dataset(self.output_path):
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


# --- gt.txt parsing (shared with dataset.GtFolderDataset) ---------------------------------

GtSample = tuple[int, str, str]   # (line number, relative image path, label)
GtProblem = tuple[int, str, str]  # (line number, line text, reason)


def parse_gt_file(path: str | os.PathLike) -> tuple[list[GtSample], list[GtProblem]]:
    """Read a ``relative/image/path<TAB>label`` file (UTF-8); line numbers are 1-based.

    The label is everything after the first tab, so it may contain spaces and tabs.
    The reference split on every tab and crashed on a line with two or more; taking the
    rest of the line is the fix. A line without a tab, with an empty image path, or an
    empty line (other than the trailing one) is reported, not fatal.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # -sig: tolerate a BOM from Windows editors
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({e}); re-save it as UTF-8.") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line
    samples: list[GtSample] = []
    problems: list[GtProblem] = []
    for lineno, line in enumerate(lines, start=1):
        line = line.rstrip("\r")  # CRLF files: the reference kept the '\r' in the label
        if not line:
            problems.append((lineno, line, "empty line"))
            continue
        relpath, tab, label = line.partition("\t")
        if not tab:
            problems.append((lineno, line, "no tab between image path and label"))
        elif not relpath.strip():
            problems.append((lineno, line, "empty image path"))
        else:
            samples.append((lineno, relpath, label))
    return samples, problems


# --- image checks and the command line ------------------------------------------------------

IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


def image_problem(data: bytes) -> str | None:
    """Why PIL cannot use these bytes as an image, or None. Replaces the reference's OpenCV check."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.verify()  # structure and checksums; the image is unusable afterwards
        with Image.open(io.BytesIO(data)) as img:
            img.load()  # a real decode: catches truncated pixel data that verify() misses
            width, height = img.size
    except Image.UnidentifiedImageError:
        return "not a valid image (unrecognised format)"
    except IMAGE_ERRORS as e:
        return f"not a valid image ({type(e).__name__}: {e})"
    if width == 0 or height == 0:
        return "not a valid image (zero size)"
    return None


def checked_samples(input_path: Path, samples: list[GtSample], check_valid: bool
                    ) -> Iterator[tuple[int, Path, str, bytes | None, str | None]]:
    """(line number, image path, label, image bytes or None, problem or None) per sample."""
    for lineno, relpath, label in samples:
        path = input_path / relpath
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            yield lineno, path, label, None, "does not exist"
            continue
        except OSError as e:
            yield lineno, path, label, None, f"cannot be read ({e})"
            continue
        problem = image_problem(data) if check_valid else None
        yield lineno, path, label, (None if problem else data), problem


def write_dataset(output_path: Path, samples: list[GtSample], input_path: Path, check_valid: bool,
                  overwrite: bool) -> tuple[int, list[str]]:
    """Write the good samples; returns (count, image problem lines).

    Each image problem is printed and appended to ``error_image_log.txt`` as it is met,
    so the log survives an interrupted run.
    """
    image_problems: list[str] = []
    error_log = output_path / "error_image_log.txt"
    with LmdbWriter(output_path, overwrite=overwrite) as writer:
        for lineno, path, label, data, problem in checked_samples(input_path, samples, check_valid):
            if problem:
                message = f"line {lineno}: {path} {problem}"
                print(message)
                with open(error_log, "a", encoding="utf-8") as log:
                    log.write(message + "\n")
                image_problems.append(message)
                continue
            count = writer.add(data, label)
            if count % 1000 == 0:
                print(f"Written {count} / {len(samples)}")
        if writer.count == 0:
            # Raising inside the writer leaves num-samples unwritten: never a usable empty dataset.
            raise SystemExit(f"no valid image among the {len(samples)} samples; nothing usable was "
                             f"written to {output_path} (see {error_log}).")
    return writer.count, image_problems


def createDataset(inputPath: str, gtFile: str, outputPath: str, checkValid: bool = True,
                  overwrite: bool = False, strict: bool = False) -> None:
    """Create an LMDB dataset at ``outputPath`` from ``gtFile`` and the images under ``inputPath``.

    Malformed gt lines and missing or corrupt images are reported with their line number
    and skipped (image problems also go to ``<outputPath>/error_image_log.txt``); with
    ``strict`` any problem aborts before anything is written. User errors raise SystemExit
    with the message (exit status 1, no traceback).
    """
    input_path, gt_file, output_path = Path(inputPath), Path(gtFile), Path(outputPath)
    if not input_path.is_dir():
        raise SystemExit(f"inputPath {input_path} is not a folder; it must hold the images named in {gt_file}.")
    if not gt_file.is_file():
        raise SystemExit(f"gtFile {gt_file} does not exist; it must list 'image/path<TAB>label' lines.")
    try:
        check_output_path(output_path, overwrite)
        samples, gt_problems = parse_gt_file(gt_file)
    except (DatasetExistsError, ValueError) as e:
        raise SystemExit(str(e)) from None
    for lineno, line, reason in gt_problems:
        print(f"{gt_file} line {lineno}: {reason}: {line!r}")
    if not samples:
        raise SystemExit(f"{gt_file} holds no 'image/path<TAB>label' line; nothing to write.")

    if strict:
        image_problems = [f"line {lineno}: {path} {problem}" for lineno, path, _, _, problem
                          in checked_samples(input_path, samples, checkValid) if problem]
        for message in image_problems:
            print(message)
        if gt_problems or image_problems:
            raise SystemExit(f"--strict: {len(gt_problems)} malformed gt lines and {len(image_problems)} "
                             f"missing or corrupt images; nothing was written to {output_path}.")

    count, image_problems = write_dataset(output_path, samples, input_path, checkValid, overwrite)
    print(f"Created dataset with {count} samples")
    skipped = len(gt_problems) + len(image_problems)
    if skipped:
        print(f"Skipped {skipped} lines: {len(gt_problems)} malformed gt lines, {len(image_problems)} "
              f"missing or corrupt images (listed in {output_path / 'error_image_log.txt'})")


if __name__ == "__main__":
    fire.Fire(createDataset)
