"""Stochastic gradient descent with the hand-written gradients.

Update for one minibatch of m examples (``l2 = λ/n`` for n training examples):

    W^l ← W^l − η (∂C/∂W^l + l2 · W^l),        b^l ← b^l − η ∂C/∂b^l,

where ∂C/∂W^l is the minibatch mean from :mod:`manual_backprop.network` (so
``l2 = λ/n`` is Nielsen's ``(1 − ηλ/n) w − (η/m) Σ ∇C_x``). An epoch is one
``lax.scan`` over minibatches of a permutation drawn from an explicit key; when
``batch_size`` does not divide n, the last minibatch is smaller (it is padded to a
full one with zero-weight rows, so every example is used once per epoch).
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
from tqdm.auto import tqdm

from manual_backprop.network import (
    Params,
    _check_batch,
    batch_cost,
    feedforward,
    value_and_batch_gradients,
    value_and_gradients,
)

Array = jax.Array

def _autodiff_value_and_gradients(params, X, Y, *, activation, cost, weights):
    """The peer: ``jax.value_and_grad`` of :func:`batch_cost` (not hand-written; for comparison)."""
    return jax.value_and_grad(batch_cost)(params, X, Y, activation=activation, cost=cost, weights=weights)


# "matrix": the hand-written rule in matrix form; "vmap": the per-example rule vmapped over the minibatch;
# "autodiff": jax.value_and_grad of the same cost, so that all three run in the very same step and scan
METHODS = {"matrix": value_and_gradients, "vmap": value_and_batch_gradients, "autodiff": _autodiff_value_and_gradients}


def _value_and_gradients(method: str):
    try:
        return METHODS[method]
    except KeyError:
        raise ValueError(f"unknown gradient method {method!r}; expected one of {sorted(METHODS)}") from None


def one_hot(labels: Array, n_classes: int, dtype: jnp.dtype = jnp.float32) -> Array:
    """Rows ``e_{label}`` of the n_classes × n_classes identity."""
    labels = jnp.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D array of class indices, got shape {tuple(labels.shape)}")
    return (labels[:, None] == jnp.arange(n_classes)[None, :]).astype(dtype)


@partial(jax.jit, static_argnames=("activation", "cost", "method"))
def sgd_step(
    params: Params,
    X: Array,
    Y: Array,
    *,
    eta: float | Array,
    activation: str = "sigmoid",
    cost: str = "half_sse",
    l2: float | Array = 0.0,
    weights: Array | None = None,
    method: str = "matrix",
) -> tuple[Params, Array]:
    """One update ``w ← w − η ∂C/∂w`` on the minibatch (X, Y); returns (params, C).

    C is the minibatch's mean cost before the update (without the L2 term).
    ``method="matrix"`` uses :func:`value_and_gradients` (one forward pass, matrix
    form); ``method="vmap"`` uses :func:`batch_gradients` (``vmap`` of the
    per-example :func:`backprop`). Both are the same numbers.
    """
    loss, nabla = _value_and_gradients(method)(
        params, X, Y, activation=activation, cost=cost, weights=weights
    )
    new_params = [
        (W - eta * (nabla_w + l2 * W), b - eta * nabla_b)
        for (W, b), (nabla_w, nabla_b) in zip(params, nabla)
    ]
    return new_params, loss


@partial(jax.jit, static_argnames=("batch_size", "activation", "cost", "method"))
def sgd_epoch(
    params: Params,
    X: Array,
    Y: Array,
    *,
    key: Array,
    eta: float | Array,
    batch_size: int,
    activation: str = "sigmoid",
    cost: str = "half_sse",
    l2: float | Array = 0.0,
    method: str = "matrix",
) -> tuple[Params, Array]:
    """One epoch of minibatch SGD in a single ``lax.scan``; returns (params, mean C).

    The minibatches are consecutive slices of ``jax.random.permutation(key, n)``.
    The returned cost is the example-weighted mean of the minibatch costs.
    """
    _check_batch(params, X, Y, None)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    n = X.shape[0]
    n_batches = -(-n // batch_size)
    perm = jax.random.permutation(key, n)
    padded = n_batches * batch_size != n
    if padded:
        pad = n_batches * batch_size - n
        perm = jnp.concatenate([perm, jnp.zeros((pad,), perm.dtype)])
        weights = (jnp.arange(n_batches * batch_size) < n).astype(X.dtype)
        weights = weights.reshape(n_batches, batch_size)
    else:
        weights = jnp.ones((n_batches, batch_size), X.dtype)
    batches = perm.reshape(n_batches, batch_size)

    def body(p, inputs):
        idx, w = inputs
        p, loss = sgd_step(
            p, X[idx], Y[idx], eta=eta, activation=activation, cost=cost, l2=l2,
            weights=w if padded else None, method=method,
        )
        return p, loss * jnp.sum(w)

    params, losses = jax.lax.scan(body, params, (batches, weights))
    return params, jnp.sum(losses) / n


@partial(jax.jit, static_argnames=("activation", "cost"))
def accuracy(
    params: Params, X: Array, labels: Array, *, activation: str = "sigmoid", cost: str = "half_sse"
) -> Array:
    """Fraction of rows whose largest output is at the true label."""
    _check_batch(params, X, None, None)
    predicted = jnp.argmax(feedforward(params, X, activation=activation, cost=cost), axis=-1)
    return jnp.mean((predicted == labels).astype(jnp.float32))


class EpochRecord(NamedTuple):
    """One row of training history."""

    epoch: int
    train_cost: float
    test_accuracy: float
    seconds: float


def train(
    params: Params,
    X: Array,
    labels: Array,
    X_test: Array,
    labels_test: Array,
    *,
    key: Array,
    epochs: int,
    batch_size: int,
    eta: float,
    activation: str = "sigmoid",
    cost: str = "half_sse",
    lmbda: float = 0.0,
    method: str = "matrix",
    progress: bool = True,
) -> tuple[Params, list[EpochRecord]]:
    """Nielsen's ``SGD``: ``epochs`` epochs, test accuracy after each.

    ``lmbda`` is λ of the L2 term (λ/2n) Σ w², with n = len(X).
    """
    import time

    n_out = params[-1][0].shape[0]
    Y = one_hot(labels, n_out, X.dtype)
    l2 = lmbda / X.shape[0]
    history = []
    keys = jax.random.split(key, epochs)
    bar = tqdm(range(epochs), desc="epochs", disable=not progress)
    for epoch in bar:
        start = time.perf_counter()
        params, train_cost = sgd_epoch(
            params, X, Y, key=keys[epoch], eta=eta, batch_size=batch_size,
            activation=activation, cost=cost, l2=l2, method=method,
        )
        train_cost = float(train_cost)
        seconds = time.perf_counter() - start
        if not jnp.isfinite(train_cost):
            raise FloatingPointError(
                f"training cost became {train_cost} in epoch {epoch + 1}; lower eta (now {eta})"
            )
        acc = float(accuracy(params, X_test, labels_test, activation=activation, cost=cost))
        history.append(EpochRecord(epoch + 1, train_cost, acc, seconds))
        bar.set_postfix(cost=f"{train_cost:.4f}", test_acc=f"{acc:.4f}")
    return params, history
