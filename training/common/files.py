"""Files: atomic writes, JSON, digests and the cache root (a leaf: imports no other module of the project)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
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


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on success rename it over ``path``.

    A failure (or a kill) never leaves ``path`` cut short: it keeps its old content or is absent.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def output_dir(path: str | Path) -> Path:
    """Create (if needed) and return the output folder."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


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
