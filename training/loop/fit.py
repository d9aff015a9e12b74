"""The epoch loop: :func:`fit` trains a network by epochs, scores each epoch on a validation set, keeps the
``best`` and ``last`` checkpoints and the history, and resumes a killed run from ``last``."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from common.files import output_dir, write_json_atomic
from common.layout import RunLayout
from common.tables import write_table
from models.registry import kind_of
from training.evaluation.metrics import Metrics, classification_metrics, majority_baseline
from training.loop.checkpoints import Checkpoints
from training.loop.config import TrainConfig
from training.loop.devices import DataParallel
from training.loop.registry import build_model, mirror_average
from training.loop.state import TrainState, create_state, input_normalization, state_template
from training.loop.steps import (
    batches,
    class_weight_vector,
    make_batch,
    make_eval_step,
    make_train_step,
    predict_proba,
)

log = logging.getLogger(__name__)  # shown by the commands (experiments.cli); silent in library use


def write_history(out: Path, history: list[dict]) -> None:
    write_json_atomic(out / "history.json", history)
    write_table(history, out, "history", title="Training history")


class FitResult(NamedTuple):
    """What :func:`fit` returns: the chosen epoch, its parameters, and its predictions on ``x_val``."""

    history: list[dict]  # one row per epoch: losses and validation metrics
    metrics: dict  # validation metrics of the chosen epoch, as saved in its checkpoint (Metrics.as_json)
    best_epoch: int
    baseline: Metrics  # the majority predictor's metrics on the same validation rows
    best_params: Any
    val_probs: np.ndarray  # (len(x_val), classes), of the chosen epoch
    normalization: dict | None  # per-channel mean/std of the training inputs, or None


@dataclasses.dataclass
class _Choice:
    """The early-stopping bookkeeping: the best validation macro-F1 so far, its epoch, and (when this process
    trained it) its parameters and validation probabilities."""

    f1: float = -1.0
    epoch: int = 0
    params: Any = None
    probs: np.ndarray | None = None

    @classmethod
    def resumed(cls, history: list[dict], best_f1: float) -> _Choice:
        """The choice a checkpoint's ``history`` and ``best_macro_f1`` record (its parameters stay on disk)."""
        return cls(best_f1, max(history, key=lambda h: h["val_macro_f1"])["epoch"] if history else 0)

    def observe(self, epoch: int, f1: float, params, probs: np.ndarray, *, take_last: bool) -> bool:
        """Whether ``epoch`` (of validation macro-F1 ``f1``) is the new choice: the best so far, or any epoch
        with ``take_last`` (``selection == "last"``)."""
        improved = take_last or f1 > self.f1
        if improved:
            self.params, self.probs = jax.device_get(params), probs
        self.f1 = max(self.f1, f1)
        self.epoch = epoch if improved else self.epoch
        return improved

    def patience_spent(self, epoch: int, patience: int | None) -> bool:
        return patience is not None and epoch - self.epoch >= patience


def _resumed(ckpt: Checkpoints, state: TrainState, out: Path) -> tuple[TrainState, list[dict], _Choice, int]:
    """``(state, history, choice, first epoch to train)`` from the ``last`` checkpoint, or a fresh start when
    there is none."""
    if ckpt.latest_step("last") is None:
        return state, [], _Choice(), 1
    state, meta = ckpt.restore("last", state)
    history = meta["history"]
    # the checkpoint's history is the run's: a kill after the checkpoint, before history.json, left that
    # file an epoch short (and after the last epoch, no epoch is left to rewrite it)
    write_history(out, history)
    log.info(f"resuming after epoch {meta['epoch']} from {ckpt.directory / 'last'}")
    return state, history, _Choice.resumed(history, meta["best_macro_f1"]), meta["epoch"] + 1


def _model_for(config: TrainConfig, n_classes: int, normalization: dict | None, x_train: np.ndarray,
               x_val: np.ndarray, maps_from: int | None):
    """``(model, the shape of one input image)``; with ``maps_from``, the classifier from block ``maps_from`` up."""
    model = build_model(config, n_classes, normalization)
    image_shape = x_train.shape[1:]
    if maps_from is not None:
        if not (kind_of(model).pretrained and x_train.ndim == 5 and x_val.ndim == 5
                and x_val.shape[1] == 2):
            raise ValueError(f"maps_from: a transfer classifier trains on activation maps (n, V, h, w, C) and "
                             f"validates on (n, 2, h, w, C); got {type(model).__name__}, {x_train.shape}, "
                             f"{x_val.shape}")
        model = model.clone(start_block=maps_from)
        image_shape = (config.image_size, config.image_size, 3)
    return model, image_shape


def _epoch_inputs(x_train: np.ndarray, maps_from: int | None, key_view: jax.Array, epoch: int) -> np.ndarray:
    """What epoch ``epoch`` trains on: the images, or one map of each photo drawn at random (``maps_from``)."""
    if maps_from is None:
        return x_train
    view = np.asarray(jax.random.randint(jax.random.fold_in(key_view, epoch), (len(x_train),), 0, x_train.shape[1]))
    return x_train[np.arange(len(x_train)), view]


def _train_epoch(state: TrainState, train_step, x: np.ndarray, y: np.ndarray, weights: np.ndarray, *, epoch: int,
                 config: TrainConfig, key_shuffle: jax.Array, key_dropout: jax.Array, dp: DataParallel,
                 progress: bool) -> tuple[TrainState, float]:
    """One pass over ``x`` in shuffled minibatches: ``(state, mean training loss over its images)``."""
    from tqdm.auto import tqdm

    size = dp.padded_batch_size(config.batch_size)
    losses = []
    steps = list(batches(len(x), config.batch_size, key=jax.random.fold_in(key_shuffle, epoch)))
    bar = tqdm(steps, desc=f"epoch {epoch}/{config.epochs}", disable=not progress, leave=False)
    for step, idx in enumerate(bar):
        batch = dp.put_batch(make_batch(x, y, idx, size, weights))
        key = jax.random.fold_in(jax.random.fold_in(key_dropout, epoch), step)
        state, m = train_step(state, batch, key)
        losses.append((m["loss"], len(idx)))
    return state, float(sum(float(l) * n for l, n in losses) / max(sum(n for _, n in losses), 1))


def _epoch_row(epoch: int, train_loss: float, y_val: np.ndarray, probs: np.ndarray, metrics: Metrics,
               start: float) -> dict:
    """The history row of one epoch: its losses, validation metrics and seconds."""
    val_loss = float(np.mean(-np.log(np.clip(probs[np.arange(len(y_val)), y_val], 1e-12, 1.0))))
    return {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
            "val_accuracy": metrics.accuracy, "val_balanced_accuracy": metrics.balanced_accuracy,
            "val_macro_f1": metrics.macro_f1, "seconds": time.perf_counter() - start}


def _log_epoch(epoch: int, train_loss: float, metrics: Metrics, baseline: Metrics) -> None:
    log.info(f"epoch {epoch}: loss {train_loss:.4f}, val acc {metrics.accuracy:.3f}, "
             f"balanced {metrics.balanced_accuracy:.3f}, macro-F1 {metrics.macro_f1:.3f} "
             f"(majority baseline: acc {baseline.accuracy:.3f}, balanced {baseline.balanced_accuracy:.3f}, "
             f"macro-F1 {baseline.macro_f1:.3f})")


def fit(
    config: TrainConfig,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    class_names: list[str],
    out: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    dp: DataParallel | None = None,
    backbone: dict | None = None,
    head: tuple[dict, dict] | None = None,
    maps_from: int | None = None,
) -> FitResult:
    """Train, evaluate each epoch on ``(x_val, y_val)``, keep ``best`` and ``last`` checkpoints.

    ``best`` is the epoch of highest validation macro-F1 (``config.selection == "inner"``: the
    caller passes a validation split carved from its training part) or simply the last epoch
    (``"last"``). A non-finite training loss raises
    ``FloatingPointError``; the checkpoints on disk are then those of the last good epoch.
    ``backbone``: the pretrained parameters of a transfer model; ``head``: its starting head and feature
    standardization (``(params, {"mean", "std"})``, e.g. the frozen-feature head), instead of a random head.

    ``maps_from=k`` (a transfer classifier whose blocks below ``k`` are frozen, ``config.top_views``): the
    inputs are activation maps at the input of block ``k``, not images. ``x_train`` is (n, V, h, w, C): V maps
    of each photo (its views and their mirror images), of which each epoch trains on one per photo, drawn at
    random; ``x_val`` is (n, 2, h, w, C): each photo's map and its mirror image's. Only the top of the
    classifier runs (``TransferClassifier.start_block``); the parameters are the whole classifier's.
    """
    out = output_dir(out)
    dp = dp or DataParallel()
    n_classes = len(class_names)
    normalization = head[1] if head is not None else input_normalization(config, x_train)
    model, image_shape = _model_for(config, n_classes, normalization, x_train, x_val, maps_from)
    key_init, key_shuffle, key_dropout = jax.random.split(jax.random.PRNGKey(config.seed), 3)
    steps_per_epoch = -(-len(x_train) // config.batch_size)
    state = create_state(model, config, image_shape, key=key_init, steps_per_epoch=steps_per_epoch,
                         backbone=backbone)
    if head is not None:  # the optimizer's state depends on the shapes only: it stays as initialised
        state = state.replace(params={**state.params, "head": jax.tree_util.tree_map(jnp.asarray, head[0])})
    ckpt = Checkpoints(RunLayout(out).checkpoints)
    write_json_atomic(RunLayout(out).saved_run, {"config": config.to_json(), "class_names": class_names,
                                                 "normalization": normalization})
    state, history, choice, start_epoch = _resumed(ckpt, state, out) if resume else (state, [], _Choice(), 1)
    state = dp.put_replicated(state)
    weights = class_weight_vector(y_train, n_classes, config.class_weights)
    train_step = make_train_step(model, None if maps_from is not None else config.augment, grad=config.grad,
                                 finetune=config.finetune, top_blocks=config.top_blocks)
    eval_step = make_eval_step(model, tta_flip=mirror_average(config), mirrored=maps_from is not None)
    key_view = jax.random.fold_in(key_shuffle, 0)  # the epochs' shuffles fold in 1, 2, …
    baseline = majority_baseline(y_train, y_val, class_names)
    for epoch in range(start_epoch, config.epochs + 1):
        start = time.perf_counter()
        state, train_loss = _train_epoch(state, train_step, _epoch_inputs(x_train, maps_from, key_view, epoch),
                                         y_train, weights, epoch=epoch, config=config, key_shuffle=key_shuffle,
                                         key_dropout=key_dropout, dp=dp, progress=progress)
        if not np.isfinite(train_loss):
            raise FloatingPointError(
                f"training loss became {train_loss} in epoch {epoch}; stopped. The last good checkpoint "
                f"(epoch {epoch - 1}) is kept in {ckpt.directory}. Try a lower learning rate "
                f"(now {config.learning_rate})."
            )
        probs = predict_proba(eval_step, state.params, x_val, batch_size=config.batch_size, dp=dp)
        metrics = classification_metrics(y_val, probs, class_names)
        history.append(_epoch_row(epoch, train_loss, y_val, probs, metrics, start))
        improved = choice.observe(epoch, metrics.macro_f1, state.params, probs,
                                  take_last=config.selection == "last")
        meta = {"epoch": epoch, "history": history, "best_macro_f1": choice.f1, "metrics": metrics.as_json()}
        if improved:
            ckpt.save("best", epoch, state, meta)
        ckpt.save("last", epoch, state, meta)
        write_history(out, history)
        _log_epoch(epoch, train_loss, metrics, baseline)
        if choice.patience_spent(epoch, config.patience):
            log.info(f"early stop after epoch {epoch}: no better validation macro-F1 for {config.patience} epochs")
            break
    best_meta = ckpt.meta("best")
    ckpt.close()
    if choice.params is None:  # resumed after the best epoch: read it back
        template = state_template(model, config, image_shape, steps_per_epoch=steps_per_epoch, backbone=backbone)
        ckpt = Checkpoints(RunLayout(out).checkpoints)
        choice.params = jax.device_get(ckpt.restore("best", template)[0].params)
        ckpt.close()
        choice.probs = predict_proba(eval_step, choice.params, x_val, batch_size=config.batch_size, dp=dp)
    return FitResult(history=history, metrics=best_meta["metrics"], best_epoch=best_meta["epoch"], baseline=baseline,
                     best_params=choice.params, val_probs=choice.probs, normalization=normalization)
