"""Agreement between the model and professional raters: Cohen's kappa, quadratic-weighted kappa, confusion tables."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import cohen_kappa_score, confusion_matrix

ORDER = ("Improbable", "Possible", "Probable")  # likelihood of failure, lowest first


def agreement(a: Sequence[str], b: Sequence[str], order: Sequence[str] = ORDER) -> dict:
    """Cohen's κ, quadratic-weighted κ (for the ordered classes) and the a-vs-b confusion table.

    Labels outside ``order`` raise ``ValueError`` naming them.
    """
    if len(a) != len(b):
        raise ValueError(f"{len(a)} vs {len(b)} ratings: they must pair up")
    if not len(a):
        raise ValueError("no paired ratings to compare")
    unknown = sorted((set(a) | set(b)) - set(order))
    if unknown:
        raise ValueError(f"unknown label(s) {unknown}; expected {list(order)}")
    labels = list(order)
    return {
        "n": len(a),
        "agreement": float(np.mean(np.asarray(a) == np.asarray(b))),
        "cohen_kappa": float(cohen_kappa_score(a, b, labels=labels)),
        "quadratic_weighted_kappa": float(cohen_kappa_score(a, b, labels=labels, weights="quadratic")),
        "labels": labels,
        "confusion": confusion_matrix(a, b, labels=labels).tolist(),
    }
