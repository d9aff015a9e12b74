"""The train and eval steps of a network trained by epochs with Optax Adam, and the minibatches they read.

The loss is written for one image, ``ℓ = w_y (logsumexp(z) − z_y)`` with ``z`` the
logits and ``w_y`` the (optional, balanced) class weight, ``jax.vmap``-ped over the
minibatch; the minibatch loss is ``Σ_i m_i ℓ_i / Σ_i m_i`` where ``m_i`` masks the
padding rows of a short last batch. One jitted train step, one jitted eval step.
Every random choice comes from ``jax.random`` keys derived from ``config.seed``."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from models.efficientnet_lite import map_images
from models.model1 import Model1
from models.registry import kind_of
from training.data.augment import Augment, augment_batch
from training.loop.config import GRADS
from training.loop.devices import DataParallel
from training.loop.distributed import to_host
from training.loop.optimizer import trainable_mask
from training.loop.state import TrainState


def example_loss(model: Model1, params, x: jax.Array, label: jax.Array, weight: jax.Array, *,
                 key: jax.Array | None, train: bool) -> tuple[jax.Array, jax.Array]:
    """``(w_y (logsumexp(z) − z_y), z)`` for one image."""
    logits = model.apply({"params": params}, x, train=train, key=key if train else None)
    return weight * (jax.nn.logsumexp(logits) - logits[label]), logits


def check_grad(model, grad: str) -> None:
    """``grad="manual"`` needs the network written by hand (:meth:`models.registry.ModelKind.manual_backward`):
    Model 1 with ReLU, or the EfficientNet-Lite transfer classifier."""
    if grad not in GRADS:
        raise ValueError(f"unknown gradient {grad!r}; expected one of {list(GRADS)}")
    if grad == "manual" and not kind_of(model).manual_backward(model):
        activation = getattr(model, "activation", None)
        raise ValueError(f"--grad manual is written for Model 1 with ReLU and the EfficientNet-Lite classifier, "
                         f"not {type(model).__name__}" + (f" with {activation}" if activation else ""))


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
    backbone = kind_of(model).pretrained

    def batch_loss(params, batch, key):
        key_aug, key_drop = jax.random.split(key)
        x = batch["x"] if augment is None else augment_batch(batch["x"], key=key_aug, aug=augment)
        keys = jax.random.split(key_drop, x.shape[0])
        if grad == "manual" and backbone:
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
    chunk = kind_of(model).eval_chunk

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

