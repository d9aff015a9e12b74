"""What every fold of a run shares, whatever trains it: the outer splits, the choices made on inner predictions of
the training part (calibration, referral threshold), and the scoring of the outer fold (once)."""

from __future__ import annotations

import dataclasses

import numpy as np

from training.data.dataset import Dataset
from training.data.labels import stratified_folds, stratified_split
from training.evaluation.calibration import apply as calibrate
from training.evaluation.calibration import (
    calibration_metrics,
    choose_calibration,
    choose_referral,
)
from training.evaluation.decision import decide
from training.evaluation.metrics import Metrics, classification_metrics
from training.loop.config import TrainConfig


def splits_for(data: Dataset, config: TrainConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """K stratified folds, or one stratified train/validation split, on unique images."""
    if config.folds > 1:
        return stratified_folds(data.y, config.folds, seed=config.seed, class_names=data.class_names)
    return [stratified_split(data.y, val_fraction=config.val_fraction, seed=config.seed,
                             class_names=data.class_names)]


def calibrate_on_inner(config: TrainConfig, probs: np.ndarray, y: np.ndarray) -> tuple[dict | None, np.ndarray]:
    """``(calibration record, calibrated probs)``: ``config.calibration`` fitted on inner predictions ``probs``
    of the training part and their labels ``y`` (never the scored fold). ``None`` with ``"none"``."""
    if config.calibration == "none":
        return None, probs
    choice = choose_calibration(config.calibration, probs, y, seed=config.seed + 2)
    record = {**choice.calibration.to_json(), "requested": config.calibration, "fitted_on": int(len(y)),
              "inner": calibration_metrics(calibrate(choice.calibration, probs), y)}
    if choice.cv_log_loss:
        record["cv_log_loss"] = choice.cv_log_loss
        record["cv_folds"] = choice.folds
    return record, calibrate(choice.calibration, probs)


def calibration_of(record: dict | None):
    """The :class:`~training.evaluation.calibration.Calibration` of a fold's calibration record (None: none)."""
    from training.evaluation.calibration import check_saved_calibration

    return None if record is None else check_saved_calibration(record, len(record["scale"]))


def referral_on_inner(config: TrainConfig, probs: np.ndarray, y: np.ndarray, op: dict | None,
                      shift=None) -> dict | None:
    """The referral threshold (``config.refer_accuracy`` or ``refer_coverage``) on calibrated inner ``probs``."""
    if config.refer_accuracy is None and config.refer_coverage is None:
        return None
    kind = {"balanced_accuracy": config.refer_accuracy} if config.refer_accuracy is not None \
        else {"coverage": config.refer_coverage}
    return choose_referral(probs, y, y_pred=decide(probs, op, shift), shift=shift, **kind).to_json()


def score(y: np.ndarray, probs: np.ndarray, y_train: np.ndarray, class_names: list[str], op: dict | None,
          shift=None) -> Metrics:
    """Metrics of the decisions (arg-max, or the operating point's rule; ``shift``: the calibration's, left out)
    on the scored fold."""
    metrics = classification_metrics(y, probs, class_names, y_pred=decide(probs, op, shift))
    if op is None:
        return metrics
    m = metrics.per_class[op["class"]]
    return dataclasses.replace(metrics, operating_point={**op, "recall": m.recall, "precision": m.precision})


def shift_of(calibration: dict | None):
    """The calibration's shift, which decisions leave out (:func:`~training.evaluation.decision.decide`)."""
    return None if not calibration else calibration["shift"]
