"""Layer pairs for a CNN, each ``forward(params, x) -> (out, cache)`` and ``backward(dout, cache) -> (dx, grads)``.

Everything is for one image in NHWC without the N (``(H, W, C)``) and is ``jax.vmap``-able;
``dout`` is ∂C/∂out and ``dx`` is ∂C/∂x. Parameters use Flax's own layout so the same
tree serves both: convolution ``kernel`` (k_h, k_w, C_in, C_out) and ``bias`` (C_out,);
dense ``kernel`` (n_in, n_out) — i.e. Wᵀ in the MLP convention — and ``bias`` (n_out,).

The delta rule in convolutional form (stride s, input padded to x̃):

    z[y, x, o]        = Σ_{i,j,c} x̃[s·y + i, s·x + j, c] K[i, j, c, o] + b[o]
    ∂C/∂K[i, j, c, o] = Σ_{y,x} x̃[s·y + i, s·x + j, c] δ[y, x, o]      (correlation of the input with δ)
    ∂C/∂x̃[r, q, c]    = Σ_{i,j,o} δ̂[r − i, q − j, o] K[i, j, c, o]      (full correlation of δ̂, the δ
                                                                        dilated by s, with the flipped kernel)

and δ^{l−1} = ∂C/∂x ⊙ σ'(z^{l−1}) once the activation's backward is applied. No ``jax.grad``
or ``jax.vjp`` here: the convolutions below are forward convolutions used as such.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from models.common import same_padding

Array = jax.Array
Cache = Any


def _padding(size: int, k: int, s: int, padding: str) -> tuple[int, int, int]:
    if padding == "SAME":
        return same_padding(size, k, s)
    if padding == "VALID":
        if size < k:
            raise ValueError(f"VALID convolution needs input ≥ kernel, got {size} < {k}")
        return (size - k) // s + 1, 0, 0
    raise ValueError(f"unknown padding {padding!r}; expected 'SAME' or 'VALID'")


def _conv(lhs: Array, rhs: Array, **kw) -> Array:
    """A forward correlation of (N, H, W, C) with (kh, kw, C, O)."""
    return jax.lax.conv_general_dilated(lhs, rhs, dimension_numbers=("NHWC", "HWIO", "NHWC"), **kw)


def conv2d_forward(params: dict, x: Array, *, stride: int = 1, padding: str = "SAME") -> tuple[Array, Cache]:
    """``z = x ⋆ K + b`` (correlation, as Flax's Conv); cache = (x, K, stride, padding info)."""
    K, b = params["kernel"], params["bias"]
    if x.ndim != 3 or x.shape[-1] != K.shape[2]:
        raise ValueError(f"conv2d takes one (H, W, {K.shape[2]}) image, got {tuple(x.shape)}")
    k_h, k_w = K.shape[:2]
    oh, pt, pb = _padding(x.shape[0], k_h, stride, padding)
    ow, pl, pr = _padding(x.shape[1], k_w, stride, padding)
    z = _conv(x[None], K, window_strides=(stride, stride), padding=((pt, pb), (pl, pr)))[0]
    z = z + b.reshape(1, 1, -1)
    return z, (x, K, stride, (pt, pb, pl, pr))


def conv2d_backward(dout: Array, cache: Cache, *, input_grad: bool = True) -> tuple[Array | None, dict]:
    """(∂C/∂x, {"kernel": ∂C/∂K, "bias": ∂C/∂b}) by the convolutional delta rule above.

    ``input_grad=False`` skips ∂C/∂x (the first layer's input is the image).
    """
    x, K, s, (pt, pb, pl, pr) = cache
    k_h, k_w, c_in, _ = K.shape
    H, W = x.shape[:2]
    oh, ow = dout.shape[:2]
    x_pad = jnp.pad(x, ((pt, pb), (pl, pr), (0, 0)))
    # ∂C/∂K: correlate x̃ (channels as the batch) with δ (dilated by s; images as the contracted feature)
    dK = _conv(jnp.transpose(x_pad, (2, 0, 1))[..., None], dout[:, :, None, :],
               window_strides=(1, 1), padding="VALID", rhs_dilation=(s, s))  # (C_in, ≥k_h, ≥k_w, C_out)
    dK = jnp.transpose(dK[:, :k_h, :k_w, :], (1, 2, 0, 3))
    db = jnp.sum(dout, axis=(0, 1))
    if not input_grad:
        return None, {"kernel": dK, "bias": db}
    # ∂C/∂x̃: full correlation of δ dilated by s with the kernel flipped and C_in/C_out swapped
    K_flip = jnp.transpose(K[::-1, ::-1], (0, 1, 3, 2))
    extra_h = x_pad.shape[0] - ((oh - 1) * s + k_h)  # rows the windows never reached get no gradient
    extra_w = x_pad.shape[1] - ((ow - 1) * s + k_w)
    dx_pad = _conv(dout[None], K_flip, window_strides=(1, 1),
                   padding=((k_h - 1, k_h - 1 + extra_h), (k_w - 1, k_w - 1 + extra_w)), lhs_dilation=(s, s))[0]
    dx = dx_pad[pt:pt + H, pl:pl + W]
    return dx, {"kernel": dK, "bias": db}


def relu_forward(z: Array) -> tuple[Array, Cache]:
    """a = max(z, 0); cache z."""
    return jnp.maximum(z, 0), z


def relu_backward(dout: Array, z: Cache) -> tuple[Array, dict]:
    """∂C/∂z = ∂C/∂a ⊙ σ'(z), σ'(z) = 1 if z > 0 else 0."""
    return jnp.where(z > 0, dout, jnp.zeros_like(dout)), {}


def max_pool_forward(x: Array) -> tuple[Array, Cache]:
    """2×2 max-pool, stride 2, VALID; cache the arg-max mask.

    Tie rule: the gradient goes to the first maximum of each window in row-major order
    (top-left, top-right, bottom-left, bottom-right), as TensorFlow and PyTorch do; an
    odd last row/column is dropped and gets zero gradient.
    """
    H, W, C = x.shape
    h, w = H // 2, W // 2
    windows = jnp.transpose(x[: 2 * h, : 2 * w].reshape(h, 2, w, 2, C), (0, 2, 4, 1, 3)).reshape(h, w, C, 4)
    first = jnp.argmax(windows, axis=-1)  # argmax returns the first maximum
    mask = (jnp.arange(4).reshape(1, 1, 1, 4) == first[..., None]).astype(x.dtype)
    return jnp.max(windows, axis=-1), (mask, x.shape)


def max_pool_backward(dout: Array, cache: Cache) -> tuple[Array, dict]:
    """Each window's ∂C/∂out goes to its (first) arg-max; everything else gets 0."""
    mask, (H, W, C) = cache
    h, w = dout.shape[:2]
    d = (mask * dout[..., None]).reshape(h, w, C, 2, 2)
    d = jnp.transpose(d, (0, 3, 1, 4, 2)).reshape(2 * h, 2 * w, C)
    return jnp.pad(d, ((0, H - 2 * h), (0, W - 2 * w), (0, 0))), {}


def flatten_forward(x: Array) -> tuple[Array, Cache]:
    return x.reshape(-1), x.shape


def flatten_backward(dout: Array, shape: Cache) -> tuple[Array, dict]:
    return dout.reshape(shape), {}


def dense_forward(params: dict, x: Array) -> tuple[Array, Cache]:
    """z = x K + b with Flax's kernel K (n_in, n_out) = Wᵀ."""
    K, b = params["kernel"], params["bias"]
    if x.shape != (K.shape[0],):
        raise ValueError(f"dense takes ({K.shape[0]},) inputs, got {tuple(x.shape)}")
    return x @ K + b, (x, K)


def dense_backward(dout: Array, cache: Cache) -> tuple[Array, dict]:
    """∂C/∂x = K δ, ∂C/∂K = x δᵀ (= (δ xᵀ)ᵀ, the MLP rule in Flax's layout), ∂C/∂b = δ."""
    x, K = cache
    return K @ dout, {"kernel": jnp.outer(x, dout), "bias": dout}


def dropout_forward(x: Array, *, rate: float, key: Array | None) -> tuple[Array, Cache]:
    """Inverted dropout: keep each unit with p = 1 − rate and scale by 1/p; the mask is the cache.

    The mask is ``jax.random.bernoulli(key, 1 − rate, x.shape)`` — the same draw as
    Flax's ``nn.Dropout(rate)(x, rng=key)``. ``key=None`` means evaluation: identity.
    """
    if key is None or rate == 0.0:
        return x, jnp.ones_like(x)
    keep = 1.0 - rate
    mask = jax.random.bernoulli(key, keep, x.shape).astype(x.dtype) / keep
    return x * mask, mask


def dropout_backward(dout: Array, mask: Cache) -> tuple[Array, dict]:
    return dout * mask, {}


def softmax_cross_entropy_forward(z: Array, label: Array) -> tuple[Array, Cache]:
    """C = logsumexp(z) − z_label; cache (softmax(z), one-hot label)."""
    m = jnp.max(z)
    e = jnp.exp(z - m)
    p = e / jnp.sum(e)
    y = (jnp.arange(z.shape[0]) == jnp.asarray(label).reshape(1)).astype(z.dtype)
    return m + jnp.log(jnp.sum(e)) - jnp.sum(y * z), (p, y)


def softmax_cross_entropy_backward(dout: Array, cache: Cache) -> tuple[Array, dict]:
    """δ^L = ∂C/∂z = softmax(z) − y (times the incoming scalar ∂/∂C)."""
    p, y = cache
    return dout * (p - y), {}


# ---- the same rules over a whole minibatch (leading axis N): one contraction over the batch per gradient ----

# From this many input channels on, :func:`conv2d_backward_batch` forms ∂C/∂K as k² GEMMs over strided slices
# (:func:`conv2d_kernel_grad_taps`); below it (a first layer on 1–3 channels, where each GEMM would be a
# matrix–vector product) as one convolution. Chosen per layer from benchmarks/model1_conv_layers.py.
TAPS_MIN_CHANNELS = 16


def conv2d_kernel_grad_taps(dout: Array, x: Array, kernel_shape: tuple[int, int], stride: int,
                            pads: tuple[int, int, int, int]) -> Array:
    """∂C/∂K of a minibatch as one GEMM per kernel tap over strided slices of the padded input:

        ∂C/∂K[i, j] = P_ijᵀ Δ,   P_ij = x̃[:, i :: s, j :: s] (its first oh × ow positions) as (N·oh·ow, C_in),
                                  Δ = δ as (N·oh·ow, C_out)

    i.e. ∂C/∂K[i, j, c, o] = Σ_{n,y,x} x̃[n, s·y + i, s·x + j, c] δ[n, y, x, o], the sum over the batch and the
    positions being each GEMM's contraction. Each P_ij is a slice (read once, no gather), and the GEMMs run at
    the machine's matmul speed, where XLA:CPU's convolution with δ as the kernel (the formulation autodiff
    emits) ran 1.5–1.7× slower on Model 1's conv2/conv3 (benchmarks/RESULTS.md, issue 37).
    """
    s, (pt, pb, pl, pr) = stride, pads
    k_h, k_w = kernel_shape
    oh, ow, c_out = dout.shape[1:]
    c_in = x.shape[3]
    x_pad = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
    delta = dout.reshape(-1, c_out)
    taps = [x_pad[:, i:i + (oh - 1) * s + 1:s, j:j + (ow - 1) * s + 1:s].reshape(-1, c_in).T @ delta
            for i in range(k_h) for j in range(k_w)]
    return jnp.stack(taps).reshape(k_h, k_w, c_in, c_out)


def conv2d_backward_batch(dout: Array, x: Array, K: Array, stride: int, pads: tuple[int, int, int, int], *,
                          input_grad: bool = True) -> tuple[Array | None, dict]:
    """:func:`conv2d_backward` for a minibatch ``x`` (N, H, W, C_in), ``dout`` (N, oh, ow, C_out).

    The kernel gradient is summed over the batch inside one contraction, the batch axis being
    contracted like the spatial ones (as k² GEMMs, :func:`conv2d_kernel_grad_taps`, from
    ``TAPS_MIN_CHANNELS`` input channels on; as one correlation below that):

        ∂C/∂K[i, j, c, o] = Σ_{n,y,x} x̃[n, s·y + i, s·x + j, c] δ[n, y, x, o]

    (in the correlation, x̃ with its channels as the convolution's batch and its images as the contracted
    feature), and ∂C/∂x is the full correlation of the dilated δ with the flipped kernel, for all images at
    once. No per-image kernel gradient is formed.
    """
    s, (pt, pb, pl, pr) = stride, pads
    k_h, k_w = K.shape[:2]
    H, W = x.shape[1:3]
    oh, ow = dout.shape[1:3]
    # rows/columns of x̃ that no window reaches get no gradient: trimmed from the high padding
    extra_h = H + pt + pb - ((oh - 1) * s + k_h)
    extra_w = W + pl + pr - ((ow - 1) * s + k_w)
    if x.shape[3] >= TAPS_MIN_CHANNELS:
        dK = conv2d_kernel_grad_taps(dout, x, (k_h, k_w), s, pads)
    else:
        # ∂C/∂K: the roles are given by dimension numbers, not by copies: in x the channel axis plays the
        # batch and the image axis the contracted feature; δ is the "kernel", dilated by s; out (k_h, k_w, C_in, C_out)
        dK = jax.lax.conv_general_dilated(x, dout, window_strides=(1, 1),
                                          padding=((pt, pb - extra_h), (pl, pr - extra_w)),
                                          rhs_dilation=(s, s), dimension_numbers=("CHWN", "IHWO", "HWNC"))
    db = jnp.sum(dout, axis=(0, 1, 2))
    if not input_grad:
        return None, {"kernel": dK, "bias": db}
    return conv2d_input_grad_batch(dout, K, s, pads, (H, W)), {"kernel": dK, "bias": db}


def conv2d_input_grad_batch(dout: Array, K: Array, stride: int, pads: tuple[int, int, int, int],
                            in_hw: tuple[int, int]) -> Array:
    """∂C/∂x (N, H, W, C_in) of a minibatch: δ dilated by s, fully correlated with the flipped kernel whose
    C_in/C_out roles swap (dimension numbers ``"HWOI"``: no copy of the kernel). Per layer this ran at
    XLA's autodiff speed and at PyTorch's (benchmarks/RESULTS.md, issue 37); a k²-tap GEMM form was slower."""
    s, (pt, pb, pl, pr) = stride, pads
    k_h, k_w = K.shape[:2]
    H, W = in_hw
    oh, ow = dout.shape[1:3]
    extra_h = H + pt + pb - ((oh - 1) * s + k_h)  # rows/columns of x̃ that no window reaches
    extra_w = W + pl + pr - ((ow - 1) * s + k_w)
    dx_pad = jax.lax.conv_general_dilated(dout, K[::-1, ::-1], window_strides=(1, 1),
                                          padding=((k_h - 1, k_h - 1 + extra_h), (k_w - 1, k_w - 1 + extra_w)),
                                          lhs_dilation=(s, s), dimension_numbers=("NHWC", "HWOI", "NHWC"))
    return dx_pad[:, pt:pt + H, pl:pl + W]


def dense_backward_batch(dout: Array, x: Array, K: Array) -> tuple[Array, dict]:
    """:func:`dense_backward` for rows ``x`` (N, n_in), ``dout`` (N, n_out): ∂C/∂K = Σ_n x_n δ_nᵀ = Xᵀ Δ."""
    return dout @ K.T, {"kernel": x.T @ dout, "bias": jnp.sum(dout, axis=0)}


def batch_softmax_cross_entropy(logits: Array, labels: Array, *, weights: Array | None = None,
                                mask: Array | None = None) -> tuple[Array, Array]:
    """(C, δ^L) for a minibatch: C = Σ_n m_n w_n ℓ_n / Σ_n m_n with ℓ_n = logsumexp(z_n) − z_n[y_n], and
    δ^L_n = ∂C/∂z_n = m_n w_n (softmax(z_n) − y_n) / Σ m (``mask`` zero rows are padding)."""
    n = logits.shape[0]
    weights = jnp.ones((n,), logits.dtype) if weights is None else weights
    mask = jnp.ones((n,), logits.dtype) if mask is None else mask
    losses, ce_caches = jax.vmap(softmax_cross_entropy_forward)(logits, labels)
    denom = jnp.maximum(jnp.sum(mask), 1.0)
    scale = weights * mask / denom  # ∂C/∂ℓ_n
    dlogits = jax.vmap(softmax_cross_entropy_backward)(scale.astype(logits.dtype), ce_caches)[0]
    return jnp.sum(losses * weights * mask) / denom, dlogits


def vmap_with_static(f, *args, in_axes):
    """``jax.vmap(f)`` for an ``f`` whose output also holds Python constants (layer kinds, strides,
    shapes): the arrays get the batch axis, the constants are returned once, as they are."""
    static: dict = {}

    def arrays_only(*a):
        leaves, static["treedef"] = jax.tree_util.tree_flatten(f(*a))
        static["is_array"] = [isinstance(leaf, jax.Array) for leaf in leaves]
        static["leaves"] = [None if arr else leaf for leaf, arr in zip(leaves, static["is_array"])]
        return [leaf for leaf, arr in zip(leaves, static["is_array"]) if arr]

    arrays = iter(jax.vmap(arrays_only, in_axes=in_axes)(*args))
    leaves = [next(arrays) if arr else leaf for leaf, arr in zip(static["leaves"], static["is_array"])]
    return jax.tree_util.tree_unflatten(static["treedef"], leaves)


def batch_forward_loss(forward, params, X: Array, labels: Array, model, *, weights: Array | None = None,
                       mask: Array | None = None, train: bool = False, keys: Array | None = None
                       ) -> tuple[Array, Array, Any]:
    """(C, δ^L, caches) of a minibatch: ``forward(params, x, model, train=, key=) -> (logits, caches)``, written for
    one image, vmapped over ``X`` (and the per-image ``keys``), then :func:`batch_softmax_cross_entropy`."""
    if keys is None:
        logits, caches = vmap_with_static(lambda x: forward(params, x, model), X, in_axes=0)
    else:
        logits, caches = vmap_with_static(lambda x, k: forward(params, x, model, train=train, key=k),
                                          X, keys, in_axes=(0, 0))
    loss, dlogits = batch_softmax_cross_entropy(logits, labels, weights=weights, mask=mask)
    return loss, dlogits, caches


def loss_with_manual_grad(value_and_grads, params):
    """``value_and_grads(params)[0]`` as a ``jax.custom_vjp`` whose derivative in ``params`` is
    ``value_and_grads(params)[1]``: ``jax.grad`` of it (inside Optax, a jitted train step, …) runs the
    hand-written backward instead of autodiff. Only ``params`` may be differentiated."""

    @jax.custom_vjp
    def loss(p):
        return value_and_grads(p)[0]

    def loss_fwd(p):
        return value_and_grads(p)  # (C, residuals = ∂C/∂params)

    def loss_bwd(nabla, g):
        return (jax.tree_util.tree_map(lambda n: g * n, nabla),)

    loss.defvjp(loss_fwd, loss_bwd)
    return loss(params)
