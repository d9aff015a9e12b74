"""Decisions and intervals: the recall threshold, the stratified bootstrap."""

import jax
import numpy as np
import pytest

from training.evaluation.decision import decide, recall_threshold


@pytest.mark.parametrize("target", [0.5, 0.8, 0.95, 1.0])
def test_recall_threshold_meets_the_target_on_its_data(target):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 200)
    probs = rng.dirichlet(np.ones(3), 200)
    probs[y == 2, 2] += 0.3
    probs /= probs.sum(axis=1, keepdims=True)
    t = recall_threshold(probs, y, 2, target)
    pred = decide(probs, {"class_index": 2, "threshold": t})
    recall = np.mean(pred[y == 2] == 2)
    assert recall >= target
    # the largest such threshold: a hair higher misses the target (unless ties)
    higher = decide(probs, {"class_index": 2, "threshold": np.nextafter(t, 2)})
    assert np.mean(higher[y == 2] == 2) < target or target == 0.0
    assert np.array_equal(decide(probs, None), probs.argmax(axis=1))


def test_bootstrap_interval_is_reproducible_and_brackets_the_estimate():
    from training.evaluation.metrics import bootstrap_interval, classification_metrics

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    pred = np.where(rng.uniform(size=300) < 0.8, y, 1 - y)
    lo, hi = bootstrap_interval(y, pred, key=jax.random.PRNGKey(0))
    assert (lo, hi) == bootstrap_interval(y, pred, key=jax.random.PRNGKey(0))
    point = classification_metrics(y, np.eye(2)[pred], ["a", "b"]).balanced_accuracy
    assert lo < point < hi and hi - lo < 0.15


@pytest.mark.parametrize("predictor", ["constant", "perfect"])
def test_bootstrap_interval_is_stratified(predictor):
    """Every resample holds every class: a constant predictor's interval is its point, 1/C (an unstratified
    resample that drew no minority photo scored it 1.0), and a perfect one's is [1, 1]."""
    from training.evaluation.metrics import bootstrap_interval, stratified_resamples

    y = np.array([0] * 37 + [1] * 3 + [2] * 2)
    pred = np.zeros_like(y) if predictor == "constant" else y
    expected = 1 / 3 if predictor == "constant" else 1.0
    assert bootstrap_interval(y, pred, key=jax.random.PRNGKey(0)) == pytest.approx((expected, expected))
    idx = stratified_resamples(y, key=jax.random.PRNGKey(1), n_boot=50)
    assert all(np.array_equal(np.bincount(y[row], minlength=3), [37, 3, 2]) for row in idx)

