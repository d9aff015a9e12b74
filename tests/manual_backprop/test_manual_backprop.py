"""The hand-written delta rule against jax.grad, finite differences and closed forms (float64)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.test_util import check_grads

import manual_backprop as mb
from tests.helpers import assert_tree_close, relative_errors

pytestmark = pytest.mark.x64  # gradient checks: float64, scoped to each test (tests/conftest.py)

RTOL64 = 1e-12

ARCHITECTURES = {
    "notes_3-2-3-5": [3, 2, 3, 5],
    "single_neuron_chain_1-1-1-1": [1, 1, 1, 1],
    "mnist_784-30-10": [784, 30, 10],
    "deep_narrow_8x10": [8] * 10,
}
ACTIVATIONS = sorted(mb.ACTIVATIONS)
COSTS = sorted(mb.COSTS)


# --- an independent reference: the same network written with jax.nn, differentiated by jax.grad ---
REF_SIGMA = {
    "sigmoid": jax.nn.sigmoid,
    "tanh": jnp.tanh,
    "relu": jax.nn.relu,
    "identity": lambda z: z,
}


def reference_cost(params, x, y, activation, cost):
    a = x
    for l, (W, b) in enumerate(params, start=1):
        z = W @ a + b
        if l < len(params) or cost in ("sse", "half_sse"):
            a = REF_SIGMA[activation](z)
        elif cost == "cross_entropy":
            a = jax.nn.sigmoid(z)
    if cost == "sse":
        return jnp.sum((a - y) ** 2)
    if cost == "half_sse":
        return 0.5 * jnp.dot(a - y, a - y)
    if cost == "cross_entropy":
        return -jnp.sum(y * jnp.log(a) + (1 - y) * jnp.log1p(-a))
    return -jnp.sum(y * jax.nn.log_softmax(z))


def reference_batch_cost(params, X, Y, activation, cost):
    return jnp.mean(jax.vmap(reference_cost, in_axes=(None, 0, 0, None, None))(params, X, Y, activation, cost))


def make_problem(sizes, seed, batch=None, cost="half_sse", dtype=jnp.float64):
    """Parameters as ``init_mlp(weight_scale="fan_in")`` draws them (W ~ N(0, 1/n_in), b ~ N(0, 1)), an input and
    a target, drawn by NumPy: a new shape costs no compilation of a random-number program."""
    rng = np.random.default_rng(seed)
    params = [(jnp.asarray(rng.normal(size=(n_out, n_in)) / np.sqrt(n_in), dtype),
               jnp.asarray(rng.normal(size=n_out), dtype)) for n_in, n_out in zip(sizes[:-1], sizes[1:])]
    shape_x = (sizes[0],) if batch is None else (batch, sizes[0])
    shape_y = (sizes[-1],) if batch is None else (batch, sizes[-1])
    x = jnp.asarray(rng.uniform(size=shape_x), dtype)
    y = rng.uniform(0.05, 0.95, size=shape_y)
    if cost == "softmax_cross_entropy":  # a probability vector per example
        y = y / np.sum(y, axis=-1, keepdims=True)
    return params, x, jnp.asarray(y, dtype)


def assert_nonvacuous(tree):
    assert any(float(jnp.linalg.norm(g)) > 0 for g in jax.tree_util.tree_leaves(tree)), "all-zero gradients"


# --- manual == jax.grad, per array ---
@pytest.mark.parametrize("cost", COSTS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("sizes", list(ARCHITECTURES.values()), ids=list(ARCHITECTURES))
def test_backprop_equals_jax_grad(sizes, activation, cost):
    params, x, y = make_problem(sizes, seed=len(sizes) + 8, cost=cost)  # (seed 12: the 1-1-1-1 ReLU chain is alive)
    manual = mb.backprop(params, x, y, activation=activation, cost=cost)
    expected = jax.grad(reference_cost)(params, x, y, activation, cost)
    if cost == "softmax_cross_entropy" and sizes[-1] == 1:  # softmax of one output is constant: C ≡ 0
        assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree_util.tree_leaves(manual))
    else:
        assert_nonvacuous(expected)
    assert_tree_close(manual, expected, RTOL64)
    # the cost itself agrees with the independent reference too
    np.testing.assert_allclose(
        mb.example_cost(params, x, y, activation=activation, cost=cost),
        reference_cost(params, x, y, activation, cost),
        rtol=1e-13,
    )


@settings(max_examples=30, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 7), min_size=2, max_size=6),
    activation=st.sampled_from(ACTIVATIONS),
    cost=st.sampled_from(COSTS),
    seed=st.integers(0, 2**31 - 1),
)
@pytest.mark.slow
def test_backprop_equals_jax_grad_random_shapes(sizes, activation, cost, seed):
    params, x, y = make_problem(sizes, seed=seed, cost=cost)
    manual = mb.backprop(params, x, y, activation=activation, cost=cost)
    expected = jax.grad(reference_cost)(params, x, y, activation, cost)
    assert_tree_close(manual, expected, RTOL64)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_single_neuron_chain_closed_form(activation):
    """[1, 1, 1, 1] with C = (a^L − y)²: ∂C/∂w^(L) = 2(a^(L) − y) σ'(z^(L)) a^(L−1), and down the chain."""
    params, x, y = make_problem([1, 1, 1, 1], seed=3, cost="sse")
    act = mb.get_activation(activation)
    zs, acts = mb.forward(params, x, activation=activation)
    grads = mb.backprop(params, x, y, activation=activation, cost="sse")
    dC_da = 2.0 * (acts[3] - y)
    w3 = params[2][0][0, 0]
    w2 = params[1][0][0, 0]
    expected_w3 = dC_da * act.sigma_prime(zs[2]) * acts[2]
    expected_b3 = dC_da * act.sigma_prime(zs[2])
    expected_w2 = dC_da * act.sigma_prime(zs[2]) * w3 * act.sigma_prime(zs[1]) * acts[1]
    expected_w1 = dC_da * act.sigma_prime(zs[2]) * w3 * act.sigma_prime(zs[1]) * w2 * act.sigma_prime(zs[0]) * x
    for got, want in [
        (grads[2][0][0, 0], expected_w3[0]),
        (grads[2][1][0], expected_b3[0]),
        (grads[1][0][0, 0], expected_w2[0]),
        (grads[0][0][0, 0], expected_w1[0]),
    ]:
        np.testing.assert_allclose(got, want, rtol=RTOL64)
    assert_tree_close(grads, jax.grad(reference_cost)(params, x, y, activation, "sse"), RTOL64)


# --- finite differences ---
@pytest.mark.parametrize("cost", COSTS)
@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
def test_manual_gradients_match_finite_differences(activation, cost):
    """check_grads compares the VJP (here: the hand-written backprop) with central differences."""
    params, X, Y = make_problem([4, 5, 3], seed=7, batch=6, cost=cost)

    def f(p):
        return mb.cost_with_manual_grad(p, X, Y, activation=activation, cost=cost)

    check_grads(f, (params,), order=1, modes=["rev"], eps=1e-6, atol=1e-7, rtol=1e-7)
    # and the custom_vjp really routes jax.grad through the manual batch gradients
    assert_tree_close(
        jax.grad(f)(params), mb.batch_gradients(params, X, Y, activation=activation, cost=cost), 1e-15
    )


def test_finite_difference_check_catches_a_wrong_gradient():
    """The comparison can fail: a gradient off by 1e-3 in one entry is rejected."""
    params, X, Y = make_problem([4, 5, 3], seed=7, batch=6)
    good = mb.batch_gradients(params, X, Y)
    bad = [(W, b) for W, b in good]
    bad[0] = (good[0][0].at[0, 0].add(1e-3), good[0][1])
    expected = jax.grad(reference_batch_cost)(params, X, Y, "sigmoid", "half_sse")
    assert max(relative_errors(good, expected)) <= RTOL64
    assert max(relative_errors(bad, expected)) > RTOL64


# --- all formulations agree ---
@pytest.mark.parametrize("cost", COSTS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_vmap_matrix_naive_and_jax_grad_agree(activation, cost):
    params, X, Y = make_problem([5, 7, 6, 4], seed=11, batch=9, cost=cost)
    expected = jax.grad(reference_batch_cost)(params, X, Y, activation, cost)
    kwargs = dict(activation=activation, cost=cost)
    vmapped = mb.batch_gradients(params, X, Y, **kwargs)
    matrix = mb.batch_gradients_matrix(params, X, Y, **kwargs)
    naive = jax.tree_util.tree_map(
        lambda g: jnp.mean(g, axis=0),
        jax.vmap(lambda x, y: mb.naive_gradients(params, x, y, **kwargs))(X, Y),
    )
    for name, grads in [("vmap", vmapped), ("matrix", matrix), ("naive", naive)]:
        assert relative_errors(grads, expected), name
        assert_tree_close(grads, expected, RTOL64)
    value, _ = mb.value_and_gradients(params, X, Y, **kwargs)
    np.testing.assert_allclose(value, reference_batch_cost(params, X, Y, activation, cost), rtol=1e-13)


def test_weighted_minibatch_equals_the_subset():
    """Zero-weight rows (the padding of a short last minibatch) change nothing."""
    params, X, Y = make_problem([5, 4, 3], seed=2, batch=8)
    w = jnp.array([1, 1, 1, 1, 1, 0, 0, 0], jnp.float64)
    subset = mb.batch_gradients(params, X[:5], Y[:5])
    assert_tree_close(mb.batch_gradients(params, X, Y, weights=w), subset, RTOL64)
    assert_tree_close(mb.batch_gradients_matrix(params, X, Y, weights=w), subset, RTOL64)
    np.testing.assert_allclose(mb.batch_cost(params, X, Y, weights=w), mb.batch_cost(params, X[:5], Y[:5]))


def test_backprop_under_jit_equals_eager():
    params, x, y = make_problem([3, 2, 3, 5], seed=0)
    jitted = jax.jit(mb.backprop, static_argnames=("activation", "cost"))
    # the same arithmetic, fused differently (XLA's tanh and its FMAs): a few ulps per layer, not bit for bit
    assert_tree_close(jitted(params, x, y, activation="tanh"), mb.backprop(params, x, y, activation="tanh"),
                      50 * np.finfo(np.float64).eps)


def test_float32_gradients_are_close_to_float64():
    params, x, y = make_problem([784, 30, 10], seed=1)
    params32 = jax.tree_util.tree_map(lambda a: a.astype(jnp.float32), params)
    g32 = mb.backprop(params32, x.astype(jnp.float32), y.astype(jnp.float32))
    assert all(g.dtype == jnp.float32 for g in jax.tree_util.tree_leaves(g32))
    assert_tree_close(g32, mb.backprop(params, x, y), 1e-5)


# --- SGD ---
def test_sgd_step_is_the_update_rule():
    params, X, Y = make_problem([4, 3, 2], seed=5, batch=4)
    nabla = mb.batch_gradients(params, X, Y)
    new, loss = mb.sgd_step(params, X, Y, eta=0.5, l2=0.01)
    expected = [(W - 0.5 * (gW + 0.01 * W), b - 0.5 * gb) for (W, b), (gW, gb) in zip(params, nabla)]
    assert_tree_close(new, expected, 1e-14)
    np.testing.assert_allclose(loss, mb.batch_cost(params, X, Y), rtol=1e-14)


def test_sgd_step_does_not_recompile_on_second_call():
    params, X, Y = make_problem([4, 3, 2], seed=5, batch=4)
    params, _ = mb.sgd_step(params, X, Y, eta=0.5)
    size = mb.sgd_step._cache_size()
    params, _ = mb.sgd_step(params, X + 1.0, Y, eta=0.25)
    assert mb.sgd_step._cache_size() == size


@pytest.mark.parametrize("method", sorted(mb.METHODS))
@pytest.mark.parametrize("n", [40, 43], ids=["divisible", "short_last_batch"])
def test_sgd_epoch_uses_every_example_once(n, method):
    """An epoch with one minibatch of all n rows equals one full-batch step."""
    params, X, Y = make_problem([4, 3, 2], seed=5, batch=n)
    key = jax.random.PRNGKey(0)
    full, loss = mb.sgd_epoch(params, X, Y, key=key, eta=0.3, batch_size=n, method=method)
    step, step_loss = mb.sgd_step(params, X, Y, eta=0.3)
    assert_tree_close(full, step, 1e-13)
    np.testing.assert_allclose(loss, step_loss, rtol=1e-13)
    # and with batch_size 10, the result is reproducible from the key
    a, _ = mb.sgd_epoch(params, X, Y, key=key, eta=0.3, batch_size=10, method=method)
    b, _ = mb.sgd_epoch(params, X, Y, key=key, eta=0.3, batch_size=10, method=method)
    assert_tree_close(a, b, 0.0)


def test_loss_falls():
    """Learning a teacher network's outputs: the cost falls by more than half."""
    params, X, _ = make_problem([5, 8, 3], seed=9, batch=64)
    teacher = mb.init_mlp(jax.random.PRNGKey(99), [5, 8, 3], dtype=jnp.float64)
    Y = mb.feedforward(teacher, X)
    before = mb.batch_cost(params, X, Y)
    key = jax.random.PRNGKey(1)
    for k in jax.random.split(key, 20):
        params, _ = mb.sgd_epoch(params, X, Y, key=k, eta=2.0, batch_size=8)
    after = mb.batch_cost(params, X, Y)
    assert jnp.isfinite(after) and after < 0.5 * before


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_xor_is_solved(seed):
    X = jnp.array([[0, 0], [0, 1], [1, 0], [1, 1]], jnp.float64)
    labels = jnp.array([0, 1, 1, 0])
    Y = labels[:, None].astype(jnp.float64)
    params = mb.init_mlp(jax.random.PRNGKey(seed), [2, 4, 1], dtype=jnp.float64)
    for k in jax.random.split(jax.random.PRNGKey(seed + 10), 3000):
        params, _ = mb.sgd_epoch(params, X, Y, key=k, eta=2.0, batch_size=4, cost="cross_entropy")
    out = mb.feedforward(params, X, cost="cross_entropy")[:, 0]
    np.testing.assert_array_equal(np.asarray(out > 0.5), np.asarray(labels == 1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_digits_reach_95_percent(seed):
    """Nielsen's setup on scikit-learn's digits: [64, 30, 10], sigmoid, ½‖a−y‖², η=3, m=10, 30 epochs."""
    from training.data.arrays import load_digits_data

    data = load_digits_data()
    params = mb.init_mlp(jax.random.PRNGKey(seed), [64, 30, 10], weight_scale="fan_in")
    params, history = mb.train(
        params, jnp.asarray(data.train.x), jnp.asarray(data.train.y),
        jnp.asarray(data.test.x), jnp.asarray(data.test.y),
        key=jax.random.PRNGKey(seed + 100), epochs=30, batch_size=10, eta=3.0, progress=False,
    )
    assert history[-1].train_cost < history[0].train_cost
    assert history[-1].test_accuracy >= 0.95


def test_nan_cost_stops_training_with_a_clear_message():
    params, X, Y = make_problem([4, 3, 2], seed=5, batch=8)
    params = [(W.at[0, 0].set(jnp.nan), b) for W, b in params]
    with pytest.raises(FloatingPointError, match="training cost became nan in epoch 1"):
        mb.train(params, X, jnp.zeros(8, jnp.int32), X, jnp.zeros(8, jnp.int32),
                 key=jax.random.PRNGKey(0), epochs=1, batch_size=4, eta=0.1, progress=False)


# --- bad input ---
def test_wrong_input_length_names_the_shape():
    params, x, y = make_problem([3, 2, 5], seed=0)
    with pytest.raises(ValueError, match=r"x must have shape \(3,\).*got \(4,\)"):
        mb.backprop(params, jnp.ones(4), y)
    with pytest.raises(ValueError, match=r"y must have shape \(5,\).*got \(2,\)"):
        mb.backprop(params, x, jnp.ones(2))


def test_mismatched_batch_rows_are_named():
    params, X, Y = make_problem([3, 2, 5], seed=0, batch=6)
    with pytest.raises(ValueError, match="Y has 5 rows but X has 6"):
        mb.batch_gradients(params, X, Y[:5])
    with pytest.raises(ValueError, match="Y has 5 rows but X has 6"):
        mb.batch_gradients_matrix(params, X, Y[:5])
    with pytest.raises(ValueError, match=r"X must have shape \(batch, 3\)"):
        mb.batch_cost(params, X[:, :2], Y)


@pytest.mark.parametrize("bad", ["softplus", "Sigmoid", ""])
def test_unknown_activation_is_named(bad):
    params, x, y = make_problem([3, 2, 5], seed=0)
    with pytest.raises(ValueError, match=f"unknown activation '{bad}'"):
        mb.backprop(params, x, y, activation=bad)


@pytest.mark.parametrize("bad", ["mse", "hinge"])
def test_unknown_cost_is_named(bad):
    params, x, y = make_problem([3, 2, 5], seed=0)
    with pytest.raises(ValueError, match=f"unknown cost '{bad}'"):
        mb.backprop(params, x, y, cost=bad)


def test_bad_architecture_is_named():
    with pytest.raises(ValueError, match=r"at least two positive layer widths, got \[3\]"):
        mb.init_mlp(jax.random.PRNGKey(0), [3])
    params, x, y = make_problem([3, 2, 5], seed=0)
    broken = [params[0], (params[1][0][:, :1], params[1][1])]
    with pytest.raises(ValueError, match=r"layer 2: W\(5, 1\) takes 1 inputs but layer 1 has 2 outputs"):
        mb.backprop(broken, x, y)


@pytest.mark.parametrize("weight_scale", ["unit", "fan_in"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_init_mlp_draws_what_the_keys_give_one_array_at_a_time(weight_scale, dtype):
    """init_mlp draws each layer in one compiled program: its weights are bit for bit those drawn one array
    at a time, N(0, 1) by jax.random.normal with the layer's keys, W divided by √n_{l-1} for fan_in."""
    sizes = [5, 7, 7, 3]
    with jax.enable_x64(dtype == "float64"):
        params = mb.init_mlp(jax.random.PRNGKey(4), sizes, weight_scale=weight_scale, dtype=jnp.dtype(dtype))
        for (W, b), key_l, n_in, n_out in zip(params, jax.random.split(jax.random.PRNGKey(4), 3), sizes, sizes[1:]):
            key_w, key_b = jax.random.split(key_l)
            ref_W = jax.random.normal(key_w, (n_out, n_in), dtype)
            if weight_scale == "fan_in":
                ref_W = ref_W / jnp.sqrt(jnp.asarray(n_in, dtype))
            assert W.dtype == jnp.dtype(dtype) and np.array_equal(W, ref_W) and np.array_equal(b, jax.random.normal(
                key_b, (n_out,), dtype))
