"""Classification metrics via scikit-learn, always with the majority-class baseline beside them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from training.evaluation.ordinal import ordinal_levels, ordinal_metrics


@dataclass(frozen=True)
class ClassMetrics:
    """One class's precision, recall and F1 (its one-vs-rest scores) and its support (its count in ``y_true``)."""

    precision: float
    recall: float
    f1: float
    support: int

    def as_json(self) -> dict:
        return {"precision": self.precision, "recall": self.recall, "f1": self.f1, "support": self.support}


@dataclass(frozen=True)
class Metrics:
    """The metrics of one set of decisions (:func:`classification_metrics`), with what later stages add.

    ``per_class`` maps each class name, in the model's order, to its :class:`ClassMetrics`;
    ``confusion_matrix[i][j]`` counts the photos of class ``i`` decided ``j``. ``roc_auc`` is ``None`` unless
    there are two classes and both occur. ``ordered``: the classes are levels of a known ordered scale, and the
    three ordinal fields stand beside the nominal ones (each may still be ``None``: κ is undefined when every
    rating sits on one level). ``majority_class``: set on the majority baseline (:func:`majority_baseline`);
    ``operating_point``: the thresholded rule with its recall and precision on these photos
    (``training.loop.scoring.score``); ``calibration``/``uncalibrated``/``risk_coverage``: the calibration
    measures of the scored fold (``training.runs.report.calibration_report``, via :meth:`with_report`).
    :meth:`as_json` is the record written to ``summary.json`` and the checkpoints' meta.
    """

    n: int
    accuracy: float
    balanced_accuracy: float
    macro_precision: float
    macro_recall: float
    macro_f1: float
    per_class: dict[str, ClassMetrics]
    confusion_matrix: list[list[int]]
    roc_auc: float | None
    ordered: bool = False
    linear_weighted_kappa: float | None = None
    quadratic_weighted_kappa: float | None = None
    mean_absolute_level_error: float | None = None
    majority_class: str | None = None
    operating_point: dict | None = None
    calibration: dict | None = None
    uncalibrated: dict | None = None
    risk_coverage: list[dict] | None = None

    def with_report(self, report: dict) -> Metrics:
        """These metrics with a calibration report's ``calibration``, ``uncalibrated`` and ``risk_coverage``."""
        return replace(self, calibration=report.get("calibration"), uncalibrated=report.get("uncalibrated"),
                       risk_coverage=report.get("risk_coverage"))

    def as_json(self) -> dict:
        """The JSON record: the nominal metrics, then (ordered classes) the ordinal ones, then what is set of
        ``majority_class``, ``operating_point``, ``calibration``, ``uncalibrated`` and ``risk_coverage``."""
        out = {"n": self.n, "accuracy": self.accuracy, "balanced_accuracy": self.balanced_accuracy,
               "macro_precision": self.macro_precision, "macro_recall": self.macro_recall,
               "macro_f1": self.macro_f1, "per_class": {name: c.as_json() for name, c in self.per_class.items()},
               "confusion_matrix": [list(row) for row in self.confusion_matrix], "roc_auc": self.roc_auc}
        if self.ordered:
            out.update(linear_weighted_kappa=self.linear_weighted_kappa,
                       quadratic_weighted_kappa=self.quadratic_weighted_kappa,
                       mean_absolute_level_error=self.mean_absolute_level_error)
        for name in ("majority_class", "operating_point", "calibration", "uncalibrated", "risk_coverage"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out


def classification_metrics(y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str], *,
                           y_pred: np.ndarray | None = None) -> Metrics:
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
    roc_auc = (float(skm.roc_auc_score(y_true, probs[:, 1]))
               if len(class_names) == 2 and len(set(y_true.tolist())) == 2 else None)
    ordinal = {}
    levels = ordinal_levels(class_names)
    if levels is not None:
        lv = np.asarray(levels)
        o = ordinal_metrics(lv[y_true], lv[y_pred], int(lv.max()) + 1)
        ordinal = {"ordered": True, "linear_weighted_kappa": o.linear_weighted_kappa,
                   "quadratic_weighted_kappa": o.quadratic_weighted_kappa,
                   "mean_absolute_level_error": o.mean_absolute_level_error}
    return Metrics(
        n=int(len(y_true)),
        accuracy=float(skm.accuracy_score(y_true, y_pred)),
        balanced_accuracy=float(_balanced_accuracy(y_true, y_pred, labels)),
        macro_precision=float(np.mean(p)),
        macro_recall=float(np.mean(r)),
        macro_f1=float(np.mean(f)),
        per_class={name: ClassMetrics(precision=float(p[i]), recall=float(r[i]), f1=float(f[i]), support=int(s[i]))
                   for i, name in enumerate(class_names)},
        confusion_matrix=skm.confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        roc_auc=roc_auc, **ordinal)


def _balanced_accuracy(y_true, y_pred, labels) -> float:
    """Mean recall over the classes present in y_true (sklearn's definition, without its warning)."""
    recalls = [np.mean(y_pred[y_true == c] == c) for c in labels if np.any(y_true == c)]
    return float(np.mean(recalls)) if recalls else 0.0


def majority_baseline(y_train: np.ndarray, y_val: np.ndarray, class_names: Sequence[str]) -> Metrics:
    """The metrics of always answering the training set's most frequent class (its ROC-AUC: 0.5, where defined)."""
    majority = int(np.bincount(np.asarray(y_train), minlength=len(class_names)).argmax())
    probs = np.zeros((len(y_val), len(class_names)), np.float32)
    probs[:, majority] = 1.0
    result = classification_metrics(y_val, probs, class_names)
    return replace(result, majority_class=class_names[majority],
                   roc_auc=0.5 if result.roc_auc is not None else None)


def beats_baseline(result: Metrics, baseline: Metrics) -> bool:
    """Better than the majority answer on balanced accuracy and macro-F1 (accuracy alone can flatter)."""
    return beats_majority(result.balanced_accuracy, result.macro_f1, baseline.balanced_accuracy, baseline.macro_f1)


def beats_majority(balanced_accuracy: float, macro_f1: float, baseline_balanced_accuracy: float,
                   baseline_macro_f1: float) -> bool:
    """:func:`beats_baseline` on the four figures (e.g. means over folds)."""
    return balanced_accuracy > baseline_balanced_accuracy and macro_f1 > baseline_macro_f1


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
