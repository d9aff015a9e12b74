"""The operating point: a threshold chosen for a target recall on training data, and the decision it makes."""

from __future__ import annotations

import numpy as np


def recall_threshold(probs: np.ndarray, y: np.ndarray, cls: int, target: float) -> float:
    """The largest threshold t on P(cls) with recall(cls) ≥ ``target`` on (probs, y): predict cls when p ≥ t."""
    if not 0 < target <= 1:
        raise ValueError(f"target recall must be in (0, 1], got {target}")
    scores = np.sort(probs[y == cls, cls])[::-1]
    if len(scores) == 0:
        raise ValueError("no example of the target-recall class in the selection data")
    need = int(np.ceil(target * len(scores)))
    return float(scores[need - 1])


def decide(probs: np.ndarray, operating_point: dict | None, shift=None) -> np.ndarray:
    """Predicted class per row: arg-max, or the operating point's class when its probability ≥ threshold
    (otherwise the arg-max of the other classes).

    ``shift`` (K,): a calibration's shift (``training.evaluation.calibration``): the arg-max is then that of
    ``log p_k − shift_k``. The shift moves probabilities toward the class frequencies of the data they were
    calibrated on; the decision leaves it out, so that Platt scaling, say, of a head trained with balanced class
    weights keeps that head's decisions (``q_1 = σ(A s + B)`` is decided by ``s > 0``, as before calibration)
    while its probabilities become frequencies."""
    probs = np.asarray(probs)
    scores = probs if shift is None else np.log(np.maximum(probs.astype(np.float64), 1e-30)) - np.asarray(shift)
    pred = scores.argmax(axis=1)
    if not operating_point:
        return pred
    c, t = operating_point["class_index"], operating_point["threshold"]
    others = np.array(scores, np.float64)
    others[:, c] = -np.inf
    return np.where(probs[:, c] >= t, c, others.argmax(axis=1))


def operating_point(target_recall: tuple[str, float] | None, class_names: list[str], probs: np.ndarray,
                    y: np.ndarray) -> dict | None:
    """The threshold meeting ``target_recall`` = (class, recall) on selection data (never the scored fold)."""
    if target_recall is None:
        return None
    name, target = target_recall
    if name not in class_names:
        raise ValueError(f"--target-recall names class {name!r}, which is not one of {class_names}")
    c = class_names.index(name)
    return {"class": name, "class_index": c, "target_recall": target,
            "threshold": recall_threshold(probs, y, c, target)}
