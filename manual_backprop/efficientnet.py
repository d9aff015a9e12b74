"""EfficientNet-Lite with its softmax head, forward and backward by hand, on the Flax model's own parameter tree.

The model is :class:`models.transfer.TransferClassifier` (the backbone
:class:`models.efficientnet_lite.EfficientNetLite` with ``features_only=True``, then the head). Each
forward rule is written for one image (H, W, C) and ``jax.vmap``-ped over the minibatch, as the Flax
model is. Each backward rule takes the minibatch (leading axis N) and forms every parameter gradient as
one contraction over the batch, so no per-image gradient is built and summed. ``δ`` is ∂C/∂(the layer's
output) and the rule returns ∂C/∂(its input) and ∂C/∂(its parameters).

The delta rule of each layer (ã is the SAME-padded input, s the stride, ⊙ element-wise):

    1×1 convolution    z[i,j,f] = Σ_c a[i,j,c] K[c,f]              δ_a = δ Kᵀ,   ∂C/∂K = Σ_{n,i,j} a ⊗ δ
    depthwise k×k      z[i,j,c] = Σ_{u,v} ã[s·i+u, s·j+v, c] K[u,v,c]
                       ∂C/∂K[u,v,c] = Σ_{n,i,j} ã[s·i+u, s·j+v, c] δ[i,j,c]
                       ∂C/∂ã[s·i+u, s·j+v, c] += K[u,v,c] δ[i,j,c]  (each tap's δ·K placed back on its strided grid)
    BatchNorm (frozen) y = γ x̂ + β,  x̂ = (x − μ)/√(σ² + ε)
                       δ_x = δ γ/√(σ² + ε),  ∂C/∂γ = Σ δ x̂,  ∂C/∂β = Σ δ,
                       ∂C/∂μ = −Σ δ γ/√(σ² + ε),  ∂C/∂σ² = −½ Σ δ γ x̂/(σ² + ε)
    ReLU6              a = min(max(z, 0), 6)                        δ_z = δ_a ⊙ σ'(z),  σ'(z) = 1 on (0, 6), else 0
    residual           y = h + x                                    δ reaches both h and x
    global mean pool   f = (1/HW) Σ_{i,j} a[i,j]                    δ_a[i,j] = δ_f / HW
    stem 3×3, stride 2 :func:`manual_backprop.layers.conv2d_backward_batch` (no bias)
    head               (f − m)/s → dropout → dense → softmax cross-entropy (:mod:`manual_backprop.layers`)

μ and σ² get their gradients too, so the whole tree equals ``jax.grad``'s; training keeps them frozen
(``training.loop.optimizer.trainable_mask``). ``trainable`` (a predicate on a layer's path, e.g.
``("backbone", "block15", "project_conv")``) stops the backward at the lowest layer that trains: the
frozen layers below it get zero gradients and cost nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from manual_backprop import layers
from models.common import same_padding
from models.efficientnet_lite import BN_EPS, block_specs, check_input, depthwise_shift

Array = jax.Array
Path = tuple[str, ...]


# ---- 1×1 convolution (no bias) ----

def pointwise_forward(K: Array, a: Array) -> tuple[Array, Array]:
    """``z = a K[0, 0]`` over the pixels of one image; cache a."""
    return jnp.einsum("hwc,cf->hwf", a, K[0, 0]), a


def pointwise_backward(delta: Array, a: Array, K: Array, *, input_grad: bool = True) -> tuple[Array | None, dict]:
    """δ_a = δ Kᵀ and ∂C/∂K = Σ_{n,i,j} a[n,i,j] ⊗ δ[n,i,j], one contraction over batch and pixels.

    ∂C/∂K is formed as (Δᵀ A)ᵀ with the pixels of the batch as the rows of A (N·H·W, C_in) and Δ (N·H·W, C_out):
    on CPU, XLA runs that 2-D product 3× faster than the same contraction over three axes, which it lays out
    with copies (benchmarks/RESULTS.md)."""
    c_in, c_out = K.shape[2:]
    dK = (delta.reshape(-1, c_out).T @ a.reshape(-1, c_in)).T[None, None]
    return (jnp.einsum("nhwf,cf->nhwc", delta, K[0, 0]) if input_grad else None), {"kernel": dK}


# ---- depthwise k×k convolution, TF-SAME, stride 1 or 2 (no bias) ----

def depthwise_forward(K: Array, a: Array, stride: int) -> tuple[Array, Array]:
    """The model's own :func:`models.efficientnet_lite.depthwise_shift`; cache a."""
    return depthwise_shift(a, K, stride), a


def _taps(shape: tuple[int, ...], k: int, stride: int):
    """The SAME pads and, per tap (u, v), the strided window of the padded input that it reads."""
    n, h, w, c = shape
    (ho, pt, pb), (wo, pl, pr) = same_padding(h, k, stride), same_padding(w, k, stride)
    hp, wp = h + pt + pb, w + pl + pr
    span_h, span_w = (ho - 1) * stride + 1, (wo - 1) * stride + 1
    return (pt, pb, pl, pr), hp, wp, span_h, span_w


def depthwise_backward(delta: Array, a: Array, K: Array, stride: int, *, input_grad: bool = True
                       ) -> tuple[Array | None, dict]:
    """∂C/∂K[u,v,c] = Σ ã-window(u,v) ⊙ δ; δ_ã = Σ_{u,v} (K[u,v] δ) placed at rows s·i+u, columns s·j+v.

    ∂C/∂K is summed over the stride's phases of ã, P_pq[i,j] = ã[s·i+p, s·j+q] (one phase at stride 1):
    ∂C/∂K[u,v] = Σ P_{u mod s, v mod s} ⊙ δ placed at offset (⌊u/s⌋, ⌊v/s⌋) in the phase's grid. The
    windows of ã are the forward's own expressions; summed against δ they share each window between two
    consumers, and XLA:CPU then writes every window out as an array of its own (k² copies of the layer's
    input: 2.5 s of the 4.6 s of kernel time of a whole ``--finetune all`` step, Lite1 at batch 8, in a profile;
    benchmarks/RESULTS.md). Read whole, each phase is written once.
    """
    k, s = K.shape[0], stride
    n, h, w, c = a.shape
    ho, wo = delta.shape[1:3]
    (pt, pb, pl, pr), hp, wp, span_h, span_w = _taps(a.shape, k, s)
    ap = jnp.pad(a, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    zero = jnp.zeros((), delta.dtype)
    rows = []
    for u in range(k):
        row = []
        for v in range(k):
            phase = ap[:, u % s::s, v % s::s]  # the same slice for every tap of a phase: one array in XLA
            du, dv = u // s, v // s
            placed = jax.lax.pad(delta, zero, ((0, 0, 0), (du, phase.shape[1] - du - ho, 0),
                                               (dv, phase.shape[2] - dv - wo, 0), (0, 0, 0)))
            row.append(jnp.sum(phase * placed, axis=(0, 1, 2)))
        rows.append(jnp.stack(row))
    dK = jnp.stack(rows)[:, :, None, :]  # (k, k, 1, C)
    if not input_grad:
        return None, {"kernel": dK}
    d_ap = None
    for u in range(k):
        for v in range(k):
            placed = jax.lax.pad(delta * K[u, v, 0].reshape(1, 1, 1, c), zero, ((0, 0, 0), (u, hp - u - span_h, s - 1),
                                                            (v, wp - v - span_w, s - 1), (0, 0, 0)))
            d_ap = placed if d_ap is None else d_ap + placed
    return d_ap[:, pt:pt + h, pl:pl + w], {"kernel": dK}


# ---- BatchNorm in inference form ----

def batchnorm_forward(p: dict, x: Array) -> tuple[Array, Array]:
    """``y = x γ/√(σ²+ε) + (β − μ γ/√(σ²+ε))``, the expression :class:`FrozenBatchNorm` evaluates; cache x."""
    mul = p["scale"] * jax.lax.rsqrt(p["var"] + BN_EPS)
    shape = (1,) * (x.ndim - 1) + (x.shape[-1],)
    return x * mul.reshape(shape) + (p["bias"] - p["mean"] * mul).reshape(shape), x


def batchnorm_backward(delta: Array, x: Array, p: dict, *, input_grad: bool = True) -> tuple[Array | None, dict]:
    """δ_x = δ γ/√(σ²+ε); ∂C/∂γ = Σ δ x̂, ∂C/∂β = Σ δ, ∂C/∂μ = −Σ δ γ/√(σ²+ε), ∂C/∂σ² = −½ Σ δ γ x̂/(σ²+ε)."""
    inv = jax.lax.rsqrt(p["var"] + BN_EPS)
    mul = p["scale"] * inv
    axes = tuple(range(delta.ndim - 1))
    shape = (1,) * (delta.ndim - 1) + (delta.shape[-1],)
    sum_delta = jnp.sum(delta, axis=axes)
    sum_delta_xc = jnp.sum(delta * (x - p["mean"].reshape(shape)), axis=axes)  # Σ δ (x − μ) = Σ δ x̂ √(σ²+ε)
    grads = {"scale": sum_delta_xc * inv, "bias": sum_delta, "mean": -mul * sum_delta,
             "var": -0.5 * p["scale"] * inv ** 3 * sum_delta_xc}
    return (delta * mul.reshape(shape) if input_grad else None), grads


# ---- ReLU6 and the global mean ----

def relu6_forward(z: Array) -> tuple[Array, Array]:
    return jnp.minimum(jnp.maximum(z, 0), 6), z


def relu6_backward(delta: Array, z: Array) -> Array:
    """δ_z = δ_a ⊙ σ'(z), σ'(z) = 1 for 0 < z < 6 and 0 elsewhere (0 at both kinks, as ``jax.nn.relu6``)."""
    return jnp.where((z > 0) & (z < 6), delta, jnp.zeros_like(delta))


def mean_pool_backward(delta: Array, shape: tuple[int, int, int]) -> Array:
    """Each of the H·W pixels gets δ_f / (H W)."""
    h, w, c = shape
    return jnp.broadcast_to((delta / (h * w))[:, None, None, :], (delta.shape[0], h, w, c))


# ---- the whole classifier ----

def _check_model(model) -> None:
    from models.transfer import TransferClassifier

    if not isinstance(model, TransferClassifier):
        raise ValueError(f"the manual EfficientNet-Lite pass is written for TransferClassifier, not "
                         f"{type(model).__name__}")


def transfer_forward(params: dict, x: Array, model, *, train: bool = False, key: Array | None = None
                     ) -> tuple[Array, list]:
    """Logits for one image (H, W, 3) in [0, 1] and the caches ``(kind, path, cache, static)``, layer by layer.
    With ``model.start_block = k``, ``x`` is the activation map at the input of block ``k`` instead (the
    frozen blocks below it ran once, ahead): the pass starts there."""
    _check_model(model)
    specs = block_specs(model.variant)
    start = model.start_block
    check_input(model.variant, x, start)  # the Flax model's own check: the same errors
    bb = params["backbone"]
    caches: list[tuple[str, Path, Any, Any]] = []

    def bn_relu6(h, path, relu=True):
        h, c = batchnorm_forward(_get(params, path), h)
        caches.append(("bn", path, c, None))
        if relu:
            h, c = relu6_forward(h)
            caches.append(("relu6", path, c, None))
        return h

    if start is None:
        a = x * 2.0 - 1.0  # no parameters, and the image needs no gradient
        stem = {"kernel": bb["conv_stem"]["kernel"],
                "bias": jnp.zeros(bb["conv_stem"]["kernel"].shape[-1], a.dtype)}
        a, (a_in, _, stride, pads) = layers.conv2d_forward(stem, a, stride=2, padding="SAME")
        caches.append(("conv", ("backbone", "conv_stem"), a_in, (stride, pads)))
        a = bn_relu6(a, ("backbone", "bn_stem"))
    else:
        a = x
    for i, spec in enumerate(specs[start or 0:], start=start or 0):
        block = ("backbone", f"block{i}")
        residual = spec.stride == 1 and spec.c_in == spec.c_out
        if residual:
            caches.append(("residual_in", block, None, None))
        h = a
        if spec.expand != 1:
            h, c = pointwise_forward(bb[block[1]]["expand_conv"]["kernel"], h)
            caches.append(("pointwise", (*block, "expand_conv"), c, None))
            h = bn_relu6(h, (*block, "bn0"))
        h, c = depthwise_forward(bb[block[1]]["depthwise_conv"]["kernel"].astype(h.dtype), h, spec.stride)
        caches.append(("depthwise", (*block, "depthwise_conv"), c, spec.stride))
        h = bn_relu6(h, (*block, "bn1"))
        h, c = pointwise_forward(bb[block[1]]["project_conv"]["kernel"], h)
        caches.append(("pointwise", (*block, "project_conv"), c, None))
        h = bn_relu6(h, (*block, "bn2"), relu=False)
        if residual:
            h = h + a
            caches.append(("residual_out", block, None, None))
        a = h
    a, c = pointwise_forward(bb["conv_head"]["kernel"], a)
    caches.append(("pointwise", ("backbone", "conv_head"), c, None))
    a = bn_relu6(a, ("backbone", "bn_head"))
    caches.append(("mean", ("backbone",), None, tuple(a.shape)))
    f = jnp.mean(a, axis=(0, 1))
    if model.feature_mean is not None:
        std = jnp.asarray(model.feature_std, f.dtype)
        f = (f - jnp.asarray(model.feature_mean, f.dtype)) / std
        caches.append(("standardize", ("head",), std, None))
    if model.dropout_rate > 0:
        drop_key = jax.random.fold_in(key, 1) if (train and key is not None) else None
        f, c = layers.dropout_forward(f, rate=model.dropout_rate, key=drop_key)
        caches.append(("dropout", ("head",), c, None))
    logits, (f_in, _) = layers.dense_forward(params["head"], f)
    caches.append(("dense", ("head",), f_in, None))
    return logits, caches


def _get(tree: dict, path: Path):
    for name in path:
        tree = tree[name]
    return tree


def _set(tree: dict, path: Path, value: dict) -> None:
    for name in path[:-1]:
        tree = tree.setdefault(name, {})
    tree[path[-1]] = value


HAS_PARAMS = ("conv", "pointwise", "depthwise", "bn", "dense")


def transfer_batch_backward(params: dict, dlogits: Array, caches: list, *,
                            trainable: Callable[[Path], bool] | None = None) -> dict:
    """∂C/∂params summed over the minibatch from ``dlogits`` (N, n_classes) and the batched caches.

    Runs the caches backwards down to the lowest layer for which ``trainable(path)`` holds (all of them
    when ``trainable`` is None); layers below it get no gradient here (see :func:`fill_zeros`).
    """
    needed = [i for i, (kind, path, _, _) in enumerate(caches)
              if kind in HAS_PARAMS and (trainable is None or trainable(path))]
    if not needed:
        return {}
    lowest = needed[0]
    grads: dict = {}
    skips: list[Array] = []
    delta = dlogits
    for i in range(len(caches) - 1, lowest - 1, -1):
        kind, path, cache, static = caches[i]
        input_grad = i > lowest
        p = _get(params, path) if kind in HAS_PARAMS else None
        if kind == "dense":
            delta, g = layers.dense_backward_batch(delta, cache, p["kernel"])
        elif kind == "pointwise":
            delta, g = pointwise_backward(delta, cache, p["kernel"], input_grad=input_grad)
        elif kind == "depthwise":
            delta, g = depthwise_backward(delta, cache, p["kernel"].astype(delta.dtype), static, input_grad=input_grad)
        elif kind == "bn":
            delta, g = batchnorm_backward(delta, cache, p, input_grad=input_grad)
        elif kind == "conv":
            delta, g = layers.conv2d_backward_batch(delta, cache, p["kernel"], *static, input_grad=input_grad)
            g = {"kernel": g["kernel"]}  # the stem has no bias
        else:
            g = None
            if kind == "relu6":
                delta = relu6_backward(delta, cache)
            elif kind == "dropout":
                delta = layers.dropout_backward(delta, cache)[0]
            elif kind == "standardize":
                delta = delta / cache
            elif kind == "mean":
                delta = mean_pool_backward(delta, static)
            elif kind == "residual_out":
                skips.append(delta)  # δ of the block's output reaches its input through the skip too
            elif kind == "residual_in":
                delta = delta + skips.pop()
            else:
                raise ValueError(f"unknown layer kind {kind!r} at {'/'.join(path)}")
        if g is not None and (trainable is None or trainable(path)):
            _set(grads, path, g)
    return grads


def fill_zeros(params: dict, grads: dict) -> dict:
    """``grads`` completed to the structure of ``params``: every parameter without a gradient gets zeros."""
    def fill(p, g):
        if isinstance(p, dict):
            return {k: fill(v, g.get(k, {}) if isinstance(g, dict) else {}) for k, v in p.items()}
        return g if not isinstance(g, dict) else jnp.zeros_like(p)

    return fill(params, grads)


def transfer_batch_grads(params: dict, X: Array, labels: Array, model, *, weights: Array | None = None,
                         mask: Array | None = None, train: bool = False, keys: Array | None = None,
                         trainable: Callable[[Path], bool] | None = None) -> tuple[Array, dict]:
    """Mean loss and mean gradients over the batch, the tree of ``params`` (zeros where nothing trains).

    The per-image forward (:func:`transfer_forward`) is vmapped; the loss's δ^L = w (softmax(z) − y)/Σ mask
    (:func:`manual_backprop.layers.batch_softmax_cross_entropy`); then :func:`transfer_batch_backward`.
    """
    loss, dlogits, caches = layers.batch_forward_loss(transfer_forward, params, X, labels, model, weights=weights,
                                                      mask=mask, train=train, keys=keys)
    return loss, fill_zeros(params, transfer_batch_backward(params, dlogits, caches, trainable=trainable))


def transfer_loss_with_manual_grad(params: dict, X: Array, labels: Array, model, *, weights: Array | None = None,
                                   mask: Array | None = None, train: bool = False, keys: Array | None = None,
                                   trainable: Callable[[Path], bool] | None = None) -> Array:
    """The mean loss of :func:`transfer_batch_grads`, whose ``jax.grad`` in ``params`` is the hand-written one."""
    return layers.loss_with_manual_grad(
        lambda p: transfer_batch_grads(p, X, labels, model, weights=weights, mask=mask, train=train, keys=keys,
                                       trainable=trainable), params)


def head_grads(params: dict, F: Array, Y: Array, w: Array, l2: Array | float) -> tuple[Array, dict]:
    """The softmax head on frozen features (``--finetune head``), loss and gradients by hand.

    ``F`` (n, V, D) standardized features of V views per photo, ``Y`` (n, K) one-hot, ``w`` (n,) example
    weights (zero for rows that do not train), ``params = {"W": (D, K), "b": (K,)}``:

        C = Σ_n w_n (1/V) Σ_v ℓ(z[n,v], y_n) / Σ_n w_n + λ ‖W‖²,   z[n,v] = F[n,v] W + b
        δ[n,v] = w_n (softmax(z[n,v]) − y_n) / (V Σ_n w_n)
        ∂C/∂W = Σ_{n,v} F[n,v] ⊗ δ[n,v] + 2λ W,   ∂C/∂b = Σ_{n,v} δ[n,v]
    """
    n, v, _ = F.shape
    z = F @ params["W"] + params["b"][None, None, :]
    logp = jax.nn.log_softmax(z, axis=-1)
    denom = jnp.maximum(jnp.sum(w), 1e-12)
    ce = -jnp.sum(logp * Y[:, None, :], axis=-1).mean(axis=1)
    loss = jnp.sum(w * ce) / denom + l2 * jnp.sum(params["W"] ** 2)
    delta = (w / (v * denom))[:, None, None] * (jnp.exp(logp) - Y[:, None, :])
    return loss, {"W": jnp.einsum("nvd,nvk->dk", F, delta) + 2 * l2 * params["W"], "b": jnp.sum(delta, axis=(0, 1))}
