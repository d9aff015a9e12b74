"""GoogLeNet / Inception v1 (Szegedy et al. 2015) in Flax, for one image, without the auxiliary classifiers.

As in the paper: no batch normalisation, 5×5 convolutions in the inception modules, local
response normalisation omitted (later work found it unnecessary), dropout 0.4 before the
classifier. About 6.8M parameters at 1000 classes, RGB (exact count: ``googlenet_param_count``).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.common import mark_cam_features, prepare_image

# (1×1, 3×3 reduce, 3×3, 5×5 reduce, 5×5, pool projection) for 3a … 5b
INCEPTION = {
    "3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64), "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64), "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128), "5b": (384, 192, 384, 48, 128, 128),
}


def _conv(x, features, k, name, stride=1):
    return nn.relu(nn.Conv(features, (k, k), strides=(stride, stride), padding="SAME", name=name)(x))


def _pool(x, k=3, stride=2):
    return nn.max_pool(x[None], (k, k), strides=(stride, stride), padding="SAME")[0]


class Inception(nn.Module):
    spec: tuple[int, int, int, int, int, int]

    @nn.compact
    def __call__(self, x):
        c1, r3, c3, r5, c5, pp = self.spec
        b1 = _conv(x, c1, 1, "b1")
        b2 = _conv(_conv(x, r3, 1, "b2_reduce"), c3, 3, "b2")
        b3 = _conv(_conv(x, r5, 1, "b3_reduce"), c5, 5, "b3")
        b4 = _conv(_pool(x, 3, 1), pp, 1, "b4")
        return jnp.concatenate([b1, b2, b3, b4], axis=-1)


class GoogLeNet(nn.Module):
    """Inception v1 for any input channels and classes; logits for one (H, W, C) image."""

    n_classes: int
    dropout_rate: float = 0.4
    input_mean: Sequence[float] | None = None
    input_std: Sequence[float] | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, key: jax.Array | None = None) -> jax.Array:
        f = jnp.mean(mark_cam_features(self, self.features(x)), axis=(0, 1))
        rng = jax.random.fold_in(key, 1) if (train and key is not None) else None
        f = nn.Dropout(self.dropout_rate, deterministic=not train)(f, rng=rng)
        return nn.Dense(self.n_classes, name="logits")(f)

    def features(self, x: jax.Array) -> jax.Array:
        """Inception 5b's feature maps (for Grad-CAM)."""
        x = prepare_image(x, "GoogLeNet", self.input_mean, self.input_std)
        x = _pool(_conv(x, 64, 7, "conv1", stride=2))
        x = _pool(_conv(_conv(x, 64, 1, "conv2_reduce"), 192, 3, "conv2"))
        for name in ("3a", "3b"):
            x = Inception(INCEPTION[name], name=f"inception{name}")(x)
        x = _pool(x)
        for name in ("4a", "4b", "4c", "4d", "4e"):
            x = Inception(INCEPTION[name], name=f"inception{name}")(x)
        x = _pool(x)
        for name in ("5a", "5b"):
            x = Inception(INCEPTION[name], name=f"inception{name}")(x)
        return x


def googlenet_param_count(channels: int, n_classes: int) -> int:
    """Convolutions k²·C_in·C_out + C_out (with bias), inception modules by their table, final dense."""
    total = 49 * channels * 64 + 64 + 64 * 64 + 64 + 9 * 64 * 192 + 192
    c_in = 192
    for c1, r3, c3, r5, c5, pp in INCEPTION.values():
        total += (c_in * c1 + c1) + (c_in * r3 + r3) + (9 * r3 * c3 + c3) + (c_in * r5 + r5) + (25 * r5 * c5 + c5)
        total += c_in * pp + pp
        c_in = c1 + c3 + c5 + pp
    return total + c_in * n_classes + n_classes
