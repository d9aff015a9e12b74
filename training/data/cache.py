"""The decoded-photo cache: preprocessed arrays on disk under the SHA-256 of the file's bytes and the
preprocessing settings (:meth:`~training.data.decoding.Preprocess.cache_key`), so a second run decodes
nothing. An entry is checked when it is read (shape, dtype, every value finite and in [0, 1]); anything
else is recomputed and rewritten. Entries are written atomically."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from common.files import cache_root, load_cached_npy, save_npy_atomic
from training.data.decoding import Preprocess


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
