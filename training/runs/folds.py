"""One training run over a loaded data set, estimated honestly.

Outer split: one seeded stratified train/validation split, or K stratified folds, on unique
images. Each outer validation fold is scored **once**. Every choice made from data happens
inside the outer training part:

- a network trained by epochs (``config.selection == "inner"``): the best epoch and early
  stopping on an inner stratified split (``val_fraction`` of the training part);
- a pretrained backbone with ``finetune="head"``: λ and the step count by inner K-fold CV,
  then the head is refit on the whole training part (:mod:`training.transfer`);
- a target recall's threshold: on the inner validation predictions;
- the calibration of the probabilities (``config.calibration``) and the referral threshold: on the same inner
  predictions (the head's inner out-of-fold ones, or a network's inner validation split); the operating point
  and the referral threshold are chosen on the calibrated inner probabilities.

With ``selection == "last"`` (the lab's 2020 setup) nothing is chosen: the last epoch is scored,
and the outer fold only draws the learning curves."""

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
from training.data.labels import require_two_classes, stratified_folds, stratified_split
from training.evaluation.calibration import apply as calibrate
from training.evaluation.calibration import (
    calibration_metrics,
    choose_calibration,
    choose_referral,
    referral_confidence,
)
from training.evaluation.decision import decide, operating_point
from training.evaluation.metrics import classification_metrics, majority_baseline
from training.loop.checkpoints import Checkpoints
from training.loop.config import PRESETS, TrainConfig
from training.loop.fit import fit, write_history
from training.loop.registry import Strategy, build_model, mirror_average, strategy, torchvision_weights
from training.loop.state import create_state
from training.loop.steps import class_weight_vector, make_eval_step, predict_proba
from training.runs.records import FoldResult
from training.runs.report import write_run_report
from training.transfer.features import backbone_for, extract_features, views_for
from training.transfer.head import fit_head, head_probs, select_head

log = logging.getLogger(__name__)  # shown by the commands (experiments.cli); silent in library use


def calibrate_on_inner(config: TrainConfig, probs: np.ndarray, y: np.ndarray) -> tuple[dict | None, np.ndarray]:
    """``(calibration record, calibrated probs)``: ``config.calibration`` fitted on inner predictions ``probs``
    of the training part and their labels ``y`` (never the scored fold). ``None`` with ``"none"``."""
    if config.calibration == "none":
        return None, probs
    choice = choose_calibration(config.calibration, probs, y, seed=config.seed + 2)
    record = {**choice.calibration.to_json(), "requested": config.calibration, "fitted_on": int(len(y)),
              "inner": calibration_metrics(calibrate(choice.calibration, probs), y)}
    if choice.cv_log_loss:
        record["cv_log_loss"] = choice.cv_log_loss
        record["cv_folds"] = choice.folds
    return record, calibrate(choice.calibration, probs)


def _calibration_of(record: dict | None):
    from training.evaluation.calibration import check_saved_calibration

    return None if record is None else check_saved_calibration(record, len(record["scale"]))


def referral_on_inner(config: TrainConfig, probs: np.ndarray, y: np.ndarray, op: dict | None,
                      shift=None) -> dict | None:
    """The referral threshold (``config.refer_accuracy`` or ``refer_coverage``) on calibrated inner ``probs``."""
    if config.refer_accuracy is None and config.refer_coverage is None:
        return None
    kind = {"balanced_accuracy": config.refer_accuracy} if config.refer_accuracy is not None \
        else {"coverage": config.refer_coverage}
    return choose_referral(probs, y, y_pred=decide(probs, op, shift), shift=shift, **kind).to_json()


def splits_for(data: Dataset, config: TrainConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """K stratified folds, or one stratified train/validation split, on unique images."""
    if config.folds > 1:
        return stratified_folds(data.y, config.folds, seed=config.seed, class_names=data.class_names)
    return [stratified_split(data.y, val_fraction=config.val_fraction, seed=config.seed,
                             class_names=data.class_names)]


def score(y: np.ndarray, probs: np.ndarray, y_train: np.ndarray, class_names: list[str], op: dict | None,
          shift=None) -> dict:
    """Metrics of the decisions (arg-max, or the operating point's rule; ``shift``: the calibration's, left out)
    on the scored fold."""
    metrics = classification_metrics(y, probs, class_names, y_pred=decide(probs, op, shift))
    if op is not None:
        m = metrics["per_class"][op["class"]]
        metrics["operating_point"] = {**op, "recall": m["recall"], "precision": m["precision"]}
    return metrics


def _head_fold(data: Dataset, config: TrainConfig, feats: np.ndarray, backbone: dict, tr: np.ndarray,
               va: np.ndarray, out: Path, views: np.ndarray | None = None) -> FoldResult:
    """Choose the head on inner folds of ``tr``, refit it on ``tr``, score ``va`` once, save the classifier."""
    n_classes = len(data.class_names)
    y_tr = data.y[tr]
    choice, head, norm, inner = _frozen_head(data, config, feats, tr, lr=config.learning_rate, views=views)
    cal, oof = calibrate_on_inner(config, choice.oof_probs, y_tr)
    op = operating_point(config.target_recall, data.class_names, oof, y_tr)
    referral = referral_on_inner(config, oof, y_tr, op, shift_of(cal))
    raw = head_probs(feats[va], head, norm, tta_flip=config.tta_flip)
    probs = calibrate(_calibration_of(cal), raw)
    metrics = score(data.y[va], probs, y_tr, data.class_names, op, shift_of(cal))
    # save the whole classifier (backbone + head) so predict/explain read photos directly
    model = build_model(config, n_classes, norm)
    state = create_state(model, config, (config.image_size, config.image_size, 3), key=jax.random.PRNGKey(config.seed),
                         backbone=backbone)
    state = state.replace(params={**state.params, "head": head})
    ckpt = Checkpoints(RunLayout(out).checkpoints)
    meta = {"epoch": choice.steps, "history": [], "best_macro_f1": metrics["macro_f1"], "metrics": metrics}
    ckpt.save("best", choice.steps, state, meta)  # one model, no epochs: "best" is the refit head
    ckpt.close()
    history = [{"step": t + 1, **{f"inner_val_loss[l2={lam:g}]": float(choice.curves[i, t])
                                  for i, lam in enumerate(choice.l2_grid)}}
               for t in range(0, config.head_steps, max(config.head_steps // 30, 1))]
    return FoldResult(
        kind="head", history=history, metrics=metrics, baseline=majority_baseline(y_tr, data.y[va], data.class_names),
        best_epoch=choice.steps, val_probs=probs, normalization=norm, operating_point=op,
        selection=f"head: λ = {choice.l2:g} (of {len(choice.l2_grid)}, {min(choice.l2_grid):g}–"
                  f"{max(choice.l2_grid):g}), {choice.steps} Adam steps (lr {config.learning_rate:g}), "
                  f"chosen by {inner}-fold CV inside the training part; refit on all of it"
                  + (f"; {cal['method']} calibration fitted on its {inner}-fold out-of-fold predictions"
                     if cal else ""),
        curves=choice.curves, calibration=cal, referral=referral, raw_probs=raw)


def _frozen_head(data: Dataset, config: TrainConfig, feats: np.ndarray, rows: np.ndarray, *, lr: float,
                 views: np.ndarray | None = None):
    """The softmax head on the frozen features of ``rows`` (and their augmented ``views``, which only train):
    λ and steps chosen by inner CV on them, then refit on all of them. ``(choice, head, feature
    standardization, inner folds)``; ``ValueError`` when a class has fewer than 2 photos in ``rows``."""
    n_classes = len(data.class_names)
    y = data.y[rows]
    counts = np.bincount(y, minlength=n_classes)
    inner = min(config.inner_folds, int(counts.min()))
    if inner < 2:
        raise ValueError(f"too few images to choose the head on inner folds: {dict(zip(data.class_names, counts.tolist()))} in the training part (need ≥ 2 per class)")  # noqa: E501
    weights = class_weight_vector(y, n_classes, config.class_weights)
    choice = select_head(feats[rows], y, n_classes, weights, l2_grid=config.head_l2_grid, steps=config.head_steps,
                         lr=lr, inner_folds=inner, seed=config.seed, grad=config.grad,
                         views=None if views is None else views[rows])
    head, norm = fit_head(feats[rows], y, n_classes, weights, l2=choice.l2, steps=choice.steps, lr=lr,
                          grad=config.grad, views=None if views is None else views[rows])
    return choice, head, norm, inner


def _initial_head(data: Dataset, config: TrainConfig, feats: np.ndarray, rows: np.ndarray
                  ) -> tuple[dict, dict] | None:
    """Where fine-tuning starts (``config.head_init``): :func:`_frozen_head` of ``rows`` at the head-only
    preset's rate, and its feature standardization. None, said in the log, when a class has fewer than 2
    photos there (no inner CV possible): a random head then."""
    smallest = int(np.bincount(data.y[rows], minlength=len(data.class_names)).min())
    if smallest < 2:
        log.info(f"fine-tuning starts from a random head: a class has {smallest} photo(s) in the {len(rows)} it "
                 "trains on, too few to choose the frozen-feature head by inner CV")
        return None
    choice, head, norm, inner = _frozen_head(data, config, feats, rows, lr=PRESETS["pretrained"]["learning_rate"])
    log.info(f"fine-tuning starts from the frozen-feature head: λ = {choice.l2:g}, {choice.steps} steps "
             f"(chosen by {inner}-fold CV on the {len(rows)} photos it trains on)")
    return head, norm


class Maps(NamedTuple):
    """The frozen blocks' activation maps at the input of block ``block`` (``config.top_views``), cached:
    ``plain`` (n, 2, h, w, C), each photo's and its mirror image's; ``views`` (n, 2·top_views, h, w, C), its
    augmented views' and theirs. Training draws from both; validation and scoring read ``plain``."""

    block: int
    plain: np.ndarray
    views: np.ndarray

    def training(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), 2 + 2·views, h, w, C): every map a training photo may be drawn as."""
        return np.concatenate([self.plain[rows], self.views[rows]], axis=1)


def top_start_block(config: TrainConfig) -> int:
    """The first MBConv block that trains with ``finetune="top"``: the last ``top_blocks`` blocks train."""
    from models.efficientnet_lite import block_specs

    return max(len(block_specs(config.model)) - config.top_blocks, 0)


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
    head = _initial_head(data, config, feats, fit_tr) if feats is not None else None
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
        head_all = _initial_head(data, config, feats, tr) if feats is not None else None
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
    probs = calibrate(_calibration_of(cal), raw)
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
    backbone, feats, views, maps = None, None, None, None
    if torchvision_weights(config):
        from models.pretrained import load_torchvision_resnet50

        backbone = load_torchvision_resnet50(config.weights)
    if config.pretrained:
        if not config.rgb:
            raise ValueError(f"{config.model} is an RGB network: grayscale input is not supported")
        from training.data.images import Preprocess

        backbone, digest = backbone_for(config, cache_dir=cache_dir)
        pre = Preprocess(config.image_size, config.crop, True)
        source = data.x if data.x is not None else data.paths  # files: read in chunks, bounded memory
        if strategy(config) is Strategy.HEAD or config.head_init:
            start = time.perf_counter()
            feats, computed = extract_features(source, data.digests, config.model, backbone, digest,
                                               pre.cache_key(), pre=pre, cache_dir=cache_dir,
                                               batch_size=config.batch_size, progress=progress, engine=engine)
            log.info(f"backbone features: {_computed(computed)}, {len(feats) - computed} from cache "
                     f"({time.perf_counter() - start:.1f} s)")
            spec = views_for(config) if strategy(config) is Strategy.HEAD else None
            if spec is not None:
                start = time.perf_counter()
                views, computed = extract_features(source, data.digests, config.model, backbone, digest,
                                                   pre.cache_key(), pre=pre, cache_dir=cache_dir,
                                                   batch_size=config.batch_size, progress=progress, engine=engine,
                                                   views=spec)
                log.info(f"{config.head_views} augmented views of each photo: {_computed(computed, 'photos')}, "
                         f"{len(views) - computed} from cache ({time.perf_counter() - start:.1f} s)")
        if config.top_views:
            maps = _cached_maps(source, data.digests, config, backbone, digest, pre, cache_dir=cache_dir,
                                progress=progress)
    results = []
    for k, (tr, va) in enumerate(splits, start=1):
        fold_out = out if len(splits) == 1 else output_dir(RunLayout(out).fold(k).root)
        write_json_atomic(RunLayout(fold_out).split, {"train": [data.paths[i] for i in tr],
                                                      "validation": [data.paths[i] for i in va]})
        start = time.perf_counter()
        if strategy(config) is Strategy.HEAD:
            result = _head_fold(data, config, feats, backbone, tr, va, fold_out, views)
        else:
            result = _network_fold(data, config, tr, va, fold_out, resume=resume, progress=progress,
                                   backbone=backbone, feats=feats, maps=maps)
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
        results.append(result._replace(verdict=write_run_report(fold_out, result, data.class_names, header,
                                                                    data.y[va], key=jax.random.PRNGKey(config.seed))))
    return results


def _computed(n: int, what: str = "") -> str:
    """``"406 computed"``; in a job of several processes, said to be the whole job's (each computes a shard)."""
    from training.loop.distributed import process_count

    count = process_count()
    what = f" {what}" if what else ""
    return f"{n}{what} computed" if count == 1 else f"{n}{what} computed by the {count} processes together"


def _cached_maps(source, digests: list[str], config: TrainConfig, backbone: dict, digest: str, pre, *,
                 cache_dir: str | Path | None, progress: bool) -> Maps:
    """:class:`Maps` of every photo (``source``: the decoded images or their files, read by ``pre``): the frozen
    blocks run once per photo, view and mirror image, or are read from the cache
    (:func:`~training.transfer.features.extract_features` with ``block``)."""
    block = top_start_block(config)
    common = dict(pre=pre, cache_dir=cache_dir, batch_size=config.batch_size, progress=progress, block=block)
    start = time.perf_counter()
    plain, computed = extract_features(source, digests, config.model, backbone, digest, pre.cache_key(), **common)
    spec = views_for(config, config.top_views)
    views, computed_views = extract_features(source, digests, config.model, backbone, digest, pre.cache_key(),
                                             views=spec, **common)
    log.info(f"the frozen blocks 0–{block - 1}: maps {plain.shape[2:]} of each photo and {config.top_views} "
             f"augmented views (and mirror images); {_computed(computed)} + {_computed(computed_views, 'photos')}, "
             "the rest from "
             f"cache ({time.perf_counter() - start:.1f} s, {(plain.nbytes + views.nbytes) / 2**20:.0f} MiB)")
    return Maps(block, plain, views)


def shift_of(calibration: dict | None):
    """The calibration's shift, which decisions leave out (:func:`~training.evaluation.decision.decide`)."""
    return None if not calibration else calibration["shift"]


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


def head_cv_probs(data: Dataset, config: TrainConfig, feature_sets: list[np.ndarray], *, combine: str = "concat"
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(outer validation rows, their probabilities)]`` of frozen-feature heads on several feature sets
    (each ``(n, 2, D_i)``, one per backbone), over the outer splits of ``config``, each scored once.

    ``combine="concat"``: one head on the features side by side, ``(n, 2, Σ D_i)``; ``"average"``: a head per
    set, their probabilities averaged. Every head's λ and steps are chosen by inner CV of the training part
    (:func:`_frozen_head`), as for one backbone; nothing is saved."""
    if combine not in ("concat", "average"):
        raise ValueError(f"unknown combine {combine!r}; expected 'concat' or 'average'")
    if any(len(f) != len(data.y) for f in feature_sets):
        raise ValueError(f"feature sets of {[len(f) for f in feature_sets]} photos for {len(data.y)} photos")
    sets = [np.concatenate(feature_sets, axis=-1)] if combine == "concat" else feature_sets
    out = []
    for tr, va in splits_for(data, config):
        probs = []
        for F in sets:
            _, head, norm, _ = _frozen_head(data, config, F, tr, lr=config.learning_rate)
            probs.append(head_probs(F[va], head, norm, tta_flip=config.tta_flip))
        out.append((va, np.mean(probs, axis=0)))
    return out
