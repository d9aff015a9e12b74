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


def model1_batch_grads(params: dict, X: Array, labels: Array, model, *, weights: Array | None = None,
                       mask: Array | None = None, train: bool = False, keys: Array | None = None
                       ) -> tuple[Array, dict]:
    """Mean loss and mean gradients over the batch (``mask`` zero rows are padding), by ``jax.vmap``."""
    n = X.shape[0]
    weights = jnp.ones((n,), X.dtype) if weights is None else weights
    mask = jnp.ones((n,), X.dtype) if mask is None else mask
    if keys is None:
        losses, grads = jax.vmap(
            lambda x, y, w: model1_example_grads(params, x, y, model, weight=w, train=False)
        )(X, labels, weights * mask)
    else:
        losses, grads = jax.vmap(
            lambda x, y, w, k: model1_example_grads(params, x, y, model, weight=w, train=train, key=k)
        )(X, labels, weights * mask, keys)
    denom = jnp.maximum(jnp.sum(mask), 1.0)
    return jnp.sum(losses) / denom, jax.tree_util.tree_map(lambda g: jnp.sum(g, axis=0) / denom, grads)
