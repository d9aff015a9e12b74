"""Agreement between the model and professional raters: Cohen's κ, the ordinal metrics (linear- and
quadratic-weighted κ, mean absolute level error: :mod:`training.evaluation.ordinal`), confusion tables."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.metrics import cohen_kappa_score, confusion_matrix

from training.evaluation.ordinal import ordinal_metrics

ORDER = ("Improbable", "Possible", "Probable")  # likelihood of failure, lowest first


def agreement(a: Sequence[str], b: Sequence[str], order: Sequence[str] = ORDER) -> dict:
    """Cohen's κ, the ordinal metrics of the ordered classes (linear- and quadratic-weighted κ, mean absolute
    level error, with ``order``'s positions as the levels) and the a-vs-b confusion table.

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
    level = {name: i for i, name in enumerate(labels)}
    ordinal = ordinal_metrics([level[x] for x in a], [level[x] for x in b], len(labels))
    return {
        "n": len(a),
        "agreement": float(np.mean(np.asarray(a) == np.asarray(b))),
        "cohen_kappa": float(cohen_kappa_score(a, b, labels=labels)),
        "linear_weighted_kappa": ordinal.linear_weighted_kappa,
        "quadratic_weighted_kappa": ordinal.quadratic_weighted_kappa,
        "mean_absolute_level_error": ordinal.mean_absolute_level_error,
        "labels": labels,
        "confusion": confusion_matrix(a, b, labels=labels).tolist(),
    }
