"""training.evaluation.calibration: the fits against independent implementations, the measures against hand
computations, referral, and the saved record's checks."""

import jax
import numpy as np
import pytest

from training.evaluation.calibration import (
    Calibration,
    apply,
    brier_score,
    calibration_metrics,
    check_saved_calibration,
    check_saved_referral,
    choose_calibration,
    choose_referral,
    ece_bins,
    expected_calibration_error,
    fit_calibration,
    fit_temperature,
    negative_log_likelihood,
    risk_coverage,
)


def _overconfident(n=300, k=2, seed=0, shift=0.0):
    """Probabilities of a classifier whose logits are 3× too large (and shifted), with labels drawn from the true
    probabilities: temperature ≈ 3 recovers them."""
    rng = np.random.default_rng(seed)
    true_logits = rng.normal(size=(n, k)) * 1.5
    true_logits[:, -1] += shift
    p_true = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    y = np.array([rng.choice(k, p=p) for p in p_true])
    logits = 3 * true_logits
    return (np.exp(logits) / np.exp(logits).sum(1, keepdims=True)).astype(np.float32), y


def test_temperature_equals_a_brute_force_grid():
    p, y = _overconfident(k=3)
    cal = fit_calibration("temperature", p, y, ridge=0.0)
    assert fit_temperature(p, y).scale[0] == pytest.approx(cal.scale[0], rel=1e-2)  # the default's small ridge
    grid = np.exp(np.linspace(np.log(0.05), np.log(5), 4001))
    nll = [negative_log_likelihood(apply(Calibration("temperature", (a,) * 3, (0.0,) * 3), p), y) for a in grid]
    best = grid[int(np.argmin(nll))]
    assert cal.scale[0] == pytest.approx(best, rel=2e-3)
    assert 1 / cal.scale[0] == pytest.approx(3, rel=0.25)  # the overconfidence it was made with
    assert np.array_equal(apply(cal, p).argmax(1), p.argmax(1))  # temperature never changes the decision


def test_platt_equals_sklearn_logistic_regression_on_the_log_odds():
    from sklearn.linear_model import LogisticRegression

    p, y = _overconfident(k=2, shift=0.8, seed=1)
    cal = fit_calibration("platt", p, y, ridge=0.0)
    s = np.log(p[:, 1].astype(np.float64)) - np.log(p[:, 0].astype(np.float64))
    lr = LogisticRegression(C=1e10, tol=1e-12, max_iter=10_000).fit(s[:, None], y)
    assert cal.scale[0] == pytest.approx(lr.coef_[0, 0], rel=1e-4)
    assert cal.shift[1] - cal.shift[0] == pytest.approx(lr.intercept_[0], abs=1e-4)
    q = apply(cal, p)
    assert np.allclose(q[:, 1], lr.predict_proba(s[:, None])[:, 1], atol=1e-5)


def test_vector_scaling_equals_scipy_minimize():
    from scipy.optimize import minimize

    p, y = _overconfident(k=3, shift=0.5, seed=2)
    cal = fit_calibration("vector", p, y, ridge=0.0)
    z = np.log(np.maximum(p.astype(np.float64), 1e-12))

    def nll(th):
        logits = th[:3] * z + th[3:]
        logits -= logits.max(1, keepdims=True)
        return np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(len(y)), y])

    ref = minimize(nll, np.r_[np.ones(3), np.zeros(3)], method="BFGS", options={"gtol": 1e-10}).fun
    assert negative_log_likelihood(apply(cal, p), y) == pytest.approx(ref, abs=1e-7)
    assert sum(cal.shift) == pytest.approx(0, abs=1e-9)  # centred


def test_auto_chooses_by_held_out_log_loss_and_none_changes_nothing():
    p, y = _overconfident(k=2, seed=3)
    choice = choose_calibration("auto", p, y, folds=5, seed=0)
    assert set(choice.cv_log_loss) == {"none", "temperature", "platt", "vector"}
    assert choice.calibration.method == min(choice.cv_log_loss, key=choice.cv_log_loss.get)
    assert choice.cv_log_loss["temperature"] < choice.cv_log_loss["none"]
    assert np.array_equal(apply(choose_calibration("none", p, y).calibration, p), p)
    # deterministic
    assert choose_calibration("auto", p, y, folds=5, seed=0) == choice


def test_ece_brier_and_log_loss_by_hand():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.4, 0.6]])
    y = np.array([0, 1, 1, 1])
    # confidences 0.9, 0.8, 0.7, 0.6; correct 1, 0, 1, 1. Two equal-mass bins: {0.6, 0.7} and {0.8, 0.9}
    ece = expected_calibration_error(probs, y, n_bins=2)
    assert ece == pytest.approx(0.5 * abs(1.0 - 0.65) + 0.5 * abs(0.5 - 0.85))
    assert brier_score(probs, y) == pytest.approx(np.mean([0.1**2, 0.8**2, 0.3**2, 0.4**2]))
    assert negative_log_likelihood(probs, y) == pytest.approx(-np.mean(np.log([0.9, 0.2, 0.7, 0.6])))
    assert (ece_bins(406), ece_bins(81), ece_bins(20)) == (10, 2, 1)
    m = calibration_metrics(probs, y, key=jax.random.PRNGKey(0), n_boot=50)
    assert m["ece_bins"] == 1 and "fewer than 10" in m["ece_binning"]
    assert m["confidence_gap"] == pytest.approx(0.75 - 0.75)
    lo, hi = m["brier_ci95"]
    assert lo <= m["brier"] <= hi


def test_risk_coverage_and_referral_keep_the_most_confident():
    probs = np.array([[0.95, 0.05], [0.9, 0.1], [0.6, 0.4], [0.2, 0.8], [0.45, 0.55], [0.1, 0.9]])
    y = np.array([0, 0, 1, 1, 0, 1])  # the two least confident (0.6, 0.55) are the two errors
    rows = risk_coverage(probs, y, coverages=(0.5, 2 / 3, 1.0), key=jax.random.PRNGKey(0), n_boot=20)
    assert [r["kept"] for r in rows] == [3, 4, 6]
    assert rows[1]["balanced_accuracy"] == 1.0 and rows[2]["balanced_accuracy"] == pytest.approx(2 / 3)
    ref = choose_referral(probs, y, balanced_accuracy=0.99)
    assert ref.threshold == pytest.approx(0.8) and ref.inner_coverage == pytest.approx(4 / 6)
    ref = choose_referral(probs, y, coverage=0.5)
    assert ref.threshold == pytest.approx(0.9) and ref.inner_coverage == pytest.approx(0.5)


@pytest.mark.parametrize("bad", [{"method": "magic", "scale": [1, 1], "shift": [0, 0]},
                                 {"method": "temperature", "scale": [1], "shift": [0, 0]},
                                 {"method": "vector", "scale": [1, float("nan")], "shift": [0, 0]},
                                 {"method": "vector", "scale": [1, True], "shift": [0, 0]},
                                 {"method": "platt", "scale": [1, 1], "shift": [0, 1e9]}, [1, 2], "temperature"],
                         ids=["method", "length", "nan", "bool", "huge", "list", "string"])
def test_a_saved_calibration_is_checked(bad):
    from models.onnx_graph import CALIBRATION_EPS
    from training.evaluation.calibration import EPS

    assert CALIBRATION_EPS == EPS  # the ONNX graph reads probabilities below it as it, as apply does
    with pytest.raises(ValueError, match="calibration"):
        check_saved_calibration(bad, 2)
    assert check_saved_calibration(None, 2) is None
    assert check_saved_calibration({"method": "platt", "scale": [2, 2], "shift": [0, 1], "chosen_by": "x"}, 2) \
        == Calibration("platt", (2.0, 2.0), (0.0, 1.0))
    with pytest.raises(ValueError, match="referral"):
        check_saved_referral({"threshold": 1.5})


def test_decisions_leave_the_calibrations_shift_out():
    """Platt scaling moves probabilities toward the class frequencies; the decision stays the head's (s > 0)."""
    from training.evaluation.decision import decide

    rng = np.random.default_rng(4)
    logits = rng.normal(size=(300, 2)) * 2
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)  # a balanced model of data that is 80 % class 1
    y = (rng.random(300) < 1 / (1 + np.exp(-(logits[:, 1] - logits[:, 0] + 1.5)))).astype(int)
    cal = fit_calibration("platt", p, y)
    q = apply(cal, p)
    assert abs(cal.shift[1]) > 0.1 and not np.array_equal(q.argmax(1), p.argmax(1))  # the shift moved some
    assert np.array_equal(decide(q, None, cal.shift), p.argmax(1))


def test_a_run_folder_with_a_bad_calibration_is_refused_naming_the_file_and_field(tmp_path):
    import json

    from training.loop.config import TrainConfig
    from training.runs.saved import run_config

    (tmp_path / "checkpoints").mkdir()
    saved = {"config": TrainConfig().to_json(), "class_names": ["a", "b"], "normalization": None,
             "operating_point": None, "calibration": {"method": "vector", "scale": [1.0, "1"], "shift": [0, 0]}}
    (tmp_path / "checkpoints" / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"config\.json: calibration: scale"):
        run_config(tmp_path)
    saved["calibration"], saved["referral"] = None, {"threshold": -1}
    (tmp_path / "checkpoints" / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match=r"config\.json: referral"):
        run_config(tmp_path)
