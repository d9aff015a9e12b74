"""A run's report: metrics beside the majority baseline (Markdown, CSV, JSON) and PNG plots."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from common.tables import plain_text, pyplot, save_figure, write_table
from training.evaluation.metrics import beats_baseline

if TYPE_CHECKING:
    from training.runs.records import FoldResult

HEADLINE = ("accuracy", "balanced_accuracy", "macro_precision", "macro_recall", "macro_f1", "roc_auc",
            # ordered classes only (Improbable < Possible < Probable): training.evaluation.ordinal
            "linear_weighted_kappa", "quadratic_weighted_kappa", "mean_absolute_level_error")


def metric_rows(result: dict, baseline: dict) -> list[dict]:
    """One row per metric: model, majority baseline."""
    rows = [{"metric": k, "model": result[k], "majority_baseline": baseline.get(k) if baseline.get(k) is not None
             else "n/a"} for k in HEADLINE
            if result.get(k) is not None]
    for name, m in result["per_class"].items():
        b = baseline["per_class"][name]
        for k in ("precision", "recall", "f1"):
            rows.append({"metric": f"{k} [{name}]", "model": m[k], "majority_baseline": b[k]})
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


def write_run_report(out: Path, result: FoldResult, class_names: Sequence[str], header: str) -> str:
    """``metrics.{md,csv}``, ``confusion_matrix.png``, and ``learning_curves.png`` (epochs) or
    ``head_selection.png`` and ``history.*`` (a head); returns the verdict line."""
    metrics, baseline = result.metrics, result.baseline
    verdict = ("beats the majority baseline on balanced accuracy and macro-F1"
               if beats_baseline(metrics, baseline) else
               "does NOT beat the majority baseline on balanced accuracy and macro-F1")
    op = metrics.get("operating_point")
    op_line = (f"\n\nOperating point: predict {op['class']} when its probability ≥ {op['threshold']:.4f} (chosen "
               f"for recall ≥ {op['target_recall']:g} on inner data); on this fold recall {op['recall']:.3f}, "
               f"precision {op['precision']:.3f}.") if op else ""
    notes = (f"{header}\n\nMajority class: {baseline['majority_class']}. The model {verdict}. The validation "
             f"fold was not used for any choice.{op_line}\n\nConfusion matrix (rows true, columns "
             f"predicted; {', '.join(class_names)}): {metrics['confusion_matrix']}\n")
    write_table(metric_rows(metrics, baseline), out, "metrics", title="Validation metrics", notes=notes)
    if result.kind == "head":
        plot_head_selection(result.curves, result.history, out / "head_selection.png")
        write_table(result.history, out, "history", title="Head selection: mean inner-validation loss")
    else:
        plot_history(result.history, out / "learning_curves.png")
    plot_confusion(metrics["confusion_matrix"], class_names, out / "confusion_matrix.png",
                   f"validation (scored once), {'step' if result.kind == 'head' else 'epoch'} {result.best_epoch}")
    return verdict
