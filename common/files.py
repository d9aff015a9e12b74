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
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any, NamedTuple

import numpy as np


class FileFormatError(ValueError):
    """A file read on the user's behalf that is not what it should be: one line naming the file and the field.

    Every reader of a user-supplied or previously written file raises this (a ``ValueError``, so the commands
    print it as their one ``error:`` line). ``field`` is the key, column or member at fault (``""`` for the
    file as a whole).
    """

    def __init__(self, path: str | Path, field: str, message: str) -> None:
        # one line whatever the file holds: a key or value quoted from it is shown with its control characters
        # (a newline, an escape sequence) escaped
        field, message = _one_line(str(field)), _one_line(str(message))
        self.path, self.field, self.message = str(path), field, message
        where = f"{path}: {field}: " if field else f"{path}: "
        super().__init__(where + message)


def _one_line(text: str) -> str:
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
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
    file), cut to ``limit`` characters and to ``limit`` bytes of UTF-8 (letters of other scripts are kept and
    take 2–4 bytes each, and file systems count a name's bytes: 255 at most); never empty."""
    name = _SAFE.sub("_", str(text))[:limit]
    name = name.encode("utf-8", errors="surrogateescape")[:limit].decode("utf-8", errors="ignore") or "_"
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
    """JSON from ``path``; a missing file raises ``FileNotFoundError`` and a damaged one :class:`FileFormatError`
    (a ``ValueError``), each naming the file and ``what`` it should be (:func:`parse_document`)."""
    return parse_document(path, what, fmt="json", max_bytes=16 << 20)


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
    except Exception:  # noqa: BLE001 - a hostile header makes NumPy raise anything (EOFError, SyntaxError, …)
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


# ---- readers: the checks every reader of a user-supplied or previously written file makes -------------------
# (kept apart from the writers above.) A reader stats before it opens, reads a bounded number of bytes, parses
# with bounded nesting and field sizes, and turns every failure into one FileFormatError naming the file.

MAX_TEXT_BYTES = 64 << 20  # a configuration, grouping, manifest, ratings or row file: far below this
MAX_NESTING = 32  # JSON/TOML nesting: the project's files use 3 levels
CSV_FIELD_BYTES = 128 << 10  # one CSV cell (a path, a label, a probability)
CSV_MAX_ROWS = 1_000_000  # a manifest or ratings file: one row a photo (a row kept costs ~300 bytes)
CSV_MAX_COLUMNS = 1_000


def regular_file(path: str | Path, what: str, *, max_bytes: int | None = None) -> os.stat_result:
    """``stat`` of ``path`` after checking, before anything opens it, that it is a regular file (a FIFO would
    block the reader forever, a device could be endless) of at most ``max_bytes``. A missing file raises
    ``FileNotFoundError``, anything else :class:`FileFormatError`, each naming the file and ``what`` it should be."""
    import stat

    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: not found ({what})") from None
    except OSError as exc:
        raise FileFormatError(path, "", f"cannot be read as {what} ({exc.strerror or exc})") from None
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file (a FIFO, socket or device)"
        raise FileFormatError(path, "", f"{kind}: expected {what}")
    if max_bytes is not None and st.st_size > max_bytes:
        raise FileFormatError(path, "", f"{st.st_size} bytes: more than the {max_bytes} expected of {what}")
    return st


def read_bytes_checked(path: str | Path, what: str, *, max_bytes: int = MAX_TEXT_BYTES) -> bytes:
    """The bytes of a regular file of at most ``max_bytes`` (read once; a file that grows meanwhile is cut at
    ``max_bytes + 1`` and refused)."""
    path = Path(path)
    regular_file(path, what, max_bytes=max_bytes)
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as exc:
        raise FileFormatError(path, "", f"cannot be read as {what} ({exc.strerror or exc})") from None
    if len(data) > max_bytes:
        raise FileFormatError(path, "", f"more than the {max_bytes} bytes expected of {what}")
    return data


def read_text_checked(path: str | Path, what: str, *, max_bytes: int = MAX_TEXT_BYTES,
                      encoding: str = "utf-8-sig", errors: str = "strict") -> str:
    """The text of a regular file of at most ``max_bytes`` in ``encoding`` (a byte-order mark is dropped;
    ``errors="surrogateescape"`` keeps file names that are not UTF-8 as the file system gave them)."""
    data = read_bytes_checked(path, what, max_bytes=max_bytes)
    try:
        return data.decode(encoding, errors)
    except UnicodeDecodeError as exc:
        raise FileFormatError(path, "", f"not {encoding.removesuffix('-sig').upper()} text at byte {exc.start}: "
                                        f"expected {what}") from None


def nesting_depth(value: Any, limit: int = MAX_NESTING) -> int:
    """How deep lists and dicts nest in ``value`` (0 for a scalar), counting at most to ``limit + 1``: iterative,
    so a hostile depth never reaches Python's recursion limit."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict | list):
            d += 1
            deepest = max(deepest, d)
            if deepest > limit:
                return deepest
            stack.extend((c, d) for c in (v.values() if isinstance(v, dict) else v))
    return deepest


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        dup = next(k for i, k in enumerate(keys) if k in keys[:i])
        raise ValueError(f"the key {dup[:40]!r} appears more than once in an object")
    return dict(pairs)


def json_loads_strict(text: str | bytes) -> Any:
    """``json.loads`` that refuses what Python's parser lets through but JSON does not mean: ``NaN``,
    ``Infinity`` and an object with a key given twice (Python keeps the last one silently, so what a person
    reads in the file is not what the program uses). Raises ``ValueError`` (or ``RecursionError``)."""
    return json.loads(text, parse_constant=_no_constant, object_pairs_hook=_unique_keys)


def parse_document(path: str | Path, what: str, *, fmt: str | None = None, max_bytes: int = MAX_TEXT_BYTES,
                   max_depth: int = MAX_NESTING) -> Any:
    """A JSON or TOML document (``fmt`` ``"json"`` / ``"toml"``; by default from the suffix: ``.toml`` is
    TOML, anything else JSON) from a regular file of at most ``max_bytes``, nested at most ``max_depth`` deep.
    JSON's ``NaN`` and ``Infinity`` are refused (not JSON). Any failure is one :class:`FileFormatError`."""
    import tomllib

    path = Path(path)
    text = read_text_checked(path, what, max_bytes=max_bytes)
    fmt = fmt or ("toml" if path.suffix.lower() == ".toml" else "json")

    try:  # the parsers recurse: a document nested thousands deep raises RecursionError, caught here
        value = tomllib.loads(text) if fmt == "toml" else json_loads_strict(text)
    except (ValueError, RecursionError) as exc:  # TOMLDecodeError and JSONDecodeError are ValueErrors
        msg = " ".join(str(exc).split()) or type(exc).__name__
        raise FileFormatError(path, "", f"cannot be read as {what} ({msg})") from None
    if nesting_depth(value, max_depth) > max_depth:
        raise FileFormatError(path, "", f"nested more than {max_depth} deep: expected {what}")
    return value


class CsvTable(NamedTuple):
    """A CSV file read by :func:`read_csv_checked`: its column names, its rows (column → cell) and the line each
    row starts on (for messages)."""

    columns: list[str]
    rows: list[dict[str, str]]
    lines: list[int]


def read_csv_checked(path: str | Path, what: str, *, required: Sequence[str] = (), max_bytes: int = MAX_TEXT_BYTES,
                     max_field: int = CSV_FIELD_BYTES, max_rows: int = CSV_MAX_ROWS,
                     max_columns: int = CSV_MAX_COLUMNS, errors: str = "strict", written: bool = False) -> CsvTable:
    """The :class:`CsvTable` of a CSV with a header row (UTF-8, a byte-order mark and CRLF accepted): every row
    has exactly the header's fields, no cell is longer than ``max_field``, the header names (at most
    ``max_columns``) are distinct and include ``required``, at most ``max_rows`` rows. ``written``: a CSV the
    project wrote (predict's, explain's), whose cells are read back through the CSV rule (:func:`csv_value`:
    ``'=x.jpg`` is ``=x.jpg`` again). Any failure is one
    :class:`FileFormatError` naming the file and the line."""
    import csv
    import io

    path = Path(path)
    text = read_text_checked(path, what, max_bytes=max_bytes, errors=errors)
    reader = csv.reader(io.StringIO(text, newline=""))  # (the csv module's own cell limit is 128 KiB)
    try:
        header = next(reader, None)
    except csv.Error as exc:
        raise FileFormatError(path, "line 1", f"{exc}: expected {what}") from None
    if not header:
        raise FileFormatError(path, "", f"empty: expected {what} with a header row")
    text = csv_value if written else str
    header = [text(h) for h in header]
    if len(header) > max_columns:
        raise FileFormatError(path, "line 1", f"{len(header)} columns: more than {max_columns}")
    if len(set(header)) != len(header):
        dup = sorted({h for h in header if header.count(h) > 1})
        raise FileFormatError(path, "line 1", f"column(s) {dup[:5]} appear more than once")
    missing = [c for c in required if c not in header]
    if missing:
        raise FileFormatError(path, "line 1", f"needs the columns '{','.join(required)}', has "
                                                f"{[h[:40] for h in header[:20]]}")
    rows, lines = [], []
    while True:
        line = reader.line_num + 1
        try:
            cells = next(reader, None)
        except csv.Error as exc:
            raise FileFormatError(path, f"line {reader.line_num}", str(exc)) from None
        if cells is None:
            break
        if not cells:
            continue  # a blank line
        if len(cells) != len(header):
            raise FileFormatError(path, f"line {reader.line_num}",
                                  f"{len(cells)} fields where the header has {len(header)}")
        if max(map(len, cells)) > max_field:
            raise FileFormatError(path, f"line {reader.line_num}", f"a field longer than {max_field} characters")
        if len(rows) == max_rows:
            raise FileFormatError(path, f"line {reader.line_num}", f"more than {max_rows} rows")
        rows.append(dict(zip(header, map(text, cells), strict=True)))
        lines.append(line)
    return CsvTable(header, rows, lines)


def read_npy_member(zf: Any, name: str, path: str | Path, *, max_bytes: int) -> np.ndarray:
    """The array stored as member ``name`` of an open ``.npz`` (a :class:`zipfile.ZipFile`), after checking its
    header: a plain numeric dtype (no pickled objects), a shape whose bytes equal what the member holds and are
    at most ``max_bytes``. A header that claims 4 TiB allocates nothing; any failure is one
    :class:`FileFormatError` naming the file and the member."""

    from numpy.lib import format as npy_format

    try:
        info = zf.getinfo(name)
        if info.file_size > max_bytes + 4096:
            raise ValueError(f"{info.file_size} bytes: more than {max_bytes}")
        with zf.open(info) as f:
            version = npy_format.read_magic(f)
            read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
            shape, fortran, dtype = read_header(f, max_header_size=10_000)
            if dtype.hasobject or dtype.kind not in "biuf" or any(d < 0 for d in shape):
                raise ValueError(f"dtype {dtype} shape {shape} is not a numeric array")
            n_bytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
            if n_bytes > max_bytes or n_bytes != info.file_size - f.tell():
                raise ValueError(f"the header's shape {shape} ({n_bytes} bytes) does not match the member's "
                                 f"{info.file_size - f.tell()} bytes")
            data = f.read(n_bytes)
    except FileFormatError:
        raise
    except Exception as exc:  # noqa: BLE001 - a hostile header makes NumPy's parser raise anything (SyntaxError, …)
        msg = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise FileFormatError(path, name, msg) from None
    arr = np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")
    return arr.copy()


ZIP_ENTRY_BYTES = 512  # a central-directory entry: 46 bytes, its name (an .npz member's is short) and extras


def _zip_directory_bytes(path: Path) -> int | None:
    """The size of a zip file's central directory as its end record states it (ZIP64's where present), or None
    where there is no end record (zipfile then refuses the file)."""
    import zipfile

    try:
        with open(path, "rb") as f:
            end = zipfile._EndRecData(f)  # noqa: SLF001 - CPython's own end-record reader (ZIP64 included)
    except Exception:  # noqa: BLE001 - a damaged file: zipfile's own error follows
        return None
    return None if end is None else int(end[zipfile._ECD_SIZE])  # noqa: SLF001


def read_npz_checked(path: str | Path, what: str, *, max_bytes: int,
                     max_members: int = 10_000) -> dict[str, np.ndarray]:
    """Every member of an ``.npz`` read with :func:`read_npy_member`: at most ``max_members`` members and
    ``max_bytes`` in all (from the zip directory, checked before reading any member)."""
    import zipfile

    path = Path(path)
    regular_file(path, what)
    directory = _zip_directory_bytes(path)
    if directory is not None and directory > max_members * ZIP_ENTRY_BYTES:
        # zipfile builds a ZipInfo per entry of the central directory before anything can count them: ~7 bytes
        # of memory per byte of directory (a 28 MB file of 300,000 empty members took 200 MB and 4 s)
        raise FileFormatError(path, "", f"a zip directory of {directory} bytes: more than {max_members} members "
                                        f"can need; expected {what}")
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > max_members:
                raise FileFormatError(path, "", f"{len(infos)} members: more than {max_members}")
            if sum(i.file_size for i in infos) > max_bytes:
                raise FileFormatError(path, "", f"members of more than {max_bytes} bytes in all: expected {what}")
            out = {}
            for info in infos:
                if not info.filename.endswith(".npy"):
                    raise FileFormatError(path, info.filename, "not an .npy member")
                out[info.filename.removesuffix(".npy")] = read_npy_member(zf, info.filename, path,
                                                                          max_bytes=max_bytes)
            return out
    except FileFormatError:
        raise
    except Exception as exc:  # noqa: BLE001 - zipfile raises many types for a damaged archive (BadZipFile, EOFError, …)
        raise FileFormatError(path, "", f"not a readable .npz file ({' '.join(str(exc).split())}): expected "
                                        f"{what}") from None
