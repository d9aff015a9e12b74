"""The transfer strategy of a pretrained backbone (``training.loop.registry.Strategy``): what its folds need
computed once (the frozen backbone's features, its augmented views, or the frozen blocks' activation maps), the
softmax head on frozen features chosen by inner CV (a fold of its own, or where fine-tuning starts), and the heads
of several backbones' features over the outer folds (``experiments.backbones``)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import NamedTuple

import jax
import numpy as np

from common.layout import RunLayout
from training.data.dataset import Dataset
from training.evaluation.calibration import apply as calibrate
from training.evaluation.decision import operating_point
from training.evaluation.metrics import majority_baseline
from training.loop.checkpoints import Checkpoints
from training.loop.config import PRESETS, TrainConfig
from training.loop.records import FoldResult
from training.loop.registry import Strategy, build_model, strategy
from training.loop.scoring import (
    calibrate_on_inner,
    calibration_of,
    referral_on_inner,
    score,
    shift_of,
    splits_for,
)
from training.loop.state import create_state
from training.loop.steps import class_weight_vector
from training.transfer.features import backbone_for, extract_features, views_for
from training.transfer.head import fit_head, head_probs, select_head

log = logging.getLogger(__name__)  # shown by the commands (experiments.cli); silent in library use


class Cached(NamedTuple):
    """What a pretrained backbone's folds share, computed once for every photo: its parameters, and (by its
    strategy) the frozen features ``feats`` (n, 2, D) and their augmented ``views``, or the frozen blocks' ``maps``.
    """

    backbone: dict
    feats: np.ndarray | None = None
    views: np.ndarray | None = None
    maps: Maps | None = None


def cache_inputs(data: Dataset, config: TrainConfig, *, cache_dir: str | Path | None, progress: bool,
                 engine: str) -> Cached:
    """:class:`Cached` for a pretrained backbone's run: its weights; the frozen features of every photo (and of
    ``head_views`` augmented views) when the strategy is the head, or when fine-tuning starts from it
    (``head_init``); the frozen blocks' maps with ``top_views``. ``engine``: what computes the features
    (:func:`~training.transfer.features.extract_features`)."""
    if not config.rgb:
        raise ValueError(f"{config.model} is an RGB network: grayscale input is not supported")
    from training.data.decoding import Preprocess

    feats, views, maps = None, None, None
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
    return Cached(backbone, feats, views, maps)


def head_fold(data: Dataset, config: TrainConfig, feats: np.ndarray, backbone: dict, tr: np.ndarray,
              va: np.ndarray, out: Path, views: np.ndarray | None = None) -> FoldResult:
    """Choose the head on inner folds of ``tr``, refit it on ``tr``, score ``va`` once, save the classifier."""
    n_classes = len(data.class_names)
    y_tr = data.y[tr]
    choice, head, norm, inner = frozen_head(data, config, feats, tr, lr=config.learning_rate, views=views)
    cal, oof = calibrate_on_inner(config, choice.oof_probs, y_tr)
    op = operating_point(config.target_recall, data.class_names, oof, y_tr)
    referral = referral_on_inner(config, oof, y_tr, op, shift_of(cal))
    raw = head_probs(feats[va], head, norm, tta_flip=config.tta_flip)
    probs = calibrate(calibration_of(cal), raw)
    metrics = score(data.y[va], probs, y_tr, data.class_names, op, shift_of(cal))
    # save the whole classifier (backbone + head) so predict/explain read photos directly
    model = build_model(config, n_classes, norm)
    state = create_state(model, config, (config.image_size, config.image_size, 3), key=jax.random.PRNGKey(config.seed),
                         backbone=backbone)
    state = state.replace(params={**state.params, "head": head})
    ckpt = Checkpoints(RunLayout(out).checkpoints)
    meta = {"epoch": choice.steps, "history": [], "best_macro_f1": metrics.macro_f1, "metrics": metrics.as_json()}
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


def frozen_head(data: Dataset, config: TrainConfig, feats: np.ndarray, rows: np.ndarray, *, lr: float,
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


def initial_head(data: Dataset, config: TrainConfig, feats: np.ndarray, rows: np.ndarray
                  ) -> tuple[dict, dict] | None:
    """Where fine-tuning starts (``config.head_init``): :func:`frozen_head` of ``rows`` at the head-only
    preset's rate, and its feature standardization. None, said in the log, when a class has fewer than 2
    photos there (no inner CV possible): a random head then."""
    smallest = int(np.bincount(data.y[rows], minlength=len(data.class_names)).min())
    if smallest < 2:
        log.info(f"fine-tuning starts from a random head: a class has {smallest} photo(s) in the {len(rows)} it "
                 "trains on, too few to choose the frozen-feature head by inner CV")
        return None
    choice, head, norm, inner = frozen_head(data, config, feats, rows, lr=PRESETS["pretrained"]["learning_rate"])
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


def head_cv_probs(data: Dataset, config: TrainConfig, feature_sets: list[np.ndarray], *, combine: str = "concat"
                  ) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(outer validation rows, their probabilities)]`` of frozen-feature heads on several feature sets
    (each ``(n, 2, D_i)``, one per backbone), over the outer splits of ``config``, each scored once.

    ``combine="concat"``: one head on the features side by side, ``(n, 2, Σ D_i)``; ``"average"``: a head per
    set, their probabilities averaged. Every head's λ and steps are chosen by inner CV of the training part
    (:func:`frozen_head`), as for one backbone; nothing is saved."""
    if combine not in ("concat", "average"):
        raise ValueError(f"unknown combine {combine!r}; expected 'concat' or 'average'")
    if any(len(f) != len(data.y) for f in feature_sets):
        raise ValueError(f"feature sets of {[len(f) for f in feature_sets]} photos for {len(data.y)} photos")
    sets = [np.concatenate(feature_sets, axis=-1)] if combine == "concat" else feature_sets
    out = []
    for tr, va in splits_for(data, config):
        probs = []
        for F in sets:
            _, head, norm, _ = frozen_head(data, config, F, tr, lr=config.learning_rate)
            probs.append(head_probs(F[va], head, norm, tta_flip=config.tta_flip))
        out.append((va, np.mean(probs, axis=0)))
    return out
