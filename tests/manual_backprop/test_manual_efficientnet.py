"""EfficientNet-Lite's hand-written layers and the whole classifier against jax.vjp / jax.grad (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from manual_backprop import efficientnet as eff
from manual_backprop.efficientnet import transfer_batch_grads
from models.efficientnet_lite import DepthwiseConv, FrozenBatchNorm, PointwiseConv
from models.transfer import TransferClassifier
from tests.helpers import assert_tree_close

pytestmark = pytest.mark.x64  # gradient checks: float64, scoped to each test (tests/conftest.py)

RTOL = 1e-10
N = 3  # images per minibatch in the layer checks


def rand(seed, shape):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape))  # float64 under the x64 mark


def vjp_of_batch(forward, params, x, dout):
    """(∂C/∂x, ∂C/∂params) of C = ⟨vmap(forward)(params, x), dout⟩ by jax.vjp: the independent reference."""
    _, pullback = jax.vjp(jax.vmap(forward, in_axes=(None, 0)), params, x)
    d_params, dx = pullback(dout)
    return dx, d_params


def flax_layer(module, params, x):
    return module.apply({"params": params}, x)


DEPTHWISE = {  # (H, W, C, k, stride): both strides, both kernel sizes, odd and even sides
    "k3-s1-9x9": (9, 9, 4, 3, 1),
    "k3-s2-10x10-even": (10, 10, 3, 3, 2),
    "k3-s2-11x7-odd": (11, 7, 5, 3, 2),
    "k5-s1-8x11": (8, 11, 2, 5, 1),
    "k5-s2-13x13-odd": (13, 13, 3, 5, 2),
    "k5-s2-3x4-smaller-than-kernel": (3, 4, 2, 5, 2),
}


@pytest.mark.parametrize("case", list(DEPTHWISE))
def test_depthwise_backward_equals_vjp_of_the_flax_layer(case):
    h, w, c, k, s = DEPTHWISE[case]
    module = DepthwiseConv(k, s)
    K = rand(1, (k, k, 1, c))
    x = rand(2, (N, h, w, c))
    dout = rand(3, (N, -(-h // s), -(-w // s), c))

    @jax.jit
    def both(K, x, dout):
        out, cache = jax.vmap(lambda xi: eff.depthwise_forward(K, xi, s))(x)
        ref_out = jax.vmap(lambda xi: flax_layer(module, {"kernel": K}, xi))(x)
        ref = vjp_of_batch(lambda p, xi: flax_layer(module, p, xi), {"kernel": K}, x, dout)
        return out, ref_out, eff.depthwise_backward(dout, cache, K, s), ref

    out, ref_out, manual, ref = both(K, x, dout)
    np.testing.assert_allclose(out, ref_out, rtol=1e-13)
    assert_tree_close(manual, ref, RTOL)
    assert eff.depthwise_backward(dout, x, K, s, input_grad=False)[0] is None


@pytest.mark.parametrize("shape", [(5, 7, 6, 9), (1, 1, 8, 3), (4, 3, 16, 16)],
                         ids=["5x7-6to9", "1x1-8to3", "4x3-16to16"])
def test_pointwise_backward_equals_vjp_of_the_flax_layer(shape):
    h, w, c_in, c_out = shape
    module = PointwiseConv(c_out)
    K = rand(1, (1, 1, c_in, c_out))
    x = rand(2, (N, h, w, c_in))
    dout = rand(3, (N, h, w, c_out))

    @jax.jit
    def both(K, x, dout):
        cache = jax.vmap(lambda xi: eff.pointwise_forward(K, xi))(x)[1]
        return eff.pointwise_backward(dout, cache, K), vjp_of_batch(lambda p, xi: flax_layer(module, p, xi),
                                                                    {"kernel": K}, x, dout)

    assert_tree_close(*both(K, x, dout), RTOL)


@pytest.mark.parametrize("ndim", [1, 3], ids=["features", "feature-map"])
def test_frozen_batchnorm_backward_equals_vjp_for_all_four_arrays(ndim):
    c = 7
    p = {"scale": rand(1, (c,)), "bias": rand(2, (c,)), "mean": rand(3, (c,)), "var": jnp.abs(rand(4, (c,))) + 0.1}
    x = rand(5, (N, *((5, 3)[:ndim - 1]), c))
    dout = rand(6, x.shape)

    @jax.jit
    def both(p, x, dout):
        out, cache = jax.vmap(lambda xi: eff.batchnorm_forward(p, xi))(x)
        ref_out = jax.vmap(lambda xi: flax_layer(FrozenBatchNorm(), p, xi))(x)
        ref = vjp_of_batch(lambda q, xi: flax_layer(FrozenBatchNorm(), q, xi), p, x, dout)
        return out, ref_out, eff.batchnorm_backward(dout, cache, p), ref

    out, ref_out, manual, ref = both(p, x, dout)
    np.testing.assert_allclose(out, ref_out, rtol=1e-13)
    assert_tree_close(manual, ref, RTOL)


def test_relu6_backward_is_jax_relu6s_including_both_kinks():
    z = jnp.array([-1.0, 0.0, 1e-9, 3.0, 6.0 - 1e-9, 6.0, 7.0])
    a, cache = eff.relu6_forward(z)
    np.testing.assert_array_equal(a, jax.nn.relu6(z))
    dout = jnp.arange(1.0, 8.0)
    np.testing.assert_array_equal(eff.relu6_backward(dout, cache), jax.vjp(jax.nn.relu6, z)[1](dout)[0])
    np.testing.assert_array_equal(eff.relu6_backward(dout, cache), [0, 0, 3, 4, 5, 0, 0])


def test_mean_pool_backward_spreads_delta_evenly():
    x = rand(1, (N, 5, 3, 4))
    dout = rand(2, (N, 4))
    ref = jax.vjp(lambda a: jnp.mean(a, axis=(1, 2)), x)[1](dout)[0]
    assert_tree_close(eff.mean_pool_backward(dout, (5, 3, 4)), ref, RTOL)


@pytest.fixture(scope="module")
def lite0_case(lite0):
    """Lite0 with its packaged ImageNet weights (float64) and a 3-class head on 3 odd-sized images, with
    standardized features, dropout, class weights and one padding row: every part of the classifier."""
    with jax.enable_x64(True):
        backbone, _ = lite0  # the session's (conftest.py), float32: converted to float64 below
        rng = np.random.default_rng(0)
        model = TransferClassifier("efficientnet_lite0", 3, feature_mean=tuple(rng.uniform(0, 1, 1280)),
                                   feature_std=tuple(rng.uniform(0.5, 2, 1280)), dropout_rate=0.3)
        params = {"backbone": backbone, "head": {"kernel": rng.normal(size=(1280, 3)) * 0.05, "bias": np.zeros(3)}}
        params = jax.tree_util.tree_map(lambda a: jnp.asarray(np.asarray(a, np.float64)), params)  # (in NumPy)
        batch = {"x": jnp.asarray(rng.uniform(size=(3, 37, 37, 3))), "y": jnp.array([0, 2, 1]),
                 "w": jnp.array([1.0, 2.0, 0.5]), "mask": jnp.array([1.0, 1.0, 0.0])}
    return model, params, batch, jax.random.split(jax.random.PRNGKey(5), 3)


def autodiff_loss(model, params, batch, keys):
    def example(x, y, w, k):
        z = model.apply({"params": params}, x, train=True, key=k)
        return w * (jax.nn.logsumexp(z) - z[y])

    losses = jax.vmap(example)(batch["x"], batch["y"], batch["w"], keys)
    return jnp.sum(losses * batch["mask"]) / jnp.sum(batch["mask"])


@pytest.fixture(scope="module")
def autodiff_grad(lite0_case):
    """``(params, dropout keys) -> (loss, ∂loss/∂params)`` by jax.grad of the Flax model, jitted once for the
    module: the reference of both tests below (one 30 s float64 compilation instead of two)."""
    model, _, batch, _ = lite0_case
    return jax.jit(jax.value_and_grad(lambda p, keys: autodiff_loss(model, p, batch, keys)))


def test_whole_lite0_classifier_gradient_equals_jax_grad(lite0_case, autodiff_grad):
    """Backbone (stem, 16 MBConv blocks, head conv) + standardization + dropout + dense + weighted loss:
    every array of the hand-written gradient equals jax.grad's to 1e-10 of its norm, in float64. With
    ``trainable`` naming the top layers only, those get the same gradient and every layer below gets zeros."""
    model, params, batch, keys = lite0_case
    top = {"block15", "conv_head", "bn_head"}

    def trainable(path):
        return path[0] == "head" or path[1] in top

    @jax.jit
    def manual(p):
        kw = dict(weights=batch["w"], mask=batch["mask"], train=True, keys=keys)
        return (transfer_batch_grads(p, batch["x"], batch["y"], model, **kw),
                transfer_batch_grads(p, batch["x"], batch["y"], model, trainable=trainable, **kw)[1])

    (loss, grads), partial = manual(params)
    ref_loss, ref = autodiff_grad(params, keys)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-13)
    assert_tree_close(grads, ref, RTOL)
    assert float(jnp.linalg.norm(grads["backbone"]["conv_stem"]["kernel"])) > 0  # δ reaches the first layer
    assert_tree_close({k: partial["backbone"][k] for k in top}, {k: ref["backbone"][k] for k in top}, RTOL)
    assert_tree_close(partial["head"], ref["head"], RTOL)
    assert all(not np.asarray(a).any() for k, v in partial["backbone"].items() if k not in top
               for a in jax.tree_util.tree_leaves(v))


def test_manual_backward_from_cached_block_maps_equals_jax_grad_and_the_whole_classifiers(lite0_case, autodiff_grad):
    """``--finetune top`` on cached maps (``TransferClassifier.start_block``): the hand-written pass from the
    input of block 15, on the frozen blocks' map of each image, equals jax.grad of the Flax model on those maps,
    and the top's gradients equal those of the whole classifier on the images (float64, ≤ 1e-10 per array);
    every layer below block 15 gets zeros."""
    from models.efficientnet_lite import EfficientNetLite

    model, params, batch, keys = lite0_case
    block = 15
    below = EfficientNetLite("efficientnet_lite0")
    maps = jax.jit(jax.vmap(lambda im: below.apply({"params": params["backbone"]}, im, stop_block=block)))(batch["x"])
    top_model = model.clone(start_block=block)
    top = {"block15", "conv_head", "bn_head"}

    def trainable(path):
        return path[0] == "head" or path[1] in top

    kw = dict(weights=batch["w"], mask=batch["mask"], train=True, keys=keys)
    loss, grads = jax.jit(lambda p: transfer_batch_grads(p, maps, batch["y"], top_model, trainable=trainable,
                                                         **kw))(params)
    ref_loss, ref = jax.jit(jax.value_and_grad(lambda p: autodiff_loss(top_model, p, {**batch, "x": maps}, keys)))(
        params)
    whole_loss, whole = autodiff_grad(params, keys)
    np.testing.assert_allclose([loss, ref_loss], [whole_loss, whole_loss], rtol=1e-12)
    assert_tree_close(grads, ref, RTOL)  # zeros below block 15 in both
    assert_tree_close({k: grads["backbone"][k] for k in top}, {k: whole["backbone"][k] for k in top}, RTOL)
    assert_tree_close(grads["head"], whole["head"], RTOL)
    assert all(not np.asarray(a).any() for k, v in grads["backbone"].items() if k not in top
               for a in jax.tree_util.tree_leaves(v))


@pytest.mark.parametrize("finetune", ["all"])
def test_adam_steps_on_the_manual_backward_equal_autodiffs(lite0_case, autodiff_grad, finetune):
    """``--grad manual --finetune all``: 4 Optax Adam steps of the project's jitted train step, through the
    custom_vjp, equal 4 steps written here from jax.grad of the Flax model and the same optimizer (float64,
    per array ≤ 1e-9), and the loss falls. (``top`` takes the same path with the optimizer's mask and the
    partial backward; the partial backward is checked against jax.grad above, and the matrix trains ``top``
    with ``--grad manual``: a second 30 s compilation here would check little more.)"""
    from training.loop.config import get_config
    from training.loop.optimizer import make_optimizer, masked_optimizer, trainable_mask
    from training.loop.state import TrainState
    from training.loop.steps import make_train_step

    model, params, batch, _ = lite0_case
    config = get_config(model="efficientnet_lite0", finetune=finetune, top_blocks=1, learning_rate=1e-3,
                        recipe=False)
    tx = masked_optimizer(make_optimizer(config), params, finetune, config.top_blocks)
    state0 = TrainState.create(apply_fn=model.apply, params=params, tx=tx).replace(step=jnp.zeros((), jnp.int32))
    step = make_train_step(model, grad="manual", finetune=finetune, top_blocks=config.top_blocks)
    apply = jax.jit(lambda state, grads: state.apply_gradients(grads=grads))
    manual, reference = state0, state0
    losses = {"manual": [], "autodiff": []}
    for i in range(4):
        key = jax.random.PRNGKey(10 + i)
        manual, m = step(manual, batch, key)
        losses["manual"].append(float(m["loss"]))
        keys = jax.random.split(jax.random.split(key)[1], batch["x"].shape[0])  # the step's dropout keys
        loss, grads = autodiff_grad(reference.params, keys)
        reference = apply(reference, grads)
        losses["autodiff"].append(float(loss))
    np.testing.assert_allclose(losses["manual"], losses["autodiff"], rtol=1e-12)
    assert losses["manual"][-1] < losses["manual"][0]
    assert_tree_close(manual.params, reference.params, 1e-9)
    # what trains (tests/training/transfer/test_transfer.py checks head and top in float32): every weight but the
    # BatchNorm statistics, which stay frozen in both trajectories
    trains = dict(jax.tree_util.tree_leaves_with_path(trainable_mask(params, finetune, config.top_blocks)))
    for new in (manual.params, reference.params):
        for (path, after), before in zip(jax.tree_util.tree_leaves_with_path(new), jax.tree_util.tree_leaves(params)):
            if path[-1].key in ("mean", "var"):
                assert not trains[path] and np.array_equal(after, before), path
            else:
                assert trains[path], path  # all: every other weight
    assert not np.array_equal(manual.params["backbone"]["block0"]["depthwise_conv"]["kernel"],
                              params["backbone"]["block0"]["depthwise_conv"]["kernel"])  # the bottom moves
    assert not np.array_equal(manual.params["head"]["kernel"], params["head"]["kernel"])


def test_head_rule_equals_jax_grad_of_the_head_loss():
    """``--finetune head``: the head's hand-written gradient (views, example weights, λ‖W‖²) equals jax.grad."""
    rng = np.random.default_rng(1)
    F, Y = jnp.asarray(rng.normal(size=(6, 2, 5))), jnp.eye(3)[rng.integers(0, 3, 6)]
    w = jnp.asarray([1.0, 2.0, 0.0, 1.0, 0.5, 1.0])
    p = {"W": jnp.asarray(rng.normal(size=(5, 3))), "b": jnp.asarray(rng.normal(size=3))}
    (loss, grads), (ref_loss, ref) = jax.jit(lambda q: (eff.head_grads(q, F, Y, w, 0.3), jax.value_and_grad(
        lambda r: eff.head_grads(r, F, Y, w, 0.3)[0])(q)))(p)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-14)
    assert_tree_close(grads, ref, RTOL)


@pytest.mark.x64(False)
def test_head_selection_with_manual_gradients_chooses_as_autodiff():
    """float32, as users run: the inner-CV choice and the refit head are the same with either gradient."""
    from training.transfer.head import fit_head, select_head

    rng = np.random.default_rng(2)
    y = np.repeat([0, 1], 12)
    F = (rng.normal(size=(24, 2, 8)) + y[:, None, None] * 0.8).astype(np.float32)
    w = np.ones(2, np.float32)
    kw = dict(l2_grid=(1e-3, 1e-2, 1e-1), steps=20, lr=1e-2, inner_folds=3, seed=0)
    a, b = (select_head(F, y, 2, w, grad=g, **kw) for g in ("manual", "autodiff"))
    assert (a.l2, a.steps) == (b.l2, b.steps)
    np.testing.assert_allclose(a.curves, b.curves, rtol=1e-4)
    ha, hb = (fit_head(F, y, 2, w, l2=a.l2, steps=a.steps, lr=1e-2, grad=g)[0] for g in ("manual", "autodiff"))
    assert_tree_close(ha, hb, 1e-4)


@pytest.mark.parametrize("kind", ["depthwise-k5-s2", "pointwise", "batchnorm"])
def test_layer_gradients_match_central_differences(kind):
    """An independent check of each rule: ⟨∂C/∂θ, v⟩ from the hand-written backward equals the central
    difference (C(θ + εv) − C(θ − εv)) / 2ε of C = ⟨ReLU6(layer(x; θ)), g⟩ along a random direction v, for
    the parameters and the input alike (float64, ε = 1e-6: truncation O(ε²), rounding O(1e-16/ε))."""
    x = rand(1, (2, 7, 9, 4))
    if kind == "depthwise-k5-s2":
        theta = {"kernel": rand(2, (5, 5, 1, 4))}
        forward = lambda th, a: eff.depthwise_forward(th["kernel"], a, 2)[0]  # noqa: E731
        backward = lambda d, a, th: eff.depthwise_backward(d, a, th["kernel"], 2)  # noqa: E731
    elif kind == "pointwise":
        theta = {"kernel": rand(2, (1, 1, 4, 6))}
        forward = lambda th, a: eff.pointwise_forward(th["kernel"], a)[0]  # noqa: E731
        backward = lambda d, a, th: eff.pointwise_backward(d, a, th["kernel"])  # noqa: E731
    else:
        theta = {"scale": rand(2, (4,)), "bias": rand(3, (4,)), "mean": rand(4, (4,)), "var": rand(5, (4,)) ** 2 + 0.5}
        forward = lambda th, a: eff.batchnorm_forward(th, a)[0]  # noqa: E731
        backward = lambda d, a, th: eff.batchnorm_backward(d, a, th)  # noqa: E731
    g = rand(6, jax.vmap(forward, in_axes=(None, 0))(theta, x).shape)

    def cost(th, a):
        return jnp.sum(jax.nn.relu6(jax.vmap(forward, in_axes=(None, 0))(th, a)) * g)

    z = jax.vmap(forward, in_axes=(None, 0))(theta, x)
    dx, grads = backward(eff.relu6_backward(g, z), x, theta)
    v_theta = jax.tree_util.tree_map(lambda a: rand(7, a.shape), theta)
    v_x = rand(8, x.shape)
    eps = 1e-6
    step = lambda s: (jax.tree_util.tree_map(lambda a, v: a + s * eps * v, theta, v_theta), x + s * eps * v_x)  # noqa: E731
    numeric = (cost(*step(1)) - cost(*step(-1))) / (2 * eps)
    analytic = sum(jnp.vdot(grads[k], v_theta[k]) for k in theta) + jnp.vdot(dx, v_x)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-7)
