"""One training run over a loaded data set, estimated honestly.

Outer split: one seeded stratified train/validation split, or K stratified folds, on unique
images. Each outer validation fold is scored **once**. Every choice made from data happens
inside the outer training part:

- a network trained by epochs (``config.selection == "inner"``): the best epoch and early
  stopping on an inner stratified split (``val_fraction`` of the training part);
- a pretrained backbone with ``finetune="head"``: λ and the step count by inner K-fold CV,
  then the head is refit on the whole training part (:mod:`training.transfer.strategy`, which also computes
  what a backbone's folds share once: its frozen features or maps);
- a target recall's threshold: on the inner validation predictions;
- the calibration of the probabilities (``config.calibration``) and the referral threshold: on the same inner
  predictions (the head's inner out-of-fold ones, or a network's inner validation split); the operating point
  and the referral threshold are chosen on the calibrated inner probabilities.

Which of these a run does is its strategy (:func:`training.loop.registry.strategy`); this module is the fold
loop, and trains the networks by epochs. With ``selection == "last"`` (the lab's 2020 setup) nothing is chosen:
the last epoch is scored, and the outer fold only draws the learning curves."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from common.files import output_dir, write_json_atomic
from common.layout import RunLayout
from common.timing import device_description
from training.data.dataset import Dataset
from training.data.labels import require_two_classes, stratified_split
from training.evaluation.calibration import apply as calibrate
from training.evaluation.calibration import referral_confidence
from training.evaluation.decision import decide, operating_point
from training.evaluation.metrics import majority_baseline
from training.loop.config import TrainConfig
from training.loop.fit import fit, write_history
from training.loop.records import FoldResult
from training.loop.registry import Strategy, build_model, mirror_average, strategy, torchvision_weights
from training.loop.scoring import (
    calibrate_on_inner,
    calibration_of,
    referral_on_inner,
    score,
    shift_of,
    splits_for,
)
from training.loop.steps import make_eval_step, predict_proba
from training.runs.report import write_run_report
from training.transfer.strategy import Maps, cache_inputs, head_fold, initial_head

log = logging.getLogger(__name__)  # shown by the commands (experiments.cli); silent in library use


def _network_fold(data: Dataset, config: TrainConfig, tr: np.ndarray, va: np.ndarray, out: Path, *, resume: bool,
                  progress: bool, backbone: dict | None, feats: np.ndarray | None = None,
                  maps: Maps | None = None) -> FoldResult:
    """Train by epochs; choose the epoch on an inner split of ``tr`` (or take the last); score ``va`` once.
    ``feats``: the frozen backbone's features, for a fine-tuned model that starts from the head; ``maps``:
    the frozen blocks' cached activation maps, which the trainable top then trains and is scored on."""
    if data.x is None and maps is None:
        raise ValueError("training a network by epochs needs the decoded images: load the data with decode=True")
    if config.selection == "inner":
        rel_tr, rel_va = stratified_split(data.y[tr], val_fraction=config.val_fraction, seed=config.seed + 1,
                                          class_names=data.class_names)
        fit_tr, fit_va = tr[rel_tr], tr[rel_va]
    elif config.selection == "last":
        if config.patience is not None:
            raise ValueError("early stopping (patience) chooses an epoch from data: use selection 'inner'")
        fit_tr, fit_va = tr, va  # the outer fold only draws the curves: nothing is chosen on it
    else:
        raise ValueError(f"unknown selection {config.selection!r}; expected 'inner' or 'last'")
    head = initial_head(data, config, feats, fit_tr) if feats is not None else None
    if maps is None:
        x_train, x_fit_va, x_va = data.x[fit_tr], data.x[fit_va], data.x[va]
    else:  # each training photo's map, its mirror image's and its views'; (map, mirror map) to validate
        x_train = maps.training(fit_tr)
        x_fit_va, x_va = maps.plain[fit_va], maps.plain[va]
    maps_from = None if maps is None else maps.block
    refit = config.refit and config.selection == "inner"
    result = fit(config, x_train, data.y[fit_tr], x_fit_va, data.y[fit_va], data.class_names,
                 out / "selection" if refit else out, resume=resume, progress=progress, backbone=backbone,
                 head=head, maps_from=maps_from)
    del x_train
    cal, referral, inner_probs = None, None, result.val_probs
    if config.selection == "inner":  # on the inner validation split, which the chosen model did not train on
        cal, inner_probs = calibrate_on_inner(config, result.val_probs, data.y[fit_va])
    op = operating_point(config.target_recall, data.class_names, inner_probs, data.y[fit_va]) \
        if config.selection == "inner" else None
    if config.selection == "inner":
        referral = referral_on_inner(config, inner_probs, data.y[fit_va], op, shift_of(cal))
    chosen = result
    if refit:  # the chosen epoch count on the whole training part: that model is saved and scored
        log.info(f"refit on all {len(tr)} training photos for the {result.best_epoch} epochs chosen (its "
                 f"validation lines read the inner split, which it now trains on)")
        head_all = initial_head(data, config, feats, tr) if feats is not None else None
        x_all = data.x[tr] if maps is None else maps.training(tr)
        again = dataclasses.replace(config, epochs=result.best_epoch, selection="last", patience=None, refit=False,
                                    calibration="none", refer_coverage=None, refer_accuracy=None)
        chosen = fit(again, x_all, data.y[tr], x_fit_va, data.y[fit_va], data.class_names, out, resume=resume,
                     progress=progress, backbone=backbone, head=head_all, maps_from=maps_from)
        del x_all
        # its per-epoch validation rows read the inner split, which it trained on: the run keeps the selection's
        write_history(out, result.history)
    if config.target_recall is not None and op is None:
        raise ValueError("a target recall needs a threshold chosen on inner data: use selection 'inner'")
    model = build_model(config, len(data.class_names), chosen.normalization)
    if maps is not None:  # the same classifier from the cached maps up (the frozen blocks' part ran once)
        model = model.clone(start_block=maps.block)
    eval_step = make_eval_step(model, tta_flip=mirror_average(config), mirrored=maps is not None)
    raw = predict_proba(eval_step, chosen.best_params, x_va, batch_size=config.batch_size)
    probs = calibrate(calibration_of(cal), raw)
    selection = (f"epoch {result.best_epoch} of best macro-F1 on an inner validation split "
                 f"({len(fit_va)} images of the training part)" if config.selection == "inner"
                 else f"the last epoch ({result.best_epoch}); nothing chosen on data")
    if refit:
        selection += f", then {result.best_epoch} epochs on the whole training part ({len(tr)} images)"
    if cal:
        selection += (f"; {cal['method']} calibration fitted on the inner validation split"
                      + (" (the selection model's predictions)" if refit else ""))
    return FoldResult(
        kind="epochs", history=result.history, metrics=score(data.y[va], probs, data.y[tr], data.class_names, op,
                                                             shift_of(cal)),
        baseline=majority_baseline(data.y[tr], data.y[va], data.class_names), best_epoch=result.best_epoch,
        val_probs=probs, normalization=chosen.normalization, operating_point=op, selection=selection,
        calibration=cal, referral=referral, raw_probs=raw)


def run_folds(data: Dataset, config: TrainConfig, out: str | Path, *, resume: bool = False,
              progress: bool = True, cache_dir: str | Path | None = None, engine: str = "auto"
              ) -> list[FoldResult]:
    """Fit on every outer split; each fold's folder gets split.json and its report. Returns one
    :class:`FoldResult` per outer fold. ``engine``: what computes a frozen backbone's features
    (:func:`~training.transfer.features.extract_features`)."""
    require_two_classes((data.class_names[int(c)] for c in np.unique(data.y)), data.source)  # after grouping
    out = output_dir(out)
    splits = splits_for(data, config)
    backbone, cached = None, None
    if torchvision_weights(config):
        from models.pretrained import load_torchvision_resnet50

        backbone = load_torchvision_resnet50(config.weights)
    if config.pretrained:
        cached = cache_inputs(data, config, cache_dir=cache_dir, progress=progress, engine=engine)
        backbone = cached.backbone
    results = []
    for k, (tr, va) in enumerate(splits, start=1):
        fold_out = out if len(splits) == 1 else output_dir(RunLayout(out).fold(k).root)
        write_json_atomic(RunLayout(fold_out).split, {"train": [data.paths[i] for i in tr],
                                                      "validation": [data.paths[i] for i in va]})
        start = time.perf_counter()
        if strategy(config) is Strategy.HEAD:
            result = head_fold(data, config, cached.feats, backbone, tr, va, fold_out, cached.views)
        else:
            result = _network_fold(data, config, tr, va, fold_out, resume=resume, progress=progress,
                                   backbone=backbone, feats=None if cached is None else cached.feats,
                                   maps=None if cached is None else cached.maps)
        result = result._replace(seconds=time.perf_counter() - start, outer_index=va)
        saved = {"config": config.to_json(), "class_names": data.class_names,
                 "normalization": result.normalization, "operating_point": result.operating_point,
                 "calibration": result.calibration, "referral": result.referral}
        write_json_atomic(RunLayout(fold_out).saved_run, saved)
        what = config.model + (f" ({config.finetune})" if config.pretrained else "")
        header = (f"Model: {what}. Data: {data.source} ({data.grouping.name}; "
                  f"{len(tr)} train / {len(va)} validation, scored once"
                  f"{'' if len(splits) == 1 else f', fold {k} of {len(splits)}'}). Image {config.image_size} px "
                  f"{'RGB' if config.rgb else 'grayscale'}. Selection: {result.selection}. "
                  f"Device: {device_description()}.")
        results.append(write_run_report(fold_out, result, data.class_names, header, data.y[va],
                                        key=jax.random.PRNGKey(config.seed)))
    return results


def pooled_predictions(results: list[FoldResult], y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(y_true, y_pred)`` over every scored fold (each image once when the folds partition the data)."""
    idx = np.concatenate([r.outer_index for r in results])
    pred = np.concatenate([decide(r.val_probs, r.operating_point, shift_of(r.calibration)) for r in results])
    return y[idx], pred


class Pooled(NamedTuple):
    """Every scored photo once, over the folds: labels, decisions, (calibrated) probabilities, the probabilities
    before calibration (None when no fold was calibrated), and whether each fold's referral threshold keeps the
    photo (None when no threshold was saved)."""

    y: np.ndarray
    y_pred: np.ndarray
    probs: np.ndarray
    raw_probs: np.ndarray | None
    kept: np.ndarray | None
    conf: np.ndarray  # what referral ranks by (each fold's referral_confidence, with its calibration's shift)


def pooled(results: list[FoldResult], y: np.ndarray) -> Pooled:
    """:class:`Pooled` over ``results`` (their ``outer_index`` rows of ``y``)."""
    idx = np.concatenate([r.outer_index for r in results])
    probs = np.concatenate([r.val_probs for r in results])
    raw = (np.concatenate([r.raw_probs if r.raw_probs is not None else r.val_probs for r in results])
           if any(r.calibration for r in results) else None)
    pred = np.concatenate([decide(r.val_probs, r.operating_point, shift_of(r.calibration)) for r in results])
    conf = np.concatenate([referral_confidence(r.val_probs, decide(r.val_probs, r.operating_point,
                                                                   shift_of(r.calibration)), shift_of(r.calibration))
                           for r in results])
    kept = (conf >= np.concatenate([np.full(len(r.outer_index), r.referral["threshold"]) for r in results])
            if all(r.referral for r in results) else None)
    return Pooled(y[idx], pred, probs, raw, kept, conf)


