"""ResNet-50 (He et al. 2016, v1.5: stride on the 3×3 convolution) in Flax, for one image (H, W, C).

Normalisation is GroupNorm(32) (Wu & He 2018) in place of BatchNorm: it has the same learned
scale and bias per channel — so the same 25,557,032 parameters at 1000 classes, RGB — but
needs no batch statistics, so the per-image loss can be ``jax.vmap``-ped and small
minibatches of field photos train stably.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.common import mark_cam_features, prepare_image


def _norm(x: jax.Array, name: str) -> jax.Array:
    return nn.GroupNorm(num_groups=32, name=name)(x[None])[0]


class Bottleneck(nn.Module):
    features: int
    stride: int = 1

    @nn.compact
    def __call__(self, x):
        out = self.features * 4
        y = nn.relu(_norm(nn.Conv(self.features, (1, 1), use_bias=False, name="conv1")(x), "norm1"))
        y = nn.Conv(self.features, (3, 3), strides=(self.stride, self.stride), padding="SAME", use_bias=False,
                    name="conv2")(y)
        y = nn.relu(_norm(y, "norm2"))
        y = _norm(nn.Conv(out, (1, 1), use_bias=False, name="conv3")(y), "norm3")
        if x.shape[-1] != out or self.stride != 1:
            x = _norm(nn.Conv(out, (1, 1), strides=(self.stride, self.stride), use_bias=False,
                              name="proj")(x), "proj_norm")
        return nn.relu(x + y)


class ResNet50(nn.Module):
    """ResNet-50 for any input channels and classes; logits for one (H, W, C) image."""

    n_classes: int
    stages: Sequence[int] = (3, 4, 6, 3)
    input_mean: Sequence[float] | None = None
    input_std: Sequence[float] | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, key: jax.Array | None = None) -> jax.Array:
        f = mark_cam_features(self, self.features(x))
        return nn.Dense(self.n_classes, name="logits")(jnp.mean(f, axis=(0, 1)))

    def features(self, x: jax.Array) -> jax.Array:
        """The last stage's feature maps (for Grad-CAM)."""
        x = prepare_image(x, "ResNet50", self.input_mean, self.input_std)
        x = nn.Conv(64, (7, 7), strides=(2, 2), padding="SAME", use_bias=False, name="stem")(x)
        x = nn.relu(_norm(x, "stem_norm"))
        x = nn.max_pool(x[None], (3, 3), strides=(2, 2), padding="SAME")[0]
        for i, n_blocks in enumerate(self.stages):
            for j in range(n_blocks):
                x = Bottleneck(64 * 2**i, stride=2 if (j == 0 and i > 0) else 1, name=f"stage{i + 1}_block{j + 1}")(x)
        return x


def resnet50_param_count(channels: int, n_classes: int, stages: Sequence[int] = (3, 4, 6, 3)) -> int:
    """Conv weights k²·C_in·C_out (no bias) + 2·C per norm + the final dense layer."""
    total = 7 * 7 * channels * 64 + 2 * 64
    c_in = 64
    for i, n_blocks in enumerate(stages):
        f = 64 * 2**i
        for j in range(n_blocks):
            total += c_in * f + 2 * f + 9 * f * f + 2 * f + f * 4 * f + 2 * 4 * f
            if j == 0:
                total += c_in * 4 * f + 2 * 4 * f
            c_in = 4 * f
    return total + c_in * n_classes + n_classes
