"""A run's report: metrics beside the majority baseline (Markdown, CSV, JSON) and PNG plots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from common.tables import plain_text, pyplot, save_figure, write_table
from training.evaluation.metrics import Metrics, beats_baseline

if TYPE_CHECKING:
    from training.loop.records import FoldResult

HEADLINE = ("accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1", "roc_auc",
            # ordered classes only (Improbable < Possible < Probable): training.evaluation.ordinal
            "linear_weighted_kappa", "quadratic_weighted_kappa", "mean_absolute_level_error")


def metric_rows(result: Metrics, baseline: Metrics) -> list[dict]:
    """One row per metric: model, majority baseline."""
    rows = [{"metric": k, "model": getattr(result, k), "majority_baseline": getattr(baseline, k)
             if getattr(baseline, k) is not None else "n/a"} for k in HEADLINE
            if getattr(result, k) is not None]
    for name, m in result.per_class.items():
        b = baseline.per_class[name]
        for k in ("precision", "recall", "f1"):
            rows.append({"metric": f"{k} [{name}]", "model": getattr(m, k), "majority_baseline": getattr(b, k)})
    return rows


def plot_history(history: Sequence[dict], path: Path) -> None:
    plt = pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    ax1.plot(epochs, [h["val_loss"] for h in history], "s-", label="validation loss")
    ax1.set_xlabel("epoch")
    ax1.legend()
    for key in ("val_accuracy", "val_balanced_accuracy", "val_macro_f1"):
        ax2.plot(epochs, [h[key] for h in history], "o-", label=key.removeprefix("val_"))
    ax2.set_xlabel("epoch")
    ax2.set_ylim(0, 1)
    ax2.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def plot_head_selection(curves, history: Sequence[dict], path: Path) -> None:
    """Mean inner-validation loss against Adam steps, one line per λ."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    labels = [k for k in history[0] if k != "step"] if history else []
    for i, row in enumerate(np.asarray(curves)):
        ax.plot(np.arange(1, len(row) + 1), row, label=labels[i].removeprefix("inner_val_loss") if labels else None)
    ax.set_xlabel("Adam step")
    ax.set_ylabel("inner-validation loss")
    ax.set_ylim(top=min(float(np.max(curves)), 3 * float(np.min(curves)) + 0.5))
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def plot_confusion(matrix, class_names: Sequence[str], path: Path, title: str = "") -> None:
    from sklearn.metrics import ConfusionMatrixDisplay

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.2 * len(class_names) + 3, 1.2 * len(class_names) + 2.5))
    ConfusionMatrixDisplay(np.asarray(matrix), display_labels=[plain_text(c) for c in class_names]).plot(
        ax=ax, colorbar=False)
    ax.set_title(plain_text(title))
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def plot_reliability(probs, y, path: Path, title: str = "", y_pred=None) -> None:
    """Accuracy against mean confidence per equal-mass bin (the diagonal is perfect calibration)."""
    from training.evaluation.calibration import expected_calibration_error, reliability

    bins = reliability(probs, y, y_pred=y_pred)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    ax.plot([0, 1], [0, 1], "--", color="0.6", label="perfect calibration")
    for b in bins:
        ax.plot([b["low"], b["high"]], [b["accuracy"]] * 2, "-", color="C0", alpha=0.35, lw=3)
    ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", color="C0",
            label=f"{len(bins)} equal-mass bins (≥ {min(b['photos'] for b in bins)} photos)")
    lo = min(0.5, min(b["low"] for b in bins))
    ax.set_xlim(lo - 0.02, 1.01)
    ax.set_ylim(min(lo, min(b["accuracy"] for b in bins)) - 0.02, 1.01)
    ax.set_xlabel("mean confidence (the probability of the decision)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}\nECE {expected_calibration_error(probs, y, y_pred=y_pred):.3f}".strip(), fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def plot_risk_coverage(rows: Sequence[dict], path: Path, title: str = "") -> None:
    """Balanced accuracy of the most confident fraction kept, with its interval."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 4))
    cov = [r["coverage"] for r in rows]
    ax.plot(cov, [r["balanced_accuracy"] for r in rows], "o-", label="balanced accuracy of the photos kept")
    if rows and "balanced_accuracy_ci95" in rows[0]:
        ax.fill_between(cov, [r["balanced_accuracy_ci95"][0] for r in rows],
                        [r["balanced_accuracy_ci95"][1] for r in rows], alpha=0.2, label="95% interval (stratified)")
    ax.set_xlabel("fraction kept (the least confident referred)")
    ax.set_ylabel("balanced accuracy")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def calibration_notes(cal: dict, raw: dict | None = None) -> str:
    """Markdown lines: the calibration measures with their intervals (and before calibration, when given)."""
    def ci(m, k):
        lo, hi = m.get(f"{k}_ci95", (None, None))
        return f"{m[k]:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None else "")

    def line(m, what):
        return (f"- {what}: mean confidence {m['mean_confidence']:.3f} vs accuracy {m['accuracy']:.3f} (gap "
                f"{ci(m, 'confidence_gap')}); ECE {ci(m, 'ece')} ({m['ece_binning']}); Brier {ci(m, 'brier')}; "
                f"log-loss {ci(m, 'log_loss')}")

    text = line(cal, "calibrated" if raw is not None else "probabilities")
    if raw is not None:
        text += "\n" + line(raw, "before calibration")
    return text + "\n"


def calibration_report(out: Path, probs, y, *, raw_probs=None, y_pred=None, key=None, title: str = "",
                       n_boot: int = 1000, conf=None) -> dict:
    """``reliability_diagram.png``, ``risk_coverage.{md,csv,png}`` in ``out``; returns ``{"calibration",
    "uncalibrated" (when ``raw_probs``), "risk_coverage"}`` with stratified bootstrap intervals from ``key``."""
    from training.evaluation.calibration import calibration_metrics, risk_coverage

    y = np.asarray(y)
    result = {"calibration": calibration_metrics(probs, y, key=key, n_boot=n_boot, y_pred=y_pred)}
    if raw_probs is not None:
        result["uncalibrated"] = calibration_metrics(raw_probs, y, key=key, n_boot=n_boot, y_pred=y_pred)
    rc = risk_coverage(probs, y, y_pred, key=key, n_boot=n_boot, conf=conf)
    result["risk_coverage"] = rc
    rows = [{"fraction kept": r["coverage"], "photos kept": r["kept"], "balanced accuracy": r["balanced_accuracy"],
             "95% interval": "–".join(f"{v:.3f}" for v in r.get("balanced_accuracy_ci95", [])),
             "accuracy": r["accuracy"]} for r in rc]
    write_table(rows, out, "risk_coverage", title="Risk-coverage: balanced accuracy of the most confident photos",
                notes=f"{title} The least confident photos (the probability of their decision under equal class "
                      "frequencies: training.evaluation.calibration.referral_confidence) are referred to a person; "
                      "the rest are kept. Each bootstrap resample (stratified by class) keeps its own most "
                      "confident fraction: this curve describes the scored photos, the threshold saved with the "
                      "run is chosen on inner data.\n")
    plot_reliability(probs, y, out / "reliability_diagram.png", title, y_pred)
    plot_risk_coverage(rc, out / "risk_coverage.png", title)
    return result


def write_run_report(out: Path, result: FoldResult, class_names: Sequence[str], header: str,
                     y_val: np.ndarray | None = None, *, key=None) -> FoldResult:
    """``metrics.{md,csv}``, ``confusion_matrix.png``, and ``learning_curves.png`` (epochs) or
    ``head_selection.png`` and ``history.*`` (a head); with the scored labels ``y_val``, the calibration measures
    (``Metrics.with_report``), ``reliability_diagram.png`` and the risk-coverage curve
    (:func:`calibration_report`). Returns ``result`` with those measures in its metrics and its verdict line."""
    metrics, baseline = result.metrics, result.baseline
    cal_text = ""
    if y_val is not None:
        from training.evaluation.calibration import referral_confidence
        from training.evaluation.decision import decide

        cal = result.calibration
        pred = decide(result.val_probs, result.operating_point, cal["shift"] if cal else None)
        conf = referral_confidence(result.val_probs, pred, cal["shift"] if cal else None)
        report = calibration_report(out, result.val_probs, y_val, raw_probs=result.raw_probs if cal else None,
                                    y_pred=pred, key=key, title="This fold (scored once).", conf=conf)
        metrics = metrics.with_report(report)
        cal_text = ("\n\nCalibration: " + (f"{cal['method']} (requested {cal['requested']}), fitted on "
                                             f"{cal['fitted_on']} inner predictions of the training part"
                                             if cal else "none (the raw softmax)") + ". On this fold:\n\n"
                    + calibration_notes(report["calibration"], report.get("uncalibrated")))
        if result.referral:
            cal_text += (f"\nReferral: photos with confidence < {result.referral['threshold']:.4f} (chosen on inner "
                         f"predictions for {result.referral['rule']} {result.referral['target']:g}) go to a person: "
                         f"{int(np.sum(conf < result.referral['threshold']))} of {len(conf)} here.\n")
    verdict = ("beats the majority baseline on balanced accuracy and macro-F1"
               if beats_baseline(metrics, baseline) else
               "does NOT beat the majority baseline on balanced accuracy and macro-F1")
    op = metrics.operating_point
    op_line = (f"\n\nOperating point: predict {op['class']} when its probability ≥ {op['threshold']:.4f} (chosen "
               f"for recall ≥ {op['target_recall']:g} on inner data); on this fold recall {op['recall']:.3f}, "
               f"precision {op['precision']:.3f}.") if op else ""
    notes = (f"{header}\n\nMajority class: {baseline.majority_class}. The model {verdict}. The validation "
             f"fold was not used for any choice.{op_line}\n\nConfusion matrix (rows true, columns "
             f"predicted; {', '.join(class_names)}): {metrics.confusion_matrix}\n{cal_text}")
    write_table(metric_rows(metrics, baseline), out, "metrics", title="Validation metrics", notes=notes)
    if result.kind == "head":
        plot_head_selection(result.curves, result.history, out / "head_selection.png")
        write_table(result.history, out, "history", title="Head selection: mean inner-validation loss")
    else:
        plot_history(result.history, out / "learning_curves.png")
    plot_confusion(metrics.confusion_matrix, class_names, out / "confusion_matrix.png",
                   f"validation (scored once), {'step' if result.kind == 'head' else 'epoch'} {result.best_epoch}")
    return result._replace(metrics=metrics, verdict=verdict)
