"""Frozen features of several backbones, alone and combined, on the same folds, as one library call:
:func:`compare_backbones` (behind ``experiments.backbones``).

    report = compare_backbones(DataSpec("photos/", scenario="Pr_Im"), "reports/backbones", BackboneOptions())

Rows (:class:`FeatureRow`): each backbone alone (at its native size, or ``image_size``), then all of them with
their features side by side under one head (``concat``), and a head each with the probabilities averaged
(``average``). Every head is the default's (λ and steps by inner CV of each training part); each outer fold is
scored once; balanced accuracy pooled over all scored photos with a stratified bootstrap 95 % interval. Writes
``backbones.{md,csv}`` and ``backbones.png``. Progress goes to the ``training`` logger (the commands show it on
stdout).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from training.runs.experiment import DataSpec

log = logging.getLogger(__name__)  # shown by the commands (experiments.cli); silent in library use

COLUMNS = ("features", "balanced accuracy", "95% interval", "macro-F1", "per fold", "head s")  # backbones.md's


@dataclass(frozen=True)
class BackboneOptions:
    """The backbones to compare and combine, one image size for all (None: each one's native size), the outer
    folds (each scored once), the seed; skipping unreadable photos, where caches live, progress bars, the engine."""

    backbones: tuple[str, ...] = ("efficientnet_lite0", "efficientnet_lite1")
    image_size: int | None = None
    folds: int = 5
    seed: int = 0
    skip_bad: bool = False
    cache_dir: str | None = None
    engine: str = "auto"
    progress: bool = True


class FeatureRow(NamedTuple):
    """One feature set's row: its name, the pooled balanced accuracy (4 decimals) with its bootstrap 95 % interval
    (``ci_low``, ``ci_high``), the pooled macro-F1, each outer fold's balanced accuracy and the heads' seconds."""

    features: str
    balanced_accuracy: float
    ci_low: float
    ci_high: float
    macro_f1: float
    per_fold: tuple[float, ...]
    head_seconds: float

    def cells(self) -> dict[str, Any]:
        """The table's cells in :data:`COLUMNS` order."""
        return {"features": self.features, "balanced accuracy": self.balanced_accuracy,
                "95% interval": f"{self.ci_low:.3f}–{self.ci_high:.3f}", "macro-F1": self.macro_f1,
                "per fold": " ".join(f"{b:.3f}" for b in self.per_fold), "head s": round(self.head_seconds, 1)}


class FoldProbabilities(NamedTuple):
    """What :func:`fold_probabilities` gives back: the photos read, each backbone's configuration, each row's
    ``[(outer validation rows, probabilities)]`` and each row's head seconds."""

    data: Any
    configs: dict
    probs: dict[str, list[tuple[np.ndarray, np.ndarray]]]
    seconds: dict[str, float]


class BackboneReport(NamedTuple):
    """What :func:`compare_backbones` gives back: the rows, the photos compared on, the output folder."""

    rows: list[FeatureRow]
    n_images: int
    out: str


def _check(options: BackboneOptions) -> None:
    if not options.backbones or len(set(options.backbones)) != len(options.backbones):
        raise ValueError(f"backbones: each named once, got {' '.join(options.backbones)}")
    if options.folds < 2:
        raise ValueError(f"folds: at least 2 outer folds, got {options.folds}")


def fold_probabilities(data: DataSpec, options: BackboneOptions = BackboneOptions()) -> FoldProbabilities:
    """Every backbone's features (cached), then each row's heads on the same outer folds."""
    from models.registry import model_kind
    from training.data.dataset import load_dataset
    from training.data.decoding import Preprocess
    from training.loop.config import get_config
    from training.transfer.features import backbone_for, extract_features
    from training.transfer.strategy import head_cv_probs

    _check(options)
    names = list(options.backbones)
    configs = {v: get_config("pretrained", model=v, seed=options.seed, folds=options.folds,
                             image_size=options.image_size or model_kind(v).native_size) for v in names}
    first = configs[names[0]]
    # every backbone's weights before any photo: a missing package stops the command before any work
    weights = {v: backbone_for(config, cache_dir=options.cache_dir) for v, config in configs.items()}
    photos = load_dataset(data.source, Preprocess(first.image_size, first.crop, True), scenario=data.scenario,
                          grouping_file=data.grouping, skip_bad=options.skip_bad, cache_dir=options.cache_dir,
                          progress=False, decode=options.skip_bad)  # decoded only to find bad files
    log.info(f"{photos.source}: {photos.report.summary()}")  # what was read, skipped or left out, with counts
    feats = {}
    for v, config in configs.items():
        backbone, digest = weights[v]
        pre = Preprocess(config.image_size, config.crop, True)
        feats[v], _ = extract_features(photos.paths, photos.digests, v, backbone, digest, pre.cache_key(), pre=pre,
                                       cache_dir=options.cache_dir, batch_size=config.batch_size,
                                       progress=options.progress, engine=options.engine)
    cases = [(v, [v], "concat") for v in names]
    if len(names) > 1:
        joined = " + ".join(names)
        cases += [(f"{joined} (concat)", names, "concat"), (f"{joined} (average)", names, "average")]
    probs, seconds = {}, {}
    for name, members, combine in cases:
        start = time.perf_counter()
        probs[name] = head_cv_probs(photos, first, [feats[v] for v in members], combine=combine)
        seconds[name] = time.perf_counter() - start
    return FoldProbabilities(photos, configs, probs, seconds)


def compare_backbones(data: DataSpec, out: str | os.PathLike,
                      options: BackboneOptions = BackboneOptions()) -> BackboneReport:
    """Score each backbone's frozen features, and their combinations, on the same folds of ``data``'s photos
    and write the table and plot into ``out`` (see the module); the folder is made only once the rows exist."""
    from common.files import output_dir
    from common.tables import write_table
    from common.timing import device_description

    photos, configs, probs, seconds = fold_probabilities(data, options)
    rows = []
    for name, folds in probs.items():
        rows.append(feature_row(name, photos, folds, options.seed, seconds[name]))
        log.info(f"{name}: balanced accuracy {rows[-1].balanced_accuracy:.3f} [{rows[-1].cells()['95% interval']}]")
    out = output_dir(out)  # made only now: a run that stops early leaves no folder behind
    sizes = ", ".join(f"{v} {c.image_size} px" for v, c in configs.items())
    write_table([r.cells() for r in rows], out, "backbones",
                title="Frozen features of several backbones on the same folds",
                notes=f"Data: {data.source} ({photos.grouping.name}, {len(photos.y)} images; "
                      f"{photos.report.summary()}); {options.folds} outer folds "
                      f"(seed {options.seed}), each scored once; the head's λ and steps by inner CV. Sizes: {sizes}. "
                      f"Balanced accuracy over all scored images, bootstrap 95% interval. "
                      f"Device: {device_description()}.\n", columns=COLUMNS)
    plot(rows, out / "backbones.png", chance=1 / len(photos.class_names))
    return BackboneReport(rows, len(photos.y), str(out))


def feature_row(name: str, data, folds: list[tuple[np.ndarray, np.ndarray]], seed: int, seconds: float) -> FeatureRow:
    """The row of the feature set ``name`` from its outer folds' ``(validation rows, probabilities)``."""
    import jax

    from training.evaluation.metrics import bootstrap_interval, classification_metrics

    y_true = np.concatenate([data.y[va] for va, _ in folds])
    y_pred = np.concatenate([p.argmax(axis=1) for _, p in folds])
    pooled = classification_metrics(y_true, np.eye(len(data.class_names))[y_pred], data.class_names)
    lo, hi = bootstrap_interval(y_true, y_pred, key=jax.random.PRNGKey(seed))
    per_fold = tuple(classification_metrics(data.y[va], p, data.class_names).balanced_accuracy for va, p in folds)
    return FeatureRow(name, round(pooled.balanced_accuracy, 4), lo, hi, round(pooled.macro_f1, 4), per_fold,
                      seconds)


def plot(rows: list[FeatureRow], path, *, chance: float) -> None:
    """Each row's balanced accuracy with its interval, beside chance."""
    from common.tables import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(rows) + 1.2))
    y = np.arange(len(rows))[::-1]
    acc = np.array([r.balanced_accuracy for r in rows])
    err = np.array([[a - r.ci_low, r.ci_high - a] for a, r in zip(acc, rows)]).T
    ax.barh(y, acc, xerr=err, color="tab:green", capsize=3)
    ax.set_yticks(y, [r.features for r in rows], fontsize=8)
    ax.axvline(chance, color="grey", ls="--", lw=0.8, label=f"chance ({chance:.2f})")
    ax.legend(fontsize=8, loc="lower right")
    ax.set_xlabel("balanced accuracy (bootstrap 95% interval)")
    ax.set_xlim(0, 1)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
