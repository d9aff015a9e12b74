"""The optimizer: Adam with an optional cosine schedule, and masks for what a fine-tuning mode trains."""

from __future__ import annotations

import functools

import jax
import optax

from training.loop.config import FINETUNE, TrainConfig


def make_optimizer(config: TrainConfig, steps_per_epoch: int = 1) -> optax.GradientTransformation:
    """Adam at ``learning_rate``, constant or cosine-decayed to 0 over ``epochs × steps_per_epoch`` steps.

    With ``warmup_epochs`` w (cosine only) the rate first rises linearly from 0 to ``learning_rate`` over
    w × ``steps_per_epoch`` steps. With ``weight_decay`` λ > 0 it is AdamW: each kernel (an array of 2 or
    more axes) also moves by −η_t λ w (decoupled decay); biases and BatchNorm's γ, β do not decay.
    """
    if config.lr_schedule not in (None, "cosine"):
        raise ValueError(f"unknown lr_schedule {config.lr_schedule!r}; expected None or 'cosine'")
    if config.lr_schedule is None:  # the number of steps does not matter: one optimizer for every fold
        return _optimizer(config.learning_rate, None, 0, 0, config.weight_decay)
    return _optimizer(config.learning_rate, config.lr_schedule, config.epochs * steps_per_epoch,
                      config.warmup_epochs * steps_per_epoch, config.weight_decay)


def _kernels(params):
    return jax.tree_util.tree_map(lambda a: a.ndim >= 2, params)


@functools.lru_cache(maxsize=32)
def _optimizer(learning_rate: float, schedule: str | None, steps: int, warmup_steps: int, weight_decay: float
               ) -> optax.GradientTransformation:
    """One transformation per setting: a train state built again with it (the next fold) has the same
    structure, so the jitted train step runs it without compiling again."""
    rate: float | optax.Schedule = learning_rate
    if schedule == "cosine":
        total = max(steps, 1)
        warmup = min(warmup_steps, total - 1)
        rate = (optax.warmup_cosine_decay_schedule(0.0, learning_rate, warmup_steps=warmup, decay_steps=total)
                if warmup > 0 else optax.cosine_decay_schedule(learning_rate, decay_steps=total))
    if weight_decay > 0:
        return optax.adamw(rate, weight_decay=weight_decay, mask=_kernels)
    return optax.adam(rate)


def _blocks_top_first(params) -> tuple[list[str], set[str]]:
    """The network's blocks, the one nearest the classifier first, and the layers above them that train with
    the top blocks. A TransferClassifier: ``backbone/blockN`` (``conv_head``/``bn_head`` above them); ResNet-50
    (torchvision layout): ``stageS_blockB`` (nothing above them but ``logits``)."""
    if "backbone" in params:
        n = sum(1 for k in params["backbone"] if k.startswith("block"))
        return [f"block{i}" for i in reversed(range(n))], {"conv_head", "bn_head"}
    blocks = sorted((k for k in params if k.startswith("stage")),
                    key=lambda k: tuple(int(v) for v in k.removeprefix("stage").split("_block")), reverse=True)
    return blocks, set()


def _stage(names: list[str]) -> str:
    """The top-level layer a parameter path belongs to (inside ``backbone`` for a TransferClassifier)."""
    return names[1] if names[0] == "backbone" else names[0]


def trainable_mask(params, finetune: str, top_blocks: int = 2):
    """Per parameter: True if it trains. BatchNorm ``mean``/``var`` never train (inference form)."""
    if finetune not in FINETUNE:
        raise ValueError(f"unknown finetune {finetune!r}; expected one of {list(FINETUNE)}")
    blocks, above = _blocks_top_first(params)
    top = set(blocks[:top_blocks]) | above

    def label(path, _):
        names = [getattr(p, "key", str(p)) for p in path]
        if names[-1] in ("mean", "var"):
            return False
        if names[0] in ("head", "logits"):
            return True
        return finetune == "all" or (finetune == "top" and _stage(names) in top)

    return jax.tree_util.tree_map_with_path(label, params)


def block_depths(params):
    """Per parameter: how many stages it lies below the classifier. A TransferClassifier: ``head`` 0,
    ``conv_head``/``bn_head`` 1, the last block 2, …, block 0 n + 1, the stem n + 2. ResNet-50 (torchvision
    layout): ``logits`` 0, the last block 1, …, the stem last."""
    blocks, above = _blocks_top_first(params)
    depth = {**{name: 1 for name in above}, **{b: i + 1 + bool(above) for i, b in enumerate(blocks)}}
    bottom = max(depth.values(), default=0) + 1

    def of(path, _):
        names = [getattr(p, "key", str(p)) for p in path]
        return 0 if names[0] in ("head", "logits") else depth.get(_stage(names), bottom)

    return jax.tree_util.tree_map_with_path(of, params)


def masked_optimizer(tx: optax.GradientTransformation, params, finetune: str, top_blocks: int,
                     block_lr_decay: float = 1.0) -> optax.GradientTransformation:
    """``tx`` on the trainable parameters, zero updates (and no optimizer state) on the frozen ones.

    ``block_lr_decay`` d < 1: discriminative rates (fastai's): a parameter ``k`` stages below the classifier
    (:func:`block_depths`) moves by d^k times ``tx``'s update, as if its learning rate were d^k η (with AdamW
    its weight decay scales the same way)."""
    mask = trainable_mask(params, finetune, top_blocks)
    if block_lr_decay == 1.0:
        labels = jax.tree_util.tree_map(lambda m: "train" if m else "frozen", mask)
        return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)
    labels = jax.tree_util.tree_map(lambda m, k: k if m else "frozen", mask, block_depths(params))  # depth k
    depths = set(jax.tree_util.tree_leaves(labels)) - {"frozen"}
    transforms = {k: optax.chain(tx, optax.scale(block_lr_decay ** k)) for k in depths}
    return optax.multi_transform({**transforms, "frozen": optax.set_to_zero()}, labels)
