"""The softmax head on frozen features: λ and steps chosen on inner folds of the training part, then refit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from manual_backprop.efficientnet import head_grads


class HeadChoice(NamedTuple):
    """The regularisation and step count chosen on inner folds, and what they were chosen from."""

    l2: float
    steps: int
    curves: np.ndarray  # (n_l2, steps): mean inner-validation loss after each step, one row per λ of l2_grid
    oof_probs: np.ndarray  # (n, K): inner out-of-fold probabilities at the choice
    l2_grid: tuple[float, ...] = ()  # the λ searched: the given grid, widened while its winner was on an edge


MAX_WIDEN = 8  # at most this many λ added beyond either end of the given grid


class HeadData(NamedTuple):
    """What every run of a head reads, whatever its λ or fold: ``F`` (n, V, D) features of each photo and its
    mirror image, ``A`` (n, V', D) features of augmented views of it that only train (V' may be 0), ``y1h``
    (n, K) one-hot labels, ``class_weights`` (K,)."""

    F: jax.Array
    A: jax.Array
    y1h: jax.Array
    class_weights: jax.Array


class HeadSplit(NamedTuple):
    """Which rows train and which validate: masks (n,) in {0, 1} (one row per inner fold when stacked)."""

    train: jax.Array
    val: jax.Array


class HeadHyper(NamedTuple):
    """The run's regularisation λ (``l2``), Adam's rate ``lr``, and the step whose parameters are kept
    (``keep_step``; -1: none, only the curve is wanted)."""

    l2: jax.Array
    lr: float
    keep_step: int


def _head_run(data: HeadData, split: HeadSplit, hyper: HeadHyper, steps: int, grad: str = "autodiff"):
    """Full-batch Adam on one head; returns (val loss after each step, params at ``keep_step``, val probs,
    the standardization ``(μ, σ)``).

    ``grad="manual"``: each step's gradient is the hand-written one (:func:`manual_backprop.efficientnet.head_grads`).

    The training loss averages over all V + V' views of ``data``; validation and the returned probabilities use
    ``F``'s views only, as prediction does. Standardization μ, σ come from the training rows' V + V' views.
    """
    F, y1h = data.F, data.y1h
    T = jnp.concatenate([F, data.A], axis=1)
    n, v, d = T.shape
    k = y1h.shape[1]
    tm = split.train[:, None, None]
    count = jnp.maximum(jnp.sum(split.train) * v, 1.0)
    mu = jnp.sum(T * tm, axis=(0, 1)) / count
    sd = jnp.sqrt(jnp.sum(((T - mu[None, None, :]) ** 2) * tm, axis=(0, 1)) / count) + 1e-6
    Fs = (F - mu[None, None, :]) / sd[None, None, :]
    Ts = (T - mu[None, None, :]) / sd[None, None, :]
    w_ex = jnp.sum(y1h * data.class_weights[None, :], axis=1)
    w_tr = w_ex * split.train
    w_va = w_ex * split.val
    l2 = hyper.l2
    params = {"W": jnp.zeros((d, k), F.dtype), "b": jnp.zeros((k,), F.dtype)}
    tx = optax.adam(hyper.lr)

    def probs_of(p):
        return jax.nn.softmax(Fs @ p["W"] + p["b"][None, None, :], axis=-1)  # (n, V, K)

    def loss(p):  # the weighted, view-averaged cross-entropy + λ‖W‖² (stated in head_grads)
        return head_grads(p, Ts, y1h, w_tr, l2)[0]

    def val_loss(p):
        pbar = probs_of(p).mean(axis=1)
        ce = -jnp.log(jnp.clip(jnp.sum(pbar * y1h, axis=1), 1e-12, 1.0))
        return jnp.sum(w_va * ce) / jnp.maximum(jnp.sum(w_va), 1e-12)

    def step(carry, t):
        p, s, kept = carry
        g = head_grads(p, Ts, y1h, w_tr, l2)[1] if grad == "manual" else jax.grad(loss)(p)
        updates, s = tx.update(g, s, p)
        p = optax.apply_updates(p, updates)
        kept = jax.tree_util.tree_map(lambda a, b: jnp.where(t + 1 == hyper.keep_step, a, b), p, kept)
        return (p, s, kept), val_loss(p)

    (_, _, kept), curve = jax.lax.scan(step, (params, tx.init(params), params), jnp.arange(steps))
    return curve, kept, probs_of(kept).mean(axis=1), (mu, sd)


# (steps, grad) are static: one program per step count and gradient
_head_grid = jax.jit(jax.vmap(jax.vmap(_head_run, in_axes=(None, None, HeadHyper(0, None, None), None, None)),  # λ
                              in_axes=(None, HeadSplit(0, 0), None, None, None)),  # over inner folds
                     static_argnums=(3, 4))


_head_one = jax.jit(_head_run, static_argnums=(3, 4))


def _widen(grid: list[float], mean: np.ndarray) -> float | None:
    """The next λ beyond the edge of ``grid`` whose best loss (over steps) is strictly the lowest (the grid's
    spacing continued geometrically), or None when the winner is inside the grid, ties with its neighbour
    (e.g. when the best is the first step, before λ has acted), or sits on an edge that cannot be continued
    (a single λ, or λ = 0)."""
    best = mean.min(axis=1)
    if len(grid) < 2 or min(grid) <= 0:
        return None
    winner = int(np.argmin(best))
    if winner == len(grid) - 1 and best[-1] < best[-2] * (1 - 1e-6):
        return grid[-1] * grid[-1] / grid[-2]
    if winner == 0 and best[0] < best[1] * (1 - 1e-6):
        return grid[0] * grid[0] / grid[1]
    return None


def select_head(F: np.ndarray, y: np.ndarray, n_classes: int, class_weights: np.ndarray, *, l2_grid: Sequence[float],
                steps: int, lr: float, inner_folds: int, seed: int, grad: str = "autodiff",
                views: np.ndarray | None = None) -> HeadChoice:
    """λ and the step count minimising the mean inner-validation loss over ``inner_folds`` stratified folds.

    ``F`` (n, 2, D): each photo's features and its mirror image's; ``views`` (n, V', D): features of augmented
    views that join the training loss only (an inner fold's validation photos are scored on ``F`` alone).

    A λ grid whose winner lies on its first or last value has not bracketed the optimum: the grid is
    extended beyond that end with its own spacing (log-spaced grids stay log-spaced), one λ at a time, up to
    ``MAX_WIDEN`` times, until the winner is inside. All of it happens on the inner folds."""
    from training.data.labels import stratified_folds

    folds = stratified_folds(y, inner_folds, seed=seed + 1)
    n = len(y)
    A = _pad_rows(_no_views(F) if views is None else views, n)
    F, y1h = _pad_rows(F, n), _pad_rows(np.eye(n_classes, dtype=np.float32)[y], n)
    train_masks = np.zeros((len(folds), len(F)), np.float32)
    val_masks = np.zeros_like(train_masks)
    for j, (tr, va) in enumerate(folds):
        train_masks[j, tr], val_masks[j, va] = 1, 1
    data, split = HeadData(F, A, y1h, class_weights), HeadSplit(train_masks, val_masks)

    def mean_curves(lams: Sequence[float]) -> np.ndarray:
        curves, _, _, _ = _head_grid(data, split, HeadHyper(jnp.asarray(lams, jnp.float32), lr, -1), steps, grad)
        curves = np.asarray(curves)  # (folds, n_l2, steps)
        if not np.all(np.isfinite(curves)):
            raise FloatingPointError(f"the head's inner-validation loss became non-finite (learning rate {lr})")
        return curves.mean(axis=0)

    grid = [float(v) for v in l2_grid]
    mean = mean_curves(grid)
    for _ in range(MAX_WIDEN):
        new = _widen(grid, mean)
        if new is None:
            break
        row = mean_curves([new])
        if new > grid[-1]:
            grid, mean = [*grid, new], np.concatenate([mean, row])
        else:
            grid, mean = [new, *grid], np.concatenate([row, mean])
    i, t = np.unravel_index(np.argmin(mean), mean.shape)
    _, _, oof, _ = _head_grid(data, split, HeadHyper(jnp.asarray(grid[i:i + 1], jnp.float32), lr, int(t) + 1),
                              steps, grad)
    oof = np.asarray(oof)[:, 0]  # (folds, n, K)
    oof_probs = np.sum(oof * val_masks[:, :, None], axis=0)[:n]
    return HeadChoice(grid[i], int(t) + 1, mean, oof_probs, tuple(grid))


def _no_views(F: np.ndarray) -> np.ndarray:
    return np.zeros((F.shape[0], 0, F.shape[2]), F.dtype)


def _pad_rows(a: np.ndarray, n: int, multiple: int = 64) -> np.ndarray:
    """``a`` with zero rows appended up to a multiple of ``multiple`` (masked out): fewer compilations."""
    size = -(-n // multiple) * multiple
    return np.concatenate([a, np.zeros((size - n, *a.shape[1:]), a.dtype)]) if size > n else a


def fit_head(F: np.ndarray, y: np.ndarray, n_classes: int, class_weights: np.ndarray, *, l2: float, steps: int,
             lr: float, grad: str = "autodiff", views: np.ndarray | None = None) -> tuple[dict, dict]:
    """The head refit on all of ``F`` (and ``views``, as in :func:`select_head`):
    ``({"kernel", "bias"}, {"mean", "std"})`` for :class:`TransferClassifier`."""
    y1h = _pad_rows(np.eye(n_classes, dtype=np.float32)[y], len(y))
    ones = _pad_rows(np.ones(len(y), np.float32), len(y))
    A = _pad_rows(_no_views(F) if views is None else views, len(y))
    F = _pad_rows(F, len(y))
    _, p, _, (mu, sd) = _head_one(HeadData(F, A, y1h, class_weights), HeadSplit(ones, np.zeros_like(ones)),
                                  HeadHyper(jnp.float32(l2), lr, steps), steps, grad)
    if not all(np.all(np.isfinite(np.asarray(a))) for a in (p["W"], p["b"])):
        raise FloatingPointError(f"the head's weights became non-finite (learning rate {lr}, λ {l2})")
    return ({"kernel": np.asarray(p["W"]), "bias": np.asarray(p["b"])},
            {"mean": [float(v) for v in np.asarray(mu)], "std": [float(v) for v in np.asarray(sd)]})


def head_probs(F: np.ndarray, head: dict, norm: dict, *, tta_flip: bool = True) -> np.ndarray:
    """Class probabilities from features (n, 2, D): the head on each view, averaged over views with ``tta_flip``."""
    F = F if tta_flip else F[:, :1]
    f = (F - np.asarray(norm["mean"], np.float32)) / np.asarray(norm["std"], np.float32)
    logits = f @ head["kernel"] + head["bias"]
    p = np.exp(logits - logits.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return p.mean(axis=1)
