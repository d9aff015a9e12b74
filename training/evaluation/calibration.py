"""Calibration of class probabilities, fitted on data that is not scored, and the measures of it.

A calibration maps a classifier's probabilities ``p`` (n, K) to calibrated ones ``q``::

    z = log(max(p, ε))                    (ε = 1e-12: the "logits" of the probabilities)
    q = softmax(a ⊙ z + b)                (a, b ∈ R^K)

Every method is this map with its own parameters, fitted by minimising the mean negative
log-likelihood ``−(1/n) Σ_i log q_{i, y_i}`` (convex in (a, b), since the logits are linear in them):

- ``temperature``: ``a = (1/T, …, 1/T)``, ``b = 0``; one number, and the arg-max never changes
  (Guo et al. 2017);
- ``platt`` (two classes): ``q_1 = σ(A·(z_1 − z_0) + B)``, i.e. ``a = (A, A)``, ``b = (0, B)``
  (Platt 1999 on the log-odds);
- ``vector``: ``a`` and ``b`` free (K + K numbers);
- ``none``: ``a = 1``, ``b = 0``, so ``q = p`` (up to ε).

The fit is Newton's method in float64 with a backtracking line search on the exact Hessian, from
``a = 1, b = 0``: deterministic, no randomness, no dependency beyond NumPy. ``auto`` chooses among the
methods by cross-validated log-loss on the same (unscored) predictions (:func:`choose_calibration`).

The measures (:func:`calibration_metrics`) are of the decision ``ŷ_i`` (the arg-max, or the run's rule:
``training.evaluation.decision.decide``): confidence ``c_i = q_{i, ŷ_i}``, the probability that the decision is
right, and correct ``[ŷ_i = y_i]``; with the arg-max this is the usual top-label calibration. Expected
calibration error over B equal-mass bins of photos sorted by confidence ``ECE = Σ_b (n_b/n) |acc_b − conf_b|``;
Brier score ``(1/n) Σ_i ½ Σ_k (q_ik − [y_i = k])²`` (for two classes the usual ``(q_i1 − y_i)²``);
log-loss ``−(1/n) Σ_i log q_{i, y_i}``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

EPS = 1e-12  # probabilities below are read as EPS before the log (also in the ONNX graph)
METHODS = ("none", "temperature", "platt", "vector")
CHOICES = (*METHODS, "auto")
MIN_PER_BIN = 40  # equal-mass ECE bins hold at least this many photos (fewer: binning noise alone exceeds 0.04)
MAX_BINS = 10


class Calibration(NamedTuple):
    """``q = softmax(scale ⊙ log(max(p, EPS)) + shift)``; ``method`` names how it was fitted."""

    method: str
    scale: tuple[float, ...]
    shift: tuple[float, ...]

    def to_json(self) -> dict:
        return {"method": self.method, "scale": list(self.scale), "shift": list(self.shift)}

    as_json = to_json

    @classmethod
    def parse(cls, value, class_names) -> Calibration:
        """A run's saved ``calibration`` (:func:`check_saved_calibration`); ``ValueError`` says what is wrong."""
        try:
            cal = check_saved_calibration(value, len(class_names))
        except ValueError as exc:  # the reader names the key itself
            raise ValueError(str(exc).removeprefix("calibration: ")) from None
        if cal is None:
            raise ValueError("expected an object")
        return cal


def identity(n_classes: int) -> Calibration:
    """The calibration that changes nothing (``--calibration none``)."""
    return Calibration("none", (1.0,) * n_classes, (0.0,) * n_classes)


def apply(cal: Calibration | None, probs: np.ndarray) -> np.ndarray:
    """Calibrated probabilities (n, K) of ``probs`` (n, K); ``None`` or ``none`` returns ``probs`` unchanged."""
    probs = np.asarray(probs)
    if cal is None or cal.method == "none":
        return probs
    logits = np.asarray(cal.scale, np.float64) * np.log(np.maximum(probs.astype(np.float64), EPS)) \
        + np.asarray(cal.shift, np.float64)
    return _softmax(logits).astype(probs.dtype)


def apply_jax(cal: Calibration | None, probs):
    """:func:`apply` in ``jax.numpy`` (inside a jitted prediction); the same arithmetic in float32."""
    import jax
    import jax.numpy as jnp

    if cal is None or cal.method == "none":
        return probs
    scale, shift = (jnp.asarray(v, probs.dtype)[None, :] for v in (cal.scale, cal.shift))
    logits = scale * jnp.log(jnp.maximum(probs, EPS)) + shift
    return jax.nn.softmax(logits, axis=-1)


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _design(method: str, z: np.ndarray) -> np.ndarray:
    """``M`` (n, K, P) with logits ``= M θ + offset`` for the method's P parameters θ."""
    n, k = z.shape
    if method == "temperature":
        return z[:, :, None]
    if method == "platt":
        if k != 2:
            raise ValueError(f"Platt scaling is for two classes, not {k}: use temperature or vector scaling")
        m = np.zeros((n, 2, 2))
        m[:, :, 0] = z
        m[:, 1, 1] = 1.0
        return m
    if method == "vector":
        m = np.zeros((n, k, 2 * k))
        m[:, np.arange(k), np.arange(k)] = z
        m[:, np.arange(k), k + np.arange(k)] = 1.0
        return m
    raise ValueError(f"unknown calibration {method!r}; expected one of {list(METHODS)}")


def _params_to_calibration(method: str, theta: np.ndarray, k: int) -> Calibration:
    if method == "temperature":
        scale, shift = np.full(k, theta[0]), np.zeros(k)
    elif method == "platt":
        scale, shift = np.full(2, theta[0]), np.array([0.0, theta[1]])
    else:
        scale, shift = theta[:k], theta[k:] - theta[k:].mean()  # softmax ignores a common shift: centred
    return Calibration(method, tuple(float(v) for v in scale), tuple(float(v) for v in shift))


def _initial(method: str, k: int) -> np.ndarray:
    return {"temperature": np.ones(1), "platt": np.array([1.0, 0.0]),
            "vector": np.concatenate([np.ones(k), np.zeros(k)])}[method]


def negative_log_likelihood(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean ``−log q_{i, y_i}`` (natural log), with q read as at least ``EPS``."""
    probs, y = np.asarray(probs, np.float64), np.asarray(y)
    return float(-np.mean(np.log(np.maximum(probs[np.arange(len(y)), y], EPS))))


def fit_calibration(method: str, probs: np.ndarray, y: np.ndarray, *, ridge: float = 1e-4,
                    max_iter: int = 100) -> Calibration:
    """The ``method``'s parameters minimising the mean NLL of ``y`` under the calibrated ``probs``.

    Newton steps ``θ ← θ − t H⁻¹ g`` with ``g = (1/n) Σ_i M_iᵀ (q_i − e_{y_i})``, ``H = (1/n) Σ_i M_iᵀ (diag q_i −
    q_i q_iᵀ) M_i + ridge·I``, on the loss plus ``ridge/2 ‖θ‖²``; the ridge keeps the optimum finite when the
    predictions separate the classes (the likelihood alone then grows without bound as ``1/T → ∞``) and moves a
    well-posed fit by about ``ridge·θ/H``, 1e-3 of it here. ``t`` is halved until the loss does not rise; the
    steps stop when ``|g|∞ < 1e-10``.
    """
    probs, y = np.asarray(probs, np.float64), np.asarray(y)
    if probs.ndim != 2 or len(probs) != len(y) or len(y) == 0:
        raise ValueError(f"calibration needs probabilities (n, K) and n labels, got {probs.shape} and {len(y)}")
    n, k = probs.shape
    if method == "none":
        return identity(k)
    z = np.log(np.maximum(probs, EPS))
    m = _design(method, z)
    onehot = np.eye(k)[y]
    theta = _initial(method, k)

    def loss(th):
        logits = np.einsum("nkp,p->nk", m, th)
        logits -= logits.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(logits).sum(axis=1)) - logits[np.arange(n), y])) \
            + 0.5 * ridge * float(th @ th)

    current = loss(theta)
    for _ in range(max_iter):
        q = _softmax(np.einsum("nkp,p->nk", m, theta))
        g = np.einsum("nkp,nk->p", m, q - onehot) / n + ridge * theta
        if np.max(np.abs(g)) < 1e-10:
            break
        cov = q[:, :, None] * np.eye(k)[None] - q[:, :, None] * q[:, None, :]  # (n, K, K)
        h = np.einsum("nkp,nkl,nlr->pr", m, cov, m) / n + ridge * np.eye(len(theta))
        step = np.linalg.solve(h, g)
        t = 1.0
        while t > 1e-8:
            new = loss(theta - t * step)
            if new <= current + 1e-15:
                break
            t /= 2
        else:
            break
        theta, current = theta - t * step, new
    return _params_to_calibration(method, theta, k)


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> Calibration:
    """Temperature scaling: the ``1/T`` minimising the mean NLL (:func:`fit_calibration`)."""
    return fit_calibration("temperature", probs, y)


def candidate_methods(n_classes: int) -> tuple[str, ...]:
    """What ``auto`` chooses from: none, temperature, Platt (two classes only) and vector scaling."""
    return tuple(m for m in METHODS if m != "platt" or n_classes == 2)


class CalibrationChoice(NamedTuple):
    """The fitted calibration, and for ``auto`` the cross-validated log-loss of every candidate."""

    calibration: Calibration
    cv_log_loss: dict[str, float]  # method → mean held-out NLL over the folds (empty unless ``auto``)
    folds: int  # folds of that cross-validation (0 unless ``auto``)


def choose_calibration(method: str, probs: np.ndarray, y: np.ndarray, *, folds: int = 5, seed: int = 0
                       ) -> CalibrationChoice:
    """Fit ``method`` on ``(probs, y)`` (out-of-fold predictions of the training part, never the scored fold).

    ``auto``: every candidate (:func:`candidate_methods`) is fitted on ``folds − 1`` stratified folds of these
    predictions and scored by the NLL of the one left out; the lowest mean wins (ties: the simpler, in the
    order none, temperature, platt, vector) and is refitted on all of them."""
    probs, y = np.asarray(probs), np.asarray(y)
    if method != "auto":
        return CalibrationChoice(fit_calibration(method, probs, y), {}, 0)
    from training.data.labels import stratified_folds

    counts = np.bincount(y, minlength=probs.shape[1])
    k = min(folds, int(counts[counts > 0].min()))
    if k < 2:  # too few photos of a class to cross-validate: the one-parameter method
        return CalibrationChoice(fit_calibration("temperature", probs, y), {}, 0)
    splits = stratified_folds(y, k, seed=seed)
    scores = {}
    for m in candidate_methods(probs.shape[1]):
        held = [negative_log_likelihood(apply(fit_calibration(m, probs[tr], y[tr]), probs[va]), y[va]) * len(va)
                for tr, va in splits]
        scores[m] = float(np.sum(held) / len(y))
    best = min(scores, key=lambda m: (round(scores[m], 12), METHODS.index(m)))
    return CalibrationChoice(fit_calibration(best, probs, y), scores, k)


# ---------------------------------------------------------------- measures


def ece_bins(n: int) -> int:
    """Equal-mass bins for ``n`` photos: 10, or fewer so that each holds at least ``MIN_PER_BIN`` (at least 1)."""
    return max(1, min(MAX_BINS, n // MIN_PER_BIN))


def confidence(probs: np.ndarray, y_pred: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(decisions, their probabilities)``: ``y_pred`` (default the arg-max) and ``q_{i, ŷ_i}``."""
    probs = np.asarray(probs)
    pred = probs.argmax(axis=1) if y_pred is None else np.asarray(y_pred)
    return pred, probs[np.arange(len(pred)), pred].astype(np.float64)


def referral_confidence(probs: np.ndarray, y_pred: np.ndarray | None = None, shift=None) -> np.ndarray:
    """What referral ranks photos by: the probability of the decision with the calibration's ``shift`` (its
    class-frequency part) left out, ``r_i = softmax(log q_i − shift)_{ŷ_i}``, the probability under equal class
    frequencies. Ranked by ``q_{i, ŷ_i}`` instead, a minority-class decision would be referred for its class's
    rarity rather than for doubt, and the balanced accuracy of the photos kept would fall (measured: 0.862 against
    0.907 on tree vs not_a_tree, Platt scaling). ``shift`` None: ``q_{i, ŷ_i}``."""
    pred, conf = confidence(probs, y_pred)
    if shift is None or not np.any(np.asarray(shift)):
        return conf
    r = _softmax(np.log(np.maximum(np.asarray(probs, np.float64), EPS)) - np.asarray(shift, np.float64))
    return r[np.arange(len(pred)), pred]


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, n_bins: int | None = None,
                               y_pred: np.ndarray | None = None) -> float:
    """``Σ_b (n_b/n) |acc_b − conf_b|`` over ``n_bins`` equal-mass bins of the photos sorted by confidence
    (stable sort; bin sizes differ by at most one)."""
    probs, y = np.asarray(probs, np.float64), np.asarray(y)
    pred, conf = confidence(probs, y_pred)
    correct = (pred == y).astype(np.float64)
    n_bins = ece_bins(len(y)) if n_bins is None else n_bins
    order = np.argsort(conf, kind="stable")
    return float(sum(len(b) * abs(correct[b].mean() - conf[b].mean())
                     for b in np.array_split(order, n_bins) if len(b)) / len(y))


def brier_score(probs: np.ndarray, y: np.ndarray) -> float:
    """``(1/n) Σ_i ½ Σ_k (q_ik − [y_i = k])²``: in [0, 1]; for two classes ``(1/n) Σ_i (q_i1 − y_i)²``."""
    probs, y = np.asarray(probs, np.float64), np.asarray(y)
    return float(0.5 * np.mean(np.sum((probs - np.eye(probs.shape[1])[y]) ** 2, axis=1)))


def reliability(probs: np.ndarray, y: np.ndarray, n_bins: int | None = None,
                y_pred: np.ndarray | None = None) -> list[dict]:
    """Per equal-mass bin: photos, mean confidence, accuracy, and the confidence range (for the diagram)."""
    probs, y = np.asarray(probs, np.float64), np.asarray(y)
    pred, conf = confidence(probs, y_pred)
    correct = pred == y
    n_bins = ece_bins(len(y)) if n_bins is None else n_bins
    order = np.argsort(conf, kind="stable")
    return [{"photos": int(len(b)), "confidence": float(conf[b].mean()), "accuracy": float(correct[b].mean()),
             "low": float(conf[b].min()), "high": float(conf[b].max())}
            for b in np.array_split(order, n_bins) if len(b)]


def calibration_metrics(probs: np.ndarray, y: np.ndarray, *, key=None, n_boot: int = 1000,
                        y_pred: np.ndarray | None = None) -> dict:
    """Mean confidence, accuracy and their gap, ECE (with its bins), Brier score and log-loss of ``probs``;
    with ``key`` each gets a stratified bootstrap 95% interval (``training.evaluation.metrics``); the bins of
    every resample are the point estimate's count."""
    from training.evaluation.metrics import percentile_interval, stratified_resamples

    probs, y = np.asarray(probs, np.float64), np.asarray(y)
    n_bins = ece_bins(len(y))
    pred, conf = confidence(probs, y_pred)
    acc = float(np.mean(pred == y))
    out = {"n": int(len(y)), "mean_confidence": float(conf.mean()), "accuracy": acc,
           "confidence_gap": float(conf.mean()) - acc,
           "ece": expected_calibration_error(probs, y, n_bins, pred), "ece_bins": n_bins,
           "ece_binning": f"{n_bins} equal-mass bins of ≥ {len(y) // n_bins} photos" + (
               f"; fewer than {MAX_BINS} because {len(y)} photos allow only {n_bins} of ≥ {MIN_PER_BIN}"
               if n_bins < MAX_BINS else ""),
           "brier": brier_score(probs, y), "log_loss": negative_log_likelihood(probs, y)}
    if key is not None:
        idx = stratified_resamples(y, key=key, n_boot=n_boot)
        stats = {"confidence_gap": [], "ece": [], "brier": [], "log_loss": []}
        for rows in idx:
            p, t = probs[rows], y[rows]
            stats["confidence_gap"].append(conf[rows].mean() - np.mean(pred[rows] == t))
            stats["ece"].append(expected_calibration_error(p, t, n_bins, pred[rows]))
            stats["brier"].append(brier_score(p, t))
            stats["log_loss"].append(negative_log_likelihood(p, t))
        for name, values in stats.items():
            out[f"{name}_ci95"] = list(percentile_interval(np.asarray(values)))
    return out


# ---------------------------------------------------------------- referral


def _balanced_accuracy(y: np.ndarray, pred: np.ndarray, classes: np.ndarray) -> float:
    recalls = [np.mean(pred[y == c] == c) for c in classes if np.any(y == c)]
    return float(np.mean(recalls)) if recalls else float("nan")


def kept_by_coverage(conf: np.ndarray, coverage: float) -> np.ndarray:
    """Boolean mask of the ``ceil(coverage · n)`` most confident photos (ties broken by order, stably)."""
    n = len(conf)
    keep = min(n, max(0, math.ceil(coverage * n - 1e-9)))
    mask = np.zeros(n, bool)
    mask[np.argsort(-np.asarray(conf), kind="stable")[:keep]] = True
    return mask


COVERAGES = tuple(round(c, 2) for c in np.arange(0.5, 1.0001, 0.05))


def risk_coverage(probs: np.ndarray, y: np.ndarray, y_pred: np.ndarray | None = None, *, key=None,
                  n_boot: int = 1000, coverages=COVERAGES, conf: np.ndarray | None = None) -> list[dict]:
    """Balanced accuracy of the ``coverage`` fraction of photos with the highest confidence ``conf`` (default
    the probability of the decision; a run's is :func:`referral_confidence`), for each coverage; with ``key``, a
    stratified bootstrap 95% interval (each resample keeps its own most confident
    fraction). ``y_pred``: the decisions (default the arg-max)."""
    from training.evaluation.metrics import percentile_interval, stratified_resamples

    probs, y = np.asarray(probs), np.asarray(y)
    pred, top = confidence(probs, y_pred)
    conf = top if conf is None else np.asarray(conf)
    classes = np.unique(y)
    idx = stratified_resamples(y, key=key, n_boot=n_boot) if key is not None else None
    rows = []
    for c in coverages:
        mask = kept_by_coverage(conf, c)
        row = {"coverage": float(c), "kept": int(mask.sum()), "balanced_accuracy": _balanced_accuracy(
            y[mask], pred[mask], classes), "accuracy": float(np.mean(pred[mask] == y[mask])) if mask.any() else
            float("nan")}
        if idx is not None:
            boots = []
            for r in idx:
                m = kept_by_coverage(conf[r], c)
                boots.append(_balanced_accuracy(y[r][m], pred[r][m], classes))
            boots = np.asarray(boots)
            row["balanced_accuracy_ci95"] = list(percentile_interval(boots[np.isfinite(boots)]))
        rows.append(row)
    return rows


class Referral(NamedTuple):
    """Photos whose confidence (:func:`referral_confidence`) is below ``threshold`` are referred to a person.
    Chosen on inner out-of-fold predictions: for ``coverage`` (keep that fraction) or
    ``target_balanced_accuracy``."""

    threshold: float
    rule: str  # "coverage" or "balanced_accuracy"
    target: float
    inner_coverage: float  # the fraction kept on the inner predictions it was chosen on
    inner_balanced_accuracy: float

    def to_json(self) -> dict:
        return self._asdict()

    as_json = to_json

    @classmethod
    def parse(cls, value, class_names=None) -> Referral:
        """A run's saved ``referral``: every field checked; ``ValueError`` names the first bad one."""
        if not isinstance(value, dict) or set(value) != set(cls._fields):
            raise ValueError(f"expected null or an object with {list(cls._fields)}")
        if value["rule"] not in ("coverage", "balanced_accuracy"):
            raise ValueError("rule: expected coverage or balanced_accuracy")
        for name in ("threshold", "target", "inner_coverage", "inner_balanced_accuracy"):
            v = value[name]
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and 0 <= v <= 1):
                raise ValueError(f"{name}: expected a number in [0, 1]")
        return cls(float(value["threshold"]), value["rule"], float(value["target"]), float(value["inner_coverage"]),
                   float(value["inner_balanced_accuracy"]))


def choose_referral(probs: np.ndarray, y: np.ndarray, *, coverage: float | None = None,
                    balanced_accuracy: float | None = None, y_pred: np.ndarray | None = None,
                    shift=None) -> Referral:
    """The threshold on :func:`referral_confidence`, chosen on (inner, unscored) ``probs`` and ``y``.

    ``coverage`` c: the confidence of the ``ceil(c·n)``-th most confident photo (keep p ≥ it);
    ``balanced_accuracy`` B: the lowest threshold (the most photos kept) whose kept photos reach balanced
    accuracy ≥ B (all referred but the most confident one when none does)."""
    if (coverage is None) == (balanced_accuracy is None):
        raise ValueError("give one of coverage or balanced_accuracy")
    probs, y = np.asarray(probs), np.asarray(y)
    pred, _ = confidence(probs, y_pred)
    conf = referral_confidence(probs, pred, shift)
    order = np.argsort(-conf, kind="stable")
    classes = np.unique(y)
    if coverage is not None:
        if not 0 < coverage <= 1:
            raise ValueError(f"coverage must be in (0, 1], got {coverage}")
        keep = max(1, math.ceil(coverage * len(y) - 1e-9))
        rule, target = "coverage", coverage
    else:
        if not 0 < balanced_accuracy <= 1:
            raise ValueError(f"target balanced accuracy must be in (0, 1], got {balanced_accuracy}")
        keep = 1
        for m in range(len(y), 0, -1):
            if _balanced_accuracy(y[order[:m]], pred[order[:m]], classes) >= balanced_accuracy:
                keep = m
                break
        rule, target = "balanced_accuracy", balanced_accuracy
    threshold = float(conf[order[keep - 1]])
    kept = conf >= threshold
    return Referral(threshold, rule, float(target), float(kept.mean()),
                    _balanced_accuracy(y[kept], pred[kept], classes))


# ---------------------------------------------------------------- a saved run's record


def check_saved_calibration(value, n_classes: int) -> Calibration | None:
    """A ``calibration`` entry of a run's config.json (possibly someone else's) as a :class:`Calibration`:
    null, or ``{method: one of METHODS, scale: K finite numbers in [-1e4, 1e4], shift: the same}`` (other keys
    are the record of how it was chosen, not read). ``ValueError`` names what is wrong."""
    if value is None:
        return None
    expected = f"null or {{method: one of {list(METHODS)}, scale and shift: {n_classes} finite numbers each}}"
    if not isinstance(value, dict) or value.get("method") not in METHODS:
        raise ValueError(f"calibration: expected {expected}")
    arrays = []
    for name in ("scale", "shift"):
        v = value.get(name)
        if not (isinstance(v, list) and len(v) == n_classes and all(
                isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and abs(x) <= 1e4
                for x in v)):
            raise ValueError(f"calibration: {name}: expected {expected}")
        arrays.append(tuple(float(x) for x in v))
    return Calibration(value["method"], *arrays)


def check_saved_referral(value) -> float | None:
    """A ``referral`` entry of a run's config.json: null, or an object whose ``threshold`` is in [0, 1];
    returns the threshold."""
    if value is None:
        return None
    t = value.get("threshold") if isinstance(value, dict) else None
    if not (isinstance(t, (int, float)) and not isinstance(t, bool) and math.isfinite(t) and 0 <= t <= 1):
        raise ValueError("referral: expected null or {threshold: a number in [0, 1], …}")
    return float(t)


def referral_outcome(y: np.ndarray, y_pred: np.ndarray, kept: np.ndarray, *, key=None, n_boot: int = 1000) -> dict:
    """What a saved referral threshold did on scored photos: the fraction kept, and the balanced accuracy of the
    kept photos against all, each with a stratified bootstrap 95% interval (resampling all photos, with their
    keep flags, within each class)."""
    from training.evaluation.metrics import percentile_interval, stratified_resamples

    y, pred, kept = np.asarray(y), np.asarray(y_pred), np.asarray(kept, bool)
    classes = np.unique(y)
    out = {"n": int(len(y)), "kept": int(kept.sum()), "referred": int((~kept).sum()),
           "coverage": float(kept.mean()), "balanced_accuracy_kept": _balanced_accuracy(y[kept], pred[kept], classes),
           "balanced_accuracy_all": _balanced_accuracy(y, pred, classes)}
    if key is not None:
        boots = {"coverage": [], "balanced_accuracy_kept": []}
        for r in stratified_resamples(y, key=key, n_boot=n_boot):
            k = kept[r]
            boots["coverage"].append(k.mean())
            boots["balanced_accuracy_kept"].append(_balanced_accuracy(y[r][k], pred[r][k], classes))
        for name, values in boots.items():
            values = np.asarray(values, np.float64)
            out[f"{name}_ci95"] = list(percentile_interval(values[np.isfinite(values)]))
    return out
