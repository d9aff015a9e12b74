"""Activations and costs, each with its hand-written derivative.

Index convention (the same throughout ``manual_backprop``): for one example,
``z^l = W^l a^{l-1} + b^l`` and ``a^l = σ(z^l)`` for layers ``l = 1 … L``, with
``a^0 = x`` and ``W^l`` of shape ``(n_l, n_{l-1})`` (rows are output units).

An :class:`Activation` carries ``σ`` and ``σ'`` written by hand. A :class:`Cost`
carries ``C(z^L, a^L, y)`` for one example and the output error
``δ^L = ∂C/∂a^L ⊙ σ'(z^L)`` written by hand, simplified where ``σ'`` cancels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array


class Activation(NamedTuple):
    """An element-wise non-linearity ``σ`` and its derivative ``σ'``."""

    name: str
    sigma: Callable[[Array], Array]
    sigma_prime: Callable[[Array], Array]


def _sigmoid(z: Array) -> Array:
    """σ(z) = 1 / (1 + e^{-z}), evaluated by XLA's one ``logistic`` op (stable for large |z|)."""
    return jax.lax.logistic(z)


def _sigmoid_prime(z: Array) -> Array:
    """σ'(z) = σ(z) (1 − σ(z))."""
    s = _sigmoid(z)
    return s * (1.0 - s)


def _tanh_prime(z: Array) -> Array:
    """tanh'(z) = 1 − tanh²(z)."""
    t = jnp.tanh(z)
    return 1.0 - t * t


def _relu(z: Array) -> Array:
    """relu(z) = max(z, 0)."""
    return jnp.where(z > 0, z, jnp.zeros_like(z))


def _relu_prime(z: Array) -> Array:
    """relu'(z) = 1 if z > 0 else 0 (0 at z = 0, as ``jax.nn.relu``)."""
    return jnp.where(z > 0, jnp.ones_like(z), jnp.zeros_like(z))


ACTIVATIONS: dict[str, Activation] = {
    "sigmoid": Activation("sigmoid", _sigmoid, _sigmoid_prime),
    "tanh": Activation("tanh", jnp.tanh, _tanh_prime),
    "relu": Activation("relu", _relu, _relu_prime),
    "identity": Activation("identity", lambda z: z, jnp.ones_like),
}


def get_activation(name: str) -> Activation:
    """Return the activation called ``name``; ``ValueError`` naming it if unknown."""
    try:
        return ACTIVATIONS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown activation {name!r}; expected one of {sorted(ACTIVATIONS)}"
        ) from None


def softmax(z: Array) -> Array:
    """softmax(z)_k = e^{z_k} / Σ_j e^{z_j}, shifted by max(z) for stability."""
    e = jnp.exp(z - jnp.max(z, axis=-1, keepdims=True))
    return e / jnp.sum(e, axis=-1, keepdims=True)


def _logsumexp(z: Array) -> Array:
    m = jnp.max(z, axis=-1)
    return m + jnp.log(jnp.sum(jnp.exp(z - m[..., None]), axis=-1))


def _softplus(z: Array) -> Array:
    """softplus(z) = ln(1 + e^z) = max(z, 0) + ln(1 + e^{-|z|})."""
    return jnp.maximum(z, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(z)))


class Cost(NamedTuple):
    """A per-example cost and its output error δ^L.

    ``output`` names the output layer's non-linearity: ``None`` means the
    network's own activation; ``"sigmoid"`` and ``"softmax"`` are fixed by the
    cost (cross-entropy is defined on those outputs).
    """

    name: str
    output: str | None
    value: Callable[[Array, Array, Array], Array]
    delta: Callable[[Array, Array, Array, Callable[[Array], Array]], Array]


def _sse(z: Array, a: Array, y: Array) -> Array:
    """C = Σ_k (a_k − y_k)²."""
    return jnp.sum((a - y) ** 2, axis=-1)


def _sse_delta(z: Array, a: Array, y: Array, sigma_prime) -> Array:
    """δ^L = 2 (a − y) ⊙ σ'(z)."""
    return 2.0 * (a - y) * sigma_prime(z)


def _half_sse(z: Array, a: Array, y: Array) -> Array:
    """C = ½ ‖a − y‖²."""
    return 0.5 * jnp.sum((a - y) ** 2, axis=-1)


def _half_sse_delta(z: Array, a: Array, y: Array, sigma_prime) -> Array:
    """δ^L = (a − y) ⊙ σ'(z)."""
    return (a - y) * sigma_prime(z)


def _cross_entropy(z: Array, a: Array, y: Array) -> Array:
    """C = −Σ_k [y_k ln a_k + (1 − y_k) ln(1 − a_k)] with a = σ(z).

    Written in z as Σ_k [softplus(z_k) − y_k z_k], which is the same number
    without ln(0) for saturated outputs.
    """
    return jnp.sum(_softplus(z) - y * z, axis=-1)


def _cross_entropy_delta(z: Array, a: Array, y: Array, sigma_prime) -> Array:
    """δ^L = (a − y)/(a(1 − a)) ⊙ σ(z)(1 − σ(z)) = a − y: σ' cancels."""
    return a - y


def _softmax_cross_entropy(z: Array, a: Array, y: Array) -> Array:
    """C = −Σ_k y_k ln softmax(z)_k = (Σ_k y_k) logsumexp(z) − y·z."""
    return jnp.sum(y, axis=-1) * _logsumexp(z) - jnp.sum(y * z, axis=-1)


def _softmax_cross_entropy_delta(z: Array, a: Array, y: Array, sigma_prime) -> Array:
    """δ^L = ∂C/∂z^L = softmax(z) Σ_k y_k − y (= softmax(z) − y for one-hot y)."""
    return a * jnp.sum(y, axis=-1, keepdims=True) - y


COSTS: dict[str, Cost] = {
    "sse": Cost("sse", None, _sse, _sse_delta),
    "half_sse": Cost("half_sse", None, _half_sse, _half_sse_delta),
    "cross_entropy": Cost("cross_entropy", "sigmoid", _cross_entropy, _cross_entropy_delta),
    "softmax_cross_entropy": Cost(
        "softmax_cross_entropy", "softmax", _softmax_cross_entropy, _softmax_cross_entropy_delta
    ),
}


def get_cost(name: str) -> Cost:
    """Return the cost called ``name``; ``ValueError`` naming it if unknown."""
    try:
        return COSTS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown cost {name!r}; expected one of {sorted(COSTS)}") from None


def output_function(activation: str, cost: str) -> Callable[[Array], Array]:
    """The output layer's non-linearity for this activation/cost pair."""
    out = get_cost(cost).output
    if out == "softmax":
        return softmax
    return get_activation(out or activation).sigma
