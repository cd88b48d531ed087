"""Turn a folder of word images and a gt.txt into an LMDB dataset.

    python create_lmdb_dataset.py --inputPath data/ --gtFile data/gt.txt --outputPath result/
    python create_lmdb_dataset.py data/ data/gt.txt result/ [--checkValid=False] [--overwrite] [--strict]

gt.txt holds one ``relative/image/path<TAB>label`` per line (UTF-8), paths relative to inputPath.

The LMDB layout is the reference's: ``image-%09d`` (raw encoded image bytes),
``label-%09d`` (UTF-8 label), 1-based, and ``num-samples`` (decimal count) written
last, so an interrupted run never looks complete.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

import fire

from dataset import GtSample, image_problem, parse_gt_file
from errors import UserError
from fileio import NotRegularFileError, read_regular_file, special_kind
from lmdb_store import LmdbWriter, check_output_path
from runtime import run_cli


def checked_samples(input_path: Path, samples: list[GtSample], check_valid: bool
                    ) -> Iterator[tuple[int, Path, str, bytes | None, str | None]]:
    """(line number, image path, label, image bytes or None, problem or None) per sample."""
    for lineno, relpath, label in samples:
        path = input_path / relpath
        try:
            data = read_regular_file(path)  # a FIFO or device is reported, never opened
        except FileNotFoundError:
            yield lineno, path, label, None, "does not exist"
            continue
        except NotRegularFileError as e:
            yield lineno, path, label, None, f"is {e.kind}, not a regular file"
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
            raise UserError(f"no valid image among the {len(samples)} samples; nothing usable was "
                            f"written to {output_path} (see {error_log}).")
    return writer.count, image_problems


def createDataset(inputPath: str, gtFile: str, outputPath: str, checkValid: bool = True,
                  overwrite: bool = False, strict: bool = False) -> None:
    """Create an LMDB dataset at ``outputPath`` from ``gtFile`` and the images under ``inputPath``.

    Malformed gt lines and missing or corrupt images are reported with their line number
    and skipped (image problems also go to ``<outputPath>/error_image_log.txt``); with
    ``strict`` any problem aborts before anything is written. User errors raise ValueError or
    FileNotFoundError with the message (the command line turns them into exit status 1).
    """
    input_path, gt_file, output_path = Path(inputPath), Path(gtFile), Path(outputPath)
    if not input_path.is_dir():
        raise FileNotFoundError(f"inputPath {input_path} is not a folder; it must hold the images named in {gt_file}.")
    if not gt_file.exists():
        raise FileNotFoundError(f"gtFile {gt_file} does not exist; it must list 'image/path<TAB>label' lines.")
    if special_kind(gt_file) is not None:
        raise UserError(f"gtFile {gt_file} is {special_kind(gt_file)}, not a regular file; give the gt.txt file.")
    check_output_path(output_path, overwrite, "outputPath")
    samples, gt_problems = parse_gt_file(gt_file)
    for lineno, line, reason in gt_problems:
        print(f"{gt_file} line {lineno}: {reason}: {line!r}")
    if not samples:
        raise UserError(f"{gt_file} holds no 'image/path<TAB>label' line; nothing to write.")

    if strict:
        image_problems = [f"line {lineno}: {path} {problem}" for lineno, path, _, _, problem
                          in checked_samples(input_path, samples, checkValid) if problem]
        for message in image_problems:
            print(message)
        if gt_problems or image_problems:
            raise UserError(f"--strict: {len(gt_problems)} malformed gt lines and {len(image_problems)} "
                            f"missing or corrupt images; nothing was written to {output_path}.")

    count, image_problems = write_dataset(output_path, samples, input_path, checkValid, overwrite)
    print(f"Created dataset with {count} samples")
    skipped = len(gt_problems) + len(image_problems)
    if skipped:
        print(f"Skipped {skipped} lines: {len(gt_problems)} malformed gt lines, {len(image_problems)} "
              f"missing or corrupt images (listed in {output_path / 'error_image_log.txt'})")


def main(argv: list[str] | None = None) -> None:
    """The reference's command line (flags or positional arguments, via fire); a user error exits 2 or 1."""
    run_cli(lambda args: fire.Fire(createDataset, command=args), argv)


if __name__ == "__main__":
    main()
