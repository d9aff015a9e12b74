"""The lab's "Model 1" CNN in Flax, written for one image (H, W, C); ``jax.vmap`` it over a batch.

    Conv 64 k7 s2 → max-pool 2 → Conv 128 k3 → Conv 128 k3 → max-pool 2
    → Conv 256 k3 → Conv 256 k3 → max-pool 2 → flatten
    → Dense 128 → Dropout 0.5 → Dense 64 → Dropout 0.5 → Dense n_classes (logits)

All convolutions SAME-padded with the configurable activation (ReLU); pools 2×2,
stride 2, VALID (floor). The softmax is applied by the loss and by :func:`predict_proba`.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

ACTIVATIONS = {"relu": nn.relu, "elu": nn.elu, "gelu": nn.gelu, "tanh": jnp.tanh, "silu": nn.silu}


class Model1(nn.Module):
    """The lab's CNN; first-layer kernel, head units, dropout rate and activation configurable."""

    n_classes: int
    first_kernel: int = 7
    first_features: int = 64
    head_units: Sequence[int] = (128, 64)
    dropout_rate: float = 0.5
    activation: str = "relu"
    input_mean: Sequence[float] | None = None  # per channel; with input_std: x ← (x − mean) / std
    input_std: Sequence[float] | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        if x.ndim != 3:
            raise ValueError(f"Model1 takes one image (H, W, C); got shape {tuple(x.shape)} (vmap over batches)")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; expected one of {sorted(ACTIVATIONS)}")
        act = ACTIVATIONS[self.activation]
        if self.input_mean is not None:
            mean = jnp.asarray(self.input_mean, x.dtype).reshape(1, 1, -1)
            x = (x - mean) / jnp.asarray(self.input_std, x.dtype).reshape(1, 1, -1)
        k = self.first_kernel
        x = act(nn.Conv(self.first_features, (k, k), strides=(2, 2), padding="SAME", name="conv1")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = act(nn.Conv(128, (3, 3), padding="SAME", name="conv2")(x))
        x = act(nn.Conv(128, (3, 3), padding="SAME", name="conv3")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = act(nn.Conv(256, (3, 3), padding="SAME", name="conv4")(x))
        x = act(nn.Conv(256, (3, 3), padding="SAME", name="conv5")(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(-1)
        for i, units in enumerate(self.head_units, start=1):
            x = act(nn.Dense(units, name=f"dense{i}")(x))
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
        return nn.Dense(self.n_classes, name="logits")(x)


def feature_side(image_size: int, first_stride: int = 2) -> int:
    """Spatial side after conv1 (SAME, stride 2: ceil) and three 2×2 VALID pools (floor)."""
    side = -(-image_size // first_stride)
    for _ in range(3):
        side //= 2
    return side


def model1_param_count(
    image_size: int, channels: int, n_classes: int, *, first_kernel: int = 7, first_features: int = 64,
    head_units: Sequence[int] = (128, 64),
) -> int:
    """Parameters of :class:`Model1` by formula: conv k·k·c_in·c_out + c_out, dense n_in·n_out + n_out."""
    convs = [(first_kernel, channels, first_features), (3, first_features, 128), (3, 128, 128),
             (3, 128, 256), (3, 256, 256)]
    total = sum(k * k * cin * cout + cout for k, cin, cout in convs)
    n_in = feature_side(image_size) ** 2 * 256
    for units in [*head_units, n_classes]:
        total += n_in * units + units
        n_in = units
    return total


def count_params(params) -> int:
    return sum(int(p.size) for p in jax.tree_util.tree_leaves(params))
