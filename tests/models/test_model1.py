"""Model 1: its parameter count, its input checks, and its reshape max-pool equal to Flax's."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import Model1, count_params, model1_param_count


# --- Model 1 ---
@pytest.mark.parametrize(("size", "channels", "classes"), [(108, 1, 2), (224, 1, 2), (108, 3, 3), (64, 1, 10)],
                         ids=["108-gray-2", "224-gray-2", "108-rgb-3", "64-gray-10"])
def test_model1_parameter_count(size, channels, classes):
    model = Model1(classes)
    params = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), jnp.zeros((size, size, channels))))["params"]
    assert count_params(params) == model1_param_count(size, channels, classes)
    if (size, channels, classes) == (108, 1, 2):
        assert count_params(params) == 2_298_050  # "about 2.30M"


def test_model1_rejects_a_batch_and_bad_activation():
    with pytest.raises(ValueError, match=r"one image \(H, W, C\); got shape \(2, 32, 32, 1\)"):
        Model1(2).init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 1)))
    with pytest.raises(ValueError, match="unknown activation 'swish2'"):
        Model1(2, activation="swish2").init(jax.random.PRNGKey(0), jnp.zeros((32, 32, 1)))



@pytest.mark.parametrize("shape", [(8, 8, 3), (27, 27, 5), (13, 9, 2)], ids=["even", "odd", "mixed"])
def test_reshape_max_pool_equals_flax_max_pool(shape):
    import flax.linen as nn

    from models.model1 import max_pool_2x2

    x = jax.random.normal(jax.random.PRNGKey(0), shape)
    expected = nn.max_pool(x[None], (2, 2), strides=(2, 2))[0]
    np.testing.assert_array_equal(max_pool_2x2(x), expected)
    g = jax.grad(lambda x: jnp.sum(max_pool_2x2(x) ** 2))(x)
    g_ref = jax.grad(lambda x: jnp.sum(nn.max_pool(x[None], (2, 2), strides=(2, 2))[0] ** 2))(x)
    np.testing.assert_allclose(g, g_ref, rtol=1e-12)  # no ties in random data: identical gradients

