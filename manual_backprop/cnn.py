"""Model 1's forward and backward pass by hand, on the Flax model's own parameter tree.

The mapping from the Flax tree (``models.model1.Model1``) is explicit:

    params["conv1"] … params["conv5"]   {"kernel": (k, k, C_in, C_out), "bias": (C_out,)}
    params["dense1"], params["dense2"]  {"kernel": (n_in, n_out), "bias": (n_out,)}   hidden Dense + ReLU + Dropout
    params["logits"]                    {"kernel": (64, n_classes), "bias": (n_classes,)}

and the layers run in the model's order: conv1 (stride 2) → ReLU → pool → conv2 → ReLU →
conv3 → ReLU → pool → conv4 → ReLU → conv5 → ReLU → pool → flatten → [dense → ReLU →
dropout] × len(head_units) → logits → softmax cross-entropy. Dropout layer i draws its mask
from ``jax.random.fold_in(key, i)``, as ``Model1(..., key=key)`` does, so both passes use
the same masks. Only ReLU activations are written by hand here.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from manual_backprop import layers
from models.common import prepare_image

Array = jax.Array

CONVS = ("conv1", "conv2", "conv3", "conv4", "conv5")
POOL_AFTER = {"conv1", "conv3", "conv5"}


def _check_model(model) -> None:
    if model.activation != "relu":
        raise ValueError(f"the manual Model 1 pass is written for ReLU, got activation {model.activation!r}")


def model1_forward(params: dict, x: Array, model, *, train: bool = False, key: Array | None = None
                   ) -> tuple[Array, list]:
    """Logits for one image (H, W, C) and the caches, layer by layer."""
    _check_model(model)
    x = prepare_image(x, "Model1", model.input_mean, model.input_std)  # no parameters: nothing to differentiate
    caches: list[tuple[str, str, Any]] = []
    a = x
    for name in CONVS:
        a, c = layers.conv2d_forward(params[name], a, stride=2 if name == "conv1" else 1, padding="SAME")
        caches.append(("conv", name, c))
        a, c = layers.relu_forward(a)
        caches.append(("relu", name, c))
        if name in POOL_AFTER:
            a, c = layers.max_pool_forward(a)
            caches.append(("pool", name, c))
    a, c = layers.flatten_forward(a)
    caches.append(("flatten", "", c))
    for i in range(len(model.head_units)):
        name = f"dense{i + 1}"
        a, c = layers.dense_forward(params[name], a)
        caches.append(("dense", name, c))
        a, c = layers.relu_forward(a)
        caches.append(("relu", name, c))
        drop_key = jax.random.fold_in(key, i + 1) if (train and key is not None) else None
        a, c = layers.dropout_forward(a, rate=model.dropout_rate, key=drop_key)
        caches.append(("dropout", name, c))
    a, c = layers.dense_forward(params["logits"], a)
    caches.append(("dense", "logits", c))
    return a, caches


BACKWARD = {
    "relu": layers.relu_backward,
    "pool": layers.max_pool_backward,
    "flatten": layers.flatten_backward,
    "dense": layers.dense_backward,
    "dropout": layers.dropout_backward,
}


def model1_backward(dlogits: Array, caches: list) -> dict:
    """∂C/∂params (the Flax tree's structure) from ∂C/∂logits, running the caches backwards."""
    grads: dict = {}
    delta = dlogits
    for kind, name, cache in reversed(caches):
        if kind == "conv":
            delta, g = layers.conv2d_backward(delta, cache, input_grad=name != "conv1")
        else:
            delta, g = BACKWARD[kind](delta, cache)
        if g:
            grads[name] = g
    return grads


def model1_example_grads(params: dict, x: Array, label: Array, model, *, weight: Array | float = 1.0,
                         train: bool = False, key: Array | None = None) -> tuple[Array, dict]:
    """(C, ∂C/∂params) for one image, C = w (logsumexp(z) − z_label)."""
    logits, caches = model1_forward(params, x, model, train=train, key=key)
    loss, ce_cache = layers.softmax_cross_entropy_forward(logits, label)
    dlogits, _ = layers.softmax_cross_entropy_backward(jnp.asarray(weight, logits.dtype), ce_cache)
    return weight * loss, model1_backward(dlogits, caches)


def model1_batch_backward(params: dict, dlogits: Array, caches: list) -> dict:
    """∂C/∂params summed over the minibatch from ``dlogits`` (N, n_classes) and the batched caches.

    Element-wise layers (ReLU, dropout) apply their rule to the whole batch; max-pool runs its
    per-image rule under ``vmap``; dense and convolution layers form each gradient as one
    contraction over the batch (:func:`layers.dense_backward_batch`,
    :func:`layers.conv2d_backward_batch`), so no per-image gradient is built and summed.
    """
    grads: dict = {}
    delta = dlogits
    for kind, name, cache in reversed(caches):
        if kind == "conv":
            x, _, stride, pads = cache  # the kernel is read from params, not from the batched cache
            delta, grads[name] = layers.conv2d_backward_batch(delta, x, params[name]["kernel"], stride, pads,
                                                              input_grad=name != "conv1")
        elif kind == "dense":
            delta, grads[name] = layers.dense_backward_batch(delta, cache[0], params[name]["kernel"])
        elif kind == "pool":
            mask, shape = cache
            delta = jax.vmap(lambda d, m, shape=shape: layers.max_pool_backward(d, (m, shape))[0])(delta, mask)
        elif kind == "flatten":
            delta = delta.reshape((delta.shape[0], *cache))
        else:  # relu, dropout: element-wise, any shape
            delta = BACKWARD[kind](delta, cache)[0]
    return grads


def model1_batch_grads(params: dict, X: Array, labels: Array, model, *, weights: Array | None = None,
                       mask: Array | None = None, train: bool = False, keys: Array | None = None
                       ) -> tuple[Array, dict]:
    """Mean loss and mean gradients over the batch (``mask`` zero rows are padding).

    The forward pass is written for one image and vmapped (:func:`model1_forward`); the loss's
    δ^L = w (softmax(z) − y) / Σ mask is formed per image; then the backward pass runs over the
    whole minibatch (:func:`model1_batch_backward`), each gradient one contraction over the
    batch. Equal to the mean of :func:`model1_example_grads` over the images.
    """
    loss, dlogits, caches = layers.batch_forward_loss(model1_forward, params, X, labels, model, weights=weights,
                                                      mask=mask, train=train, keys=keys)
    return loss, model1_batch_backward(params, dlogits, caches)


def model1_loss_with_manual_grad(params: dict, X: Array, labels: Array, model, *, weights: Array | None = None,
                                 mask: Array | None = None, train: bool = False, keys: Array | None = None
                                 ) -> Array:
    """The mean loss of :func:`model1_batch_grads`, whose derivative in ``params`` is the hand-written one.

    A ``jax.custom_vjp``: ``jax.grad`` of this function (inside Optax, a jitted train step, …)
    runs :func:`model1_batch_grads` instead of autodiff. Only ``params`` may be differentiated:
    the images, labels, weights and keys are constants of the rule.
    """
    return layers.loss_with_manual_grad(
        lambda p: model1_batch_grads(p, X, labels, model, weights=weights, mask=mask, train=train, keys=keys), params)
