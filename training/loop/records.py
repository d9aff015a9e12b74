"""The typed records a run's stages pass on: built by the fold loop (:mod:`training.runs.folds`) and the transfer
strategy (:mod:`training.transfer.strategy`), read by :mod:`training.runs.report` and :mod:`training.runs.results`
(which is why they stand in a module of their own, below both: the fold loop writes the report, so the report may
not import the fold loop)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from training.evaluation.metrics import Metrics


class FoldResult(NamedTuple):
    """One outer fold, scored once.

    ``kind`` is ``"epochs"`` (a network trained by epochs: ``history`` has one row per epoch) or
    ``"head"`` (a softmax head on frozen features: ``history`` samples the inner-CV loss curves,
    ``curves`` holds them whole, one row per λ)."""

    kind: str
    history: list[dict]
    metrics: Metrics  # on the scored fold (with its calibration measures once the report is written)
    baseline: Metrics  # the majority predictor on the scored fold
    best_epoch: int  # the epoch (or the head's step count) that was chosen
    val_probs: np.ndarray  # the scored fold's probabilities, rows in ``outer_index`` order
    normalization: dict | None
    operating_point: dict | None
    selection: str  # how the model was chosen, in words
    curves: np.ndarray | None = None
    outer_index: np.ndarray | None = None  # the scored rows of the data set
    seconds: float = 0.0
    verdict: str = ""
    calibration: dict | None = None  # the fitted calibration (val_probs are calibrated by it) and how it was chosen
    referral: dict | None = None  # the confidence threshold below which photos are referred, chosen on inner data
    raw_probs: np.ndarray | None = None  # the scored fold's probabilities before calibration
