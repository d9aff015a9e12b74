"""A whole run in one call: :func:`train_and_evaluate` (the library's entry point behind ``experiments.train``).

    summary = train_and_evaluate(get_config("pretrained"), DataSpec("photos/", scenario="Pr_Im"), "runs/pr_im")

It checks the run folder, reads the data once (the user's weights file first, before any photo), trains and
scores every outer fold once (:func:`~training.runs.folds.run_folds`), and writes the run's summary: balanced
accuracy over all scored photos with its stratified bootstrap interval, the calibration measures and the
referral outcome. In a job of several processes every process computes, process 0 alone writes. Progress and
the figures go to the ``training`` logger (the commands show it on stdout).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

from training.evaluation.metrics import Metrics
from training.loop.config import TrainConfig
from training.loop.records import FoldResult

log = logging.getLogger(__name__)  # shown by the commands (experiments.cli); silent in library use


@dataclass(frozen=True)
class DataSpec:
    """Where the labelled photos come from: a folder of class folders or a ``path,label`` CSV (``source``; None:
    the embedded digits), and how their labels are grouped (a ``scenario`` name or a ``grouping`` file)."""

    source: str | None
    scenario: str | None = None
    grouping: str | None = None


@dataclass(frozen=True)
class RunOptions:
    """How a run goes, not what it computes: continue or replace a run folder, skip unreadable photos, where
    caches live, decoding threads, progress bars, the features' engine."""

    resume: bool = False
    overwrite: bool = False
    skip_bad: bool = False
    cache_dir: str | None = None
    workers: int | None = None
    progress: bool = True
    engine: str = "auto"


class RunSummary(NamedTuple):
    """What :func:`train_and_evaluate` gives back: the run folder, the configuration used, the classes, each
    outer fold's :class:`~training.loop.records.FoldResult`, the pooled metrics of every scored photo, the
    stratified bootstrap 95 % interval of their balanced accuracy, and this process's place in the job (0: the
    one that wrote the run folder)."""

    out: str
    config: TrainConfig
    class_names: list[str]
    results: list[FoldResult]
    pooled: Metrics
    balanced_accuracy_ci95: tuple[float, float]
    process_index: int = 0


class SettingError(ValueError):
    """A setting that cannot run as given, named by ``setting`` (a :class:`TrainConfig` field, or ``data``)."""

    def __init__(self, setting: str, message: str):
        super().__init__(message)
        self.setting = setting


DIGITS_SIZE = 32  # the embedded 8×8 digits, upscaled for Model 1's five convolutions and three poolings


def training_config(preset: str, data_spec: DataSpec, *, seed: int = 0, **overrides) -> TrainConfig:
    """The configuration ``experiments.train`` runs: the ``preset`` (with fine-tuning's recipe for a fine-tuned
    backbone) and ``overrides`` on top. Unless ``image_size`` is given, a pretrained backbone runs at the size
    its weights expect (the registry's native size) and a network from scratch on the embedded digits at
    :data:`DIGITS_SIZE`. ``augment=True`` means the default :class:`~training.data.augment.Augment`.
    Raises ``ValueError`` for settings that do not go together (:class:`TrainConfig`'s own checks)."""
    import dataclasses

    from models.registry import model_kind
    from training.data.augment import Augment
    from training.loop.config import get_config

    if overrides.get("augment") is True:
        overrides["augment"] = Augment()
    config = get_config(preset, seed=seed, **overrides)
    if "image_size" not in overrides:
        native = model_kind(config.model).native_size
        if native is not None:
            config = dataclasses.replace(config, image_size=native)
        elif data_spec.source is None:  # a network from scratch (every backbone has a native size)
            config = dataclasses.replace(config, image_size=DIGITS_SIZE)
    return config


def check_settings(config: TrainConfig, data_spec: DataSpec) -> None:
    """Refuse, before any work, what cannot run: ``grad="manual"`` for a model without a hand-written backward,
    and photos of fewer than two classes (the files are listed, none decoded). A source that is missing or
    malformed is left to the run, which names it. Raises :class:`SettingError` naming the setting."""
    from models.registry import model_kind
    from training.data.discovery import discover
    from training.data.labels import require_two_classes

    kind = model_kind(config.model)
    if config.grad == "manual" and not kind.manual_backward(config):  # the rule the train step itself applies
        raise SettingError("grad", f"manual gradients are written for Model 1 with ReLU and the EfficientNet-Lite "
                                   f"models, not {config.model}"
                                   + (f" with {config.activation}" if kind.manual_activations else ""))
    if data_spec.source is None:
        return
    try:
        items = discover(data_spec.source)  # lists files, decodes nothing
    except (ValueError, OSError):
        return  # a missing or malformed source: reported by the run, naming it
    try:
        require_two_classes((label for _, label in items), data_spec.source)
    except ValueError as exc:
        raise SettingError("data", str(exc)) from None


def data_record(data) -> dict:
    """What identifies the training data of a run: its classes, size and a digest of (image, label) pairs."""
    pairs = sorted(f"{d} {data.class_names[int(y)]}" for d, y in zip(data.digests, data.y, strict=True))
    return {"classes": list(data.class_names), "images": len(pairs),
            "fingerprint": hashlib.sha256("\n".join(pairs).encode()).hexdigest()}


def train_and_evaluate(config: TrainConfig, data_spec: DataSpec, workdir: str | Path,
                       options: RunOptions = RunOptions()) -> RunSummary:
    """Train ``config`` on ``data_spec``'s photos into the run folder ``workdir`` and score it (see the module)."""
    from training.loop.distributed import outputs_of_this_process, process_count, process_index

    if options.resume and process_count() > 1:
        raise ValueError("--resume: a job of several processes cannot resume (process 0 alone holds the run); "
                         "resume it as one process, or start again with --overwrite")
    with outputs_of_this_process(workdir) as out:
        return _run(config, data_spec, out, options)._replace(process_index=process_index())


def _run(config: TrainConfig, spec: DataSpec, out_path: Path, options: RunOptions) -> RunSummary:
    from training.data.dataset import load_dataset
    from training.data.decoding import Preprocess
    from training.loop.registry import strategy
    from training.runs.folder import RunFolder
    from training.runs.results import describe

    folder = RunFolder(out_path, resume=options.resume, overwrite=options.overwrite)
    folder.check()  # before any work
    if config.weights:  # a user's weights file is read, safely, before any photo
        from models.pretrained import check_weights_file

        check_weights_file(config.model, config.weights, cache_dir=options.cache_dir)
    data = load_dataset(spec.source, Preprocess(config.image_size, config.crop, config.rgb), scenario=spec.scenario,
                        grouping_file=spec.grouping, skip_bad=options.skip_bad, cache_dir=options.cache_dir,
                        workers=options.workers, progress=options.progress,
                        # a frozen backbone needs only features: photos are read in chunks, never all at once
                        decode=strategy(config).decodes_photos or options.skip_bad)
    counts = {name: int(np.sum(data.y == i)) for i, name in enumerate(data.class_names)}
    log.info(f"{data.source}: {data.report.summary()}; classes {counts}")
    log.info(f"configuration: {describe(config)}")
    with folder.writing({"config": config.to_json(), "data": data_record(data)}) as out:
        summary = _train(config, data, out, counts, options)
    return summary._replace(out=str(folder.target))


def _train(config: TrainConfig, data, out: Path, counts: dict, options: RunOptions) -> RunSummary:
    import jax

    from common.files import write_json_atomic
    from common.layout import RunLayout
    from common.tables import write_table
    from training.evaluation.metrics import bootstrap_interval, classification_metrics
    from training.runs.folds import pooled_predictions, run_folds
    from training.runs.report import HEADLINE

    write_json_atomic(RunLayout(out).data_report, {"source": data.source, "grouping": data.grouping.name,
                                                   "class_counts": counts, **data.report.as_dict()})
    results = run_folds(data, config, out, resume=options.resume, progress=options.progress,
                        cache_dir=options.cache_dir, engine=options.engine)
    for r in results:
        log.info(f"validation (scored once): accuracy {r.metrics.accuracy:.3f}, balanced accuracy "
                 f"{r.metrics.balanced_accuracy:.3f}, macro-F1 {r.metrics.macro_f1:.3f} "
                 f"(majority baseline {r.baseline.accuracy:.3f} / "
                 f"{r.baseline.balanced_accuracy:.3f} / {r.baseline.macro_f1:.3f}): {r.verdict}")
        if r.metrics.operating_point:
            op = r.metrics.operating_point
            log.info(f"operating point: {op['class']} when p ≥ {op['threshold']:.4f}: recall {op['recall']:.3f}, "
                     f"precision {op['precision']:.3f} (target recall {op['target_recall']:g})")
    y_true, y_pred = pooled_predictions(results, data.y)
    lo, hi = bootstrap_interval(y_true, y_pred, key=jax.random.PRNGKey(config.seed))
    rows = []
    for key in HEADLINE:
        vals = [getattr(r.metrics, key) for r in results if getattr(r.metrics, key) is not None]
        base = [getattr(r.baseline, key) for r in results if getattr(r.baseline, key) is not None]
        if vals:
            rows.append({"metric": key, "mean": float(np.mean(vals)), "std": float(np.std(vals)),
                         "baseline_mean": float(np.mean(base)) if base else ""})
    pooled = classification_metrics(y_true, np.eye(len(data.class_names))[y_pred], data.class_names)
    notes = (f"Every figure is from validation folds used for no choice. Balanced accuracy over all scored "
             f"images: {pooled.balanced_accuracy:.3f}, stratified bootstrap 95% interval [{lo:.3f}, {hi:.3f}] "
             f"({len(y_true)} images).\n")
    calib, cal_notes = calibration_summary(results, data.y, out, config)
    notes += cal_notes
    title = (f"{len(results)}-fold cross-validation (mean ± std over folds)" if len(results) > 1
             else "Validation split (scored once)")
    write_table(rows, out, "summary", title=title, notes=notes)
    log.info(f"balanced accuracy {pooled.balanced_accuracy:.3f}, bootstrap 95% interval [{lo:.3f}, {hi:.3f}]")
    log.info(cal_notes.strip())
    write_json_atomic(out / "summary.json", {
        "config": config.to_json(), "balanced_accuracy": pooled.balanced_accuracy,
        "balanced_accuracy_ci95": [lo, hi], "n_scored": int(len(y_true)), **calib,
        "folds": [{"metrics": r.metrics.as_json(), "baseline": r.baseline.as_json(), "best_epoch": r.best_epoch,
                   "selection": r.selection, "seconds": r.seconds} for r in results]})
    return RunSummary(str(out), config, list(data.class_names), results, pooled, (lo, hi))


def calibration_summary(results, y, out, config: TrainConfig) -> tuple[dict, str]:
    """The pooled scored photos' calibration measures, risk-coverage curve (``reliability_diagram.png``,
    ``risk_coverage.*`` in ``out``) and what the saved referral thresholds did: ``(summary.json entries,
    Markdown notes)``."""
    import jax

    from training.evaluation.calibration import referral_outcome
    from training.runs.folds import pooled
    from training.runs.report import calibration_notes, calibration_report

    p = pooled(results, y)
    key = jax.random.PRNGKey(config.seed)
    report = calibration_report(out, p.probs, p.y, raw_probs=p.raw_probs, y_pred=p.y_pred, key=key,
                                title=f"All {len(p.y)} scored photos.", conf=p.conf)
    cal = [r.calibration["method"] for r in results if r.calibration]
    notes = ("\nCalibration: " + (f"{config.calibration}, fitted in each fold on inner predictions of its training "
                                   f"part (chosen: {', '.join(cal)})" if cal else "none (the raw softmax)")
             + f"; all {len(p.y)} scored photos:\n\n"
             + calibration_notes(report["calibration"], report.get("uncalibrated")))
    if p.kept is not None:
        outcome = referral_outcome(p.y, p.y_pred, p.kept, key=key)
        ref = results[0].referral
        lo, hi = outcome["balanced_accuracy_kept_ci95"]
        clo, chi = outcome["coverage_ci95"]
        notes += (f"\nReferral (threshold chosen in each fold on its inner predictions, for {ref['rule']} "
                  f"{ref['target']:g}): {outcome['referred']} of {outcome['n']} photos referred; the "
                  f"{outcome['kept']} kept ({outcome['coverage']:.3f} [{clo:.3f}, {chi:.3f}]) have balanced "
                  f"accuracy {outcome['balanced_accuracy_kept']:.3f} [{lo:.3f}, {hi:.3f}] (all: "
                  f"{outcome['balanced_accuracy_all']:.3f}).\n")
        report["referral"] = outcome
    return report, notes
