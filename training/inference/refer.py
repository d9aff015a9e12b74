"""Referral of a finished prediction CSV: a ``refer`` column (1: send the photo to a person) added in place.

A photo is referred when its confidence, the (calibrated) probability of its predicted class with the calibration's
shift left out (``training.evaluation.calibration.referral_confidence``), is below the
run's saved threshold (chosen on inner predictions of the training part), or, with a fraction ``f``, when it
is among the ``ceil(f·n)`` least confident rows of the file (ties: the earlier row first). The CSV is read
row by row (its confidences kept, 8 bytes a photo) and rewritten atomically beside itself.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

from common.files import FileFormatError, atomic_open, csv_value


class ReferralCount(NamedTuple):
    referred: int
    rows: int
    rule: str  # in words


def _confidences(path: Path, class_names: list[str], shift=None) -> np.ndarray:
    columns = [f"p_{n}" for n in class_names]
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or any(c not in header for c in ["predicted", *columns]):
            raise FileFormatError(path, "header", f"expected the columns predicted, {', '.join(columns)}")
        if "refer" in header:
            raise FileFormatError(path, "refer", "the file already has a refer column")
        at = {name: header.index(c) for name, c in zip(class_names, columns)}
        predicted = header.index("predicted")
        conf = []
        for i, row in enumerate(reader, start=2):
            try:
                values = {name: float(row[j]) for name, j in at.items()}
                value = values[csv_value(row[predicted])]
            except (IndexError, ValueError, KeyError):
                raise FileFormatError(path, f"line {i}", "expected a class name in predicted and a probability in "
                                                         "every p_ column") from None
            if not all(math.isfinite(v) and 0 <= v <= 1 for v in values.values()):
                raise FileFormatError(path, f"line {i}", "probabilities must be numbers in [0, 1]")
            conf.append(value if shift is None else _without_shift(values, csv_value(row[predicted]), class_names,
                                                                   shift))
    return np.asarray(conf, np.float64)


def _without_shift(values: dict, predicted: str, class_names: list[str], shift) -> float:
    from training.evaluation.calibration import referral_confidence

    probs = np.array([[values[n] for n in class_names]])
    return float(referral_confidence(probs, np.array([class_names.index(predicted)]), shift)[0])


def refer_mask(conf: np.ndarray, *, threshold: float | None = None, fraction: float | None = None) -> np.ndarray:
    """Which rows are referred: ``conf < threshold``, or the ``ceil(fraction·n)`` least confident (stable)."""
    if (threshold is None) == (fraction is None):
        raise ValueError("give one of threshold or fraction")
    if threshold is not None:
        return conf < threshold
    n_refer = min(len(conf), math.ceil(fraction * len(conf) - 1e-9))
    mask = np.zeros(len(conf), bool)
    mask[np.argsort(conf, kind="stable")[:n_refer]] = True
    return mask


def add_refer_column(path: str | Path, class_names: list[str], *, threshold: float | None = None,
                     fraction: float | None = None, shift=None) -> ReferralCount:
    """Rewrite the prediction CSV ``path`` with a ``refer`` column (0/1); returns how many were referred.
    ``shift``: the run's calibration shift."""
    path = Path(path)
    mask = refer_mask(_confidences(path, class_names, shift), threshold=threshold, fraction=fraction)
    text = dict(newline="", encoding="utf-8", errors="surrogateescape")  # names written byte for byte, as predict does
    with open(path, **text) as src, atomic_open(path, **text) as dst:
        reader, writer = csv.reader(src), csv.writer(dst)  # the default \r\n, as the rows were written
        writer.writerow([*next(reader), "refer"])
        for row, refer in zip(reader, mask, strict=True):
            writer.writerow([*row, int(refer)])  # the cells as read: still escaped (csv_cell)
    rule = (f"confidence below {threshold:.4f}, the run's threshold chosen on inner predictions"
            if threshold is not None else f"the least confident {fraction:g} of these photos")
    return ReferralCount(int(mask.sum()), len(mask), rule)
