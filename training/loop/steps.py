"""Training Model 1 with Optax Adam: config, train/eval steps, the epoch loop, checkpoints.

The loss is written for one image, ``ℓ = w_y (logsumexp(z) − z_y)`` with ``z`` the
logits and ``w_y`` the (optional, balanced) class weight, ``jax.vmap``-ped over the
minibatch; the minibatch loss is ``Σ_i m_i ℓ_i / Σ_i m_i`` where ``m_i`` masks the
padding rows of a short last batch. One jitted train step, one jitted eval step.
Every random choice comes from ``jax.random`` keys derived from ``config.seed``."""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.training import train_state

from common.files import output_dir, write_json_atomic
from common.layout import RunLayout
from common.tables import write_table
from models.common import jit_run_once
from models.efficientnet_lite import map_images
from models.model1 import Model1
from models.transfer import TransferClassifier
from training.data.augment import Augment, augment_batch
from training.evaluation.metrics import classification_metrics, majority_baseline
from training.loop.checkpoints import Checkpoints
from training.loop.config import GRADS, MODELS, TrainConfig
from training.loop.devices import DataParallel
from training.loop.distributed import to_host
from training.loop.optimizer import make_optimizer, masked_optimizer, trainable_mask

log = logging.getLogger(__name__)  # shown by the commands (experiments.cli); silent in library use


class TrainState(train_state.TrainState):
    """Flax's TrainState (step, params, Adam state)."""


def create_model(config: TrainConfig, n_classes: int, normalization: dict | None = None):
    """The config's model; ``normalization`` = {"mean": [...], "std": [...]} per input channel (or, for a
    pretrained backbone, per feature), or None."""
    norm = normalization or {}
    mean = tuple(norm["mean"]) if norm else None
    std = tuple(norm["std"]) if norm else None
    if config.pretrained:
        return TransferClassifier(config.model, n_classes, feature_mean=mean, feature_std=std)
    if config.model == "resnet50":
        from models.resnet import IMAGENET_MEAN, IMAGENET_STD, ResNet50

        if config.weights:  # torchvision weights: BatchNorm layout, ImageNet input normalization
            if not config.rgb:
                raise ValueError("torchvision resnet50 weights need RGB input: leave out --gray")
            return ResNet50(n_classes=n_classes, norm="batch", input_mean=IMAGENET_MEAN, input_std=IMAGENET_STD)
        return ResNet50(n_classes=n_classes, input_mean=mean, input_std=std)
    if config.model == "googlenet":
        from models.googlenet import GoogLeNet

        return GoogLeNet(n_classes=n_classes, input_mean=mean, input_std=std)
    if config.model != "model1":
        raise ValueError(f"unknown model {config.model!r}; expected one of {list(MODELS)}")
    from models.model1 import feature_side

    if feature_side(config.image_size) < 1:
        raise ValueError(f"image size {config.image_size} is too small for Model 1 (three 2×2 pools after a "
                         "stride-2 convolution): use --image-size 16 or more")
    return Model1(n_classes=n_classes, first_kernel=config.first_kernel, head_units=tuple(config.head_units),
                  dropout_rate=config.dropout_rate, activation=config.activation,
                  input_mean=tuple(norm["mean"]) if norm else None, input_std=tuple(norm["std"]) if norm else None)


def input_normalization(config: TrainConfig, x_train: np.ndarray) -> dict | None:
    """Per-channel mean and std of the training images when ``config.standardize``, else None."""
    if not config.standardize or config.pretrained:
        return None
    mean = x_train.mean(axis=(0, 1, 2), dtype=np.float64)
    std = np.maximum(x_train.std(axis=(0, 1, 2), dtype=np.float64), 1e-6)
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}


@functools.lru_cache(maxsize=8)
def _param_shapes(variant: str, image_shape: tuple[int, ...], n_classes: int):
    """The parameter shapes of a transfer classifier, traced once (no computation)."""
    model = TransferClassifier(variant, n_classes)
    return jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0)},
                                             jnp.zeros(image_shape, jnp.float32)))["params"]


@functools.lru_cache(maxsize=16)
def _initializer(model, image_shape: tuple[int, ...]):
    """``key -> params`` of ``model``, jitted, one per model and input shape: a second state of the same
    network (the next fold, the next test) compiles nothing. One compiled program (op by op, each operation
    compiles on its own: 9 s for Model 1 and 25 s for ResNet-50 on 2 cores, against 4 s and 13 s), compiled as a
    program that runs once (:func:`models.common.jit_run_once`: the same values, sooner)."""
    def init(key):
        return model.init({"params": key}, jnp.zeros(image_shape, jnp.float32))["params"]

    return jit_run_once(init)


def create_state(model, config: TrainConfig, image_shape: tuple[int, int, int], *, key: jax.Array,
                 steps_per_epoch: int = 1, backbone: dict | None = None) -> TrainState:
    """Initial parameters and Adam state. For a pretrained backbone, ``backbone`` (its ImageNet
    parameters) replaces the random ones, and only the parameters ``config.finetune`` names train."""
    tx = make_optimizer(config, steps_per_epoch)
    if config.pretrained:  # no eager forward pass of the backbone: its shapes, then its weights
        shapes = _param_shapes(config.model, tuple(image_shape), model.n_classes)
        # zeros only where no weights are given (the backbone's, in a checkpoint's template)
        params = {k: jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), v) for k, v in shapes.items()
                  if k != "backbone" or backbone is None}
        if backbone is not None:
            params["backbone"] = backbone
        n_features = shapes["head"]["kernel"].shape[0]
        params["head"] = nn.Dense(shapes["head"]["kernel"].shape[1]).init(key, jnp.zeros(n_features))["params"]
        tx = masked_optimizer(tx, params, config.finetune, config.top_blocks, config.block_lr_decay)
    else:
        params = _initializer(model, tuple(image_shape))(key)
        if config.model == "resnet50" and config.weights:  # ImageNet weights, a new classifier
            if backbone is not None:
                params = {**params, **{k: v for k, v in backbone.items() if k != "logits"}}
            tx = masked_optimizer(tx, params, config.finetune, config.top_blocks, config.block_lr_decay)
    state = TrainState.create(apply_fn=model.apply, params=params, tx=tx)
    # a typed step counter: a weakly typed Python 0 would make the second step compile again
    return state.replace(step=jnp.zeros((), jnp.int32))


def state_template(model, config: TrainConfig, image_shape: tuple[int, int, int], **kw) -> TrainState:
    """:func:`create_state`'s structure, shapes and dtypes only (``jax.eval_shape``: nothing is initialised or
    computed): what a checkpoint is read into."""
    return jax.eval_shape(lambda: create_state(model, config, image_shape, key=jax.random.PRNGKey(0), **kw))


def example_loss(model: Model1, params, x: jax.Array, label: jax.Array, weight: jax.Array, *,
                 key: jax.Array | None, train: bool) -> tuple[jax.Array, jax.Array]:
    """``(w_y (logsumexp(z) − z_y), z)`` for one image."""
    logits = model.apply({"params": params}, x, train=train, key=key if train else None)
    return weight * (jax.nn.logsumexp(logits) - logits[label]), logits


def check_grad(model, grad: str) -> None:
    """``grad="manual"`` needs the network written by hand: Model 1 with ReLU, or the EfficientNet-Lite
    transfer classifier."""
    if grad not in GRADS:
        raise ValueError(f"unknown gradient {grad!r}; expected one of {list(GRADS)}")
    by_hand = (isinstance(model, Model1) and model.activation == "relu") or isinstance(model, TransferClassifier)
    if grad == "manual" and not by_hand:
        raise ValueError(f"--grad manual is written for Model 1 with ReLU and the EfficientNet-Lite classifier, "
                         f"not {type(model).__name__}"
                         + (f" with {model.activation}" if isinstance(model, Model1) else ""))


def _trains(params, finetune: str, top_blocks: int):
    """``path -> bool``: whether any parameter of the layer at ``path`` trains under ``finetune``."""
    mask = trainable_mask(params, finetune, top_blocks)

    def trains(path: tuple[str, ...]) -> bool:
        node = mask
        for name in path:
            node = node[name]
        return any(jax.tree_util.tree_leaves(node))

    return trains


def make_batch_loss(model, augment: Augment | None = None, *, grad: str = "autodiff", finetune: str = "all",
                    top_blocks: int = 2):
    """``batch_loss(params, batch, key) = Σ_i m_i ℓ_i / Σ_i m_i``, the per-image loss vmapped over the batch.

    ``grad="manual"``: the same loss, whose ``jax.grad`` is the hand-written backward
    (:func:`manual_backprop.cnn.model1_loss_with_manual_grad` for Model 1,
    :func:`manual_backprop.efficientnet.transfer_loss_with_manual_grad` for the EfficientNet-Lite classifier,
    which runs backwards only as far down as ``finetune`` and ``top_blocks`` train).
    """
    check_grad(model, grad)

    def batch_loss(params, batch, key):
        key_aug, key_drop = jax.random.split(key)
        x = batch["x"] if augment is None else augment_batch(batch["x"], key=key_aug, aug=augment)
        keys = jax.random.split(key_drop, x.shape[0])
        if grad == "manual" and isinstance(model, TransferClassifier):
            from manual_backprop.efficientnet import transfer_loss_with_manual_grad

            return transfer_loss_with_manual_grad(params, x, batch["y"], model, weights=batch["w"],
                                                  mask=batch["mask"], train=True, keys=keys,
                                                  trainable=_trains(params, finetune, top_blocks))
        if grad == "manual":
            from manual_backprop.cnn import model1_loss_with_manual_grad

            return model1_loss_with_manual_grad(params, x, batch["y"], model, weights=batch["w"],
                                                mask=batch["mask"], train=True, keys=keys)
        losses, _ = jax.vmap(
            lambda x, y, w, k: example_loss(model, params, x, y, w, key=k, train=True)
        )(x, batch["y"], batch["w"], keys)
        return jnp.sum(losses * batch["mask"]) / jnp.maximum(jnp.sum(batch["mask"]), 1.0)

    return batch_loss


@functools.lru_cache(maxsize=16)
def make_train_step(model, augment: Augment | None = None, *, grad: str = "autodiff", finetune: str = "all",
                    top_blocks: int = 2):
    """``train_step(state, batch, key) -> (state, {"loss"})``, jitted; batch = dict(x, y, w, mask).
    One function per setting: the next fold's states (of the same optimizer, :func:`make_optimizer`) run its
    compiled program.

    With ``augment``, each training image is randomly transformed on device first. ``grad``:
    ``"autodiff"`` or ``"manual"``; ``finetune``/``top_blocks``: what the manual backward must reach
    (see :func:`make_batch_loss`).
    """

    batch_loss = make_batch_loss(model, augment, grad=grad, finetune=finetune, top_blocks=top_blocks)

    @jax.jit
    def train_step(state: TrainState, batch: dict, key: jax.Array):
        loss, grads = jax.value_and_grad(batch_loss)(state.params, batch, key)
        return state.apply_gradients(grads=grads), {"loss": loss}

    return train_step


@functools.lru_cache(maxsize=16)
def make_eval_step(model, *, tta_flip: bool = False, mirrored: bool = False):
    """``eval_step(params, x) -> softmax probabilities`` (no dropout), jitted; with ``tta_flip`` the mean of
    the probabilities of each image and its mirror image. One function per (model, tta_flip): ``fit``'s
    epochs and the fold's scoring of the chosen epoch share its compiled program.

    ``mirrored``: each row of ``x`` is a pair (input, its mirror image's) on axis 1, as cached activation maps
    are (a map of the mirror image is not the mirrored map).

    An EfficientNet-Lite classifier is batched by :func:`~models.efficientnet_lite.map_images` (on CPU one image
    at a time: faster there, benchmarks/RESULTS.md), every other model by ``jax.vmap``."""
    chunk = None if isinstance(model, TransferClassifier) else 0

    def probs(params, x):
        logits = map_images(lambda xi: model.apply({"params": params}, xi, train=False), x, chunk=chunk)
        return jax.nn.softmax(logits, axis=-1)

    @jax.jit
    def eval_step(params, x):
        if mirrored:
            p = probs(params, x[:, 0])
            return 0.5 * (p + probs(params, x[:, 1])) if tta_flip else p
        p = probs(params, x)
        return 0.5 * (p + probs(params, x[:, :, ::-1, :])) if tta_flip else p

    return eval_step


def class_weight_vector(y: np.ndarray, n_classes: int, mode: str | None) -> np.ndarray:
    """Ones, or scikit-learn's ``balanced`` weights n / (k · count_c)."""
    if mode is None:
        return np.ones(n_classes, np.float32)
    if mode != "balanced":
        raise ValueError(f"unknown class_weights {mode!r}; expected None or 'balanced'")
    from sklearn.utils.class_weight import compute_class_weight

    present = np.unique(y)
    weights = np.ones(n_classes, np.float32)
    weights[present] = compute_class_weight("balanced", classes=present, y=y)
    return weights


def batches(n: int, batch_size: int, *, key: jax.Array | None):
    """Index arrays of consecutive minibatches of a permutation (``key``) or in order (``None``)."""
    order = np.arange(n) if key is None else np.asarray(jax.random.permutation(key, n))
    for start in range(0, n, batch_size):
        yield order[start:start + batch_size]


def make_batch(x: np.ndarray, y: np.ndarray, idx: np.ndarray, size: int, weights: np.ndarray) -> dict:
    """Rows ``idx`` padded to ``size`` with masked zero rows (fixed shapes: no recompilation)."""
    pad = size - len(idx)
    xb = np.concatenate([x[idx], np.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x[idx]
    yb = np.concatenate([y[idx], np.zeros(pad, y.dtype)]) if pad else y[idx]
    mask = np.concatenate([np.ones(len(idx), np.float32), np.zeros(pad, np.float32)])
    return {"x": xb, "y": yb.astype(np.int32), "w": weights[yb].astype(np.float32), "mask": mask}


def predict_proba(eval_step, params, x: np.ndarray, *, batch_size: int = 64, dp: DataParallel | None = None
                  ) -> np.ndarray:
    """Class probabilities for every row of ``x``. The parameters are replicated over ``dp``'s devices, as
    ``fit`` holds them, so host parameters and a training state's run the same compiled ``eval_step``."""
    dp = dp or DataParallel()
    size = dp.padded_batch_size(batch_size)
    params = dp.put_replicated(params)
    out = []
    ones = np.ones(1, np.float32)
    for idx in batches(len(x), size, key=None):
        batch = make_batch(x, np.zeros(len(x), np.int32), idx, size, ones)
        out.append(to_host(eval_step(params, dp.put_batch(batch["x"])))[: len(idx)])
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def write_history(out: Path, history: list[dict]) -> None:
    write_json_atomic(out / "history.json", history)
    write_table(history, out, "history", title="Training history")


class FitResult(NamedTuple):
    """What :func:`fit` returns: the chosen epoch, its parameters, and its predictions on ``x_val``."""

    history: list[dict]  # one row per epoch: losses and validation metrics
    metrics: dict  # validation metrics of the chosen epoch
    best_epoch: int
    baseline: dict  # the majority predictor's metrics on the same validation rows
    best_params: Any
    val_probs: np.ndarray  # (len(x_val), classes), of the chosen epoch
    normalization: dict | None  # per-channel mean/std of the training inputs, or None


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
    from tqdm.auto import tqdm

    out = output_dir(out)
    dp = dp or DataParallel()
    n_classes = len(class_names)
    normalization = head[1] if head is not None else input_normalization(config, x_train)
    model = create_model(config, n_classes, normalization)
    image_shape = x_train.shape[1:]
    if maps_from is not None:
        if not (isinstance(model, TransferClassifier) and x_train.ndim == 5 and x_val.ndim == 5
                and x_val.shape[1] == 2):
            raise ValueError(f"maps_from: a transfer classifier trains on activation maps (n, V, h, w, C) and "
                             f"validates on (n, 2, h, w, C); got {type(model).__name__}, {x_train.shape}, "
                             f"{x_val.shape}")
        model = model.clone(start_block=maps_from)
        image_shape = (config.image_size, config.image_size, 3)
    key_init, key_shuffle, key_dropout = jax.random.split(jax.random.PRNGKey(config.seed), 3)
    steps_per_epoch = -(-len(x_train) // config.batch_size)
    state = create_state(model, config, image_shape, key=key_init, steps_per_epoch=steps_per_epoch,
                         backbone=backbone)
    if head is not None:  # the optimizer's state depends on the shapes only: it stays as initialised
        state = state.replace(params={**state.params, "head": jax.tree_util.tree_map(jnp.asarray, head[0])})
    ckpt = Checkpoints(RunLayout(out).checkpoints)
    write_json_atomic(RunLayout(out).saved_run, {"config": config.to_json(), "class_names": class_names,
                                                 "normalization": normalization})
    history: list[dict] = []
    best_f1, best_epoch, start_epoch = -1.0, 0, 1
    if resume and ckpt.latest_step("last") is not None:
        state, meta = ckpt.restore("last", state)
        history, best_f1, start_epoch = meta["history"], meta["best_macro_f1"], meta["epoch"] + 1
        best_epoch = max(history, key=lambda h: h["val_macro_f1"])["epoch"] if history else 0
        # the checkpoint's history is the run's: a kill after the checkpoint, before history.json, left that
        # file an epoch short (and after the last epoch, no epoch is left to rewrite it)
        write_history(out, history)
        log.info(f"resuming after epoch {meta['epoch']} from {ckpt.directory / 'last'}")
    state = dp.put_replicated(state)
    weights = class_weight_vector(y_train, n_classes, config.class_weights)
    train_step = make_train_step(model, None if maps_from is not None else config.augment, grad=config.grad,
                                 finetune=config.finetune, top_blocks=config.top_blocks)
    eval_step = make_eval_step(model, tta_flip=config.pretrained and config.tta_flip, mirrored=maps_from is not None)
    key_view = jax.random.fold_in(key_shuffle, 0)  # the epochs' shuffles fold in 1, 2, …
    best_params, best_probs = None, None
    size = dp.padded_batch_size(config.batch_size)
    baseline = majority_baseline(y_train, y_val, class_names)
    for epoch in range(start_epoch, config.epochs + 1):
        start = time.perf_counter()
        losses = []
        steps = list(batches(len(x_train), config.batch_size, key=jax.random.fold_in(key_shuffle, epoch)))
        x_epoch = x_train
        if maps_from is not None:  # one map of each photo this epoch
            view = np.asarray(jax.random.randint(jax.random.fold_in(key_view, epoch), (len(x_train),), 0,
                                                 x_train.shape[1]))
            x_epoch = x_train[np.arange(len(x_train)), view]
        bar = tqdm(steps, desc=f"epoch {epoch}/{config.epochs}", disable=not progress, leave=False)
        for step, idx in enumerate(bar):
            batch = dp.put_batch(make_batch(x_epoch, y_train, idx, size, weights))
            key = jax.random.fold_in(jax.random.fold_in(key_dropout, epoch), step)
            state, m = train_step(state, batch, key)
            losses.append((m["loss"], len(idx)))
        train_loss = float(sum(float(l) * n for l, n in losses) / max(sum(n for _, n in losses), 1))
        if not np.isfinite(train_loss):
            raise FloatingPointError(
                f"training loss became {train_loss} in epoch {epoch}; stopped. The last good checkpoint "
                f"(epoch {epoch - 1}) is kept in {ckpt.directory}. Try a lower learning rate "
                f"(now {config.learning_rate})."
            )
        probs = predict_proba(eval_step, state.params, x_val, batch_size=config.batch_size, dp=dp)
        metrics = classification_metrics(y_val, probs, class_names)
        val_loss = float(np.mean(-np.log(np.clip(probs[np.arange(len(y_val)), y_val], 1e-12, 1.0))))
        row = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
               "val_accuracy": metrics["accuracy"], "val_balanced_accuracy": metrics["balanced_accuracy"],
               "val_macro_f1": metrics["macro_f1"], "seconds": time.perf_counter() - start}
        history.append(row)
        improved = config.selection == "last" or metrics["macro_f1"] > best_f1
        if improved:
            best_params, best_probs = jax.device_get(state.params), probs
        best_f1 = max(best_f1, metrics["macro_f1"])
        best_epoch = epoch if improved else best_epoch
        meta = {"epoch": epoch, "history": history, "best_macro_f1": best_f1, "metrics": metrics}
        if improved:
            ckpt.save("best", epoch, state, meta)
        ckpt.save("last", epoch, state, meta)
        write_history(out, history)
        log.info(f"epoch {epoch}: loss {train_loss:.4f}, val acc {metrics['accuracy']:.3f}, "
              f"balanced {metrics['balanced_accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f} "
              f"(majority baseline: acc {baseline['accuracy']:.3f}, balanced {baseline['balanced_accuracy']:.3f}, "
              f"macro-F1 {baseline['macro_f1']:.3f})")
        if config.patience is not None and epoch - best_epoch >= config.patience:
            log.info(f"early stop after epoch {epoch}: no better validation macro-F1 for {config.patience} epochs")
            break
    best_meta = ckpt.meta("best")
    ckpt.close()
    if best_params is None:  # resumed after the best epoch: read it back
        template = state_template(model, config, image_shape, steps_per_epoch=steps_per_epoch, backbone=backbone)
        ckpt = Checkpoints(RunLayout(out).checkpoints)
        best_params = jax.device_get(ckpt.restore("best", template)[0].params)
        ckpt.close()
        best_probs = predict_proba(eval_step, best_params, x_val, batch_size=config.batch_size, dp=dp)
    return FitResult(history=history, metrics=best_meta["metrics"], best_epoch=best_meta["epoch"], baseline=baseline,
                     best_params=best_params, val_probs=best_probs, normalization=normalization)
