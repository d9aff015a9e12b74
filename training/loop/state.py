"""A network's starting point: its input normalization, its parameters and Adam state (:class:`TrainState`), and
the template a checkpoint is read into. (The model itself is built by :func:`training.loop.registry.build_model`.)"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax.training import train_state

from models.common import jit_run_once
from models.transfer import TransferClassifier
from training.loop.config import TrainConfig
from training.loop.optimizer import make_optimizer, masked_optimizer
from training.loop.registry import torchvision_weights


class TrainState(train_state.TrainState):
    """Flax's TrainState (step, params, Adam state)."""


def input_normalization(config: TrainConfig, x_train: np.ndarray) -> dict | None:
    """Per-channel mean and std of the training images when ``config.standardize``, else None."""
    if not config.standardize or config.pretrained:
        return None
    mean = x_train.mean(axis=(0, 1, 2), dtype=np.float64)
    std = np.maximum(x_train.std(axis=(0, 1, 2), dtype=np.float64), 1e-6)
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}


@functools.lru_cache(maxsize=8)
def _param_shapes(variant: str, image_shape: tuple[int, ...], n_classes: int):
    """The parameter shapes of a transfer classifier, traced once (no computation)."""
    model = TransferClassifier(variant, n_classes)
    return jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0)},
                                             jnp.zeros(image_shape, jnp.float32)))["params"]


@functools.lru_cache(maxsize=16)
def _initializer(model, image_shape: tuple[int, ...]):
    """``key -> params`` of ``model``, jitted, one per model and input shape: a second state of the same
    network (the next fold, the next test) compiles nothing. One compiled program (op by op, each operation
    compiles on its own: 9 s for Model 1 and 25 s for ResNet-50 on 2 cores, against 4 s and 13 s), compiled as a
    program that runs once (:func:`models.common.jit_run_once`: the same values, sooner)."""
    def init(key):
        return model.init({"params": key}, jnp.zeros(image_shape, jnp.float32))["params"]

    return jit_run_once(init)


def create_state(model, config: TrainConfig, image_shape: tuple[int, int, int], *, key: jax.Array,
                 steps_per_epoch: int = 1, backbone: dict | None = None) -> TrainState:
    """Initial parameters and Adam state. For a pretrained backbone, ``backbone`` (its ImageNet
    parameters) replaces the random ones, and only the parameters ``config.finetune`` names train."""
    tx = make_optimizer(config, steps_per_epoch)
    if config.pretrained:  # no eager forward pass of the backbone: its shapes, then its weights
        shapes = _param_shapes(config.model, tuple(image_shape), model.n_classes)
        # zeros only where no weights are given (the backbone's, in a checkpoint's template)
        params = {k: jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), v) for k, v in shapes.items()
                  if k != "backbone" or backbone is None}
        if backbone is not None:
            params["backbone"] = backbone
        n_features = shapes["head"]["kernel"].shape[0]
        params["head"] = nn.Dense(shapes["head"]["kernel"].shape[1]).init(key, jnp.zeros(n_features))["params"]
        tx = masked_optimizer(tx, params, config.finetune, config.top_blocks, config.block_lr_decay)
    else:
        params = _initializer(model, tuple(image_shape))(key)
        if torchvision_weights(config):  # ImageNet weights, a new classifier
            if backbone is not None:
                params = {**params, **{k: v for k, v in backbone.items() if k != "logits"}}
            tx = masked_optimizer(tx, params, config.finetune, config.top_blocks, config.block_lr_decay)
    state = TrainState.create(apply_fn=model.apply, params=params, tx=tx)
    # a typed step counter: a weakly typed Python 0 would make the second step compile again
    return state.replace(step=jnp.zeros((), jnp.int32))


def state_template(model, config: TrainConfig, image_shape: tuple[int, int, int], **kw) -> TrainState:
    """:func:`create_state`'s structure, shapes and dtypes only (``jax.eval_shape``: nothing is initialised or
    computed): what a checkpoint is read into."""
    return jax.eval_shape(lambda: create_state(model, config, image_shape, key=jax.random.PRNGKey(0), **kw))

