"""What the network looks at: vanilla-gradient saliency, Grad-CAM and Grad-CAM++, as pure JAX functions.

For one image x (H, W, C), class c with score y_c (the logit) and last convolutional feature
maps A (h, w, K) exposed by the model (``models.model1.mark_cam_features``):

- saliency:  S = max_channels |∂y_c/∂x|                                (Simonyan et al. 2014)
- Grad-CAM:  α_k = mean_ij ∂y_c/∂A_ijk,  L = ReLU(Σ_k α_k A_k)         (Selvaraju et al. 2017)
- Grad-CAM++: with g = ∂y_c/∂A, a_ijk = g² / (2g² + Σ_ab A_abk g³),
              w_k = Σ_ij a_ijk ReLU(g_ijk),  L = ReLU(Σ_k w_k A_k)     (Chattopadhay et al. 2018)

Maps are bilinearly resized to (H, W) and scaled to [0, 1] (all-zero maps stay zero)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax.core import unfreeze
from flax.traverse_util import flatten_dict


def _cam_entry(tree, what: str):
    """The one ``cam_features`` entry of a collection, at whatever depth the model sows it (a backbone's
    features sit inside its submodule's scope)."""
    found = [v for k, v in flatten_dict(unfreeze(tree)).items() if k[-1] == "cam_features"]
    if len(found) != 1:
        raise ValueError(f"the model marks {len(found)} feature maps for Grad-CAM in its {what}; expected one")
    return found[0]


def _features_and_gradient(model, params, x: jax.Array, cls: int) -> tuple[jax.Array, jax.Array]:
    """(A, ∂y_c/∂A) at the model's ``cam_features``."""
    _, state = model.apply({"params": params}, x, mutable=["intermediates", "perturbations"])
    features = _cam_entry(state["intermediates"], "intermediates")[0]

    def score(perturbations):
        return model.apply({"params": params, "perturbations": perturbations}, x)[cls]

    grads = _cam_entry(jax.grad(score)(state["perturbations"]), "perturbations")
    return features, grads


def _to_image(cam: jax.Array, shape: tuple[int, int]) -> jax.Array:
    cam = jax.image.resize(cam, shape, method="bilinear")
    top = jnp.max(cam)
    return jnp.where(top > 0, cam / jnp.where(top > 0, top, 1.0), jnp.zeros_like(cam))


def saliency(model, params, x: jax.Array, cls: int) -> jax.Array:
    """max over channels of |∂y_c/∂x|, scaled to [0, 1]."""
    g = jax.grad(lambda x: model.apply({"params": params}, x)[cls])(x)
    return _to_image(jnp.max(jnp.abs(g), axis=-1), x.shape[:2])


def grad_cam(model, params, x: jax.Array, cls: int) -> jax.Array:
    A, g = _features_and_gradient(model, params, x, cls)
    alpha = jnp.mean(g, axis=(0, 1))
    return _to_image(jax.nn.relu(jnp.sum(A * alpha.reshape(1, 1, -1), axis=-1)), x.shape[:2])


def grad_cam_plus_plus(model, params, x: jax.Array, cls: int) -> jax.Array:
    A, g = _features_and_gradient(model, params, x, cls)
    g2, g3 = g**2, g**3
    denom = 2 * g2 + jnp.sum(A, axis=(0, 1), keepdims=True) * g3
    a = g2 / jnp.where(denom != 0, denom, 1.0)
    w = jnp.sum(a * jax.nn.relu(g), axis=(0, 1))
    return _to_image(jax.nn.relu(jnp.sum(A * w.reshape(1, 1, -1), axis=-1)), x.shape[:2])


METHODS = {"saliency": saliency, "grad_cam": grad_cam, "grad_cam_plus_plus": grad_cam_plus_plus}


@functools.lru_cache(maxsize=16)
def jitted(model, method: str):
    """``f(params, x, cls) -> map``: ``METHODS[method]`` for ``model``, jitted once per (model, method): the
    parameters and the class are arguments, so one compilation serves every class and every caller."""
    f = METHODS[method]
    return jax.jit(lambda params, x, cls: f(model, params, x, cls))


def all_maps(model, params, x: jax.Array, cls: jax.Array, methods: tuple[str, ...]) -> dict[str, jax.Array]:
    """Every map of ``methods`` for one image and class from one forward and one backward pass.

    The score y_c is differentiated once with respect to both the image (saliency) and the zero added to
    the feature maps A (Grad-CAM, Grad-CAM++), and A is that same forward pass's ``intermediates``: the
    maps equal :func:`saliency`, :func:`grad_cam` and :func:`grad_cam_plus_plus` (tests/models/test_models.py),
    which pay a pass each. ``cls`` may be traced (one compilation for every class)."""
    cams = [m for m in methods if m != "saliency"]
    shapes = jax.eval_shape(lambda: model.apply({"params": params}, x, mutable=["perturbations"])[1])
    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["perturbations"]) if cams else None

    def score(x, perturbations):
        variables = {"params": params, **({"perturbations": perturbations} if cams else {})}
        logits, state = model.apply(variables, x, mutable=["intermediates"])
        return logits[cls], state["intermediates"]

    # the score's gradient at the feature maps flows back through the head alone; only saliency needs it at the
    # image (a backward pass through the whole network), so it is asked for only then
    wrt = (0, 1) if "saliency" in methods and cams else (0,) if "saliency" in methods else (1,)
    grads, intermediates = jax.grad(score, argnums=wrt, has_aux=True)(x, zeros)
    gx, gp = (grads[0], grads[1]) if len(wrt) == 2 else (grads[0], None) if wrt == (0,) else (None, grads[0])
    maps = {}
    if "saliency" in methods:
        maps["saliency"] = _to_image(jnp.max(jnp.abs(gx), axis=-1), x.shape[:2])
    if cams:
        A, g = _cam_entry(intermediates, "intermediates")[0], _cam_entry(gp, "perturbations")
        if "grad_cam" in methods:
            alpha = jnp.mean(g, axis=(0, 1))
            maps["grad_cam"] = _to_image(jax.nn.relu(jnp.sum(A * alpha.reshape(1, 1, -1), axis=-1)), x.shape[:2])
        if "grad_cam_plus_plus" in methods:
            g2, g3 = g**2, g**3
            denom = 2 * g2 + jnp.sum(A, axis=(0, 1), keepdims=True) * g3
            a = g2 / jnp.where(denom != 0, denom, 1.0)
            w = jnp.sum(a * jax.nn.relu(g), axis=(0, 1))
            maps["grad_cam_plus_plus"] = _to_image(jax.nn.relu(jnp.sum(A * w.reshape(1, 1, -1), axis=-1)),
                                                   x.shape[:2])
    return {m: maps[m] for m in methods}


@functools.lru_cache(maxsize=16)
def batched(model, methods: tuple[str, ...]):
    """``f(params, x, cls) -> {method: maps}`` over a batch: :func:`all_maps` vmapped over images ``x``
    (N, H, W, C) and their classes ``cls`` (N,), jitted once per (model, methods)."""
    return jax.jit(jax.vmap(lambda params, x, cls: all_maps(model, params, x, cls, methods), in_axes=(None, 0, 0)))
