"""A pretrained EfficientNet-Lite backbone with a softmax head: the model that transfer learning trains."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from models.efficientnet_lite import VARIANTS, EfficientNetLite

BACKBONES = tuple(VARIANTS)


class TransferClassifier(nn.Module):
    """Logits for one (H, W, 3) image in [0, 1]: backbone features → (f − μ)/σ → dropout → dense."""

    variant: str
    n_classes: int
    feature_mean: Sequence[float] | None = None
    feature_std: Sequence[float] | None = None
    dropout_rate: float = 0.0
    depthwise: str = "shift"
    folded: bool = False  # the backbone's BatchNorm folded (models.efficientnet_lite.fold_batchnorm): inference
    # an index k: ``x`` is the activation map at the input of MBConv block k (cached from the frozen blocks
    # below it), not an image; the parameters are the whole classifier's either way
    start_block: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, key: jax.Array | None = None) -> jax.Array:
        f = EfficientNetLite(self.variant, depthwise=self.depthwise, folded=self.folded,
                             name="backbone")(x, features_only=True, start_block=self.start_block)
        return self.head_logits(f, train=train, key=key)

    def head_logits(self, f: jax.Array, *, train: bool = False, key: jax.Array | None = None) -> jax.Array:
        if self.feature_mean is not None:
            f = (f - jnp.asarray(self.feature_mean, f.dtype)) / jnp.asarray(self.feature_std, f.dtype)
        if self.dropout_rate > 0:
            rng = jax.random.fold_in(key, 1) if (train and key is not None) else None
            f = nn.Dropout(self.dropout_rate, deterministic=not train)(f, rng=rng)
        return nn.Dense(self.n_classes, name="head")(f)
