"""Agreement between the model and professional raters: Cohen's κ, the ordinal metrics (linear- and
quadratic-weighted κ, mean absolute level error: :mod:`training.evaluation.ordinal`), confusion tables."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np
from sklearn.metrics import cohen_kappa_score, confusion_matrix

from training.evaluation.ordinal import ordinal_metrics

ORDER = ("Improbable", "Possible", "Probable")  # likelihood of failure, lowest first


def _finite_or_none(metric, *args, **kwargs) -> float | None:
    """``metric(*args, **kwargs)`` as a float, or None where it is undefined (κ is 0/0 when both sides use one
    label: scikit-learn warns and returns NaN)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = float(metric(*args, **kwargs))
    return value if math.isfinite(value) else None


def agreement(a: Sequence[str], b: Sequence[str], order: Sequence[str] = ORDER) -> dict:
    """Cohen's κ, the ordinal metrics of the ordered classes (linear- and quadratic-weighted κ, mean absolute
    level error, with ``order``'s positions as the levels) and the a-vs-b confusion table.

    Labels outside ``order`` raise ``ValueError`` naming them.
    """
    if len(set(order)) != len(order):  # a level named twice took the later position: every level error was wrong
        twice = next(x for i, x in enumerate(order) if x in order[:i])
        raise ValueError(f"the order {list(order)[:10]} names {twice[:80]!r} twice: give each label once")
    if len(a) != len(b):
        raise ValueError(f"{len(a)} vs {len(b)} ratings: they must pair up")
    if not len(a):
        raise ValueError("no paired ratings to compare")
    unknown = sorted((set(a) | set(b)) - set(order))
    if unknown:
        raise ValueError(f"unknown label(s) {[u[:80] for u in unknown[:5]]}" + (f" and {len(unknown) - 5} more"
                         if len(unknown) > 5 else "") + f"; expected {list(order)}")
    labels = list(order)
    level = {name: i for i, name in enumerate(labels)}
    ordinal = ordinal_metrics([level[x] for x in a], [level[x] for x in b], len(labels))
    return {
        "n": len(a),
        "agreement": float(np.mean(np.asarray(a) == np.asarray(b))),
        "cohen_kappa": _finite_or_none(cohen_kappa_score, a, b, labels=labels),
        "linear_weighted_kappa": ordinal.linear_weighted_kappa,
        "quadratic_weighted_kappa": ordinal.quadratic_weighted_kappa,
        "mean_absolute_level_error": ordinal.mean_absolute_level_error,
        "labels": labels,
        "confusion": confusion_matrix(a, b, labels=labels).tolist(),
    }


def match_paths(rated: Sequence[str], predicted: Sequence[str], ratings_file: str | Path, *,
                strict: bool = True) -> list[str | None]:
    """For each rated path, the one predicted path it names.

    Paths are compared as relative POSIX paths, component by component: a rating ``siteA/IMG_1.jpg``
    (or just ``IMG_1.jpg`` when the name is unique) matches the prediction whose path ends with
    those components. A rating that matches two predictions is an error naming both; one that
    matches none is an error counting and naming them (``strict``), or is matched to ``None``.
    """
    def parts(path: str) -> tuple[str, ...]:
        return tuple(part for part in PurePosixPath(path.replace("\\", "/")).parts if part not in (".", "/"))

    # A trie of the predicted paths' components, last first: node ids in a dict keyed by (parent, component),
    # so memory grows with the number of components (never with its square, as indexing every suffix as a
    # tuple did: one 128 KiB path of 'a/a/…' cost 17 GB), and each rated path costs its own length.
    # first[n] (and second[n]): the first two predicted paths ending with node n's suffix; whole[n]: those equal to it.
    child: dict[tuple[int, str], int] = {}
    first: list[str] = [""]
    second: dict[int, str] = {}
    whole: dict[int, list[str]] = {}
    for p in predicted:
        node = 0
        for part in reversed(parts(p)):
            nxt = child.get((node, part))
            if nxt is None:
                nxt = child[(node, part)] = len(first)
                first.append(p)
            elif nxt not in second:
                second[nxt] = p
            node = nxt
        if node and len(whole.setdefault(node, [])) < 2:
            whole[node].append(p)
    matched, missing = [], []
    for r in rated:
        q, node, hits = parts(r), 0, []
        longest: list[str] = []  # the longest predicted path that the rated one ends with (e.g. an absolute one)
        for depth, part in enumerate(reversed(q), 1):
            node = child.get((node, part), -1)
            if node < 0:
                break
            if depth == len(q):
                hits = [first[node], *([second[node]] if node in second else [])]
            elif node in whole:
                longest = whole[node]
        hits = hits or longest
        if len(hits) > 1:
            raise ValueError(f"{ratings_file}: {r[:200]!r} matches more than one prediction ({hits[0][:200]!r} and "
                             f"{hits[1][:200]!r}): give its path relative to the folder given to predict")
        if not hits:
            missing.append(r)
        matched.append(hits[0] if hits else None)
    if missing and strict:
        raise ValueError(f"{len(missing)} rated photo(s) in {ratings_file} have no prediction, e.g. "
                         f"{[m[:200] for m in missing[:3]]}")
    return matched
