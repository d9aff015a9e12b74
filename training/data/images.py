"""Reading labelled photos: discovery, integrity checks, preprocessing and an on-disk cache.

Inputs are a folder with one subfolder per label, or a CSV manifest with columns
``path,label`` (paths relative to the CSV). Any format Pillow opens is read whatever
the extension says; HEIC/HEIF through the optional ``pillow-heif`` (``pip install
'.[heic]'``). EXIF orientation is applied, transparency is composited on white,
16-bit images are scaled to 8 bits, CMYK is converted to RGB.

Preprocessing (the lab's): square crop ``center`` (the largest centred square) or
``squash`` (the whole image), bicubic resize to ``image_size``, grayscale (ITU-R 601
luma, Pillow's ``L``) or RGB, float32 in [0, 1]. Large JPEGs are decoded with
Pillow's draft mode (DCT scaling by 1/2, 1/4 or 1/8) to no less than twice the target
size before the bicubic resize. Results are cached on disk under the SHA-256 of the
file's bytes and the preprocessing settings, so a second run decodes nothing.

Integrity: byte-identical files under one label are reported and kept once; under two
labels they raise ``ValueError`` naming both. A zero-byte, truncated, corrupt or
unreadable file raises :class:`BadImageError` naming it, or with ``skip_bad=True`` is
skipped and listed in the :class:`LoadReport`. Pillow's decompression-bomb limit stays on."""

from __future__ import annotations

import collections
import errno
import os
import stat
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from common.files import (
    FileFormatError,
    cache_root,
    load_cached_npy,
    read_csv_checked,
    save_npy_atomic,
    sha256_of,
)

CACHE_VERSION = "v1"


NOT_IMAGES = {".md", ".txt", ".csv", ".json", ".toml"}  # files in photo folders that are not photos


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".heic", ".heif", ".hif", ".tif", ".tiff", ".bmp", ".gif"}


class BadImageError(ValueError):
    """An image file that cannot be used; the message names the file."""


CROPS = ("center", "squash")  # the largest centred square, or the whole photo resized


@dataclass(frozen=True)
class Preprocess:
    """How a photo becomes an array: ``(image_size, image_size, 1 or 3)`` float32 in [0, 1]."""

    image_size: int = 108
    crop: str = "center"
    rgb: bool = False

    def __post_init__(self):
        if self.crop not in CROPS:
            raise ValueError(f"unknown crop {self.crop!r}; expected 'center' or 'squash'")
        if self.image_size < 8:
            raise ValueError(f"image_size must be at least 8, got {self.image_size}")

    @property
    def channels(self) -> int:
        return 3 if self.rgb else 1

    def cache_key(self) -> str:
        return f"{CACHE_VERSION}-{self.image_size}-{self.crop}-{'rgb' if self.rgb else 'gray'}"


def _register_heif() -> bool:
    try:
        from pillow_heif import register_heif_opener
    except ImportError:
        return False
    register_heif_opener()
    return True


HEIF_AVAILABLE = _register_heif()


HEIF_SUFFIXES = {".heic", ".heif", ".hif"}


def _to_rgb_or_l(im: Image.Image, rgb: bool) -> Image.Image:
    """Any Pillow mode → ``RGB`` or ``L``; transparency composited on white."""
    if im.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        arr = np.asarray(im, dtype=np.float64)
        top = 65535.0 if arr.max(initial=0) > 255 else 255.0
        im = Image.fromarray(np.clip(np.round(arr / top * 255.0), 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(np.round(arr * 255.0), 0, 255).astype(np.uint8), "L")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "RGBa", "La", "PA"):
        im = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, im)
    return im.convert("RGB" if rgb else "L")


def load_image(path: str | Path, pre: Preprocess) -> np.ndarray:
    """Read and preprocess one photo; ``BadImageError`` naming the file if it cannot be used."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError as exc:
        raise BadImageError(f"{path}: cannot read file ({exc})") from exc
    if not stat.S_ISREG(st.st_mode):  # checked before opening: a FIFO would block, a device never end
        raise BadImageError(f"{path}: not a regular file (a folder, FIFO or device)")
    if st.st_size == 0:
        raise BadImageError(f"{path}: empty file (0 bytes)")
    if path.suffix.lower() in HEIF_SUFFIXES and not HEIF_AVAILABLE:
        raise BadImageError(
            f"{path}: HEIC/HEIF needs the optional pillow-heif package: pip install -e '.[heic]'"
        )
    try:
        with Image.open(path) as im:
            if im.format in ("JPEG", "MPO"):
                # DCT-domain downscaling; keeps at least 2× the target on the short side
                im.draft("RGB" if pre.rgb else "L", (2 * pre.image_size, 2 * pre.image_size))
            im = ImageOps.exif_transpose(im)
            im = _to_rgb_or_l(im, pre.rgb)
            w, h = im.size
            if pre.crop == "center":
                side = min(w, h)
                left, top = (w - side) / 2, (h - side) / 2
                box = (left, top, left + side, top + side)
            else:
                box = (0, 0, w, h)
            im = im.resize((pre.image_size, pre.image_size), Image.Resampling.BICUBIC, box=box)
            arr = np.asarray(im, dtype=np.float32) / 255.0
    except Image.DecompressionBombError as exc:
        raise BadImageError(f"{path}: refused by Pillow's decompression-bomb limit ({exc})") from exc
    except UnidentifiedImageError as exc:
        raise BadImageError(f"{path}: not an image Pillow can read ({exc})") from exc
    except (OSError, SyntaxError, ValueError) as exc:  # truncated or corrupt data
        raise BadImageError(f"{path}: corrupt or truncated image ({exc})") from exc
    except Exception as exc:  # noqa: BLE001 - a hostile file can make a decoder raise anything: it is the file's fault
        raise BadImageError(f"{path}: corrupt image, the decoder failed ({type(exc).__name__}: {exc})") from exc
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr


@dataclass
class ImageCache:
    """Preprocessed arrays on disk: ``root/<settings>/<sha256>.npy``, written atomically."""

    root: Path

    @classmethod
    def at(cls, cache_dir: str | Path | None) -> ImageCache:
        """The cache in ``cache_dir/images``, or in the user's cache folder when it is None."""
        return cls(cache_root(cache_dir, "images"))

    def path(self, digest: str, pre: Preprocess) -> Path:
        return self.root / pre.cache_key() / f"{digest}.npy"

    def get(self, digest: str, pre: Preprocess) -> np.ndarray | None:
        expected = (pre.image_size, pre.image_size, pre.channels)  # anything else is recomputed and rewritten
        arr = load_cached_npy(self.path(digest, pre), lambda shape, dtype: shape == expected and dtype == np.float32)
        # pixel values in [0, 1], as load_image makes them: a NaN or an out-of-range value is recomputed too
        return arr if arr is not None and np.isfinite(arr).all() and arr.min() >= 0 and arr.max() <= 1 else None

    def put(self, digest: str, pre: Preprocess, arr: np.ndarray) -> None:
        save_npy_atomic(self.path(digest, pre), arr)


@dataclass
class LoadReport:
    """What happened to every file found: nothing is dropped without a line here."""

    found: int = 0
    loaded: int = 0
    cache_hits: int = 0
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (kept, duplicate)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    excluded: dict[str, int] = field(default_factory=dict)  # label -> count left out by the grouping
    ignored: list[tuple[str, str]] = field(default_factory=list)  # (path, reason): entries not read as photos
    decoded: bool = True  # False: the photos were hashed, not decoded (a frozen backbone's cached features)

    def summary(self) -> str:
        loaded = (f"{self.loaded} images decoded ({self.cache_hits} from the image cache)" if self.decoded else
                  f"{self.loaded} photos hashed, not decoded (read later only where no cached features exist)")
        parts = [f"{self.found} files found", loaded]
        if self.duplicates:
            parts.append(f"{len(self.duplicates)} exact duplicates kept once")
        if self.skipped:
            parts.append(f"{len(self.skipped)} bad files skipped")
        if self.ignored:
            parts.append(f"{len(self.ignored)} entries left out ({_counts(r for _, r in self.ignored)}; "
                         "listed in data_report.json)")
        if self.excluded:
            parts.append("excluded by grouping: " + ", ".join(f"{k} {v}" for k, v in sorted(self.excluded.items())))
        return "; ".join(parts)

    def as_dict(self) -> dict:
        return {
            "found": self.found, "loaded": self.loaded, "cache_hits": self.cache_hits, "decoded": self.decoded,
            "duplicates": [list(d) for d in self.duplicates], "skipped": [list(s) for s in self.skipped],
            "excluded": dict(self.excluded),
            "ignored_counts": dict(collections.Counter(_reason_kind(r) for _, r in self.ignored)),
            "ignored": [list(i) for i in self.ignored],
        }


def _reason_kind(reason: str) -> str:
    return reason.split(" (")[0]


def _counts(reasons: Iterable[str]) -> str:
    return ", ".join(f"{n} {k}" for k, n in sorted(collections.Counter(map(_reason_kind, reasons)).items()))


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


def deduplicate(
    items: Sequence[tuple[Path, str]], digests: Sequence[str], report: LoadReport
) -> list[int]:
    """Indices of the unique images; duplicates are reported; one image under two labels raises."""
    first: dict[str, int] = {}
    keep = []
    for i, (digest, (path, label)) in enumerate(zip(digests, items)):
        if digest in first:
            j = first[digest]
            other_path, other_label = items[j]
            if other_label != label:
                raise ValueError(
                    f"the same image is labelled twice: {other_path} ({other_label}) and {path} ({label})"
                )
            report.duplicates.append((str(other_path), str(path)))
            continue
        first[digest] = i
        keep.append(i)
    return keep


@dataclass
class ImageSet:
    """Preprocessed photos with their labels, paths and content hashes."""

    x: np.ndarray | None  # (n, s, s, c) float32 in [0, 1]; None when only indexed (not decoded)
    labels: list[str]
    paths: list[str]
    digests: list[str]
    report: LoadReport


def index_images(
    items: Iterable[tuple[Path, str]], *, skip_bad: bool = False, workers: int | None = None
) -> tuple[list[tuple[Path, str]], list[str], LoadReport]:
    """Hash every file (in threads) and de-duplicate, decoding nothing: ``(items, digests, report)``.

    An empty or unreadable file raises :class:`BadImageError` naming it, or with ``skip_bad`` is
    listed in ``report.skipped``.
    """
    items = list(items)
    report = LoadReport(found=len(items))
    with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
        digests = list(pool.map(lambda it: _digest_or_error(it[0]), items))
    bad = [(str(items[i][0]), d[1]) for i, d in enumerate(digests) if isinstance(d, tuple)]
    if bad and not skip_bad:
        raise BadImageError(bad[0][1])
    report.skipped.extend(bad)
    ok = [i for i, d in enumerate(digests) if not isinstance(d, tuple)]
    items, digests = [items[i] for i in ok], [digests[i] for i in ok]
    keep = deduplicate(items, digests, report)
    return [items[i] for i in keep], [digests[i] for i in keep], report


def load_images(
    items: Iterable[tuple[Path, str]],
    pre: Preprocess,
    *,
    skip_bad: bool = False,
    cache: ImageCache | None = None,
    workers: int | None = None,
    progress: bool = False,
) -> ImageSet:
    """Hash, de-duplicate (:func:`index_images`), then load (from cache or by decoding, in parallel threads)."""
    from tqdm.auto import tqdm

    items, digests, report = index_images(items, skip_bad=skip_bad, workers=workers)
    workers = workers or os.cpu_count() or 1

    def work(i):
        if cache is not None:
            arr = cache.get(digests[i], pre)
            if arr is not None:
                return arr, True
        try:
            arr = load_image(items[i][0], pre)
        except BadImageError as exc:
            if not skip_bad:
                raise
            return str(exc), False
        if cache is not None:
            cache.put(digests[i], pre, arr)
        return arr, False

    with ThreadPoolExecutor(workers) as pool:
        results = list(tqdm(pool.map(work, range(len(items))), total=len(items), desc="images",
                            disable=not progress))
    arrays, labels, paths, kept_digests = [], [], [], []
    for (path, label), digest, (arr, hit) in zip(items, digests, results):
        if isinstance(arr, str):
            report.skipped.append((str(path), arr))
            continue
        arrays.append(arr)
        labels.append(label)
        paths.append(str(path))
        kept_digests.append(digest)
        report.cache_hits += int(hit)
    report.loaded = len(arrays)
    shape = (0, pre.image_size, pre.image_size, pre.channels)
    x = np.stack(arrays) if arrays else np.zeros(shape, np.float32)
    return ImageSet(x, labels, paths, kept_digests, report)


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


def load_unlabelled(folder: str | Path, pre: Preprocess, *, skip_bad: bool = False,
                    cache_dir: str | Path | None = None) -> ImageSet:
    """Every photo under ``folder`` for prediction; each file is its own item: byte-identical copies are
    decoded once and each gets its own row (listed in ``report.duplicates``)."""
    ignored: list[tuple[str, str]] = []
    images = load_images([(f, "") for f in image_files(folder, ignored=ignored)], pre, skip_bad=skip_bad,
                         cache=ImageCache.at(cache_dir))
    images.report.ignored = ignored
    if images.report.duplicates:
        row = {p: i for i, p in enumerate(images.paths)}
        extra = [(row[kept], dup) for kept, dup in images.report.duplicates if kept in row]
        images.x = np.concatenate([images.x, images.x[[i for i, _ in extra]]])
        images.paths += [dup for _, dup in extra]
        images.labels += ["" for _ in extra]
        images.digests += [images.digests[i] for i, _ in extra]
    return images


def _digest_or_error(path: Path):
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):  # checked before opening: a FIFO would block, a device never end
            return ("", f"{path}: not a regular file (a folder, FIFO or device)")
        if st.st_size == 0:
            return ("", f"{path}: empty file (0 bytes)")
        return sha256_of(path)
    except OSError as exc:
        return ("", f"{path}: cannot read file ({exc})")
