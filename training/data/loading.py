"""Loading a list of photos: hash every file, keep byte-identical copies once, then decode each photo (or read
it from the cache) in threads; :class:`LoadReport` says what happened to every file found.

Integrity: byte-identical files under one label are reported and kept once; under two labels they raise
``ValueError`` naming both. A file that cannot be used raises :class:`~training.data.decoding.BadImageError`
naming it, or with ``skip_bad=True`` is skipped and listed in the :class:`LoadReport`."""

from __future__ import annotations

import collections
import os
import stat
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.files import sha256_of
from training.data.cache import ImageCache
from training.data.decoding import BadImageError, Preprocess, load_image


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
