"""From a data source to arrays a run trains on: photos (folder or CSV) or the embedded digits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from common.files import sha256_of_array
from training.data.arrays import digits
from training.data.cache import ImageCache
from training.data.decoding import Preprocess
from training.data.discovery import discover
from training.data.labels import Grouping, get_grouping, require_two_classes
from training.data.loading import ImageSet, LoadReport, index_images, load_images


@dataclass
class Dataset:
    """Unique images ``x`` (n, s, s, c) with class indices ``y`` into ``class_names``."""

    x: np.ndarray | None  # None when loaded with decode=False: the photos are read from ``paths`` when needed
    y: np.ndarray
    class_names: list[str]
    paths: list[str]
    digests: list[str]
    grouping: Grouping
    report: LoadReport
    source: str


def digits_images(pre: Preprocess) -> Dataset:
    """scikit-learn's 1,797 8×8 digits, bicubic-upscaled to ``pre.image_size`` (the embedded default)."""
    images, target = digits()
    x = np.stack([
        np.asarray(Image.fromarray((img * (255.0 / 16.0)).astype(np.uint8), "L").resize(
            (pre.image_size, pre.image_size), Image.Resampling.BICUBIC), np.float32) / 255.0
        for img in images
    ])[..., None]
    if pre.rgb:
        x = np.repeat(x, 3, axis=-1)
    names = [str(i) for i in range(10)]
    digests = [sha256_of_array(a) for a in images]
    report = LoadReport(found=len(x), loaded=len(x))
    grouping = Grouping("digits", {n: (n,) for n in names})
    return Dataset(x, target, names, [f"digits[{i}]" for i in range(len(x))],
                   digests, grouping, report, "sklearn-digits")


def load_dataset(
    source: str | Path | None,
    pre: Preprocess,
    *,
    scenario: str | None = None,
    grouping_file: str | Path | None = None,
    skip_bad: bool = False,
    cache_dir: str | Path | None = None,
    workers: int | None = None,
    progress: bool = True,
    decode: bool = True,
) -> Dataset:
    """Photos from a folder/CSV grouped into classes (excluded labels counted), or digits if ``source`` is None.

    ``decode=False`` (photos only): the files are hashed and de-duplicated but not decoded, and
    ``x`` is None; a pretrained backbone's features are then read from the files in chunks
    (bounded memory), and an unreadable photo is found there.
    """
    if source is None:
        if scenario or grouping_file:
            raise ValueError("--scenario/--grouping apply to photo labels; the digits default has none")
        return digits_images(pre)
    ignored: list[tuple[str, str]] = []
    items = discover(source, ignored=ignored)
    require_two_classes((label for _, label in items), source)  # before any decoding
    if decode:
        images = load_images(items, pre, skip_bad=skip_bad, cache=ImageCache.at(cache_dir), workers=workers,
                             progress=progress)
    else:
        kept, digests, report = index_images(items, skip_bad=skip_bad, workers=workers)
        report.loaded, report.decoded = len(kept), False
        images = ImageSet(None, [label for _, label in kept], [str(p) for p, _ in kept], digests, report)
    images.report.ignored = ignored
    grouping = get_grouping(scenario, grouping_file, images.labels)
    index, excluded = grouping.resolve(images.labels)
    images.report.excluded = excluded
    keep = index >= 0
    if not keep.any():
        raise ValueError(f"no images left after grouping {grouping.name!r}")
    return Dataset(None if images.x is None else images.x[keep], index[keep], grouping.class_names,
                   [p for p, k in zip(images.paths, keep) if k], [d for d, k in zip(images.digests, keep) if k],
                   grouping, images.report, str(source))


__all__ = ["Dataset", "digits_images", "load_dataset"]
