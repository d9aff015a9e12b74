"""The model registry (models.registry.KINDS and training.loop.registry): every kind's declared facts hold.

Cheap: models are built, never trained or compiled; the ONNX check runs the graph of zero parameters (their
shapes from ``jax.eval_shape``) on one tiny image."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from models.registry import KINDS, kind_of, model_kind
from training.loop.config import FINETUNE, MODELS, TrainConfig, get_config
from training.loop.registry import Strategy, build_model, mirror_average, strategy, torchvision_weights

# the resolutions the EfficientNet-Lite checkpoints were trained at (TensorFlow's efficientnet/lite/README.md)
PUBLISHED_SIZES = {"efficientnet_lite0": 224, "efficientnet_lite1": 240, "efficientnet_lite2": 260}


def config_of(name: str, **kw) -> TrainConfig:
    kind = KINDS[name]
    if kind.pretrained:
        return get_config("pretrained", model=name, image_size=32, **kw)
    return get_config("lab-2020", model=name, image_size=16, **kw)


def test_the_registry_is_the_models_a_config_accepts():
    assert MODELS == tuple(KINDS) and {k.name for k in KINDS.values()} == set(KINDS)
    assert [n for n, k in KINDS.items() if k.pretrained] == list(PUBLISHED_SIZES)
    with pytest.raises(ValueError, match="unknown model 'vgg16'"):
        model_kind("vgg16")


@pytest.mark.parametrize("name", list(KINDS))
def test_the_one_builder_builds_each_kind_and_the_model_knows_its_kind(name):
    kind = KINDS[name]
    model = build_model(config_of(name), 3)
    assert type(model) is kind.module and kind_of(model) is kind
    assert TrainConfig(model=name, image_size=32).pretrained == kind.pretrained


@pytest.mark.parametrize("name", list(KINDS))
def test_the_native_size_is_the_one_the_weights_were_trained_at(name):
    assert KINDS[name].native_size == PUBLISHED_SIZES.get(name)  # None: trained from scratch at any size
    if KINDS[name].pretrained:  # the default run of a backbone is at its size
        assert TrainConfig(model=name, image_size=KINDS[name].native_size).image_size == PUBLISHED_SIZES[name]
    assert TrainConfig().image_size == KINDS[TrainConfig().model].native_size


@pytest.mark.parametrize("name", list(KINDS))
def test_a_hand_written_backward_is_declared_where_the_manual_step_accepts_it(name):
    from training.loop.steps import check_grad

    activations = ("relu", "elu", "gelu", "tanh", "silu") if name == "model1" else (None,)
    for activation in activations:
        config = config_of(name, **({"activation": activation} if activation else {}))
        model = build_model(config, 2)
        if KINDS[name].manual_backward(model):
            check_grad(model, "manual")
        else:
            with pytest.raises(ValueError, match="--grad manual is written for"):
                check_grad(model, "manual")
    assert KINDS["model1"].manual_activations == ("relu",) and not KINDS["resnet50"].manual_activations


@pytest.mark.parametrize("name", ["model1", "resnet50", "googlenet", "efficientnet_lite0"])
def test_a_kind_that_says_it_exports_to_onnx_does(name):
    """Each ONNX body once (the backbones share theirs); the others refuse in one line."""
    from models.onnx_graph import UnsupportedModel, classifier_to_onnx

    config = config_of(name)
    model = build_model(config, 2)
    channels = 3 if config.rgb else 1
    if KINDS[name].onnx is None:
        with pytest.raises(UnsupportedModel, match="no ONNX export"):
            classifier_to_onnx(model, {}, image_size=config.image_size, channels=channels, tta_flip=False,
                               metadata={})
        return
    import onnxruntime as ort

    x = np.zeros((1, config.image_size, config.image_size, channels), np.float32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x[0]))["params"]
    params = jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), shapes)
    if KINDS[name].pretrained:  # BatchNorm variances of 1, as trained weights have
        params = jax.tree_util.tree_map_with_path(
            lambda p, v: np.ones_like(v) if str(p[-1]).strip("[]'") == "var" else v, params)
    proto = classifier_to_onnx(model, params, image_size=config.image_size, channels=channels,
                               tta_flip=mirror_average(config), metadata={})
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    probs = session.run(["probabilities"], {"image": x})[0]
    np.testing.assert_allclose(probs, 0.5, atol=1e-6)  # zero weights: a uniform softmax


@pytest.mark.parametrize("finetune", FINETUNE)
@pytest.mark.parametrize("name", list(KINDS))
def test_the_strategy_follows_finetune_for_a_pretrained_kind_only(name, finetune):
    config = config_of(name, finetune=finetune)
    pretrained = KINDS[name].pretrained
    want = (Strategy.EPOCHS if not pretrained else Strategy.HEAD if finetune == "head"
            else Strategy.TOP_MAPS if config.top_views else Strategy.EPOCHS)
    assert strategy(config) is want and strategy(config).decodes_photos == (want is Strategy.EPOCHS)
    assert mirror_average(config) == (pretrained and config.tta_flip)
    if pretrained and finetune == "top":  # the maps below the top are cached only when asked
        assert strategy(config_of(name, finetune="top", top_views=2)) is Strategy.TOP_MAPS
        assert strategy(config_of(name, finetune="top", top_views=0)) is Strategy.EPOCHS
    assert torchvision_weights(config_of(name, weights="w.pth", **({"rgb": True} if name == "resnet50" else {}))) \
        == (name == "resnet50")
