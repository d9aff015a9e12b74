"""Model 1: hand-written backward vs jax.grad of the Flax model, per layer (error and time).

Used by ``python -m experiments.compare_gradients --cnn``.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

from common.timing import time_interleaved
from manual_backprop import layers
from manual_backprop.check import relative_error
from manual_backprop.cnn import model1_batch_grads
from models import Model1
from models.common import jit_run_once
from models.model1 import model1_layer_shapes


def flax_loss(model, params, X, y, keys):
    logits = jax.vmap(lambda x, k: model.apply({"params": params}, x, train=True, key=k))(X, keys)
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - logits[jnp.arange(X.shape[0]), y])


def setup(image_size: int, channels: int, batch: int, dtype, seed: int = 0):
    model = Model1(2)
    params, X, keys = _draw(model, image_size, channels, batch, jnp.dtype(dtype), seed)
    y = jnp.arange(batch, dtype=jnp.int32) % 2
    return model, params, X, y, keys


@partial(jit_run_once, static_argnums=(0, 1, 2, 3, 4, 5))
def _draw(model, image_size: int, channels: int, batch: int, dtype, seed: int):
    """Model 1's initial parameters, the inputs and the dropout keys: one compiled program (drawn one by
    one outside ``jit``, each parameter's shape compiled a program of its own)."""
    params = model.init(jax.random.PRNGKey(seed), jnp.zeros((image_size, image_size, channels)))["params"]
    params = jax.tree_util.tree_map(lambda p: p.astype(dtype), params)
    X = jax.random.uniform(jax.random.PRNGKey(seed + 1), (batch, image_size, image_size, channels), dtype)
    return params, X, jax.random.split(jax.random.PRNGKey(seed + 2), batch)


def error_rows(image_size: int = 108, channels: int = 1, batch: int = 4) -> list[dict]:
    """Per parameter group of the whole model: ‖manual − jax.grad‖ / ‖jax.grad‖ in float64 and float32."""
    rows = {}
    for dtype in (jnp.float64, jnp.float32):
        model, params, X, y, keys = setup(image_size, channels, batch, dtype)
        manual = jax.jit(partial(model1_batch_grads, model=model, train=True))(params, X, y, keys=keys)[1]
        auto = jax.jit(jax.grad(partial(flax_loss, model)))(params, X, y, keys)
        for layer in auto:
            for name in ("kernel", "bias"):
                a = auto[layer][name]
                row = rows.setdefault(f"{layer}/{name}", {"parameter": f"{layer}/{name}", "shape": str(a.shape)})
                row[f"rel_err_{jnp.dtype(dtype).name}"] = relative_error(manual[layer][name], a)
    return list(rows.values())


@partial(jax.jit, static_argnums=(0, 1, 2))
def _layer_case(fwd, x_shape: tuple[int, ...], k_shape: tuple[int, ...]):
    """A layer's parameters, a batch of inputs and its output (the cotangent fed back), in one program."""
    X = jax.random.normal(jax.random.PRNGKey(0), x_shape, jnp.float32)
    p = {"kernel": jax.random.normal(jax.random.PRNGKey(1), k_shape, jnp.float32) * 0.1,
         "bias": jnp.zeros(k_shape[-1], jnp.float32)}
    return p, X, fwd(p, X)


def timing_rows(image_size: int = 108, channels: int = 1, batch: int = 32, repeats: int = 5) -> list[dict]:
    """Backward time per convolution (the batched manual rule, one contraction over the batch, vs jax.vjp)
    and for the whole model (loss and all gradients: ``model1_batch_grads`` vs ``jax.value_and_grad``)."""
    rows = []
    for L in model1_layer_shapes(image_size, channels):
        k, s, c, o = L["k"], L["stride"], L["in"][2], L["out"][2]
        fwd = jax.vmap(lambda p, x, s=s: layers.conv2d_forward(p, x, stride=s)[0], in_axes=(None, 0))
        p, X, dout = _layer_case(fwd, (batch, *L["in"]), (k, k, c, o))
        need_dx = L["name"] != "conv1"
        if need_dx:
            auto = jax.jit(lambda p, X, g: jax.vjp(fwd, p, X)[1](g))
        else:
            auto = jax.jit(lambda p, X, g: jax.vjp(lambda p: fwd(p, X), p)[1](g))
        pads = layers.conv2d_forward(p, X[0], stride=s)[1][3]
        manual = jax.jit(lambda p, X, g, s=s, pads=pads, need_dx=need_dx: layers.conv2d_backward_batch(
            g, X, p["kernel"], s, pads, input_grad=need_dx))
        t = time_interleaved({"manual": lambda: manual(p, X, dout), "autodiff": lambda: auto(p, X, dout)},
                             repeats=repeats)
        rows.append({"layer": L["name"], "input": "x".join(map(str, L["in"])), "manual ms": t["manual"][1] * 1e3,
                     "autodiff ms": t["autodiff"][1] * 1e3, "autodiff/manual": t["autodiff"][1] / t["manual"][1]})
    model, params, X, y, keys = setup(image_size, channels, batch, jnp.float32)
    manual = jax.jit(partial(model1_batch_grads, model=model, train=True))
    auto = jax.jit(jax.value_and_grad(partial(flax_loss, model)))
    t = time_interleaved({"manual": lambda: manual(params, X, y, keys=keys),
                          "autodiff": lambda: auto(params, X, y, keys)}, repeats=repeats)
    rows.append({"layer": "whole Model 1 (loss + all gradients)", "input": f"{image_size}x{image_size}x{channels}",
                 "manual ms": t["manual"][1] * 1e3, "autodiff ms": t["autodiff"][1] * 1e3,
                 "autodiff/manual": t["autodiff"][1] / t["manual"][1]})
    return rows
