"""Classification metrics via scikit-learn, always with the majority-class baseline beside them."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from training.evaluation.ordinal import ordinal_levels, ordinal_metrics


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str], *,
                           y_pred: np.ndarray | None = None) -> dict:
    """Accuracy, balanced accuracy, per-class and macro precision/recall/F1, confusion matrix, ROC-AUC.

    ``probs`` is (n, n_classes); the prediction is its arg-max unless ``y_pred`` (e.g. a
    thresholded decision) is given. ROC-AUC is given for two classes (score of class 1) when
    both occur in ``y_true``, else ``None``. When the classes are levels of a known ordered scale
    (Improbable < Possible < Probable: :func:`training.evaluation.ordinal.ordinal_levels`), the ordinal
    metrics stand beside the nominal ones: ``linear_weighted_kappa``, ``quadratic_weighted_kappa`` and
    ``mean_absolute_level_error`` (:func:`training.evaluation.ordinal.ordinal_metrics`).
    """
    from sklearn import metrics as skm  # here, not at import: 0.9 s of every command's start (measured)

    y_true = np.asarray(y_true)
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape != (len(y_true), len(class_names)):
        raise ValueError(f"probs must be (n, {len(class_names)}) for n={len(y_true)}, got {probs.shape}")
    y_pred = probs.argmax(axis=1) if y_pred is None else np.asarray(y_pred)
    labels = list(range(len(class_names)))
    p, r, f, s = skm.precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    result = {
        "n": int(len(y_true)),
        "accuracy": float(skm.accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(_balanced_accuracy(y_true, y_pred, labels)),
        "macro_precision": float(np.mean(p)),
        "macro_recall": float(np.mean(r)),
        "macro_f1": float(np.mean(f)),
        "per_class": {
            name: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, name in enumerate(class_names)
        },
        "confusion_matrix": skm.confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "roc_auc": None,
    }
    if len(class_names) == 2 and len(set(y_true.tolist())) == 2:
        result["roc_auc"] = float(skm.roc_auc_score(y_true, probs[:, 1]))
    levels = ordinal_levels(class_names)
    if levels is not None:
        lv = np.asarray(levels)
        ordinal = ordinal_metrics(lv[y_true], lv[y_pred], int(lv.max()) + 1).as_dict()
        result.update({k: v for k, v in ordinal.items() if k != "n"})
    return result


def _balanced_accuracy(y_true, y_pred, labels) -> float:
    """Mean recall over the classes present in y_true (sklearn's definition, without its warning)."""
    recalls = [np.mean(y_pred[y_true == c] == c) for c in labels if np.any(y_true == c)]
    return float(np.mean(recalls)) if recalls else 0.0


def majority_baseline(y_train: np.ndarray, y_val: np.ndarray, class_names: Sequence[str]) -> dict:
    """The metrics of always answering the training set's most frequent class."""
    majority = int(np.bincount(np.asarray(y_train), minlength=len(class_names)).argmax())
    probs = np.zeros((len(y_val), len(class_names)), np.float32)
    probs[:, majority] = 1.0
    result = classification_metrics(y_val, probs, class_names)
    result["majority_class"] = class_names[majority]
    result["roc_auc"] = 0.5 if result["roc_auc"] is not None else None
    return result


def beats_baseline(result: dict, baseline: dict) -> bool:
    """Better than the majority answer on balanced accuracy and macro-F1 (accuracy alone can flatter)."""
    return (result["balanced_accuracy"] > baseline["balanced_accuracy"]
            and result["macro_f1"] > baseline["macro_f1"])


def stratified_resamples(y_true: np.ndarray, *, key, n_boot: int = 2000) -> np.ndarray:
    """``(n_boot, n)`` indices of stratified bootstrap resamples of the scored photos.

    Each resample draws, for every class ``c`` with ``n_c`` photos, ``n_c`` of that class's photos with
    replacement: every resample holds every class in its observed count, so a per-class statistic (a recall)
    is always defined and balanced accuracy is never scored on part of the classes. ``key`` is a
    ``jax.random`` key; the same key gives the same resamples.
    """
    import jax

    y_true = np.asarray(y_true)
    if len(y_true) == 0:
        raise ValueError("no predictions to bootstrap")
    classes = np.unique(y_true)
    parts = []
    for k, c in zip(jax.random.split(key, len(classes)), classes, strict=True):
        members = np.flatnonzero(y_true == c)
        parts.append(members[np.asarray(jax.random.randint(k, (n_boot, len(members)), 0, len(members)))])
    return np.concatenate(parts, axis=1)


def percentile_interval(scores: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The ``level`` percentile interval of bootstrap ``scores``."""
    alpha = (1 - level) / 2
    return float(np.quantile(scores, alpha)), float(np.quantile(scores, 1 - alpha))


def bootstrap_interval(y_true: np.ndarray, y_pred: np.ndarray, *, key, n_boot: int = 2000,
                       level: float = 0.95) -> tuple[float, float]:
    """Stratified percentile bootstrap interval of balanced accuracy (:func:`stratified_resamples`).

    Balanced accuracy is ``(1/C) Σ_c recall_c``; each resample keeps class ``c``'s count, so
    ``recall_c = (1/n_c) Σ_{i ∈ c} [ŷ_i = y_i]`` over its resampled photos. A constant predictor's interval
    is exactly its point, ``1/C``, and a perfect one's is ``[1, 1]``.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    idx = stratified_resamples(y_true, key=key, n_boot=n_boot)
    yt, correct = y_true[idx], (y_pred == y_true)[idx]
    recalls = [((yt == c) & correct).sum(axis=1) / (yt == c).sum(axis=1) for c in np.unique(y_true)]
    return percentile_interval(np.mean(np.stack(recalls), axis=0), level)
