"""training.evaluation.ordinal: weighted κ and level error on a synthetic ordered task, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from training.evaluation.ordinal import ordinal_levels, ordinal_metrics

# Six photos on three levels (0 Improbable, 1 Possible, 2 Probable):
#   true r = 0 0 1 1 2 2,  predicted s = 0 1 1 1 2 1
# observed O (rows true, columns predicted) = [[1,1,0],[0,2,0],[0,1,1]]; margins 2,2,2 and 1,4,1;
# expected E_jk = 2·col_k/6 = [1/3, 4/3, 1/3] in every row.
# linear |j−k|:    Σ w O = 1 + 1 = 2;  Σ w E = 2 + 2/3 + 2 = 14/3  →  κ = 1 − 2/(14/3) = 4/7
# quadratic (j−k)²: Σ w O = 1 + 1 = 2;  Σ w E = 8/3 + 2/3 + 8/3 = 6  →  κ = 1 − 2/6 = 2/3
# mean |r − s| = (0+1+0+0+0+1)/6 = 1/3;  nominal κ = (4/6 − 12/36)/(1 − 12/36) = 1/2
TRUE = [0, 0, 1, 1, 2, 2]
PRED = [0, 1, 1, 1, 2, 1]


def test_weighted_kappas_and_level_error_by_hand():
    m = ordinal_metrics(TRUE, PRED, 3)
    assert m.n == 6
    assert m.linear_weighted_kappa == pytest.approx(4 / 7, abs=1e-12)
    assert m.quadratic_weighted_kappa == pytest.approx(2 / 3, abs=1e-12)
    assert m.mean_absolute_level_error == pytest.approx(1 / 3, abs=1e-12)
    perfect = ordinal_metrics(TRUE, TRUE, 3)
    assert (perfect.linear_weighted_kappa, perfect.quadratic_weighted_kappa) == (1.0, 1.0)
    assert perfect.mean_absolute_level_error == 0.0
    # a two-level miss costs more than a one-level one, with the same nominal error
    near = ordinal_metrics([0, 1, 2], [1, 1, 2], 3)
    far = ordinal_metrics([0, 1, 2], [2, 1, 2], 3)
    assert far.mean_absolute_level_error == 2 * near.mean_absolute_level_error
    assert far.quadratic_weighted_kappa < near.quadratic_weighted_kappa
    one_level = ordinal_metrics([1, 1], [1, 1], 3)  # κ is 0/0: every rating on one level
    assert one_level.linear_weighted_kappa is None and one_level.mean_absolute_level_error == 0.0
    with pytest.raises(ValueError, match="0 … 2"):
        ordinal_metrics([0, 3], [0, 1], 3)


@pytest.mark.parametrize("names, order, levels", [
    (["Improbable", "Possible", "Probable"], None, (0, 1, 2)),
    (["probable", "POSSIBLE", "improbable"], None, (2, 1, 0)),  # folder order, any case
    (["Probable", "Improbable"], None, None),  # two classes: κ_w is κ, nothing to add
    (["Probable+Possible", "Improbable", "x"], None, None),  # not a known scale
    (["low", "high", "mid"], ["low", "mid", "high"], (0, 2, 1)),  # the user's --order
    (["Probable", "probable", "Possible"], None, None),  # two levels under three names: not the scale
], ids=["scale", "permuted-any-case", "two-classes", "unknown", "user-order", "one-level-twice-by-case"])
def test_ordinal_levels(names, order, levels):
    assert ordinal_levels(names, order) == levels


def test_ordinal_levels_refuses_a_class_outside_the_order():
    with pytest.raises(ValueError, match="Dead"):
        ordinal_levels(["Dead", "Possible"], ["Improbable", "Possible", "Probable"])


def test_run_metrics_carry_the_ordinal_ones_beside_the_nominal():
    from training.evaluation.metrics import classification_metrics, majority_baseline
    from training.runs.report import metric_rows

    names = ["Probable", "Improbable", "Possible"]  # levels 2, 0, 1: indices are not levels
    index_of_level = {2: 0, 0: 1, 1: 2}
    y = np.array([index_of_level[r] for r in TRUE])
    y_pred = np.array([index_of_level[s] for s in PRED])
    m = classification_metrics(y, np.eye(3)[y_pred], names)
    assert m.linear_weighted_kappa == pytest.approx(4 / 7)
    assert m.quadratic_weighted_kappa == pytest.approx(2 / 3)
    assert m.mean_absolute_level_error == pytest.approx(1 / 3)
    assert list(m.as_json())[-3:] == ["linear_weighted_kappa", "quadratic_weighted_kappa", "mean_absolute_level_error"]
    base = majority_baseline(y, y, names)
    rows = {r["metric"]: r for r in metric_rows(m, base)}
    assert rows["quadratic_weighted_kappa"]["model"] == pytest.approx(2 / 3)
    assert rows["quadratic_weighted_kappa"]["majority_baseline"] == pytest.approx(0.0)  # a constant: chance
    nominal = classification_metrics(np.array([0, 1, 2]), np.eye(3), ["cat", "dog", "tree"])
    assert nominal.quadratic_weighted_kappa is None and "quadratic_weighted_kappa" not in nominal.as_json()


def test_results_table_shows_the_ordinal_metrics_for_three_levels_only():
    from types import SimpleNamespace

    from training.evaluation.metrics import classification_metrics, majority_baseline
    from training.runs.results import table_row

    def fold(names, y, y_pred):
        m = classification_metrics(np.asarray(y), np.eye(len(names))[y_pred], names)
        return SimpleNamespace(metrics=m, baseline=majority_baseline(np.asarray(y), np.asarray(y), names),
                               seconds=1.0)

    levels = ["Improbable", "Possible", "Probable"]
    row, _ = table_row([fold(levels, TRUE, PRED), fold(levels, TRUE, TRUE)], levels, positive=2)
    assert row.quadratic_kappa == f"{(2 / 3 + 1) / 2:.2f} ± {(1 - 2 / 3) / 2:.2f}"
    assert row.level_error == f"{1 / 6:.2f} ± {1 / 6:.2f}"
    two, _ = table_row([fold(["Probable", "Improbable"], [0, 1], [0, 0])], ["Probable", "Improbable"])
    assert two.quadratic_kappa == two.level_error == "–"


def test_class_names_are_drawn_as_written_never_as_mathtext(tmp_path):
    # a class folder named '$x^{{{…$' raised RecursionError (and '$\foo$' ValueError) when the confusion matrix
    # was saved, at the end of a finished run
    from training.runs.report import plot_confusion

    plot_confusion(np.eye(3, dtype=int), ["$x^{" + "{" * 30 + "$", r"$\foo$", "a $5 tree"], tmp_path / "c.png",
                   title="$\\bar$")
    assert (tmp_path / "c.png").stat().st_size > 0
