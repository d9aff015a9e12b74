"""The lab's results table, honestly: configurations, and one row from the folds of one run.

Configurations (``CONFIGS``):
- ``lab-2020``: the Dec 2020 deck — grayscale, no augmentation, Model 1, Adam 1e-3, 4 epochs,
  batch 32, one seeded stratified 80:20 split.
- ``improved``: stratified 5-fold cross-validation, augmentation, balanced class weights,
  inputs standardized by the training fold's statistics, Adam 1e-4 with cosine decay, up to
  30 epochs with early stopping on validation macro-F1 (patience 6); RGB with ``rgb=True``.

Prec. and Recall are those of the positive class (the first, at-risk class of the grouping:
Probable, Probable+Possible, …); the table names it. For the three ordered levels (``Pr_Po_Im``) the
quadratic-weighted κ and the mean absolute level error stand beside them (training.evaluation.ordinal);
other rows show "–" there."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from training.evaluation.metrics import beats_majority
from training.loop.config import TrainConfig, get_config
from training.loop.presets import presets
from training.loop.registry import Strategy, strategy

if TYPE_CHECKING:
    from training.loop.records import FoldResult

CONFIGS = presets("table")  # defined in training.loop.presets: the training presets with their folds


def config_for(name: str, image_size: int, *, rgb: bool = False, seed: int = 0, **overrides) -> TrainConfig:
    """The named configuration at ``image_size`` (``rgb`` applies to ``improved`` only; ``pretrained`` always
    runs at its backbone's native size, in colour)."""
    if name not in CONFIGS:
        raise ValueError(f"unknown configuration {name!r}; expected one of {sorted(CONFIGS)}")
    settings = dict(CONFIGS[name], image_size=image_size, seed=seed)
    if name == "improved":
        settings["rgb"] = rgb
    if name == "pretrained":
        from models.registry import model_kind

        settings["image_size"] = model_kind(overrides.get("model", settings["model"])).native_size
    settings.update(overrides)
    return get_config("lab-2020", **settings)


def _mean_std(values):
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values))


def fmt(mean, std, folds: int) -> str:
    if mean is None:
        return "–"
    return f"{100 * mean:.1f}" if folds == 1 else f"{100 * mean:.1f} ± {100 * std:.1f}"


def fmt_plain(mean, std, folds: int) -> str:
    """As :func:`fmt`, for a figure that is not a percentage (a κ, a level error)."""
    if mean is None:
        return "–"
    return f"{mean:.2f}" if folds == 1 else f"{mean:.2f} ± {std:.2f}"


COLUMNS = ("classes", "size", "config", "positive class", "Prec.", "Recall", "Acc.", "Bal. acc.", "Bal. acc. 95% CI",
           "Macro-F1", "ROC-AUC", "calibration", "ECE [95% CI] (bins)", "Brier [95% CI]", "log-loss [95% CI]",
           "Majority acc.", "Majority bal. acc.", "Majority macro-F1", "beats majority?", "folds", "train s",
           "n images")  # the results table's columns (experiments.results_table)

# (attribute, the label of its column and JSON field), in the order a row's JSON holds them
_FIELDS = (("key", "_key"), ("model", "model"), ("classes", "classes"), ("size", "size"), ("config", "config"),
           ("n_images", "n images"), ("positive_class", "positive class"), ("folds", "folds"),
           ("precision", "Prec."), ("recall", "Recall"), ("accuracy", "Acc."), ("balanced_accuracy", "Bal. acc."),
           ("macro_f1", "Macro-F1"), ("roc_auc", "ROC-AUC"), ("majority_accuracy", "Majority acc."),
           ("majority_balanced_accuracy", "Majority bal. acc."), ("majority_macro_f1", "Majority macro-F1"),
           ("quadratic_kappa", "Quadratic κ"), ("level_error", "Level error"), ("beats_majority", "beats majority?"),
           ("train_seconds", "train s"), ("balanced_accuracy_ci95", "Bal. acc. 95% CI"),
           ("calibration", "calibration"), ("ece", "ECE [95% CI] (bins)"), ("brier", "Brier [95% CI]"),
           ("log_loss", "log-loss [95% CI]"), ("settings", "settings"))
_INTEGERS = ("size", "n_images", "folds")


@dataclass(frozen=True)
class ResultRow:
    """One row of a results table: what was run (``key``: the row's name in the grid; the ``model``, ``classes``,
    image ``size``, ``config`` and ``n_images`` it ran on), each metric's mean (± std over ``folds``) as the table
    shows it with the majority baseline's beside it and the verdict ``beats_majority`` ("yes", "NO", or "not run:
    why"), the training seconds, and (the grid's) the pooled balanced accuracy's bootstrap interval, the
    calibration cells and the settings used. A field that does not apply is None and left out of the row's
    JSON (``rows/KEY.json``, read back by :func:`read_result_row`) and blank in the table."""

    key: str | None = None
    model: str | None = None
    classes: str | None = None
    size: int | None = None
    config: str | None = None
    n_images: int | None = None
    positive_class: str | None = None
    folds: int | None = None
    precision: str | None = None
    recall: str | None = None
    accuracy: str | None = None
    balanced_accuracy: str | None = None
    macro_f1: str | None = None
    roc_auc: str | None = None
    majority_accuracy: str | None = None
    majority_balanced_accuracy: str | None = None
    majority_macro_f1: str | None = None
    quadratic_kappa: str | None = None
    level_error: str | None = None
    beats_majority: str | None = None
    train_seconds: float | None = None
    balanced_accuracy_ci95: str | None = None
    calibration: str | None = None
    ece: str | None = None
    brier: str | None = None
    log_loss: str | None = None
    settings: dict | None = None

    def as_json(self) -> dict:
        """The row as ``rows/KEY.json`` holds it: column label → value, the fields that apply, in table order."""
        return {label: getattr(self, name) for name, label in _FIELDS if getattr(self, name) is not None}

    def cells(self, columns: Sequence[str] = COLUMNS) -> dict:
        """The table's cells in ``columns``' order (blank where a field does not apply)."""
        row = self.as_json()
        return {c: row.get(c, "") for c in columns}

    @classmethod
    def from_json(cls, row: dict) -> ResultRow:
        """The row of :meth:`as_json` (fields of other labels are left out); the values are not checked here
        (:func:`read_result_row` checks a file's)."""
        return cls(**{name: row[label] for name, label in _FIELDS if label in row})


def table_row(results: list[FoldResult], class_names: list[str], *, positive: int = 0) -> tuple[ResultRow, list]:
    """``(row, confusion)``: the mean (± std over folds) of each metric, the majority baseline beside it and a
    verdict, and the confusion matrix summed over the folds."""
    name = class_names[positive]
    folds = len(results)
    m = {
        "precision": [r.metrics.per_class[name].precision for r in results],
        "recall": [r.metrics.per_class[name].recall for r in results],
        "accuracy": [r.metrics.accuracy for r in results],
        "balanced_accuracy": [r.metrics.balanced_accuracy for r in results],
        "macro_f1": [r.metrics.macro_f1 for r in results],
        "roc_auc": [r.metrics.roc_auc for r in results],
        "quadratic_weighted_kappa": [r.metrics.quadratic_weighted_kappa for r in results],
        "mean_absolute_level_error": [r.metrics.mean_absolute_level_error for r in results],
        "baseline_accuracy": [r.baseline.accuracy for r in results],
        "baseline_balanced_accuracy": [r.baseline.balanced_accuracy for r in results],
        "baseline_macro_f1": [r.baseline.macro_f1 for r in results],
    }
    stats = {k: _mean_std(v) for k, v in m.items()}
    beats = beats_majority(stats["balanced_accuracy"][0], stats["macro_f1"][0],
                           stats["baseline_balanced_accuracy"][0], stats["baseline_macro_f1"][0])
    row = ResultRow(
        positive_class=name, folds=folds,
        **{k: fmt(*stats[k], folds) for k in ("precision", "recall", "accuracy", "balanced_accuracy", "macro_f1",
                                               "roc_auc")},
        majority_accuracy=fmt(*stats["baseline_accuracy"], folds),
        majority_balanced_accuracy=fmt(*stats["baseline_balanced_accuracy"], folds),
        majority_macro_f1=fmt(*stats["baseline_macro_f1"], folds),
        quadratic_kappa=fmt_plain(*stats["quadratic_weighted_kappa"], folds),
        level_error=fmt_plain(*stats["mean_absolute_level_error"], folds),
        beats_majority="yes" if beats else "NO", train_seconds=round(sum(r.seconds for r in results), 1))
    return row, np.sum([r.metrics.confusion_matrix for r in results], axis=0).tolist()


def describe(config: TrainConfig) -> dict:
    """The settings a run actually uses, as a reader of its report needs them: fine-tuning's own only when it
    fine-tunes; for a frozen backbone's head (``finetune head``), which trains by Adam steps chosen by inner CV
    (λ from ``head_l2_grid``, at most ``head_steps``), not by epochs, none of the epoch-based settings."""
    head = strategy(config) is Strategy.HEAD
    tuning = ("top_blocks", "warmup_epochs", "weight_decay", "head_init", "block_lr_decay", "top_views") \
        if config.pretrained and not head else ()
    if head:
        tuning = ("head_steps", "head_l2_grid", "inner_folds", *(("head_views",) if config.head_views else ()))
    unused = ("epochs", "lr_schedule", "patience", "augment", "standardize", "selection", "refit") if head else ()
    if not config.pretrained:  # a network trained from scratch: nothing to fine-tune, no mirror-image average
        unused = ("finetune", "tta_flip")
    return {k: v for k, v in config.to_json().items()
            if k in ("model", "finetune", "image_size", "rgb", "augment", "class_weights", "standardize",
                     "learning_rate", "lr_schedule", "epochs", "patience", "folds", "selection", "tta_flip",
                     "target_recall", "grad", "calibration", "refer_coverage", "refer_accuracy", *tuning,
                     *(("refit",) if config.refit else ()))
            and k not in unused}


def read_result_row(path: str | Path, key: str) -> ResultRow:
    """A row of the results table written by an earlier run of ``experiments.results_table`` (``rows/KEY.json``),
    read back to skip its work: a JSON object of at most 100 fields whose ``_key`` is ``key`` and whose values are
    numbers, strings (at most 10,000 characters), booleans, null, or (``settings``) an object of those, lists of
    them and objects of them (``augment``); the fields of a :class:`ResultRow` hold its types (``size``, ``folds``
    and ``n images`` whole numbers, ``train s`` a number, the rest strings); other fields are left out. Anything
    else is one :class:`~common.files.FileFormatError` naming the file and field."""
    from common.files import FileFormatError, parse_document
    from training.loop.config import is_real

    row = parse_document(path, "a row of the results table (delete it to compute the row again)", fmt="json",
                         max_bytes=1 << 20, max_depth=4)
    if not isinstance(row, dict) or len(row) > 100:
        raise FileFormatError(path, "", "expected an object of at most 100 fields (delete the file to compute the "
                                        "row again)")

    def plain(v) -> bool:
        return v is None or isinstance(v, bool) or is_real(v) or isinstance(v, str) and len(v) <= 10_000

    def setting(v) -> bool:
        return plain(v) or isinstance(v, list) and all(map(plain, v)) or isinstance(v, dict) and all(
            plain(x) or isinstance(x, list) and all(map(plain, x)) for x in v.values())

    for field, value in row.items():
        ok = plain(value) or field == "settings" and isinstance(value, dict) and all(map(setting, value.values()))
        if not ok or len(field) > 100:
            raise FileFormatError(path, field[:40], "not a value of a results-table row (delete the file to "
                                                    "compute the row again)")
    if row.get("_key") != key:
        raise FileFormatError(path, "_key", f"expected {key!r}: the row of another configuration")
    for name, label in _FIELDS:
        value = row.get(label)
        if value is None:
            continue
        if name in _INTEGERS:
            ok, expected = isinstance(value, int) and not isinstance(value, bool), "a whole number"
        elif name == "train_seconds":
            ok, expected = is_real(value), "a number"
        elif name == "settings":
            ok, expected = isinstance(value, dict), "an object"
        else:
            ok, expected = isinstance(value, str), "a string"
        if not ok:
            raise FileFormatError(path, label, f"expected {expected} (delete the file to compute the row again)")
    return ResultRow.from_json(row)
