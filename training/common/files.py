"""Files: atomic writes, JSON, digests and the cache root (a leaf: imports no other module of the project)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import stat
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np


class FileFormatError(ValueError):
    """A file read on the user's behalf that is not what it should be: one line naming the file and the field.

    Every reader of a user-supplied or previously written file raises this (a ``ValueError``, so the commands
    print it as their one ``error:`` line). ``field`` is the key, column or member at fault (``""`` for the
    file as a whole).
    """

    def __init__(self, path: str | Path, field: str, message: str) -> None:
        self.path, self.field, self.message = str(path), field, message
        where = f"{path}: {field}: " if field else f"{path}: "
        super().__init__(where + message)


class UnsafeOutputError(ValueError):
    """An output the project refuses to write: a symbolic link, a FIFO or device, a folder where a file should
    be, or a name (taken from data) that would leave the output folder. One line naming the path."""


def umask() -> int:
    """The process's umask (read from ``/proc/self/status`` where Linux gives it, without changing it)."""
    try:
        for line in Path("/proc/self/status").read_text(encoding="ascii").splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _UMASK_LOCK:  # elsewhere: set and restore it (the only way POSIX offers), one thread at a time
        old = os.umask(0o077)
        os.umask(old)
    return old


_UMASK_LOCK = threading.Lock()


def check_destination(path: str | Path, *, folder: bool = False) -> None:
    """Refuse to write at ``path`` when it is a symbolic link (dangling or not) or, when it exists, not a regular
    file (``folder``: not a folder). Checked with ``lstat``, so nothing is opened and nothing can hang."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeOutputError(f"{path}: is a symbolic link; refusing to write through it (remove it or choose "
                                "another output)")
    ok = stat.S_ISDIR(st.st_mode) if folder else stat.S_ISREG(st.st_mode)
    if not ok:
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode) else \
            "a device or socket" if not stat.S_ISREG(st.st_mode) else "a file"
        raise UnsafeOutputError(f"{path}: is {kind}, not {'a folder' if folder else 'a regular file'}; refusing "
                                "to write there")


_SAFE = re.compile(r"[^\w.+=@-]", re.UNICODE)


def safe_name(text: str, *, limit: int = 100) -> str:
    """``text`` (a rater column, a class or file name: anything taken from data) as one file-name component:
    every character other than letters, digits and ``_ . + = @ -`` becomes ``_`` (so ``/``, ``\\``, NUL and
    control characters cannot make a path), a leading ``.`` is prefixed with ``_`` (no ``..``, no hidden
    file), cut to ``limit`` characters; never empty."""
    name = _SAFE.sub("_", str(text))[:limit] or "_"
    return "_" + name if name.startswith(".") else name


def inside(folder: str | Path, name: str) -> Path:
    """``folder / name`` for a ``name`` that is one plain file-name component; anything that could leave
    ``folder`` (a separator, ``..``, an absolute path, NUL) raises :class:`UnsafeOutputError`. Names from data
    go through :func:`safe_name` first."""
    if not name or name in (".", "..") or any(c in name for c in "/\\\0") or Path(name).is_absolute():
        raise UnsafeOutputError(f"{name!r}: not a plain file name; refusing to write it under {folder}")
    return Path(folder) / name


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on success rename it over ``path``.

    The one writer of the project's outputs. A failure (or a kill) never leaves ``path`` cut short: it keeps its
    old content or is absent. The file gets the mode ``open()`` would give it (``0o666`` less the umask: 0644
    under umask 022). ``path`` may not be a symbolic link (dangling or not), a FIFO, a device or a folder
    (:func:`check_destination`, before anything is created); the temporary file is created with ``O_EXCL``
    (never through a link) and renamed, which replaces ``path`` itself and never follows it.
    """
    path = Path(path)
    check_destination(path)
    output_dir(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name[:100]}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):  # (POSIX; mkstemp made it 0600)
            os.fchmod(fd, 0o666 & ~umask())
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
        check_destination(path)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def open_regular(path: str | Path, flags: int, what: str) -> int:
    """``os.open(path, flags)`` for a regular file only, never through a symbolic link (``O_NOFOLLOW``) and
    never blocking on a FIFO (checked with ``lstat`` first, opened ``O_NONBLOCK``, checked again with
    ``fstat``); a new file gets ``0o666`` less the umask. Anything else is :class:`UnsafeOutputError` (writing)
    or :class:`FileFormatError` (reading) naming the file."""
    writing = flags & (os.O_WRONLY | os.O_RDWR)

    def refuse(problem: str) -> ValueError:
        if writing:
            return UnsafeOutputError(f"{path}: {problem}; refusing to write there")
        return FileFormatError(path, "", f"{what}: {problem}; refusing to read it")

    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise refuse("a symbolic link" if stat.S_ISLNK(st.st_mode) else "a FIFO" if stat.S_ISFIFO(st.st_mode)
                     else "not a regular file")
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0), 0o666)
    except (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError):
        raise
    except OSError as exc:  # ELOOP (a link made since), ENXIO (a FIFO made since, no reader), …
        raise refuse(f"cannot be opened ({exc.strerror})") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise refuse("not a regular file")
    os.set_blocking(fd, True)
    return fd


def read_regular(path: str | Path, what: str, *, limit: int) -> bytes:
    """The bytes of the regular file ``path`` (see :func:`open_regular`), at most ``limit`` of them: a larger
    file is a :class:`FileFormatError` naming it, read no further."""
    fd = open_regular(path, os.O_RDONLY, what)
    with os.fdopen(fd, "rb") as f:
        data = f.read(min(os.fstat(fd).st_size, limit) + 1)  # (read(n) allocates n bytes first)
    if len(data) > limit:
        raise FileFormatError(path, "", f"{what}: larger than {limit} bytes")
    return data


def output_dir(path: str | Path) -> Path:
    """Create (if needed) and return the output folder; a symbolic link, or something other than a folder, in
    its place is refused (:func:`check_destination`)."""
    path = Path(path)
    check_destination(path, folder=True)
    path.mkdir(parents=True, exist_ok=True)
    return path


# The project's one CSV rule (SECURITY.md): a text cell that a spreadsheet would take for a formula (it begins with
# = + - @, a tab or a carriage return; OWASP's list) is written with a leading apostrophe, and so is a text cell
# that begins with an apostrophe already, so that reading back (strip one leading apostrophe) gives the original
# exactly. Numbers are written as numbers.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")


def csv_cell(value: Any) -> Any:
    """``value`` as the project writes it into a CSV cell: text escaped as above, anything else unchanged."""
    return "'" + value if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def csv_value(cell: str) -> str:
    """The original text of a cell written with :func:`csv_cell` (one leading apostrophe removed)."""
    return cell[1:] if cell.startswith("'") else cell


def csv_row(values: Iterable[Any]) -> list[Any]:
    """:func:`csv_cell` of each value."""
    return [csv_cell(v) for v in values]


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON to a temporary file in the same folder, then rename it over ``path``."""
    with atomic_open(path, encoding="utf-8") as f:
        json.dump(data, f, indent=2)


def read_json(path: str | Path, what: str) -> Any:
    """JSON from ``path``; a missing file raises ``FileNotFoundError`` and a damaged one ``ValueError``,
    each naming the file and ``what`` it should be."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found ({what})") from None
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot be read as {what} ({exc})") from exc


def sha256_of(path: str | Path) -> str:
    """SHA-256 of the file's bytes, hex."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def save_npy_atomic(path: Path, arr: np.ndarray) -> None:
    """``np.save`` to a temporary file beside ``path``, then rename it into place."""
    with atomic_open(path, "wb") as f:
        np.save(f, arr)


def load_cached_npy(path: Path, accept) -> np.ndarray | None:
    """A cache entry written by :func:`save_npy_atomic`, or None when it is absent, damaged, or not what
    ``accept(shape, dtype)`` takes (the caller then computes it again). The file is memory-mapped and checked
    before any of it is copied: a header that claims more data than the file holds, a negative dimension or a
    pickled object is refused by NumPy, so a hostile entry allocates nothing and runs nothing."""
    if not path.is_file():
        return None
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        return np.array(arr) if accept(arr.shape, arr.dtype) else None
    except (OSError, ValueError, OverflowError):  # (a negative dimension: "mapped length must be positive")
        return None


def save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez`` to a temporary file beside ``path``, then rename it into place."""
    with atomic_open(path, "wb") as f:
        np.savez(f, **arrays)


def cache_root(cache_dir: str | Path | None, kind: str) -> Path:
    """The cache folder for ``kind`` (``images``, ``features``, ``weights``): ``cache_dir/kind``, or
    ``$XDG_CACHE_HOME/tree-risk-jax/kind`` (``~/.cache/tree-risk-jax/kind``) when ``cache_dir`` is None."""
    if cache_dir:
        return Path(cache_dir) / kind
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tree-risk-jax" / kind


def sha256_of_array(a: np.ndarray) -> str:
    """SHA-256 of an array's bytes (C order), hex."""
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()
