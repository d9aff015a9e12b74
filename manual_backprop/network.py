"""A fully connected network and its gradients by the delta rule, written by hand.

Index convention, stated once for the whole package: layers are numbered
``l = 1 … L``; ``a^0 = x`` is the input. For one example

    z^l = W^l a^{l-1} + b^l,        a^l = σ(z^l),

with ``W^l`` of shape ``(n_l, n_{l-1})`` and ``b^l`` of shape ``(n_l,)``. In code,
``params[l - 1] == (W^l, b^l)``; ``zs[l - 1] == z^l``; ``activations[l] == a^l``.

Backpropagation (the four equations):

    δ^L = ∂C/∂a^L ⊙ σ'(z^L)                      (output error; see ``functions.Cost``)
    δ^l = ((W^{l+1})ᵀ δ^{l+1}) ⊙ σ'(z^l)          (the delta rule)
    ∂C/∂W^l = δ^l (a^{l-1})ᵀ,   ∂C/∂b^l = δ^l.

For a minibatch, the cost and every gradient are the (optionally weighted) mean
over its examples. Nothing here calls ``jax.grad`` or ``jax.vjp``: that is what the
tests compare against.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp

from manual_backprop.functions import get_activation, get_cost, output_function

Array = jax.Array
Params = list[tuple[Array, Array]]


def init_mlp(
    key: Array,
    sizes: Sequence[int],
    *,
    weight_scale: str = "unit",
    dtype: jnp.dtype = jnp.float32,
) -> Params:
    """Random parameters ``[(W^1, b^1), …, (W^L, b^L)]`` for layer sizes ``sizes``.

    ``weight_scale="unit"``: W, b ~ N(0, 1) (Nielsen's ``network.py``).
    ``weight_scale="fan_in"``: W ~ N(0, 1/n_{l-1}), b ~ N(0, 1) (his ``network2.py``).
    """
    sizes = tuple(int(n) for n in sizes)
    if len(sizes) < 2 or any(n < 1 for n in sizes):
        raise ValueError(f"sizes must list at least two positive layer widths, got {list(sizes)}")
    if weight_scale not in ("unit", "fan_in"):
        raise ValueError(f"unknown weight_scale {weight_scale!r}; expected 'unit' or 'fan_in'")
    dtype = jnp.dtype(dtype)
    return [_draw_layer(key_l, n_in, n_out, dtype, weight_scale == "fan_in")
            for key_l, n_in, n_out in zip(jax.random.split(key, len(sizes) - 1), sizes[:-1], sizes[1:])]


@partial(jax.jit, static_argnums=(1, 2, 3, 4))
def _draw_layer(key: Array, n_in: int, n_out: int, dtype, fan_in: bool) -> tuple[Array, Array]:
    """(W^l, b^l) in one compiled program per layer shape, so a deep network of equal widths compiles one
    (drawn operation by operation outside ``jit``, each compiled a program of its own). The draw stays
    behind a barrier, or XLA folds the division by √n_{l-1} into the draw's own scaling: the weights are
    bitwise those of the draws made one at a time."""
    key_w, key_b = jax.random.split(key)
    W = jax.random.normal(key_w, (n_out, n_in), dtype)
    if fan_in:
        W = jax.lax.optimization_barrier(W) / jnp.sqrt(jnp.asarray(n_in, dtype))
    return W, jax.random.normal(key_b, (n_out,), dtype)


def layer_sizes(params: Params) -> list[int]:
    """``[n_0, n_1, …, n_L]``, after checking that the shapes chain."""
    if not params:
        raise ValueError("params is empty: a network needs at least one (W, b) layer")
    sizes = []
    for l, layer in enumerate(params, start=1):
        if len(layer) != 2:
            raise ValueError(f"layer {l} must be a pair (W, b), got {len(layer)} items")
        W, b = layer
        if W.ndim != 2 or b.shape != (W.shape[0],):
            raise ValueError(
                f"layer {l}: W must be (n_out, n_in) and b (n_out,), got W{tuple(W.shape)} "
                f"and b{tuple(b.shape)}"
            )
        if sizes and W.shape[1] != sizes[-1]:
            raise ValueError(
                f"layer {l}: W{tuple(W.shape)} takes {W.shape[1]} inputs but layer {l - 1} "
                f"has {sizes[-1]} outputs"
            )
        if not sizes:
            sizes.append(W.shape[1])
        sizes.append(W.shape[0])
    return sizes


def _check_example(params: Params, x: Array, y: Array | None) -> None:
    sizes = layer_sizes(params)
    if x.shape != (sizes[0],):
        raise ValueError(f"x must have shape ({sizes[0]},) for this network, got {tuple(x.shape)}")
    if y is not None and y.shape != (sizes[-1],):
        raise ValueError(f"y must have shape ({sizes[-1]},) for this network, got {tuple(y.shape)}")


def _check_batch(params: Params, X: Array, Y: Array | None, weights: Array | None) -> None:
    sizes = layer_sizes(params)
    if X.ndim != 2 or X.shape[1] != sizes[0]:
        raise ValueError(f"X must have shape (batch, {sizes[0]}), got {tuple(X.shape)}")
    if Y is not None:
        if Y.ndim != 2 or Y.shape[1] != sizes[-1]:
            raise ValueError(f"Y must have shape (batch, {sizes[-1]}), got {tuple(Y.shape)}")
        if Y.shape[0] != X.shape[0]:
            raise ValueError(f"Y has {Y.shape[0]} rows but X has {X.shape[0]}: they must match")
    if weights is not None and weights.shape != (X.shape[0],):
        raise ValueError(f"weights must have shape ({X.shape[0]},), got {tuple(weights.shape)}")


def forward(
    params: Params, x: Array, *, activation: str = "sigmoid", cost: str | None = None
) -> tuple[list[Array], list[Array]]:
    """Feed one example forward; return the cache ``(zs, activations)``.

    ``zs == [z^1, …, z^L]`` and ``activations == [a^0 = x, a^1, …, a^L]``. The
    output non-linearity is ``σ`` unless ``cost`` fixes it (``"cross_entropy"`` →
    sigmoid, ``"softmax_cross_entropy"`` → softmax). Works on a batch of rows too:
    ``z = a Wᵀ + b`` is the same formula with examples along the first axis.
    """
    sigma = get_activation(activation).sigma
    sigma_out = output_function(activation, cost) if cost is not None else sigma
    a = x
    zs, activations = [], [a]
    for l, (W, b) in enumerate(params, start=1):
        z = a @ W.T + jnp.reshape(b, (1,) * (a.ndim - 1) + b.shape)  # b broadcast over rows
        a = sigma_out(z) if l == len(params) else sigma(z)
        zs.append(z)
        activations.append(a)
    return zs, activations


def feedforward(
    params: Params, x: Array, *, activation: str = "sigmoid", cost: str | None = None
) -> Array:
    """The network's output ``a^L`` for one example (or a batch of rows)."""
    return forward(params, x, activation=activation, cost=cost)[1][-1]


def example_cost(
    params: Params, x: Array, y: Array, *, activation: str = "sigmoid", cost: str = "half_sse"
) -> Array:
    """C(x, y) for one example."""
    _check_example(params, x, y)
    zs, activations = forward(params, x, activation=activation, cost=cost)
    return get_cost(cost).value(zs[-1], activations[-1], y)


def _weighted_mean(values: Array, weights: Array | None) -> Array:
    if weights is None:
        return jnp.mean(values, axis=0)
    w = weights.astype(values.dtype)
    return jnp.tensordot(w, values, axes=1) / jnp.sum(w)


def batch_cost(
    params: Params,
    X: Array,
    Y: Array,
    *,
    activation: str = "sigmoid",
    cost: str = "half_sse",
    weights: Array | None = None,
) -> Array:
    """C = (1/m) Σ_x C_x over the rows of X (weighted mean when ``weights`` is given)."""
    _check_batch(params, X, Y, weights)
    zs, activations = forward(params, X, activation=activation, cost=cost)
    return _weighted_mean(get_cost(cost).value(zs[-1], activations[-1], Y), weights)


def backprop(
    params: Params, x: Array, y: Array, *, activation: str = "sigmoid", cost: str = "half_sse"
) -> Params:
    """∂C/∂W^l and ∂C/∂b^l for one example, by the delta rule.

    Returns ``nabla`` with exactly the structure of ``params``:
    ``nabla[l - 1] == (δ^l (a^{l-1})ᵀ, δ^l)``.
    """
    _check_example(params, x, y)
    sigma_prime = get_activation(activation).sigma_prime
    zs, activations = forward(params, x, activation=activation, cost=cost)
    L = len(params)
    nabla: list = [None] * L
    delta = get_cost(cost).delta(zs[-1], activations[-1], y, sigma_prime)  # δ^L
    nabla[L - 1] = (jnp.outer(delta, activations[L - 1]), delta)
    for l in range(L - 1, 0, -1):
        W_next = params[l][0]  # W^{l+1}
        delta = (W_next.T @ delta) * sigma_prime(zs[l - 1])  # δ^l
        nabla[l - 1] = (jnp.outer(delta, activations[l - 1]), delta)
    return nabla


def example_deltas(
    params: Params, x: Array, y: Array, *, activation: str = "sigmoid", cost: str = "half_sse"
) -> tuple[list[Array], list[Array], Array]:
    """The forward cache and the δ recursion for one example, without forming any outer product.

    Returns ``(deltas, activations, C_x)`` with ``deltas == [δ^1, …, δ^L]``,
    ``activations == [a^0, …, a^{L-1}]`` (the inputs of each layer) and the example's cost.
    :func:`backprop` would then form ``δ^l (a^{l-1})ᵀ``; :func:`batch_gradients` instead
    contracts the whole minibatch's δ's and a's at once.
    """
    sigma_prime = get_activation(activation).sigma_prime
    c = get_cost(cost)
    zs, activations = forward(params, x, activation=activation, cost=cost)
    L = len(params)
    deltas: list = [None] * L
    deltas[L - 1] = c.delta(zs[-1], activations[-1], y, sigma_prime)  # δ^L
    for l in range(L - 1, 0, -1):
        deltas[l - 1] = (params[l][0].T @ deltas[l]) * sigma_prime(zs[l - 1])  # δ^l
    return deltas, activations[:-1], c.value(zs[-1], activations[-1], y)


def batch_gradients(
    params: Params,
    X: Array,
    Y: Array,
    *,
    activation: str = "sigmoid",
    cost: str = "half_sse",
    weights: Array | None = None,
) -> Params:
    """Mean over the minibatch of :func:`backprop`: the per-example rule ``jax.vmap``-ped over its rows.

    The forward pass and the δ recursion are written for one example (:func:`example_deltas`)
    and vmapped; the mean of the outer products is then one contraction over the batch axis,

        ∂C/∂W^l = (1/m) Σ_x δ^{x,l} (a^{x,l-1})ᵀ,    ∂C/∂b^l = (1/m) Σ_x δ^{x,l}

    (weights ``w_x``: ``Σ_x w_x … / Σ_x w_x``), so no (m, n_l, n_{l-1}) stack of per-example
    gradients is ever built. Equal to the mean of :func:`backprop` over the rows.
    """
    return value_and_batch_gradients(params, X, Y, activation=activation, cost=cost, weights=weights)[1]


def value_and_batch_gradients(
    params: Params,
    X: Array,
    Y: Array,
    *,
    activation: str = "sigmoid",
    cost: str = "half_sse",
    weights: Array | None = None,
) -> tuple[Array, Params]:
    """``(C, ∂C/∂params)`` of :func:`batch_gradients`, the cost from the same vmapped forward pass."""
    _check_batch(params, X, Y, weights)
    per_example = jax.vmap(partial(example_deltas, activation=activation, cost=cost), in_axes=(None, 0, 0))
    deltas, activations, costs = per_example(params, X, Y)  # each with a leading batch axis m
    if weights is None:
        scale = jnp.full((X.shape[0],), 1.0 / X.shape[0], X.dtype)
    else:
        scale = weights.astype(X.dtype) / jnp.sum(weights.astype(X.dtype))
    # one contraction over the batch axis per layer: Σ_x (w_x δ^x) (a^x)ᵀ / Σ w  ==  (w ⊙ Δ)ᵀ A
    nabla = [((scale[:, None] * delta).T @ a, scale @ delta) for delta, a in zip(deltas, activations)]
    return scale @ costs, nabla


def batch_gradients_matrix(
    params: Params,
    X: Array,
    Y: Array,
    *,
    activation: str = "sigmoid",
    cost: str = "half_sse",
    weights: Array | None = None,
) -> Params:
    """The same mean gradients in matrix form over the whole minibatch.

    With examples as rows, ``Δ^l`` (m, n_l) stacks the δ's: ``Δ^L`` from the cost,
    ``Δ^l = (Δ^{l+1} W^{l+1}) ⊙ σ'(Z^l)``, and ``∂C/∂W^l = (Δ^l)ᵀ A^{l-1} / m``,
    ``∂C/∂b^l = Σ_rows Δ^l / m``. Weighted rows divide by Σ w instead of m.
    """
    return value_and_gradients(params, X, Y, activation=activation, cost=cost, weights=weights)[1]


def value_and_gradients(
    params: Params,
    X: Array,
    Y: Array,
    *,
    activation: str = "sigmoid",
    cost: str = "half_sse",
    weights: Array | None = None,
) -> tuple[Array, Params]:
    """``(C, ∂C/∂params)`` for a minibatch in matrix form, from one forward pass.

    The manual counterpart of ``jax.value_and_grad(batch_cost)``; the gradients are
    those of :func:`batch_gradients_matrix`.
    """
    _check_batch(params, X, Y, weights)
    sigma_prime = get_activation(activation).sigma_prime
    c = get_cost(cost)
    zs, activations = forward(params, X, activation=activation, cost=cost)
    costs = c.value(zs[-1], activations[-1], Y)
    delta = c.delta(zs[-1], activations[-1], Y, sigma_prime)  # rows: δ^L
    if weights is None:
        value, delta = jnp.mean(costs), delta * (1.0 / X.shape[0])  # rows: δ^L / m
    else:
        scale = weights.astype(X.dtype) / jnp.sum(weights.astype(X.dtype))
        value, delta = jnp.sum(costs * scale), delta * scale[:, None]
    L = len(params)
    nabla: list = [None] * L
    nabla[L - 1] = (delta.T @ activations[L - 1], jnp.sum(delta, axis=0))
    for l in range(L - 1, 0, -1):
        delta = (delta @ params[l][0]) * sigma_prime(zs[l - 1])  # rows: δ^l / m
        nabla[l - 1] = (delta.T @ activations[l - 1], jnp.sum(delta, axis=0))
    return value, nabla


def naive_gradients(
    params: Params, x: Array, y: Array, *, activation: str = "sigmoid", cost: str = "half_sse"
) -> Params:
    """Each layer's gradient as the full chain-rule product, recomputed per layer.

    For layer l this evaluates, with no δ kept between layers,

        ∂C/∂z^l = ∂C/∂z^L · ∂z^L/∂z^{L-1} ⋯ ∂z^{l+1}/∂z^l,   ∂z^k/∂z^{k-1} = W^k diag(σ'(z^{k-1})),

    then ``∂C/∂W^l = (∂C/∂z^l)ᵀ (a^{l-1})ᵀ``. The Jacobian matrices are multiplied
    from layer l up to the output (so no two layers share a partial product that
    a compiler could merge), then applied to ``∂C/∂z^L = ∂C/∂a^L ⊙ σ'(z^L)``:
    L − l matrix products for layer l, O(L²) in all. Backprop computes the same
    numbers in O(L) by reusing δ^{l+1} ("cache lookup").
    """
    _check_example(params, x, y)
    sigma_prime = get_activation(activation).sigma_prime
    zs, activations = forward(params, x, activation=activation, cost=cost)
    L = len(params)
    dC_dzL = get_cost(cost).delta(zs[-1], activations[-1], y, sigma_prime)
    # ∂z^k/∂z^{k-1} for k = 2 … L: W^k with column j scaled by σ'(z^{k-1}_j)
    jacobian = {k: params[k - 1][0] * sigma_prime(zs[k - 2])[None, :] for k in range(2, L + 1)}
    nabla = []
    for l in range(1, L + 1):
        dzL_dzl = None  # ∂z^L/∂z^l, accumulated upwards from layer l
        for k in range(l + 1, L + 1):
            dzL_dzl = jacobian[k] if dzL_dzl is None else jacobian[k] @ dzL_dzl
        dC_dzl = dC_dzL if dzL_dzl is None else dC_dzL @ dzL_dzl
        nabla.append((jnp.outer(dC_dzl, activations[l - 1]), dC_dzl))
    return nabla


def cost_with_manual_grad(
    params: Params,
    X: Array,
    Y: Array,
    *,
    activation: str = "sigmoid",
    cost: str = "half_sse",
) -> Array:
    """:func:`batch_cost` whose derivative in ``params`` is the hand-written backprop.

    ``jax.grad(cost_with_manual_grad)(params, X, Y)`` runs :func:`batch_gradients`
    through a ``jax.custom_vjp``, so autodiff tools (``jax.test_util.check_grads``,
    Optax) use the manual delta rule. Differentiating in X or Y raises an error.
    """

    @jax.custom_vjp
    def f(p):
        return batch_cost(p, X, Y, activation=activation, cost=cost)

    def f_fwd(p):
        return f(p), batch_gradients(p, X, Y, activation=activation, cost=cost)

    def f_bwd(nabla, g):
        return (jax.tree_util.tree_map(lambda n: g * n, nabla),)

    f.defvjp(f_fwd, f_bwd)
    return f(params)
