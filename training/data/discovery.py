"""Finding photos: which files under a folder (or in a CSV manifest) are photos, and their labels or names.

Inputs are a folder with one subfolder per label, or a CSV manifest with columns ``path,label`` (paths
relative to the CSV); for prediction, photo files and folders in any mix (:func:`photo_inputs`). Nothing
here opens a photo: entries that cannot be photos (hidden, notes, special files, broken links, link loops)
are left out with a reason, so the data report can list them."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from common.files import FileFormatError, read_csv_checked

NOT_IMAGES = {".md", ".txt", ".csv", ".json", ".toml"}  # files in photo folders that are not photos


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".heic", ".heif", ".hif", ".tif", ".tiff", ".bmp", ".gif"}


def _entries(folder: Path, ignored: list[tuple[str, str]]) -> list[tuple[Path, str]]:
    """``(path, "dir" | "file")`` for the entries of ``folder`` that may hold or be photos (links
    followed); every other entry is appended to ``ignored`` with its reason."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        ignored.append((str(folder), f"folder cannot be read ({exc.strerror or exc})"))
        return []
    kept = []
    for e in entries:
        path = Path(e.path)
        if e.name.startswith("."):
            ignored.append((str(path), "hidden"))
            continue
        try:
            mode = path.stat().st_mode  # follows links
        except OSError as exc:
            ignored.append((str(path), "symbolic link loop" if exc.errno == errno.ELOOP
                            else "broken symbolic link" if e.is_symlink()
                            else f"cannot be read ({exc.strerror or exc})"))
            continue
        if stat.S_ISDIR(mode):
            kept.append((path, "dir"))
        elif not stat.S_ISREG(mode):
            ignored.append((str(path), "not a regular file"))
        elif path.suffix.lower() in NOT_IMAGES:
            ignored.append((str(path), f"not a photo ({path.suffix.lower()})"))
        else:
            kept.append((path, "file"))
    return kept


def walk_files(folder: str | Path, ignored: list[tuple[str, str]], *, within: str | Path | None = None) -> list[Path]:
    """Every candidate photo under ``folder``, recursively, sorted by path.

    Symbolic links are followed. Appended to ``ignored`` as ``(path, reason)``: hidden entries,
    non-photo files (.md/.txt/.csv/.json/.toml), special files, broken links, link loops (a link
    back to a folder above it), links to a folder already read (each folder is read once), unreadable
    folders, and folders named like photos (``x.jpg/``, whose files are still read). ``within``: a
    folder above ``folder`` (the data root) that a link back to also counts as a loop.
    """
    files: list[Path] = []
    # Depth first, in name order, with an explicit stack (a tree 1,200 folders deep raised RecursionError), and
    # each real folder read once: links that reach one folder by several routes (two links a level, 24 levels:
    # 2^24 routes) made the walk exponential.
    top = frozenset({os.path.realpath(folder)} | ({os.path.realpath(within)} if within else set()))
    read: dict[str, str] = dict.fromkeys(top, str(folder))
    stack = [(iter(_entries(Path(folder), ignored)), top, os.path.realpath(folder))]
    while stack:
        entries, ancestors, real_parent = stack[-1]
        entry = next(entries, None)
        if entry is None:
            stack.pop()
            continue
        path, kind = entry
        if kind == "file":
            files.append(path)
            continue
        # (realpath resolves every component: only for a link, or 1,200 levels cost 1.4 million lstat calls)
        real = os.path.realpath(path) if os.path.islink(path) else os.path.join(real_parent, path.name)
        if real in ancestors:
            ignored.append((str(path), f"symbolic link loop (back to {real})"))
            continue
        if real in read:
            ignored.append((str(path), f"a link to a folder already read (as {read[real]})"))
            continue
        read[real] = str(path)
        if path.suffix.lower() in IMAGE_SUFFIXES:
            ignored.append((str(path), "a folder named like a photo (its files are read)"))
        stack.append((iter(_entries(path, ignored)), ancestors | {real}, real))
    return files


def discover(source: str | Path, *, ignored: list[tuple[str, str]] | None = None) -> list[tuple[Path, str]]:
    """``(path, label)`` for every file under a label-per-subfolder folder or in a CSV manifest.

    A folder's labels are its top-level subfolders, read recursively (``Probable/2021/x.jpg`` is
    Probable). Entries left out (see :func:`walk_files`; also files beside the class folders) are
    appended to ``ignored`` as ``(path, reason)``. A class folder without photos raises.
    """
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"data not found: {source}")
    if not source.is_dir():  # a file: a manifest (a FIFO or device is refused before it is opened)
        return _read_manifest(source)
    ignored = [] if ignored is None else ignored
    top = _entries(source, ignored)
    ignored.extend((str(path), "not in a class folder") for path, kind in top if kind == "file")
    class_dirs = [path for path, kind in top if kind == "dir"]
    if not class_dirs:
        raise ValueError(f"{source}: no class subfolders (expected one folder per label, e.g. Probable/)")
    items = []
    for d in class_dirs:
        files = walk_files(d, ignored, within=source)
        if not files:
            raise ValueError(f"class folder {d} is empty (no photos in it or below it): add photos or remove it")
        items.extend((f, d.name) for f in files)
    return items


def _read_manifest(path: Path) -> list[tuple[Path, str]]:
    """``(photo, label)`` of each row of a ``path,label`` CSV manifest (other columns are ignored): a regular file
    of UTF-8 text (a spreadsheet's byte-order mark and CRLF accepted), every row with the header's fields, no
    field over 128 KiB, every photo a file. Anything else is one FileFormatError naming the file and line."""
    table = read_csv_checked(path, "a CSV manifest with the columns path,label", required=("path", "label"))
    items = []
    for line, row in zip(table.lines, table.rows, strict=True):  # (blank lines and quoted newlines counted)
        if not row["path"] or not row["label"].strip():
            raise FileFormatError(path, f"line {line}", "empty path or label")
        p = Path(row["path"])
        p = p if p.is_absolute() else path.parent / p
        if not p.is_file():
            raise FileNotFoundError(f"{path}, line {line}: file not found: {p}")
        items.append((p, row["label"].strip()))
    if not items:
        raise FileFormatError(path, "", "the manifest lists no images")
    return items


def image_files(folder: str | Path, *, ignored: list[tuple[str, str]] | None = None) -> list[Path]:
    """Every candidate photo under ``folder`` (recursively, see :func:`walk_files`); entries left out are
    appended to ``ignored``."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    left_out: list[tuple[str, str]] = []
    files = walk_files(folder, left_out)
    if ignored is not None:
        ignored.extend(left_out)
    if not files:
        raise ValueError(f"{folder}: no image files found ({len(left_out)} entries left out)")
    return files


def photo_inputs(inputs: str | Path | Sequence[str | Path], *,
                 ignored: list[tuple[str, str]] | None = None) -> list[tuple[Path, str]]:
    """Every photo named by ``inputs`` (photo files and folders, in any mix) with the name its rows carry:
    ``(file, name)``, in the order given (a folder's photos in :func:`image_files`' order).

    A folder contributes every candidate photo under it (:func:`image_files`), named relative to the
    folder (``siteA/IMG_1.jpg``), as ``experiments.agreement`` matches them; a file given directly is
    named as it was given (``photo.jpg``, ``site/IMG_1.jpg``; ``./`` dropped). A file given twice, or
    also found in a folder given, gets one row. Two different files with the same name are refused
    (their rows could not be told apart): give their common parent folder instead.
    """
    entries = [inputs] if isinstance(inputs, str | Path) else list(inputs)
    if not entries:
        raise ValueError("no photos given")
    named: dict[str, Path] = {}  # in insertion order
    for entry in entries:
        entry = Path(entry)
        if entry.is_dir():
            found = [(f, f.relative_to(entry).as_posix()) for f in image_files(entry, ignored=ignored)]
        elif entry.is_file():
            found = [(entry, PurePosixPath(entry.as_posix()).as_posix())]
        else:
            raise FileNotFoundError(f"photo or folder not found: {entry}")
        for f, name in found:
            if name in named and not _same_file(named[name], f):
                raise ValueError(f"two photos would be written as {name!r} ({named[name]} and {f}): give their "
                                 "common parent folder instead")
            named.setdefault(name, f)
    seen: set[Path] = set()
    out = []
    for name in named:
        key = named[name].resolve()
        if key not in seen:  # one file reached under two names (given and inside a folder given): its first
            seen.add(key)
            out.append((named[name], name))
    return out


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False
