"""What every model here shares: the one-image input check, input standardization, Grad-CAM hook."""

from __future__ import annotations

from collections.abc import Sequence

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
