"""The file-system rules every module follows: atomic writes, disk-full errors, the folder lock, the cache root.

No torch here: the tools that never touch a tensor import this module without paying torch's import.
"""
from __future__ import annotations

import contextlib
import errno
import functools
import os
import shutil
import socket
import stat
import tempfile
from pathlib import Path
from typing import IO, Iterable, Iterator

from errors import UserError

# Errors of a write that more space (or a working disk) would fix.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, errno.EIO, errno.EDQUOT})


def cache_root() -> Path:
    """Where every cache lives: ``$STR_CACHE_DIR``, else ``~/.cache/str_toolkit``.

    Subfolders: ``filter/`` (dataset filtering), ``synth/`` (fonts and words), ``pretrained/`` (downloaded
    checkpoints). ``$STR_TOOLKIT_CACHE`` is read as the root when ``$STR_CACHE_DIR`` is not set (its
    historical name for the pretrained cache).
    """
    root = os.environ.get("STR_CACHE_DIR") or os.environ.get("STR_TOOLKIT_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "str_toolkit"


def cache_folder(name: str) -> Path:
    """``cache_root()/name``, made if need be, before the work that fills it: a UserError naming the folder
    and the variable that chose it where it cannot be made or written (``$STR_CACHE_DIR`` naming a file)."""
    folder = cache_root() / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
        check_output_folder(folder, "the toolkit's cache")
    except (OSError, OutputPathError) as e:
        variable = next((v for v in ("STR_CACHE_DIR", "STR_TOOLKIT_CACHE") if os.environ.get(v)), None)
        chosen = f"${variable} is {os.environ[variable]}" if variable else "it is the default, ~/.cache/str_toolkit"
        raise UserError(f"the toolkit's cache folder {folder} cannot be made or written "
                        f"({getattr(e, 'strerror', None) or e}; {chosen}): set STR_CACHE_DIR to a folder you "
                        "can write") from None
    return folder


def disk_errno(error: BaseException | None) -> int | None:
    """The errno in ``DISK_ERRNOS`` of ``error`` or of an error it was raised from or while handling,
    else None. torch.save reports a failed write as a RuntimeError raised during the OSError, and
    lmdb as an ``lmdb.Error`` whose ``code`` is the errno."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        code = error.errno if isinstance(error, OSError) else getattr(error, "code", None)
        if code in DISK_ERRNOS and not isinstance(error, (SyntaxError, SystemExit)):  # XML's code is expat's
            return code
        error = error.__cause__ or error.__context__
    return None


def format_bytes(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def free_space(path: str | os.PathLike) -> str:
    """Free space on the disk that holds ``path`` (or its nearest existing folder), for messages."""
    folder = Path(path).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return format_bytes(shutil.disk_usage(folder).free)
    except OSError:
        return "an unknown amount"


class DiskFullError(OSError):
    """A write failed for lack of space, a file-size limit or an I/O error (``DISK_ERRNOS``): exit 1 with
    what failed, where, how much it needed (when known), how much is free, and what is intact."""

    def __init__(self, code: int, what: str, path: str | os.PathLike, needed: int | None, intact: str):
        size = f"It needs about {format_bytes(needed)}; " if needed is not None else ""
        self.message = (f"could not write {what} {path}: {os.strerror(code)} ({errno.errorcode[code]}). "
                        f"{size}{free_space(path)} is free there. {intact} "
                        "Free some space (or write to another disk) and run again.")
        super().__init__(code, self.message, str(path))

    def __str__(self) -> str:
        return self.message


@functools.lru_cache(maxsize=1)
def _new_file_mode() -> int:
    """The permissions ``open()`` gives a new file (0o666 less the umask); mkstemp's are 0o600."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb", *, what: str = "the file", needed: int | None = None,
                 **open_kwargs) -> Iterator[IO]:
    """Write ``path`` all or nothing: yields a temporary file beside it, then fsync and rename over it.

    On any failure (a crash, an exception in the block, a full disk) the temporary file is removed and
    ``path`` is untouched, so a concurrent reader sees the old file or the new one. A full disk or an I/O
    error (``DISK_ERRNOS``) becomes :class:`DiskFullError` naming ``what`` and about ``needed`` bytes.
    ``open_kwargs`` go to ``open`` (``encoding=``, ``newline=``).
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.fchmod(fd, _new_file_mode())
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        code = disk_errno(e)
        if code is None:
            raise
        intact = (f"The previous {path.name} is intact." if path.exists() else
                  f"No previous {path.name} existed; nothing was put in its place.")
        raise DiskFullError(code, what, path, needed, intact) from e


class FolderInUseError(FileExistsError):
    """Another running process holds the folder's lock (:class:`FolderLock`): exit 1."""


class FolderLock:
    """One writer per folder: ``<folder>/<name>`` is ``flock``-ed and holds the owner's pid and host.

    The kernel drops an flock when its process ends, kill -9 included, so a lock file left by a
    dead run is taken over without guessing from its pid; a live owner is named in the refusal.
    ``release()`` removes the file while still holding the lock. A second process that opened the
    old file checks after locking that the path still leads to the file it locked, and retries if not.
    """

    def __init__(self, folder: str | os.PathLike, name: str = "train.lock", hint: str = ""):
        self.path = Path(folder) / name
        self.hint = hint
        self.fd: int | None = None
        self.previous_owner = ""  # what a lock file left by a dead run said, for the log

    def acquire(self) -> "FolderLock":
        import fcntl

        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._refuse(fd)
            except OSError:  # a file system without flock (some network mounts): judge by the pid
                if owner_alive(_read_owner(fd)):
                    self._refuse(fd)
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the file was released and removed between our open and our lock
        self.previous_owner = _read_owner(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
        self.fd = fd
        return self

    def _refuse(self, fd: int) -> None:
        owner = _read_owner(fd) or "another process"
        os.close(fd)
        raise FolderInUseError(f"{self.path.parent} is in use by {owner} (lock file {self.path}); "
                               f"wait for that run to end or stop it{self.hint}")

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)  # drops the flock
            self.fd = None

    def __enter__(self) -> "FolderLock":
        return self if self.fd is not None else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_owner(fd: int) -> str:
    return os.pread(fd, 200, 0).decode("utf-8", "replace").strip()


def owner_alive(owner: str) -> bool:
    """Whether the ``pid N on host H`` of a lock file is a running process (on another host: assumed so)."""
    parts = owner.split()
    if len(parts) != 5 or parts[0] != "pid" or not parts[1].isdigit():
        return False
    if parts[4] != socket.gethostname():
        return True
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return int(parts[1]) != os.getpid()


# --- inputs that are regular files; outputs checked before the work -----------------------------

SPECIAL_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                 (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


class NotRegularFileError(UserError):
    """An input path that is a FIFO, device, socket or folder: reading it could block or never end."""

    def __init__(self, path: str | os.PathLike, kind: str):
        self.path, self.kind = path, kind
        super().__init__(f"{path} is {kind}, not a regular file; skipped without reading it")


class OutputPathError(UserError):
    """An output that cannot be written where asked (a folder for a file, under a file, onto an input)."""


def special_kind(path: str | os.PathLike) -> str | None:
    """None for a regular file (or a link to one); else what ``path`` is, found by ``os.stat`` without
    opening it (opening a FIFO blocks until a writer comes; a device can be read forever)."""
    mode = os.stat(path).st_mode
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in SPECIAL_KINDS if test(mode)), "not a regular file")


def read_regular_file(path: str | os.PathLike) -> bytes:
    """The bytes of a regular file. A FIFO, device, socket or folder raises :class:`NotRegularFileError`
    without being opened; a missing file raises FileNotFoundError."""
    kind = special_kind(path)
    if kind is not None:
        raise NotRegularFileError(path, kind)
    with open(path, "rb") as f:
        return f.read()


def nearest_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_parent_writable(path: Path, flag: str) -> None:
    """Refuse a path whose nearest existing ancestor is a file or a folder this process cannot write."""
    ancestor = nearest_existing(path.parent if path.name else path)
    if not ancestor.is_dir():
        raise OutputPathError(f"{flag} {path} lies under {ancestor}, which is a file, not a folder; "
                              f"choose a path under a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise OutputPathError(f"{flag} {path}: {ancestor} is not writable (permission denied); choose a "
                              "folder you can write to")


def check_output_folder(path: str | os.PathLike, flag: str) -> None:
    """Before any work: ``path`` can be (or already is) a folder this process writes into."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputPathError(f"{flag} {path} is a file, not a folder; give a folder path")
    check_parent_writable(path / "x", flag)


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return Path(a).absolute().resolve() == Path(b).absolute().resolve()


def check_output_file(path: str | os.PathLike, flag: str, inputs: Iterable[tuple[str, str | os.PathLike]] = ()
                      ) -> None:
    """Before any work: ``path`` can be written as a file and is none of ``inputs`` ((flag, path) pairs)."""
    path = Path(path)
    for input_flag, source in inputs:
        if source and same_file(path, source):
            raise OutputPathError(f"{flag} {path} is the {input_flag} file: writing it would destroy the input; "
                                  f"choose another {flag}")
    if path.is_dir():
        raise OutputPathError(f"{flag} {path} is a folder; give the path of a file (in it, or beside it)")
    if path.exists() and special_kind(path) is not None:
        raise OutputPathError(f"{flag} {path} is {special_kind(path)}; give the path of a regular file")
    check_parent_writable(path, flag)
