"""Data augmentation in JAX, for one image (H, W, C) in [0, 1]; ``jax.vmap`` over a batch with one key each.

Applied on device inside the jitted train step, to training images only (after the split):

- random crop: reflect-pad by ``crop_pad`` pixels, cut an (H, W) window at a random offset;
- horizontal flip with probability ½;
- rotation by an angle uniform in ±``max_degrees`` about the centre (bilinear, edges reflected);
- brightness b ~ U(±brightness) and contrast c ~ U(1 ± contrast): x ← clip((x − x̄) c + x̄ + b, 0, 1)."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Augment(NamedTuple):
    """Augmentation strengths; zero turns a transform off."""

    crop_pad: int = 8
    flip: bool = True
    max_degrees: float = 10.0
    brightness: float = 0.1
    contrast: float = 0.1


def augment_image(x: jax.Array, *, key: jax.Array, aug: Augment = Augment()) -> jax.Array:
    """One randomly transformed copy of ``x`` (H, W, C)."""
    H, W, C = x.shape
    k_crop, k_flip, k_rot, k_b, k_c = jax.random.split(key, 5)
    if aug.crop_pad > 0:
        p = aug.crop_pad
        padded = jnp.pad(x, ((p, p), (p, p), (0, 0)), mode="reflect")
        dy, dx = jax.random.randint(k_crop, (2,), 0, 2 * p + 1)
        x = jax.lax.dynamic_slice(padded, (dy, dx, 0), (H, W, C))
    if aug.flip:
        x = jnp.where(jax.random.bernoulli(k_flip), x[:, ::-1], x)
    if aug.max_degrees > 0:
        theta = jnp.deg2rad(jax.random.uniform(k_rot, (), x.dtype, -aug.max_degrees, aug.max_degrees))
        cy, cx = (H - 1) / 2.0, (W - 1) / 2.0
        yy, xx = jnp.meshgrid(jnp.arange(H, dtype=x.dtype), jnp.arange(W, dtype=x.dtype), indexing="ij")
        src_y = cy + (yy - cy) * jnp.cos(theta) - (xx - cx) * jnp.sin(theta)
        src_x = cx + (yy - cy) * jnp.sin(theta) + (xx - cx) * jnp.cos(theta)
        x = jnp.stack([
            jax.scipy.ndimage.map_coordinates(x[:, :, c], [src_y, src_x], order=1, mode="reflect")
            for c in range(C)
        ], axis=-1)
    if aug.brightness > 0 or aug.contrast > 0:
        b = jax.random.uniform(k_b, (), x.dtype, -aug.brightness, aug.brightness)
        c = jax.random.uniform(k_c, (), x.dtype, 1 - aug.contrast, 1 + aug.contrast)
        mean = jnp.mean(x)
        x = jnp.clip((x - mean) * c + mean + b, 0.0, 1.0)
    return x


def augment_batch(X: jax.Array, *, key: jax.Array, aug: Augment = Augment()) -> jax.Array:
    """``augment_image`` vmapped over the rows of X, one key per image."""
    keys = jax.random.split(key, X.shape[0])
    return jax.vmap(lambda x, k: augment_image(x, key=k, aug=aug))(X, keys)
