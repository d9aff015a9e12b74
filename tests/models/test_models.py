"""ResNet-50 and GoogLeNet: exact parameter counts, a training step through the same code; explanations."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from models import count_params
from models.common import mark_cam_features
from models.googlenet import GoogLeNet, googlenet_param_count
from models.resnet import ResNet50, resnet50_param_count
from training.evaluation.explain import METHODS, grad_cam, grad_cam_plus_plus, saliency
from training.loop.config import get_config
from training.loop.registry import build_model


@pytest.mark.parametrize(("name", "channels", "classes"), [("resnet50", 3, 1000), ("resnet50", 1, 2),
                                                           ("googlenet", 3, 1000), ("googlenet", 1, 3)],
                         ids=["resnet50-rgb-1000", "resnet50-gray-2", "googlenet-rgb-1000", "googlenet-gray-3"])
def test_parameter_counts(name, channels, classes):
    Model, formula = {"resnet50": (ResNet50, resnet50_param_count),
                      "googlenet": (GoogLeNet, googlenet_param_count)}[name]
    params = jax.eval_shape(lambda: Model(classes).init(jax.random.PRNGKey(0),
                                                        jnp.zeros((224, 224, channels))))["params"]
    assert count_params(params) == formula(channels, classes)
    if (channels, classes) == (3, 1000):
        published = {"resnet50": 25_557_032, "googlenet": 6_998_552}[name]
        assert count_params(params) == published
        if name == "googlenet":  # the paper's Table 1 rounds its layers to about 6.8M in all
            assert abs(count_params(params) - 6.8e6) / 6.8e6 < 0.05


def test_unknown_model_is_named():
    with pytest.raises(ValueError, match="unknown model 'vgg16'"):
        build_model(get_config("lab-2020", model="vgg16"), 2)


# --- explanations on tiny models whose answer is known ---
class QuadrantModel(nn.Module):
    """Per-pixel features (1×1 convolution); the classifier reads only the top-left quadrant."""

    @nn.compact
    def __call__(self, x, *, train=False, key=None):
        f = mark_cam_features(self, nn.relu(nn.Conv(4, (1, 1), name="conv")(x)))
        h, w = f.shape[0] // 2, f.shape[1] // 2
        return nn.Dense(2, name="head")(jnp.mean(f[:h, :w], axis=(0, 1)))


class BrightnessModel(nn.Module):
    """One feature channel = ReLU(brightness); class 1's score is its global mean."""

    @nn.compact
    def __call__(self, x, *, train=False, key=None):
        f = mark_cam_features(self, nn.relu(nn.Conv(1, (1, 1), name="conv")(x)))
        return nn.Dense(2, name="head")(jnp.mean(f, axis=(0, 1)))


def test_saliency_lights_only_the_region_the_network_sees():
    model = QuadrantModel()
    x = jax.random.uniform(jax.random.PRNGKey(0), (16, 16, 3))
    params = model.init(jax.random.PRNGKey(1), x)["params"]
    heat = saliency(model, params, x, 1)
    assert heat.shape == (16, 16) and float(heat.max()) == pytest.approx(1.0)
    assert float(jnp.abs(heat[8:, :]).max()) == 0.0 and float(jnp.abs(heat[:, 8:]).max()) == 0.0
    assert float(heat[:8, :8].mean()) > 0.1


@pytest.mark.parametrize("method", [grad_cam, grad_cam_plus_plus], ids=["grad_cam", "grad_cam_plus_plus"])
def test_cam_lights_up_the_object_that_drives_the_score(method):
    model = BrightnessModel()
    x = jnp.zeros((16, 16, 1)).at[2:6, 9:13].set(1.0)  # a bright square, top right
    params = {"conv": {"kernel": jnp.ones((1, 1, 1, 1)), "bias": jnp.zeros(1)},
              "head": {"kernel": jnp.array([[-1.0, 2.0]]), "bias": jnp.zeros(2)}}
    heat = method(model, params, x, 1)
    inside = float(heat[2:6, 9:13].mean())
    outside = float(heat.at[1:7, 8:14].set(0).sum() / (16 * 16 - 36))
    assert inside > 0.8 and outside < 0.05
    # the other class's score falls with brightness: its map is empty
    assert float(method(model, params, x, 0).max()) == 0.0


@pytest.mark.parametrize("name", sorted(METHODS))
def test_explanations_on_model1_are_finite_maps(name):
    from models import Model1
    from training.loop.state import _initializer

    model = Model1(2)
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(40, 40, 3)), jnp.float32)
    params = _initializer(model, x.shape)(jax.random.PRNGKey(1))  # compiled once for all the methods
    heat = METHODS[name](model, params, x, 0)
    assert heat.shape == (40, 40) and bool(jnp.all(jnp.isfinite(heat)))
    assert 0.0 <= float(heat.min()) and float(heat.max()) <= 1.0 + 1e-6


def test_batched_maps_equal_each_method_alone():
    """explain's one-pass, vmapped maps (training.evaluation.explain.batched) are each method's own map."""
    from models import Model1
    from training.evaluation.explain import batched
    from training.loop.state import _initializer

    model = Model1(2)
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 40, 40, 3)), jnp.float32)
    params = _initializer(model, x.shape[1:])(jax.random.PRNGKey(1))
    want = {name: [f(model, params, x[i], i) for i in range(2)] for name, f in METHODS.items()}
    for methods in (tuple(METHODS), ("grad_cam_plus_plus", "grad_cam")):  # explain's default: no image gradient
        maps = batched(model, methods)(params, x, jnp.array([0, 1]))
        assert set(maps) == set(methods)
        for name in methods:
            for i in range(2):
                error = float(jnp.linalg.norm(maps[name][i] - want[name][i]))
                assert error <= 1e-5 * max(float(jnp.linalg.norm(want[name][i])), 1.0), (methods, name)
