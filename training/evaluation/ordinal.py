"""Ordinal metrics for ratings with an order (Improbable < Possible < Probable): weighted κ and level error.

A nominal metric counts a Probable photo called Possible as wrong as one called Improbable; an assessor
does not. With the levels numbered ``0 … K−1`` (lowest first), true levels ``r_i`` and predicted levels
``s_i`` over ``n`` photos, the observed table ``O_jk = #{i: r_i = j, s_i = k}`` and the table expected by
chance from its margins ``E_jk = (Σ_k O_jk)(Σ_j O_jk) / n``:

* weighted κ = ``1 − Σ w_jk O_jk / Σ w_jk E_jk``, with linear weights ``w_jk = |j − k|`` or quadratic
  weights ``w_jk = (j − k)²`` (Cohen 1968; scikit-learn's ``cohen_kappa_score``). 1 is perfect agreement,
  0 chance level; quadratic weights count a two-level miss 4× a one-level one, linear weights 2×.
* mean absolute level error = ``(1/n) Σ |r_i − s_i|``, in levels: 0 is perfect, and on three levels a
  model that is always one level off scores 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

# the ordered rating scales the project knows, lowest first (matched case-insensitively)
ORDERED_SCALES: tuple[tuple[str, ...], ...] = (("Improbable", "Possible", "Probable"),)


@dataclass(frozen=True)
class OrdinalMetrics:
    """Weighted κ (``None`` where undefined: every rating on one level) and the mean absolute level error."""

    n: int
    linear_weighted_kappa: float | None
    quadratic_weighted_kappa: float | None
    mean_absolute_level_error: float

    def as_dict(self) -> dict:
        return asdict(self)


def ordinal_levels(class_names: Sequence[str], order: Sequence[str] | None = None) -> tuple[int, ...] | None:
    """The level of each class (0 = lowest), or ``None`` when the classes have no known order.

    With ``order`` (the user's, lowest first), every class must be in it: the levels are the positions
    there, and a class outside it raises ``ValueError`` naming it. Without, the classes are ordered when,
    compared case-insensitively, they are at least three levels of one of :data:`ORDERED_SCALES` (with two
    classes a weighted κ is the plain κ and the level error the error rate: nothing to add).
    """
    if order is not None:
        position = {name: i for i, name in enumerate(order)}
        unknown = [c for c in class_names if c not in position]
        if unknown:
            raise ValueError(f"class(es) {unknown} are not in the order {list(order)}")
        return tuple(position[c] for c in class_names)
    if len(class_names) < 3:
        return None
    for scale in ORDERED_SCALES:
        position = {name.casefold(): i for i, name in enumerate(scale)}
        folded = [c.casefold() for c in class_names]  # distinct once folded: 'Probable' and 'probable' are one level
        if all(c in position for c in folded) and len(set(folded)) == len(folded):
            return tuple(position[c] for c in folded)
    return None


def ordinal_metrics(true_levels: Sequence[int] | np.ndarray, pred_levels: Sequence[int] | np.ndarray,
                    n_levels: int) -> OrdinalMetrics:
    """Linear and quadratic weighted κ and the mean absolute level error of ``pred_levels`` against
    ``true_levels`` (integers in ``0 … n_levels − 1``; the formulas are in the module's docstring)."""
    from sklearn.metrics import cohen_kappa_score  # here, not at import (see training.evaluation.metrics)

    r, s = np.asarray(true_levels, dtype=np.int64), np.asarray(pred_levels, dtype=np.int64)
    if r.shape != s.shape or r.ndim != 1:
        raise ValueError(f"true and predicted levels must pair up, got shapes {r.shape} and {s.shape}")
    if not len(r):
        raise ValueError("no ratings to compare")
    if min(r.min(), s.min()) < 0 or max(r.max(), s.max()) >= n_levels:
        raise ValueError(f"levels must lie in 0 … {n_levels - 1}")
    labels = list(range(n_levels))

    def kappa(weights: str) -> float | None:
        # Σ w E = 0 when every rating of both sides sits on one level: κ is 0/0 there, not a number
        margins_true, margins_pred = np.bincount(r, minlength=n_levels), np.bincount(s, minlength=n_levels)
        w = np.abs(np.subtract.outer(labels, labels)) ** (1 if weights == "linear" else 2)
        if not np.sum(w * np.outer(margins_true, margins_pred)):
            return None
        value = float(cohen_kappa_score(r, s, labels=labels, weights=weights))
        return value if math.isfinite(value) else None

    return OrdinalMetrics(n=int(len(r)), linear_weighted_kappa=kappa("linear"),
                          quadratic_weighted_kappa=kappa("quadratic"),
                          mean_absolute_level_error=float(np.mean(np.abs(r - s))))
