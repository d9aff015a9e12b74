"""Hand-written CNN layer pairs and the whole Model 1 against jax.grad of the Flax model (float64)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from manual_backprop import layers
from manual_backprop.cnn import model1_batch_grads as _model1_batch_grads
from manual_backprop.cnn import model1_example_grads
from models import Model1
from models.common import jit_run_once
from tests.helpers import assert_tree_close

pytestmark = pytest.mark.x64  # gradient checks: float64, scoped to each test (tests/conftest.py)

RTOL = 1e-10
model1_batch_grads = jax.jit(_model1_batch_grads, static_argnames=("model", "train"))


def vjp_reference(forward, params, x, dout):
    """(∂C/∂x, ∂C/∂params) of C = ⟨forward(params, x), dout⟩ by jax.vjp (the independent reference)."""
    _, pullback = jax.vjp(forward, params, x)
    d_params, dx = pullback(dout)
    return dx, d_params


def rand(seed, shape):
    """N(0, 1) in float64, drawn by NumPy (a new shape compiles no random-number program)."""
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float64)


CONV_CASES = {
    "3x3-s1-same-c4-o5": (9, 9, 4, 5, 3, 1, "SAME"),
    "7x7-s2-same-c1-o6-even": (20, 20, 1, 6, 7, 2, "SAME"),
    "7x7-s2-same-c3-o4-odd": (19, 17, 3, 4, 7, 2, "SAME"),
    "3x3-s2-valid-c2-o3": (11, 10, 2, 3, 3, 2, "VALID"),
    "5x3-s1-valid-c3-o2": (8, 7, 3, 2, 5, 1, "VALID"),
    "1x1-s1-same-c8-o8": (5, 5, 8, 8, 1, 1, "SAME"),
}


@pytest.mark.parametrize("case", list(CONV_CASES))
def test_conv2d_backward_equals_vjp(case):
    H, W, C, O, k, s, padding = CONV_CASES[case]
    k_h, k_w = (k, 3) if case.startswith("5x3") else (k, k)
    params = {"kernel": rand(1, (k_h, k_w, C, O)), "bias": rand(2, (O,))}
    x = rand(3, (H, W, C))
    out, cache = layers.conv2d_forward(params, x, stride=s, padding=padding)
    expected = jax.lax.conv_general_dilated(x[None], params["kernel"], (s, s), padding,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))[0] + params["bias"][None, None]
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    dout = rand(4, out.shape)
    dx, grads = layers.conv2d_backward(dout, cache)
    ref_dx, ref_grads = vjp_reference(lambda p, x: layers.conv2d_forward(p, x, stride=s, padding=padding)[0],
                                      params, x, dout)
    assert_tree_close((dx, grads), (ref_dx, ref_grads), RTOL)


def test_conv2d_matches_flax_conv():
    import flax.linen as nn

    conv = nn.Conv(6, (7, 7), strides=(2, 2), padding="SAME")
    x = rand(0, (19, 19, 3))
    variables = jax.tree_util.tree_map(lambda p: p.astype(jnp.float64), jax.jit(conv.init)(jax.random.PRNGKey(0), x))
    out, _ = layers.conv2d_forward(variables["params"], x, stride=2)
    np.testing.assert_allclose(out, conv.apply(variables, x), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", [(8, 6, 3), (9, 7, 2)], ids=["even", "odd"])
def test_max_pool_backward_equals_vjp(shape):
    x = rand(5, shape)
    out, cache = layers.max_pool_forward(x)
    dout = rand(6, out.shape)
    dx, _ = layers.max_pool_backward(dout, cache)
    _, pullback = jax.vjp(lambda x: layers.max_pool_forward(x)[0], x)
    assert_tree_close(dx, pullback(dout)[0], RTOL)
    if shape[0] % 2:
        assert float(jnp.abs(dx[-1]).max()) == 0.0  # the dropped odd row gets no gradient


def test_max_pool_tie_rule_first_maximum():
    """A window of equal values sends its whole gradient to the top-left entry."""
    x = jnp.array([[1.0, 1.0], [1.0, 1.0]])[:, :, None]
    _, cache = layers.max_pool_forward(x)
    dx, _ = layers.max_pool_backward(jnp.array([[[5.0]]]), cache)
    np.testing.assert_array_equal(dx[:, :, 0], [[5.0, 0.0], [0.0, 0.0]])
    x = jnp.array([[0.0, 2.0], [2.0, 1.0]])[:, :, None]  # tie between top-right and bottom-left
    _, cache = layers.max_pool_forward(x)
    dx, _ = layers.max_pool_backward(jnp.array([[[1.0]]]), cache)
    np.testing.assert_array_equal(dx[:, :, 0], [[0.0, 1.0], [0.0, 0.0]])


@pytest.mark.parametrize("pair", ["relu", "flatten", "dense", "dropout", "softmax_ce"])
def test_small_layer_backward_equals_vjp(pair):
    if pair == "relu":
        x = rand(7, (4, 5, 3))
        fwd, bwd, p = (lambda p, x: layers.relu_forward(x)), layers.relu_backward, {}
    elif pair == "flatten":
        x = rand(7, (4, 5, 3))
        fwd, bwd, p = (lambda p, x: layers.flatten_forward(x)), layers.flatten_backward, {}
    elif pair == "dense":
        x = rand(7, (6,))
        p = {"kernel": rand(8, (6, 4)), "bias": rand(9, (4,))}
        fwd, bwd = layers.dense_forward, layers.dense_backward
    elif pair == "dropout":
        x = rand(7, (10,))
        fwd, bwd, p = (lambda p, x: layers.dropout_forward(x, rate=0.5, key=jax.random.PRNGKey(3))), \
            layers.dropout_backward, {}
    else:
        x = rand(7, (5,))
        fwd, bwd, p = (lambda p, x: layers.softmax_cross_entropy_forward(x, 2)), \
            layers.softmax_cross_entropy_backward, {}
    out, cache = fwd(p, x)
    dout = rand(10, jnp.shape(out))
    dx, grads = bwd(dout, cache)
    ref_dx, ref_grads = vjp_reference(lambda p, x: fwd(p, x)[0], p, x, dout)
    assert_tree_close(dx, ref_dx, RTOL)
    if p:
        assert_tree_close(grads, ref_grads, RTOL)


def test_dropout_mask_is_flax_dropout_mask():
    import flax.linen as nn

    x = rand(0, (50,))
    key = jax.random.PRNGKey(42)
    ours, mask = layers.dropout_forward(x, rate=0.3, key=key)
    theirs = nn.Dropout(0.3, deterministic=False).apply({}, x, rng=key)
    np.testing.assert_allclose(ours, theirs, rtol=1e-15)
    assert 0 < int(jnp.sum(mask == 0)) < 50


# --- the whole Model 1 ---
@functools.lru_cache(maxsize=4)  # the train and eval cases of one shape share the draw
def flax_model(size, channels, n_classes=3, **kw):
    """Model 1 and its initial weights, drawn in float32 by one program compiled to run once, cast to float64."""
    model = Model1(n_classes, **kw)
    params = jit_run_once(model.init)(jax.random.PRNGKey(0), jnp.zeros((size, size, channels), jnp.float32))["params"]
    return model, jax.tree_util.tree_map(lambda p: jnp.asarray(np.asarray(p, np.float64)), params)


def flax_batch_loss(model, params, X, y, keys, weights=None):
    logits = jax.vmap(lambda x, k: model.apply({"params": params}, x, train=keys is not None, key=k))(
        X, keys if keys is not None else jnp.zeros((X.shape[0], 2), jnp.uint32))
    losses = jax.nn.logsumexp(logits, axis=1) - logits[jnp.arange(X.shape[0]), y]
    w = jnp.ones_like(losses) if weights is None else weights
    return jnp.sum(w * losses) / X.shape[0]


@pytest.mark.parametrize("train", [True, False], ids=["train-dropout", "eval"])
@pytest.mark.parametrize(("size", "channels"), [(24, 1), (37, 1), (24, 3), (37, 3)],
                         ids=["24px-gray", "37px-gray", "24px-rgb", "37px-rgb"])
def test_model1_manual_gradients_equal_jax_grad(size, channels, train):
    model, params = flax_model(size, channels, head_units=(16, 8))
    X = jnp.asarray(np.random.default_rng(1).uniform(size=(4, size, size, channels)))
    y = jnp.array([0, 1, 2, 1])
    keys = jax.random.split(jax.random.PRNGKey(2), 4) if train else None
    loss, grads = model1_batch_grads(params, X, y, model, train=train, keys=keys)
    ref_loss, ref_grads = jax.jit(jax.value_and_grad(lambda p: flax_batch_loss(model, p, X, y, keys)))(params)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-13)
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(ref_grads)
    assert_tree_close(grads, ref_grads, RTOL)


def test_model1_manual_gradients_with_standardization_and_weights():
    model, params = flax_model(20, 3, n_classes=2, head_units=(8, 4), input_mean=(0.4, 0.5, 0.6),
                               input_std=(0.2, 0.25, 0.3))
    X = jnp.asarray(np.random.default_rng(1).uniform(size=(3, 20, 20, 3)))
    y, w = jnp.array([0, 1, 1]), jnp.array([2.0, 0.5, 0.5])
    keys = jax.random.split(jax.random.PRNGKey(2), 3)
    _, grads = model1_batch_grads(params, X, y, model, weights=w, train=True, keys=keys)
    ref = jax.jit(jax.grad(lambda p: flax_batch_loss(model, p, X, y, keys, w)))(params)
    assert_tree_close(grads, ref, RTOL)


def test_model1_manual_rejects_other_activations():
    model, params = flax_model(20, 1, activation="tanh", head_units=(8, 4))
    with pytest.raises(ValueError, match="written for ReLU, got activation 'tanh'"):
        model1_example_grads(params, jnp.zeros((20, 20, 1)), 0, model)


@pytest.mark.slow
def test_adam_trajectory_with_manual_gradients_follows_jax_grad():
    """10 Adam steps on manual gradients stay on the jax.grad trajectory (float64, rel ≤ 1e-9)."""
    model, params = flax_model(20, 1, n_classes=2, head_units=(8, 4))
    X = jnp.asarray(np.random.default_rng(1).uniform(size=(6, 20, 20, 1)))
    y = jnp.array([0, 1, 0, 1, 1, 0])
    tx = optax.adam(1e-3)

    @jax.jit
    def manual_step(p, s, key):
        keys = jax.random.split(key, 6)
        _, g = model1_batch_grads(p, X, y, model, train=True, keys=keys)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    @jax.jit
    def auto_step(p, s, key):
        keys = jax.random.split(key, 6)
        g = jax.grad(lambda p: flax_batch_loss(model, p, X, y, keys))(p)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s

    pm, sm = params, tx.init(params)
    pa, sa = params, tx.init(params)
    for i in range(10):
        key = jax.random.PRNGKey(100 + i)
        pm, sm = manual_step(pm, sm, key)
        pa, sa = auto_step(pa, sa, key)
    moved = jax.tree_util.tree_map(lambda a, b: float(jnp.abs(a - b).max()), pa, params)
    assert max(jax.tree_util.tree_leaves(moved)) > 5e-3  # the parameters really moved
    assert_tree_close(pm, pa, 1e-9)


# Model 1's tests run the k²-GEMM kernel gradient at stride 1, SAME (≥ 16 channels); these shapes force it
# through a stride 2, VALID windows that leave rows unread, and a non-square kernel
TAPS_CASES = ["7x7-s2-same-c3-o4-odd", "3x3-s2-valid-c2-o3", "5x3-s1-valid-c3-o2"]


@pytest.mark.parametrize("case, kernel_grad", [*[(c, "correlation") for c in CONV_CASES],
                                               *[(c, "taps") for c in TAPS_CASES]])
def test_conv2d_backward_batch_equals_the_sum_of_per_image_rules(case, kernel_grad, monkeypatch):
    """The batched rule (one contraction over the batch) equals Σ over images of the per-image rule, with ∂C/∂K
    as one correlation and, forced on small shapes, as k² GEMMs over strided slices."""
    monkeypatch.setattr(layers, "TAPS_MIN_CHANNELS", 1 if kernel_grad == "taps" else 10**9)
    H, W, C, O, k, s, padding = CONV_CASES[case]
    k_h, k_w = (k, 3) if case.startswith("5x3") else (k, k)
    params = {"kernel": rand(1, (k_h, k_w, C, O)), "bias": rand(2, (O,))}
    X = rand(3, (3, H, W, C))
    outs = jax.vmap(lambda x: layers.conv2d_forward(params, x, stride=s, padding=padding)[0])(X)
    _, cache = layers.conv2d_forward(params, X[0], stride=s, padding=padding)
    dout = rand(4, outs.shape)
    dx, grads = layers.conv2d_backward_batch(dout, X, params["kernel"], s, cache[3])
    per_image = [layers.conv2d_backward(dout[n], layers.conv2d_forward(params, X[n], stride=s, padding=padding)[1])
                 for n in range(3)]
    expected_grads = jax.tree_util.tree_map(lambda *g: sum(g), *[g for _, g in per_image])
    assert_tree_close((dx, grads), (jnp.stack([d for d, _ in per_image]), expected_grads), RTOL)


def test_dense_backward_batch_is_x_transpose_delta():
    params = {"kernel": rand(1, (7, 5)), "bias": rand(2, (5,))}
    X, dout = rand(3, (4, 7)), rand(4, (4, 5))
    dx, grads = layers.dense_backward_batch(dout, X, params["kernel"])
    per_row = [layers.dense_backward(dout[n], (X[n], params["kernel"])) for n in range(4)]
    assert_tree_close((dx, grads), (jnp.stack([d for d, _ in per_row]),
                                    jax.tree_util.tree_map(lambda *g: sum(g), *[g for _, g in per_row])), RTOL)


@pytest.mark.slow
def test_training_with_grad_manual_takes_the_same_steps_as_autodiff():
    """``--grad manual``: the jitted Optax Adam step on the hand-written backward (a custom_vjp) takes the
    same steps as jax.grad: float64, per array relative to its norm ≤ 1e-9 after 4 steps."""
    from training.data.augment import Augment
    from training.loop.config import get_config
    from training.loop.registry import build_model
    from training.loop.state import create_state
    from training.loop.steps import make_batch, make_train_step

    config = get_config("lab-2020", image_size=20, head_units=(8, 4), learning_rate=1e-3, augment=Augment())
    model = build_model(config, 2)
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(6, 20, 20, 1))
    y = np.array([0, 1, 0, 1, 1, 0])
    state0 = create_state(model, config, x.shape[1:], key=jax.random.PRNGKey(0))
    state0 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a, state0)
    batch = jax.tree_util.tree_map(jnp.asarray, make_batch(x, y, np.arange(6), 6, np.array([1.0, 2.0])))
    batch["x"] = batch["x"].astype(jnp.float64)
    steps = {g: make_train_step(model, config.augment, grad=g) for g in ("manual", "autodiff")}
    states, losses = {}, {}
    for g, step in steps.items():
        state, losses[g] = state0, []
        for i in range(4):
            state, m = step(state, batch, jax.random.PRNGKey(10 + i))
            losses[g].append(float(m["loss"]))
        states[g] = state
    np.testing.assert_allclose(losses["manual"], losses["autodiff"], rtol=1e-12)
    assert losses["manual"][-1] < losses["manual"][0]  # it trains
    assert_tree_close(states["manual"].params, states["autodiff"].params, 1e-9)


def test_grad_manual_refuses_a_network_not_written_by_hand():
    from training.loop.config import get_config
    from training.loop.registry import build_model
    from training.loop.steps import make_train_step

    with pytest.raises(ValueError, match="written for Model 1 with ReLU"):
        make_train_step(build_model(get_config("lab-2020", activation="tanh"), 2), grad="manual")
    with pytest.raises(ValueError, match="EfficientNet-Lite classifier, not ResNet"):
        make_train_step(build_model(get_config("lab-2020", model="resnet50"), 2), grad="manual")
