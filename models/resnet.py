"""ResNet-50 (He et al. 2016, v1.5: stride on the 3×3 convolution) in Flax, for one image (H, W, C).

``norm="batch"`` is the torchvision layout (BatchNorm in inference form, PyTorch's symmetric
padding) into which :func:`models.pretrained.load_torchvision_resnet50` loads a user's state dict.

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
from models.efficientnet_lite import FrozenBatchNorm

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's input normalization
IMAGENET_STD = (0.229, 0.224, 0.225)


def _norm(x: jax.Array, name: str, kind: str = "group") -> jax.Array:
    if kind == "batch":
        return FrozenBatchNorm(eps=1e-5, name=name)(x)
    if kind != "group":
        raise ValueError(f"unknown norm {kind!r}; expected 'group' or 'batch'")
    return nn.GroupNorm(num_groups=32, name=name)(x[None])[0]


def _pad(kind: str, k: int):
    """GroupNorm variant: SAME; BatchNorm (torchvision) variant: symmetric k // 2, as PyTorch pads."""
    return "SAME" if kind == "group" else ((k // 2, k // 2), (k // 2, k // 2))


class Bottleneck(nn.Module):
    features: int
    stride: int = 1
    norm: str = "group"

    @nn.compact
    def __call__(self, x):
        out = self.features * 4
        n = self.norm
        y = nn.relu(_norm(nn.Conv(self.features, (1, 1), use_bias=False, name="conv1")(x), "norm1", n))
        y = nn.Conv(self.features, (3, 3), strides=(self.stride, self.stride), padding=_pad(n, 3), use_bias=False,
                    name="conv2")(y)
        y = nn.relu(_norm(y, "norm2", n))
        y = _norm(nn.Conv(out, (1, 1), use_bias=False, name="conv3")(y), "norm3", n)
        if x.shape[-1] != out or self.stride != 1:
            x = _norm(nn.Conv(out, (1, 1), strides=(self.stride, self.stride), use_bias=False,
                              name="proj")(x), "proj_norm", n)
        return nn.relu(x + y)


class ResNet50(nn.Module):
    """ResNet-50 for any input channels and classes; logits for one (H, W, C) image."""

    n_classes: int
    stages: Sequence[int] = (3, 4, 6, 3)
    norm: str = "group"  # "group", or "batch" (inference form, running statistics frozen: torchvision weights)
    input_mean: Sequence[float] | None = None
    input_std: Sequence[float] | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, key: jax.Array | None = None) -> jax.Array:
        f = mark_cam_features(self, self.features(x))
        return nn.Dense(self.n_classes, name="logits")(jnp.mean(f, axis=(0, 1)))

    def features(self, x: jax.Array) -> jax.Array:
        """The last stage's feature maps (for Grad-CAM)."""
        x = prepare_image(x, "ResNet50", self.input_mean, self.input_std)
        n = self.norm
        x = nn.Conv(64, (7, 7), strides=(2, 2), padding=_pad(n, 7), use_bias=False, name="stem")(x)
        x = nn.relu(_norm(x, "stem_norm", n))
        x = nn.max_pool(x[None], (3, 3), strides=(2, 2), padding=_pad(n, 3))[0]
        for i, n_blocks in enumerate(self.stages):
            for j in range(n_blocks):
                x = Bottleneck(64 * 2**i, stride=2 if (j == 0 and i > 0) else 1, norm=n,
                               name=f"stage{i + 1}_block{j + 1}")(x)
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
