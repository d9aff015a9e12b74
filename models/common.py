"""What every model here shares: the one-image input check, input standardization, Grad-CAM hook, and how a
program that draws initial weights is compiled."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


def prepare_image(x: jax.Array, name: str, mean: Sequence[float] | None, std: Sequence[float] | None) -> jax.Array:
    """Check that ``x`` is one (H, W, C) image and apply ``(x − mean) / std`` per channel when given."""
    if x.ndim != 3:
        raise ValueError(f"{name} takes one image (H, W, C); got shape {tuple(x.shape)} (vmap over batches)")
    if mean is None:
        return x
    return (x - jnp.asarray(mean, x.dtype).reshape(1, 1, -1)) / jnp.asarray(std, x.dtype).reshape(1, 1, -1)


def mark_cam_features(module: nn.Module, x: jax.Array) -> jax.Array:
    """Expose the last convolutional feature maps for Grad-CAM (``training.evaluation.explain``).

    ``sow`` records them in the ``intermediates`` collection and ``perturb`` adds a zero
    that ``jax.grad`` can differentiate; both are no-ops unless those collections are asked for.
    """
    module.sow("intermediates", "cam_features", x)
    return module.perturb("cam_features", x)


def same_padding(size: int, k: int, s: int) -> tuple[int, int, int]:
    """(out, pad_lo, pad_hi) of TensorFlow/Flax SAME padding: ``out = ceil(size / s)``; the odd pixel of
    padding goes after (right, bottom). Shared by the models and their hand-written backward."""
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return out, total // 2, total - total // 2


def run_once_compiler_options() -> dict | None:
    """XLA options for a program that runs once, such as drawing a network's initial weights, where compiling
    takes far longer than running: on CPU, LLVM's optimisation level 1 instead of 3 (GoogLeNet's initialiser:
    6.5 s instead of 12.5 s; ResNet-50's 4.1 s instead of 8.2 s; Model 1's 1.4 s instead of 2.5 s, on 2 cores).
    LLVM keeps IEEE arithmetic at every level above 0 (XLA asks for no fast-math), so the values are bit for bit
    the default's; tests check them. ``None`` (the defaults) on other backends."""
    return {"xla_backend_optimization_level": 1} if jax.default_backend() == "cpu" else None


def jit_run_once(fun: Callable, **jit_kwargs) -> Callable:
    """``jax.jit(fun, **jit_kwargs)`` compiled with :func:`run_once_compiler_options` when called on concrete
    values. Called inside another trace (``jax.eval_shape``, an enclosing ``jit``), it is the plain ``jit``,
    inlined into that program (XLA takes compiler options on a top-level program only). The options are read at
    the first call, not at import: reading them starts JAX's backend."""
    plain = jax.jit(fun, **jit_kwargs)
    top: list[Callable] = []

    @functools.wraps(fun)
    def call(*args, **kwargs):
        if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves((args, kwargs))):
            return plain(*args, **kwargs)
        if not top:
            top.append(jax.jit(fun, compiler_options=run_once_compiler_options(), **jit_kwargs))
        return top[0](*args, **kwargs)

    call._cache_size = lambda: top[0]._cache_size() if top else 0  # programs compiled (as jax.jit's)
    return call
