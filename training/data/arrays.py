"""Array data sets: the embedded default (scikit-learn's digits) and MNIST from an .npz file.

Nothing here downloads anything: ``load_digits`` ships inside scikit-learn, and
MNIST is read from a file the user already has."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from common.files import FileFormatError, read_npz_checked


class ArraySplit(NamedTuple):
    """Images as float32 rows (n, n_features) in [0, 1) and integer labels (n,)."""

    x: np.ndarray
    y: np.ndarray


class ArrayData(NamedTuple):
    """Train / validation / test parts of an array data set."""

    train: ArraySplit
    valid: ArraySplit | None
    test: ArraySplit
    image_shape: tuple[int, int]
    n_classes: int
    name: str


def digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 8×8 digits as shipped (pixels 0–16, float64) and their labels (int32): the one
    place the embedded default is loaded (flattened below for the MLP, upscaled in ``dataset`` for the CNN)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images, d.target.astype(np.int32)


def load_digits_data(*, test_fraction: float = 0.2, seed: int = 0) -> ArrayData:
    """scikit-learn's 8×8 digits (1,797 images), pixels / 16, stratified split.

    The split is ``sklearn.model_selection.train_test_split`` with
    ``stratify=labels`` and ``random_state=seed``.
    """
    from sklearn.model_selection import train_test_split

    images, y = digits()
    x = (images.reshape(len(images), -1) / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_fraction, stratify=y, random_state=seed
    )
    return ArrayData(
        ArraySplit(x_train, y_train), None, ArraySplit(x_test, y_test), (8, 8), 10, "sklearn-digits"
    )


MNIST_KEYS = ("x_train", "y_train", "x_valid", "y_valid", "x_test", "y_test")


def load_mnist_npz(path: str | Path) -> ArrayData:
    """MNIST from an .npz with uint8 ``x_{train,valid,test}`` (n, 28, 28) and ``y_*`` (n,).

    Pixels become float32 ``x / 256`` (Nielsen's values exactly); images are
    flattened to 784 columns. Missing keys or wrong shapes raise ``ValueError``
    naming the file and the array.
    """
    path = Path(path)
    if not path.exists():  # (a folder, FIFO or device is refused by read_npz_checked, before opening it)
        raise FileNotFoundError(f"MNIST file not found: {path}")
    # every member's header is checked against its bytes before anything is allocated (at most 1 GiB in all)
    data = read_npz_checked(path, "an MNIST .npz", max_bytes=1 << 30, max_members=64)
    missing = [k for k in MNIST_KEYS if k not in data]
    if missing:
        raise FileFormatError(path, "", f"missing arrays {missing}; expected {list(MNIST_KEYS)}")
    parts = {}
    for part in ("train", "valid", "test"):
        x, y = data[f"x_{part}"], data[f"y_{part}"]
        if x.ndim != 3 or x.shape[1:] != (28, 28) or y.shape != (x.shape[0],):
            raise FileFormatError(path, "", f"x_{part} must be (n, 28, 28) with y_{part} (n,), "
                                            f"got {x.shape} and {y.shape}")
        if x.dtype != np.uint8:
            raise FileFormatError(path, "", f"x_{part} must be uint8 pixels, got {x.dtype}")
        if y.size and (y.min() < 0 or y.max() > 9):
            raise FileFormatError(path, "", f"y_{part} holds labels outside 0..9")
        parts[part] = ArraySplit(
            x.reshape(x.shape[0], 784).astype(np.float32) / 256.0, y.astype(np.int32)
        )
    return ArrayData(parts["train"], parts["valid"], parts["test"], (28, 28), 10, f"mnist:{path.name}")
