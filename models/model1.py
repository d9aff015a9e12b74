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

from models.common import mark_cam_features, prepare_image

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
    def __call__(self, x: jax.Array, *, train: bool = False, key: jax.Array | None = None) -> jax.Array:
        """Logits for one image. With ``train=True`` dropout is on; its masks come from ``key``
        (dropout layer i uses ``jax.random.fold_in(key, i)``) or, without a key, from the
        ``"dropout"`` RNG collection."""
        x = prepare_image(x, "Model1", self.input_mean, self.input_std)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.activation!r}; expected one of {sorted(ACTIVATIONS)}")
        act = ACTIVATIONS[self.activation]
        k = self.first_kernel
        x = act(nn.Conv(self.first_features, (k, k), strides=(2, 2), padding="SAME", name="conv1")(x))
        x = max_pool_2x2(x)
        x = act(nn.Conv(128, (3, 3), padding="SAME", name="conv2")(x))
        x = act(nn.Conv(128, (3, 3), padding="SAME", name="conv3")(x))
        x = max_pool_2x2(x)
        x = act(nn.Conv(256, (3, 3), padding="SAME", name="conv4")(x))
        x = act(nn.Conv(256, (3, 3), padding="SAME", name="conv5")(x))
        x = mark_cam_features(self, x)
        x = max_pool_2x2(x)
        x = x.reshape(-1)
        for i, units in enumerate(self.head_units, start=1):
            x = act(nn.Dense(units, name=f"dense{i}")(x))
            rng = jax.random.fold_in(key, i) if (train and key is not None) else None
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x, rng=rng)
        return nn.Dense(self.n_classes, name="logits")(x)


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2×2 max-pool, stride 2, VALID (an odd last row/column is dropped), for one (H, W, C) image.

    Written as a reshape and a max over the two window axes: the same values as
    ``nn.max_pool(x, (2, 2), strides=(2, 2))``, and on a 2-core CPU its forward + backward
    ran 4–7× faster than XLA's ``reduce_window``/``select_and_scatter`` (benchmarks/RESULTS.md).
    Autodiff of ``max`` shares the gradient equally among tied maxima; after a ReLU the
    only ties in practice are zeros, whose ReLU derivative is 0 either way.
    """
    h, w = x.shape[0] // 2, x.shape[1] // 2
    return x[: 2 * h, : 2 * w].reshape(h, 2, w, 2, x.shape[2]).max(axis=(1, 3))


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
    layers = model1_layer_shapes(image_size, channels, first_kernel=first_kernel, first_features=first_features)
    total = sum(L["k"] ** 2 * L["in"][2] * L["out"][2] + L["out"][2] for L in layers)
    n_in = feature_side(image_size) ** 2 * 256
    for units in [*head_units, n_classes]:
        total += n_in * units + units
        n_in = units
    return total


def count_params(params) -> int:
    return sum(int(p.size) for p in jax.tree_util.tree_leaves(params))


def model1_layer_shapes(image_size: int, channels: int, *, first_kernel: int = 7, first_features: int = 64
                        ) -> list[dict]:
    """Per convolution: name, kernel, stride, input (H, W, C_in), output (H, W, C_out)."""
    s1 = -(-image_size // 2)  # conv1, SAME, stride 2
    s2 = s1 // 2  # after the first pool
    s3 = s2 // 2  # after the second pool
    return [
        {"name": "conv1", "k": first_kernel, "stride": 2, "in": (image_size, image_size, channels),
         "out": (s1, s1, first_features)},
        {"name": "conv2", "k": 3, "stride": 1, "in": (s2, s2, first_features), "out": (s2, s2, 128)},
        {"name": "conv3", "k": 3, "stride": 1, "in": (s2, s2, 128), "out": (s2, s2, 128)},
        {"name": "conv4", "k": 3, "stride": 1, "in": (s3, s3, 128), "out": (s3, s3, 256)},
        {"name": "conv5", "k": 3, "stride": 1, "in": (s3, s3, 256), "out": (s3, s3, 256)},
    ]


def model1_forward_flops(image_size: int, channels: int, n_classes: int, *, first_kernel: int = 7,
                         head_units: Sequence[int] = (128, 64)) -> int:
    """FLOPs (2 per multiply-add) of one image's forward pass.

    2·k²·C_in·C_out·H_out·W_out per convolution and 2·n_in·n_out per dense layer.
    """
    total = 0
    for layer in model1_layer_shapes(image_size, channels, first_kernel=first_kernel):
        h, w, c_out = layer["out"]
        total += 2 * layer["k"] ** 2 * layer["in"][2] * c_out * h * w
    n_in = feature_side(image_size) ** 2 * 256
    for units in [*head_units, n_classes]:
        total += 2 * n_in * units
        n_in = units
    return total
