"""The hand-written gradients against ``jax.grad``: how far apart (relative error) and how fast (jitted timings).

The rows of the tables :mod:`training.runs.gradients` writes:

- :func:`mlp_error_rows`: for every architecture × activation × cost, the largest per-array relative error
  ‖manual − jax.grad‖ / ‖jax.grad‖ of the minibatch gradient (``manual_backprop.batch_gradients``), in float32
  and float64 (float64 needs x64 enabled, e.g. ``training.loop.devices.float64``).
- :func:`mlp_timing_rows`: jitted minibatch gradient times, the hand-written rules (matrix form, vmapped
  per-example form, the naive chain rule) beside ``jax.grad``, interleaved.
- :func:`model1_error_rows`, :func:`model1_timing_rows`: Model 1's hand-written backward
  (``manual_backprop.cnn``) against ``jax.grad`` of the Flax model, per parameter and per layer.
- :func:`depth_timing_row`, :func:`fitted_slope`: gradient time against depth L, where the naive chain rule
  costs O(L²) matrix products and backprop O(L).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

import manual_backprop as mb
from common.timing import time_call, time_interleaved
from manual_backprop import layers
from manual_backprop.check import max_relative_error, relative_error
from manual_backprop.cnn import model1_batch_grads
from models import Model1
from models.common import jit_run_once
from models.model1 import model1_layer_shapes

# ---- MLPs: errors and timings ---------------------------------------------------------------------------------

MLP_ARCHITECTURES: dict[str, list[int]] = {
    "3-2-3-5": [3, 2, 3, 5],
    "1-1-1-1": [1, 1, 1, 1],
    "784-30-10": [784, 30, 10],
    "8x10": [8] * 10,
    "784-100-10": [784, 100, 10],
}
"""The layer sizes whose gradients :func:`mlp_error_rows` compares (with every activation and cost)."""

TIMED_ARCHITECTURES: dict[str, list[int]] = {
    "784-30-10": [784, 30, 10], "784-100-10": [784, 100, 10], "8x10": [8] * 10,
    "wide 784-512-512-10": [784, 512, 512, 10]}
"""The layer sizes :func:`mlp_timing_rows` times."""

CALLS_PER_SAMPLE = 10
CONTROL = "jax.grad again (control)"


def mlp_problem(sizes: Sequence[int], dtype, batch: int, cost: str, seed: int = 0) -> tuple[list, jax.Array, jax.Array]:
    """Parameters (fan-in scaled), inputs X ~ U[0, 1) and targets Y ~ U[0.05, 0.95) (rows summing to 1 for
    the softmax cost), from ``seed``: one compiled program per architecture, not one per drawn shape."""
    key_p, key_x, key_y = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = mb.init_mlp(key_p, sizes, weight_scale="fan_in", dtype=dtype)
    dtype = jnp.dtype(dtype)
    X, Y = _inputs(key_x, key_y, (batch, sizes[0]), (batch, sizes[-1]), dtype, cost == "softmax_cross_entropy")
    return params, X, Y


@partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _inputs(key_x, key_y, x_shape, y_shape, dtype, normalize):
    """X, Y drawn by one compiled program per shape."""
    X = jax.random.uniform(key_x, x_shape, dtype)
    Y = jax.random.uniform(key_y, y_shape, dtype, 0.05, 0.95)
    if normalize:
        Y = Y / jnp.sum(Y, axis=1, keepdims=True)
    return X, Y


def mlp_error_rows(batch: int = 16, architectures: Mapping[str, Sequence[int]] = MLP_ARCHITECTURES) -> list[dict]:
    """One row per architecture × activation × cost: the largest per-array relative error of the hand-written
    minibatch gradient against ``jax.grad`` of the minibatch cost, in float32 and float64 (``max_rel_err_*``)."""
    rows = []
    for arch, sizes in architectures.items():
        for activation in sorted(mb.ACTIVATIONS):
            for cost in sorted(mb.COSTS):
                row = {"architecture": arch, "activation": activation, "cost": cost}
                for dtype in (jnp.float32, jnp.float64):
                    params, X, Y = mlp_problem(sizes, dtype, batch, cost)
                    kw = dict(activation=activation, cost=cost)
                    # both in one compiled program (not an eager dispatch, and compilation, per operation)
                    manual, auto = jax.jit(lambda p, X, Y, kw=kw: (mb.batch_gradients(p, X, Y, **kw), jax.grad(
                        partial(mb.batch_cost, **kw))(p, X, Y)))(params, X, Y)
                    row[f"max_rel_err_{jnp.dtype(dtype).name}"] = max_relative_error(manual, auto)
                rows.append(row)
    return rows


def mlp_timing_rows(batch: int = 64, repeats: int = 21, calls: int = CALLS_PER_SAMPLE,
                    architectures: Mapping[str, Sequence[int]] = TIMED_ARCHITECTURES) -> list[dict]:
    """Jitted gradient times per architecture: the methods called in turn (interleaved), ``repeats``
    samples of ``calls`` calls each; the median and the fastest sample per call, and the median's ratio
    to jax.grad's. (Timing each method in a block, one after the other, let the machine's drift pass for
    a difference between methods.) The naive chain, 2–20× slower, is timed in its own interleaved pairing
    with jax.grad: among the others, whichever method followed it ran up to 1.3× slower.

    ``CONTROL`` is a second, separately jitted copy of jax.grad timed among the others: the same program, so
    its ratio departs from 1 only by the machine's noise, which shows how far from 1 a ratio must be to mean
    anything (on a shared 2-core host it measured 0.87–1.10)."""
    rows = []
    kw = dict(activation="sigmoid", cost="half_sse")
    for arch, sizes in architectures.items():
        params, X, Y = mlp_problem(sizes, jnp.float32, batch, "half_sse")
        grad = jax.jit(jax.grad(partial(mb.batch_cost, **kw)))
        fns = {
            "manual (matrix)": jax.jit(partial(mb.batch_gradients_matrix, **kw)),
            "manual (vmap)": jax.jit(partial(mb.batch_gradients, **kw)),
            "jax.grad": grad,
            CONTROL: jax.jit(jax.grad(partial(mb.batch_cost, **kw))),
        }
        naive = jax.jit(lambda p, X, Y: jax.tree_util.tree_map(
            lambda g: jnp.mean(g, 0), jax.vmap(partial(mb.naive_gradients, p, **kw))(X, Y)))
        # samples of at least ~10 ms: a sub-millisecond call's samples are otherwise mostly timer noise
        one = time_interleaved({"jax.grad": lambda: grad(params, X, Y)}, repeats=3, calls=calls)["jax.grad"][0]
        n_calls = max(calls, int(np.ceil(0.01 / max(one, 1e-7))))
        times = time_interleaved({name: (lambda f=f: f(params, X, Y)) for name, f in fns.items()},
                                 repeats=repeats, calls=n_calls, rotate=True)
        pair = time_interleaved({"jax.grad": lambda: grad(params, X, Y), "naive": lambda: naive(params, X, Y)},
                                repeats=max(5, repeats // 3), calls=calls)
        for name, (fastest, median) in times.items():
            rows.append({
                "architecture": arch, "batch": batch, "method": name, "ms": median * 1e3, "min ms": fastest * 1e3,
                "ratio_vs_jax_grad": median / times["jax.grad"][1], "calls per sample": n_calls,
            })
        rows.append({"architecture": arch, "batch": batch, "method": "naive chain (vmap)", "ms": pair["naive"][1] * 1e3,
                     "min ms": pair["naive"][0] * 1e3, "ratio_vs_jax_grad": pair["naive"][1] / pair["jax.grad"][1],
                     "calls per sample": calls})
    return rows


# ---- Model 1: errors per parameter, timings per layer ---------------------------------------------------------

def flax_cross_entropy(model: Model1, params, X: jax.Array, y: jax.Array, keys: jax.Array) -> jax.Array:
    """The mean cross-entropy of the Flax ``model`` on the batch ``X``, ``y`` (dropout keys ``keys``, one per
    example): the loss whose ``jax.grad`` the hand-written backward is compared with."""
    logits = jax.vmap(lambda x, k: model.apply({"params": params}, x, train=True, key=k))(X, keys)
    return jnp.mean(jax.nn.logsumexp(logits, axis=1) - logits[jnp.arange(X.shape[0]), y])


def model1_problem(image_size: int, channels: int, batch: int, dtype, seed: int = 0) -> tuple:
    """Model 1 for two classes, its initial parameters in ``dtype``, a batch of inputs U[0, 1), alternating
    labels and one dropout key per example: ``(model, params, X, y, keys)``."""
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


def model1_error_rows(image_size: int = 108, channels: int = 1, batch: int = 4) -> list[dict]:
    """Per parameter group of the whole model: ‖manual − jax.grad‖ / ‖jax.grad‖ in float64 and float32."""
    rows = {}
    for dtype in (jnp.float64, jnp.float32):
        model, params, X, y, keys = model1_problem(image_size, channels, batch, dtype)
        manual = jax.jit(partial(model1_batch_grads, model=model, train=True))(params, X, y, keys=keys)[1]
        auto = jax.jit(jax.grad(partial(flax_cross_entropy, model)))(params, X, y, keys)
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


def model1_timing_rows(image_size: int = 108, channels: int = 1, batch: int = 32, repeats: int = 5) -> list[dict]:
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
    model, params, X, y, keys = model1_problem(image_size, channels, batch, jnp.float32)
    manual = jax.jit(partial(model1_batch_grads, model=model, train=True))
    auto = jax.jit(jax.value_and_grad(partial(flax_cross_entropy, model)))
    t = time_interleaved({"manual": lambda: manual(params, X, y, keys=keys),
                          "autodiff": lambda: auto(params, X, y, keys)}, repeats=repeats)
    rows.append({"layer": "whole Model 1 (loss + all gradients)", "input": f"{image_size}x{image_size}x{channels}",
                 "manual ms": t["manual"][1] * 1e3, "autodiff ms": t["autodiff"][1] * 1e3,
                 "autodiff/manual": t["autodiff"][1] / t["manual"][1]})
    return rows


# ---- time against depth ---------------------------------------------------------------------------------------

DEPTH_METHODS = ("naive chain", "cached backprop", "jax.grad")


def depth_gradient_functions(activation: str = "sigmoid", cost: str = "half_sse") -> dict[str, Callable]:
    """Jitted minibatch-mean gradients by each of :data:`DEPTH_METHODS` (per-example functions, vmapped)."""
    kw = dict(activation=activation, cost=cost)

    def mean_over_batch(per_example):
        def f(params, X, Y):
            grads = jax.vmap(partial(per_example, params, **kw))(X, Y)
            return jax.tree_util.tree_map(lambda g: jnp.mean(g, axis=0), grads)

        return jax.jit(f)

    return {
        "naive chain": mean_over_batch(mb.naive_gradients),
        "cached backprop": mean_over_batch(mb.backprop),
        "jax.grad": mean_over_batch(jax.grad(mb.example_cost)),
    }


def depth_timing_row(fns: Mapping[str, Callable], depth: int, width: int = 32, batch: int = 64,
                     repeats: int = 7) -> dict:
    """The median milliseconds of each gradient function ``fns`` (:func:`depth_gradient_functions`) on an MLP of
    ``depth`` layers of ``width`` units (fan-in scaled, drawn from the key ``depth``) and a batch U[0, 1), and
    the naive chain's time over cached backprop's."""
    sizes = [width] * (depth + 1)
    key_p, key_x, key_y = jax.random.split(jax.random.PRNGKey(depth), 3)
    params = mb.init_mlp(key_p, sizes, weight_scale="fan_in")
    X = jax.random.uniform(key_x, (batch, width))
    Y = jax.random.uniform(key_y, (batch, width))
    row = {"depth_L": depth, "width": width, "batch": batch}
    for name, f in fns.items():
        row[f"{name} ms"] = time_call(lambda f=f: f(params, X, Y), repeats=repeats) * 1e3
    row["naive / cached"] = row["naive chain ms"] / row["cached backprop ms"]
    return row


def fitted_slope(depths: Sequence[int], seconds: Sequence[float]) -> float:
    """Least-squares slope of log(seconds) against log(depth)."""
    return float(np.polyfit(np.log(depths), np.log(seconds), 1)[0])
