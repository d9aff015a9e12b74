"""Classification metrics and the majority baseline."""

import dataclasses

import numpy as np

from training.evaluation.metrics import classification_metrics, majority_baseline


def test_metrics_and_majority_baseline():
    y = np.array([1] * 66 + [0] * 10)
    always_improbable = np.tile([0.0, 1.0], (76, 1))
    m = classification_metrics(y, always_improbable, ["Probable", "Improbable"])
    base = majority_baseline(np.array([1, 1, 0]), y, ["Probable", "Improbable"])
    # the lab's headline row: precision 87.9 / recall 100 / accuracy 86.8 is this baseline
    assert round(100 * m.accuracy, 1) == 86.8
    assert round(100 * m.per_class["Improbable"].precision, 1) == 86.8
    assert m.per_class["Improbable"].recall == 1.0 and m.balanced_accuracy == 0.5
    assert base.accuracy == m.accuracy and base.majority_class == "Improbable"


def test_metrics_json_is_the_record_the_run_files_hold():
    # summary.json and the checkpoints' meta carry Metrics.as_json(): these keys, in this order
    y = np.array([0, 0, 1, 1])
    m = classification_metrics(y, np.array([[0.9, 0.1], [0.4, 0.6], [0.2, 0.8], [0.3, 0.7]]), ["a", "b"])
    record = m.as_json()
    assert list(record) == ["n", "accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1",
                            "per_class", "confusion_matrix", "roc_auc"]
    assert record["per_class"]["b"] == {"precision": 2 / 3, "recall": 1.0, "f1": 0.8, "support": 2}
    assert record["confusion_matrix"] == [[1, 1], [0, 2]] and record["roc_auc"] == 1.0
    base = majority_baseline(np.array([0, 0, 1]), y, ["a", "b"]).as_json()
    assert list(base)[-2:] == ["roc_auc", "majority_class"] and base["roc_auc"] == 0.5
    with_op = dataclasses.replace(m, operating_point={"class": "b"}).with_report({"calibration": {"ece": 0.1}})
    assert list(with_op.as_json())[-2:] == ["operating_point", "calibration"]

