"""EfficientNet-Lite0/1/2 (Tan & Le 2019; the "Lite" variants for mobile) in Flax, for one image (H, W, 3).

Lite differs from EfficientNet-B*: no squeeze-and-excitation, ReLU6 instead of swish, the stem
(32) and head (1280) widths and the first and last stages' repeats are not scaled. Each
MBConv block is

    expand 1×1 (absent when the expansion ratio is 1) → BN → ReLU6
    → depthwise k×k, stride s → BN → ReLU6 → project 1×1 → BN  (+ input when s = 1 and C_in = C_out)

Convolutions have no bias and pad TensorFlow-SAME (JAX's ``SAME``: the extra pixel goes right
and bottom). Inputs in [0, 1] are mapped to [−1, 1]. BatchNorm is in inference form,
``y = γ (x − μ) / √(σ² + 1e-3) + β``, with the running μ, σ² stored as parameters beside γ, β:
the per-image forward is then a pure function that ``jax.vmap`` batches, and training keeps
μ, σ² frozen (``training.transfer.trainable_mask``). Weights: :func:`models.pretrained.load_backbone`.
A batch goes through :func:`map_images`: on CPU one image at a time, elsewhere ``jax.vmap``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from models.common import mark_cam_features, same_padding

BN_EPS = 1e-3

# EfficientNet-B0's stages: (repeats, kernel, stride, expand ratio, input width, output width)
B0_STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
             (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))

# name → (width coefficient, depth coefficient, native resolution, dropout)
VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, 224, 0.2),
    "efficientnet_lite1": (1.0, 1.1, 240, 0.2),
    "efficientnet_lite2": (1.1, 1.2, 260, 0.3),
}


# Images per step of :func:`map_images` on CPU (benchmarks/RESULTS.md, issue 37: one image at a time ran the
# Lite1 forward faster than chunks of 2 or 4 and than the batch of 32 at once)
CPU_IMAGE_CHUNK = 1


def map_images(fn: Callable[[Any], Any], x: Any, *, chunk: int | None = None) -> Any:
    """``fn`` (one image, or one row, in → a pytree out) over the leading axis of ``x``; the same values as
    ``jax.vmap(fn)(x)``, up to float32 rounding.

    On CPU the batch runs ``chunk`` images at a time (``jax.lax.map``; default :data:`CPU_IMAGE_CHUNK`): one
    image's activation maps (at most 5.5 MB, Lite1's 120×120×96 expansion) stay in the cache from one layer to
    the next, where a batch of 32's (177 MB there) goes through memory at every layer, and the depthwise layers,
    a few operations per value read, are bound by memory. On other backends (GPU, TPU) ``chunk`` defaults to 0:
    ``jax.vmap`` over the whole batch, which those devices need to be busy. Call it inside ``jax.jit``."""
    if chunk is None:
        chunk = CPU_IMAGE_CHUNK if jax.default_backend() == "cpu" else 0
    n = jax.tree_util.tree_leaves(x)[0].shape[0]
    if chunk <= 0 or n <= chunk:
        return jax.vmap(fn)(x)
    return jax.lax.map(fn, x, batch_size=chunk) if chunk > 1 else jax.lax.map(fn, x)


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Width scaled by ``width`` and rounded to a multiple of 8, never down by more than 10 %."""
    if width == 1.0:
        return filters
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * scaled else new


@dataclass(frozen=True)
class BlockSpec:
    kernel: int
    stride: int
    expand: int
    c_in: int
    c_out: int


def block_specs(name: str) -> list[BlockSpec]:
    """The MBConv blocks of a variant (Lite: first and last stage repeats unscaled)."""
    width, depth, _, _ = VARIANTS[name]
    specs = []
    for i, (repeats, k, s, e, c_in, c_out) in enumerate(B0_STAGES):
        c_in, c_out = round_filters(c_in, width), round_filters(c_out, width)
        n = repeats if i in (0, len(B0_STAGES) - 1) else int(math.ceil(depth * repeats))
        for j in range(n):
            specs.append(BlockSpec(k, s if j == 0 else 1, e, c_in if j == 0 else c_out, c_out))
    return specs


class FrozenBatchNorm(nn.Module):
    """BatchNorm in inference form over the last axis; ``mean`` and ``var`` are (frozen) parameters."""

    eps: float = BN_EPS

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        scale = self.param("scale", nn.initializers.ones, (c,))
        bias = self.param("bias", nn.initializers.zeros, (c,))
        mean = self.param("mean", nn.initializers.zeros, (c,))
        var = self.param("var", nn.initializers.ones, (c,))
        mul = scale * jax.lax.rsqrt(var + self.eps)
        shape = (1,) * (x.ndim - 1) + (c,)
        return x * mul.reshape(shape) + (bias - mean * mul).reshape(shape)


class FoldedBatchNorm(nn.Module):
    """What is left of an inference BatchNorm folded into the convolution before it: ``y = x + b'`` (per
    channel), with ``b' = β − μ γ/√(σ²+ε)`` from :func:`fold_batchnorm` (the scale went into the kernel)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        bias = self.param("bias", nn.initializers.zeros, (x.shape[-1],))
        return x + bias.reshape((1,) * (x.ndim - 1) + (-1,))


def fold_bn(kernel, bn: dict, eps: float = BN_EPS) -> tuple[np.ndarray, np.ndarray]:
    """A convolution without bias then inference BatchNorm = one convolution with a bias:
    ``K' = K γ/√(σ²+ε)`` per output channel (the last axis of an HWIO or depthwise (k, k, 1, C) kernel),
    ``b' = β − μ γ/√(σ²+ε)``; computed in float64, returned in the kernel's dtype."""
    dtype = np.asarray(kernel).dtype
    mul = np.asarray(bn["scale"], np.float64) / np.sqrt(np.asarray(bn["var"], np.float64) + eps)
    folded = np.asarray(kernel, np.float64) * mul
    bias = np.asarray(bn["bias"], np.float64) - np.asarray(bn["mean"], np.float64) * mul
    return folded.astype(dtype), bias.astype(dtype)


# (convolution, the BatchNorm after it) in a block, and at the top level
_BLOCK_PAIRS = (("expand_conv", "bn0"), ("depthwise_conv", "bn1"), ("project_conv", "bn2"))
_TOP_PAIRS = (("conv_stem", "bn_stem"), ("conv_head", "bn_head"))


def fold_batchnorm(params: dict) -> dict:
    """EfficientNet-Lite parameters (one backbone's, ``fc`` optional) for ``EfficientNetLite(folded=True)``:
    every inference BatchNorm folded into the convolution before it (:func:`fold_bn`), once, at load time.
    The folded network computes the same function with one pass fewer over each activation; it is for
    frozen weights (feature extraction, prediction), not for training γ and β."""
    def fold(tree: dict, pairs) -> dict:
        out = dict(tree)
        for conv, bn in pairs:
            if conv in tree:
                kernel, bias = fold_bn(tree[conv]["kernel"], tree[bn])
                out[conv], out[bn] = {"kernel": kernel}, {"bias": bias}
        return out

    folded = fold(params, _TOP_PAIRS)
    for name in params:
        if name.startswith("block"):
            folded[name] = fold(params[name], _BLOCK_PAIRS)
    return folded


def _bn(folded: bool, name: str) -> nn.Module:
    return FoldedBatchNorm(name=name) if folded else FrozenBatchNorm(name=name)


class PointwiseConv(nn.Module):
    """A 1×1 convolution without bias, ``y[i, j] = x[i, j] · K[0, 0]``, written as the contraction it is.

    The kernel is (1, 1, C_in, C_out) like ``nn.Conv``'s (same name, shape and initialiser), so weights load
    unchanged. On CPU, XLA runs this ``dot_general`` about twice as fast as the same product written as
    ``lax.conv_general_dilated`` (benchmarks/RESULTS.md)."""

    features: int
    impl: str = "dot"  # "dot" (dot_general, the default) or "conv" (lax.conv_general_dilated, as nn.Conv)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (1, 1, x.shape[-1], self.features))
        if self.impl == "dot":
            return jnp.einsum("hwc,cf->hwf", x, kernel[0, 0])
        if self.impl != "conv":
            raise ValueError(f"unknown pointwise impl {self.impl!r}; expected 'dot' or 'conv'")
        return jax.lax.conv_general_dilated(x[None], kernel, (1, 1), "VALID",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))[0]


def _conv(x, features, k, name, *, stride=1, pointwise="dot"):
    if k == 1 and stride == 1:
        return PointwiseConv(features, pointwise, name=name)(x)
    return nn.Conv(features, (k, k), strides=(stride, stride), padding="SAME", use_bias=False, name=name)(x[None])[0]


def depthwise_shift(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """Depthwise k×k convolution of one (H, W, C) image, SAME, as k² shifted strided slices.

    ``y[i, j, c] = Σ_{u,v} x_pad[s·i + u, s·j + v, c] · K[u, v, 0, c]``. On CPU this ran 5–24×
    faster than XLA's grouped convolution per layer (benchmarks/RESULTS.md); both give the same values.
    """
    h, w, c = x.shape
    k = kernel.shape[0]
    (_, pt, pb), (_, pl, pr) = same_padding(h, k, stride), same_padding(w, k, stride)
    xp = jnp.pad(x, ((pt, pb), (pl, pr), (0, 0)))
    ho, wo = -(-h // stride), -(-w // stride)
    out = None
    for u in range(k):
        for v in range(k):
            window = jax.lax.slice(xp, (u, v, 0), (u + (ho - 1) * stride + 1, v + (wo - 1) * stride + 1, c),
                                   (stride, stride, 1))
            term = window * kernel[u:u + 1, v]  # (1, 1, C)
            out = term if out is None else out + term
    return out


class DepthwiseConv(nn.Module):
    """Depthwise SAME convolution without bias; kernel (k, k, 1, C) as ``nn.Conv(feature_group_count=C)``.

    ``impl``: ``"shift"`` (:func:`depthwise_shift`, the default) or ``"lax"`` (``lax.conv_general_dilated``).
    """

    kernel_size: int
    stride: int = 1
    impl: str = "shift"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (self.kernel_size, self.kernel_size, 1, c))
        if self.impl == "shift":
            return depthwise_shift(x, kernel.astype(x.dtype), self.stride)
        if self.impl != "lax":
            raise ValueError(f"unknown depthwise impl {self.impl!r}; expected 'shift' or 'lax'")
        return jax.lax.conv_general_dilated(x[None], kernel.astype(x.dtype), (self.stride, self.stride), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c)[0]


class MBConv(nn.Module):
    spec: BlockSpec
    depthwise: str = "shift"
    pointwise: str = "dot"
    folded: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = self.spec
        h = x
        mid = s.c_in * s.expand
        if s.expand != 1:
            h = nn.relu6(_bn(self.folded, "bn0")(_conv(h, mid, 1, "expand_conv", pointwise=self.pointwise)))
        h = DepthwiseConv(s.kernel, s.stride, self.depthwise, name="depthwise_conv")(h)
        h = nn.relu6(_bn(self.folded, "bn1")(h))
        h = _bn(self.folded, "bn2")(_conv(h, s.c_out, 1, "project_conv", pointwise=self.pointwise))
        if s.stride == 1 and s.c_in == s.c_out:
            h = h + x
        return h


class EfficientNetLite(nn.Module):
    """Logits (``n_classes``; 1000 for the ImageNet head) for one (H, W, 3) image in [0, 1].

    With ``features_only=True`` the 1280-d pooled features the classifier reads are returned
    instead (``fc`` is then unused). With ``folded=True`` it takes :func:`fold_batchnorm`'s parameters.

    Part of the network: ``stop_block=k`` returns the activation map at the input of MBConv block ``k``
    (what the frozen blocks below a fine-tuned top compute, cached once per photo); ``start_block=k`` takes
    that map (h, w, C_in of block ``k``) instead of an image and runs the rest. The parameter tree is the whole
    network's either way. ``start_block=None``: an image.
    """

    variant: str = "efficientnet_lite0"
    n_classes: int = 1000
    dropout_rate: float | None = None  # None: the variant's (0.2 or 0.3)
    depthwise: str = "shift"  # depthwise convolution: "shift" (fast on CPU) or "lax"
    pointwise: str = "dot"  # 1×1 convolutions: "dot" (dot_general, fast on CPU) or "conv"
    folded: bool = False  # BatchNorm folded into the convolutions (fold_batchnorm's parameters)

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, key: jax.Array | None = None,
                 features_only: bool = False, start_block: int | None = None, stop_block: int | None = None
                 ) -> jax.Array:
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown EfficientNet-Lite variant {self.variant!r}; expected one of {sorted(VARIANTS)}")
        specs = block_specs(self.variant)
        check_input(self.variant, x, start_block, stop_block)
        if start_block is None:
            x = x * 2.0 - 1.0
            x = nn.relu6(_bn(self.folded, "bn_stem")(_conv(x, 32, 3, "conv_stem", stride=2)))
        for i in range(start_block or 0, len(specs) if stop_block is None else stop_block):
            x = MBConv(specs[i], self.depthwise, self.pointwise, self.folded, name=f"block{i}")(x)
        if stop_block is not None:
            return x
        x = nn.relu6(_bn(self.folded, "bn_head")(_conv(x, 1280, 1, "conv_head", pointwise=self.pointwise)))
        f = jnp.mean(mark_cam_features(self, x), axis=(0, 1))
        if features_only:
            return f
        rate = VARIANTS[self.variant][3] if self.dropout_rate is None else self.dropout_rate
        rng = jax.random.fold_in(key, 1) if (train and key is not None) else None
        f = nn.Dropout(rate, deterministic=not train)(f, rng=rng)
        return nn.Dense(self.n_classes, name="fc")(f)


def check_input(variant: str, x, start_block: int | None, stop_block: int | None = None) -> None:
    """``ValueError`` naming the shape or the blocks, unless ``x`` is what the network takes from ``start_block``
    on: one RGB image (H, W, 3) for ``None``, else the activation map (h, w, C) at the input of that block; and
    unless ``0 ≤ start_block ≤ stop_block ≤`` the variant's number of blocks."""
    n = len(block_specs(variant))
    start = 0 if start_block is None else start_block
    stop = n if stop_block is None else stop_block
    if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start <= stop <= n):
        raise ValueError(f"{variant} has blocks 0–{n - 1}: cannot run from block {start_block!r} to {stop_block!r}")
    if start_block is None and (x.ndim != 3 or x.shape[-1] != 3):
        raise ValueError(f"EfficientNetLite takes one RGB image (H, W, 3); got shape {tuple(x.shape)}")
    if start_block is not None and (x.ndim != 3 or x.shape[-1] != block_input_channels(variant, start_block)):
        raise ValueError(f"block {start_block} of {variant} takes an activation map (h, w, "
                         f"{block_input_channels(variant, start_block)}); got shape {tuple(x.shape)}")


def block_input_channels(variant: str, block: int) -> int:
    """The channels of the activation map at the input of MBConv block ``block`` (for ``block`` = the number
    of blocks: at the input of the head convolution)."""
    specs = block_specs(variant)
    return specs[block].c_in if block < len(specs) else specs[-1].c_out


def native_size(variant: str) -> int:
    """The resolution the variant was trained at (224, 240, 260)."""
    return VARIANTS[variant][2]
