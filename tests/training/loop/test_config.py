"""Configurations: the presets' registry, JSON round trips, fine-tuning's recipes, the optimizer's schedules."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from training.loop.config import get_config


def test_lab_2020_preset_is_the_decks_setup_field_by_field():
    """The lab's Dec 2020 deck: grayscale Model 1, Adam 1e-3, batch 32, 4 epochs, one seeded 80:20 split,
    the 4th epoch scored; nothing the deck did not do (no class weights, standardization, augmentation,
    schedule, early stopping, flip averaging, calibration or referral)."""
    from training.loop.config import PRESETS, get_config

    c = get_config("lab-2020")
    deck = {"model": "model1", "rgb": False, "learning_rate": 1e-3, "batch_size": 32, "epochs": 4,
            "val_fraction": 0.2, "folds": 1, "selection": "last", "class_weights": None, "standardize": False,
            "augment": None, "lr_schedule": None, "patience": None, "tta_flip": False, "grad": "manual",
            "image_size": 108, "crop": "center", "calibration": "none", "refer_coverage": None}
    assert {k: getattr(c, k) for k in deck} == deck
    assert set(PRESETS["lab-2020"]) <= set(deck)  # the preset sets nothing outside the deck's list


def test_every_preset_is_one_typed_registry_entry_and_the_old_names_are_its_views():
    """One place defines a preset (training.loop.presets); PRESETS, FINETUNE_RECIPE, TOP_RECIPE, MLP_PRESETS and
    results.CONFIGS read it, read-only; every entry says what it is, and every TrainConfig one builds a config."""
    from training.loop import config, presets
    from training.runs import results

    registry = presets.REGISTRY
    views = [(config.PRESETS, "train"), (config.MLP_PRESETS, "mlp"), (results.CONFIGS, "table")]
    for view, kind in views:
        assert list(view) == [n for k, n in registry if k == kind]
        assert all(view[name] is registry[kind, name].settings for name in view), kind
    assert config.FINETUNE_RECIPE is registry["recipe", "all"].settings
    assert {**config.FINETUNE_RECIPE, **config.TOP_RECIPE} == registry["recipe", "top"].settings
    for (kind, name), entry in registry.items():
        assert entry.doc and (entry.kind, entry.name) == (kind, name)
        if kind in ("train", "table", "mnist"):
            get_config(entry.base or "lab-2020", **entry.settings)  # a valid config (checked when built)
    with pytest.raises(TypeError):
        config.PRESETS["lab-2020"]["epochs"] = 5  # type: ignore[index]
    with pytest.raises(ValueError, match="unknown mlp preset 'network3'"):
        presets.preset("mlp", "network3")
    # the table's improved and pretrained rows are built on lab-2020 (no calibration) and take the defaults back
    defaults = config.TrainConfig(model="model1")
    assert presets._CALIBRATED == {"calibration": defaults.calibration, "refer_coverage": defaults.refer_coverage}
    assert results.config_for("pretrained", 240).calibration == defaults.calibration


@pytest.mark.parametrize("preset", ["lab-2020", "improved", "pretrained"])
def test_a_config_survives_its_json_and_the_augmentation_is_one_object(preset):

    from training.data.augment import Augment
    from training.loop.config import TrainConfig, get_config

    config = get_config(preset)
    assert config.augment is None or isinstance(config.augment, Augment)
    assert TrainConfig.from_json(json.loads(json.dumps(config.to_json()))) == config


def test_a_config_json_with_the_old_flat_augmentation_fields_still_loads():

    from training.data.augment import Augment
    from training.loop.config import TrainConfig, get_config

    old = {k: v for k, v in get_config("improved").to_json().items() if k != "augment"}
    old.update(augment=True, augment_crop_pad=4, augment_flip=False, augment_degrees=5.0, augment_brightness=0.2,
               augment_contrast=0.0)
    config = TrainConfig.from_json(json.loads(json.dumps(old)))
    assert config.augment == Augment(crop_pad=4, flip=False, max_degrees=5.0, brightness=0.2, contrast=0.0)
    old["augment"] = False
    assert TrainConfig.from_json(old).augment is None


@pytest.mark.parametrize("finetune", ["top", "all"])
def test_discriminative_rates_scale_each_stage_by_its_depth_below_the_classifier(finetune):
    """``block_lr_decay`` d: with plain SGD at rate 1 and unit gradients, a trainable parameter k stages below
    the classifier moves by exactly −d^k; frozen ones and the BatchNorm statistics do not move."""
    import optax

    from training.loop.optimizer import masked_optimizer

    leaf = lambda: {"kernel": np.ones((2, 2), np.float32)}  # noqa: E731
    bn = {"scale": np.ones(2, np.float32), "mean": np.ones(2, np.float32), "var": np.ones(2, np.float32)}
    params = {"backbone": {"conv_stem": leaf(), "bn_stem": dict(bn), **{f"block{i}": leaf() for i in range(4)},
                           "conv_head": leaf(), "bn_head": dict(bn)}, "head": leaf()}
    tx = masked_optimizer(optax.sgd(1.0), params, finetune, 2, block_lr_decay=0.5)
    grads = jax.tree_util.tree_map(np.ones_like, params)
    updates, _ = tx.update(grads, tx.init(params), params)
    depth = {"head": 0, "conv_head": 1, "bn_head": 1, "block3": 2, "block2": 3, "block1": 4, "block0": 5,
             "conv_stem": 6, "bn_stem": 6}
    for path, u in jax.tree_util.tree_leaves_with_path(updates):
        names = [p.key for p in path]
        stage = names[1] if names[0] == "backbone" else names[0]
        trains = names[-1] not in ("mean", "var") and (finetune == "all" or depth[stage] <= 3)
        np.testing.assert_array_equal(u, -(0.5 ** depth[stage]) * np.ones_like(u) if trains else 0 * u, str(names))


def test_warmup_then_cosine_and_weight_decay_of_kernels_only():
    """warmup_epochs: the rate rises linearly from 0 over the first epoch, peaks at learning_rate, then decays
    (cosine) to 0. weight_decay λ (AdamW): with a zero gradient a kernel moves by −η_t λ w, a bias not at all."""
    import optax

    from training.loop.config import get_config
    from training.loop.optimizer import make_optimizer

    config = get_config("pretrained", learning_rate=1e-2, lr_schedule="cosine", warmup_epochs=1, epochs=4,
                        weight_decay=0.1)
    tx = make_optimizer(config, steps_per_epoch=10)
    params = {"kernel": jnp.full((2, 3), 2.0), "bias": jnp.full((3,), 2.0)}
    state = tx.init(params)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    moves = []
    for _ in range(40):
        updates, state = tx.update(zeros, state, params)
        moves.append(float(updates["kernel"][0, 0]))
        assert not np.any(np.asarray(updates["bias"]))
    rates = -np.array(moves) / (0.1 * 2.0)  # η_t
    expected = np.asarray([optax.warmup_cosine_decay_schedule(0.0, 1e-2, 10, 40)(t) for t in range(40)])
    np.testing.assert_allclose(rates, expected, rtol=1e-5, atol=1e-9)
    assert rates[0] == 0 and np.argmax(rates) == 10 and rates[-1] < rates[20] < rates[10]


@pytest.mark.parametrize("overrides", [dict(finetune="all"), dict(finetune="head"), dict(model="model1")],
                         ids=["all", "head", "model1"])
def test_cached_maps_are_refused_where_nothing_below_a_top_is_frozen(overrides):
    """``top_views`` caches the frozen blocks below a fine-tuned top: with anything else it is refused by name."""
    with pytest.raises(ValueError, match="top_views=2 caches the frozen blocks below a fine-tuned top"):
        get_config("pretrained", top_views=2, **{"finetune": "top", **overrides})
    assert get_config("pretrained", finetune="top", top_views=2).top_views == 2

