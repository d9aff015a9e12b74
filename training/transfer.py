"""Transfer learning from an ImageNet backbone: the classifier, cached features, the head's honest fit.

``TransferClassifier`` = EfficientNet-Lite features (1280-d, pooled) → optional standardization
→ dense head. Three ways to fine-tune (``TrainConfig.finetune``):

- ``head``: the backbone is frozen. Its features of every image (and of its mirror image, for
  flip augmentation and test-time averaging) are computed once and cached on disk under the
  image's SHA-256, the backbone, its weights and the preprocessing, so a second run reads them.
  The head is a softmax regression ``p = softmax(W f̂ + b)`` on standardized features
  ``f̂ = (f − μ) / σ``, trained by full-batch Adam on the class-weighted cross-entropy
  ``Σ_i w_{y_i} (−log p_{y_i}(f_i)) / Σ_i w_{y_i} + λ‖W‖²``.
- ``top``: the last ``top_blocks`` MBConv blocks, the head convolution and the head train.
- ``all``: every weight trains.

BatchNorm stays in inference form in all three (running μ, σ² frozen; γ, β train in ``top``/``all``).

Honest selection (:func:`select_head`): λ and the number of Adam steps are chosen by K-fold
cross-validation *inside* the training part (the class-weighted log-loss of the flip-averaged
probabilities on each inner validation fold); the head is then refit on the whole training part
with that choice. The outer validation fold is scored once. With a target recall the threshold is
picked on the inner folds' out-of-fold probabilities (:func:`recall_threshold`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from models.efficientnet_lite import VARIANTS, EfficientNetLite

BACKBONES = tuple(VARIANTS)
FINETUNE = ("head", "top", "all")


class TransferClassifier(nn.Module):
    """Logits for one (H, W, 3) image in [0, 1]: backbone features → (f − μ)/σ → dropout → dense."""

    variant: str
    n_classes: int
    feature_mean: Sequence[float] | None = None
    feature_std: Sequence[float] | None = None
    dropout_rate: float = 0.0
    depthwise: str = "shift"

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False, key: jax.Array | None = None) -> jax.Array:
        f = EfficientNetLite(self.variant, depthwise=self.depthwise, name="backbone")(x, features_only=True)
        return self.head_logits(f, train=train, key=key)

    def head_logits(self, f: jax.Array, *, train: bool = False, key: jax.Array | None = None) -> jax.Array:
        if self.feature_mean is not None:
            f = (f - jnp.asarray(self.feature_mean, f.dtype)) / jnp.asarray(self.feature_std, f.dtype)
        if self.dropout_rate > 0:
            rng = jax.random.fold_in(key, 1) if (train and key is not None) else None
            f = nn.Dropout(self.dropout_rate, deterministic=not train)(f, rng=rng)
        return nn.Dense(self.n_classes, name="head")(f)


def trainable_mask(params, finetune: str, top_blocks: int = 2):
    """Per parameter: True if it trains. BatchNorm ``mean``/``var`` never train (inference form)."""
    if finetune not in FINETUNE:
        raise ValueError(f"unknown finetune {finetune!r}; expected one of {list(FINETUNE)}")
    if "backbone" in params:  # TransferClassifier: backbone/blockN, backbone/conv_head; head
        n_blocks = sum(1 for k in params["backbone"] if k.startswith("block"))
        top = {f"block{i}" for i in range(n_blocks - top_blocks, n_blocks)} | {"conv_head", "bn_head"}
    else:  # ResNet-50 (torchvision layout): stageS_blockB; logits
        blocks = sorted((k for k in params if k.startswith("stage")),
                        key=lambda k: tuple(int(v) for v in k.removeprefix("stage").split("_block")))
        top = set(blocks[len(blocks) - top_blocks:])

    def label(path, _):
        names = [getattr(p, "key", str(p)) for p in path]
        if names[-1] in ("mean", "var"):
            return False
        if names[0] in ("head", "logits"):
            return True
        name = names[1] if names[0] == "backbone" else names[0]
        return finetune == "all" or (finetune == "top" and name in top)

    return jax.tree_util.tree_map_with_path(label, params)


def masked_optimizer(tx: optax.GradientTransformation, params, finetune: str, top_blocks: int
                     ) -> optax.GradientTransformation:
    """``tx`` on the trainable parameters, zero updates (and no optimizer state) on the frozen ones."""
    mask = trainable_mask(params, finetune, top_blocks)
    labels = jax.tree_util.tree_map(lambda m: "train" if m else "frozen", mask)
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


# ---------------------------------------------------------------- features

def feature_cache_dir(cache_dir: str | Path | None, variant: str, weights_digest: str, pre_key: str) -> Path:
    base = Path(cache_dir) if cache_dir else Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") \
        / "tree-risk-jax"
    return base / "features" / f"{variant}-{weights_digest[:16]}-{pre_key}"


def make_feature_fn(variant: str, depthwise: str = "shift"):
    """``features(params, x) -> (B, 2, D)``: pooled features of each image and of its mirror image, jitted."""
    model = EfficientNetLite(variant, depthwise=depthwise)

    @jax.jit
    def features(params, x):
        one = lambda im: model.apply({"params": params}, im, features_only=True)  # noqa: E731
        return jnp.stack([jax.vmap(one)(x), jax.vmap(one)(x[:, :, ::-1, :])], axis=1)

    return features


def extract_features(x: np.ndarray | Sequence[str | Path], digests: Sequence[str], variant: str, backbone_params,
                     weights_digest: str, pre_key: str, *, pre=None, cache_dir: str | Path | None = None,
                     batch_size: int = 32, progress: bool = False) -> tuple[np.ndarray, int]:
    """``(features (n, 2, D), n computed)``: cached features where present, the backbone's for the rest.

    ``x``: the preprocessed images (n, s, s, 3), or their files, with ``pre`` (a
    :class:`~training.images.Preprocess`): then only the photos missing from the cache are read,
    in chunks decoded by threads ahead of the backbone (:func:`training.stream.decode_chunks`),
    so memory stays bounded however many photos there are. An unreadable photo raises
    :class:`~training.images.BadImageError` naming it.
    """
    from tqdm.auto import tqdm

    from training.images import BadImageError, save_npy_atomic
    from training.stream import decode_chunks

    folder = feature_cache_dir(cache_dir, variant, weights_digest, pre_key)
    out: list[np.ndarray | None] = []
    for d in digests:
        p = folder / f"{d}.npy"
        arr = None
        if p.is_file():
            try:
                arr = np.load(p, allow_pickle=False)
            except (OSError, ValueError):
                arr = None  # damaged entry: computed again
            if arr is not None and (arr.ndim != 2 or arr.shape[0] != 2 or arr.dtype != np.float32):
                arr = None
        out.append(arr)
    missing = [i for i, a in enumerate(out) if a is None]
    if missing:
        fn = make_feature_fn(variant)
        in_memory = isinstance(x, np.ndarray)
        if not in_memory and pre is None:
            raise ValueError("extract_features from files needs pre (the preprocessing)")
        # one chunk at a time either way: indexing the array copies, so it is done per chunk
        chunks = ((x[missing[i:i + batch_size]] for i in range(0, len(missing), batch_size)) if in_memory else
                  decode_chunks([Path(x[i]) for i in missing], pre, chunk_size=batch_size))
        bar = tqdm(total=len(missing), desc="backbone features", unit="photo", disable=not progress)
        for start, chunk in zip(range(0, len(missing), batch_size), chunks):
            if not in_memory:
                bad = [a for _, a in chunk if isinstance(a, str)]
                if bad:
                    raise BadImageError(bad[0])
                chunk = np.stack([a for _, a in chunk])
            idx = missing[start:start + batch_size]
            if len(idx) < batch_size:  # pad to a fixed shape: one compilation
                chunk = np.concatenate([chunk, np.zeros((batch_size - len(idx), *chunk.shape[1:]), chunk.dtype)])
            feats = np.asarray(fn(backbone_params, chunk), np.float32)[: len(idx)]
            for i, f in zip(idx, feats):
                out[i] = f
                save_npy_atomic(folder / f"{digests[i]}.npy", f)
            bar.update(len(idx))
        bar.close()
    dim = out[0].shape[1] if out else 1280
    return (np.stack(out) if out else np.zeros((0, 2, dim), np.float32)), len(missing)


def backbone_for(config, *, cache_dir: str | Path | None = None) -> tuple[dict, str]:
    """The pretrained backbone parameters (without the ImageNet classifier) and the weights' SHA-256."""
    from models.pretrained import load_backbone

    params, digest = load_backbone(config.model, config.weights, cache_dir=cache_dir)
    return {k: v for k, v in params.items() if k != "fc"}, digest


# ---------------------------------------------------------------- the head, chosen honestly

class HeadChoice(NamedTuple):
    """The regularisation and step count chosen on inner folds, and what they were chosen from."""

    l2: float
    steps: int
    curves: np.ndarray  # (n_l2, steps): mean inner-validation loss after each step
    oof_probs: np.ndarray  # (n, K): inner out-of-fold probabilities at the choice


def _head_run(F, y1h, cw, train_mask, val_mask, l2, lr, steps: int, keep_step):
    """Full-batch Adam on one head; returns (val loss after each step, params at ``keep_step``, val probs).

    ``F`` (n, V, D) features, ``y1h`` (n, K) one-hot, ``cw`` (K,) class weights, masks (n,) in {0, 1}.
    Standardization μ, σ come from the training rows of ``F`` (all views).
    """
    n, v, d = F.shape
    k = y1h.shape[1]
    tm = train_mask[:, None, None]
    count = jnp.maximum(jnp.sum(train_mask) * v, 1.0)
    mu = jnp.sum(F * tm, axis=(0, 1)) / count
    sd = jnp.sqrt(jnp.sum(((F - mu[None, None, :]) ** 2) * tm, axis=(0, 1)) / count) + 1e-6
    Fs = (F - mu[None, None, :]) / sd[None, None, :]
    w_ex = jnp.sum(y1h * cw[None, :], axis=1)
    w_tr = w_ex * train_mask
    w_va = w_ex * val_mask
    params = {"W": jnp.zeros((d, k), F.dtype), "b": jnp.zeros((k,), F.dtype)}
    tx = optax.adam(lr)

    def probs_of(p):
        return jax.nn.softmax(Fs @ p["W"] + p["b"][None, None, :], axis=-1)  # (n, V, K)

    def loss(p):
        logp = jax.nn.log_softmax(Fs @ p["W"] + p["b"][None, None, :], axis=-1)
        ce = -jnp.sum(logp * y1h[:, None, :], axis=-1).mean(axis=1)  # mean over views
        return jnp.sum(w_tr * ce) / jnp.maximum(jnp.sum(w_tr), 1e-12) + l2 * jnp.sum(p["W"] ** 2)

    def val_loss(p):
        pbar = probs_of(p).mean(axis=1)
        ce = -jnp.log(jnp.clip(jnp.sum(pbar * y1h, axis=1), 1e-12, 1.0))
        return jnp.sum(w_va * ce) / jnp.maximum(jnp.sum(w_va), 1e-12)

    def step(carry, t):
        p, s, kept = carry
        g = jax.grad(loss)(p)
        updates, s = tx.update(g, s, p)
        p = optax.apply_updates(p, updates)
        kept = jax.tree_util.tree_map(lambda a, b: jnp.where(t + 1 == keep_step, a, b), p, kept)
        return (p, s, kept), val_loss(p)

    (_, _, kept), curve = jax.lax.scan(step, (params, tx.init(params), params), jnp.arange(steps))
    return curve, kept, probs_of(kept).mean(axis=1), (mu, sd)


_head_grid = jax.jit(jax.vmap(jax.vmap(_head_run, in_axes=(None, None, None, None, None, 0, None, None, None)),
                              in_axes=(None, None, None, 0, 0, None, None, None, None)),
                     static_argnums=(7,))
_head_one = jax.jit(_head_run, static_argnums=(7,))


def select_head(F: np.ndarray, y: np.ndarray, n_classes: int, class_weights: np.ndarray, *, l2_grid: Sequence[float],
                steps: int, lr: float, inner_folds: int, seed: int) -> HeadChoice:
    """λ and the step count minimising the mean inner-validation loss over ``inner_folds`` stratified folds."""
    from training.labels import stratified_folds

    folds = stratified_folds(y, inner_folds, seed=seed + 1)
    n = len(y)
    F, y1h = _pad_rows(F, n), _pad_rows(np.eye(n_classes, dtype=np.float32)[y], n)
    train_masks = np.zeros((len(folds), len(F)), np.float32)
    val_masks = np.zeros_like(train_masks)
    for j, (tr, va) in enumerate(folds):
        train_masks[j, tr], val_masks[j, va] = 1, 1
    grid = jnp.asarray(l2_grid, jnp.float32)
    curves, _, _, _ = _head_grid(F, y1h, class_weights, train_masks, val_masks, grid, lr, steps, -1)
    curves = np.asarray(curves)  # (folds, n_l2, steps)
    if not np.all(np.isfinite(curves)):
        raise FloatingPointError(f"the head's inner-validation loss became non-finite (learning rate {lr})")
    mean = curves.mean(axis=0)
    i, t = np.unravel_index(np.argmin(mean), mean.shape)
    _, _, oof, _ = _head_grid(F, y1h, class_weights, train_masks, val_masks, grid[i:i + 1], lr, steps, int(t) + 1)
    oof = np.asarray(oof)[:, 0]  # (folds, n, K)
    oof_probs = np.sum(oof * val_masks[:, :, None], axis=0)[:n]
    return HeadChoice(float(l2_grid[i]), int(t) + 1, mean, oof_probs)


def _pad_rows(a: np.ndarray, n: int, multiple: int = 64) -> np.ndarray:
    """``a`` with zero rows appended up to a multiple of ``multiple`` (masked out): fewer compilations."""
    size = -(-n // multiple) * multiple
    return np.concatenate([a, np.zeros((size - n, *a.shape[1:]), a.dtype)]) if size > n else a


def fit_head(F: np.ndarray, y: np.ndarray, n_classes: int, class_weights: np.ndarray, *, l2: float, steps: int,
             lr: float) -> tuple[dict, dict]:
    """The head refit on all of ``F``: ``({"kernel", "bias"}, {"mean", "std"})`` for :class:`TransferClassifier`."""
    y1h = _pad_rows(np.eye(n_classes, dtype=np.float32)[y], len(y))
    ones = _pad_rows(np.ones(len(y), np.float32), len(y))
    F = _pad_rows(F, len(y))
    _, p, _, (mu, sd) = _head_one(F, y1h, class_weights, ones, np.zeros_like(ones), jnp.float32(l2), lr, steps, steps)
    if not all(np.all(np.isfinite(np.asarray(a))) for a in (p["W"], p["b"])):
        raise FloatingPointError(f"the head's weights became non-finite (learning rate {lr}, λ {l2})")
    return ({"kernel": np.asarray(p["W"]), "bias": np.asarray(p["b"])},
            {"mean": [float(v) for v in np.asarray(mu)], "std": [float(v) for v in np.asarray(sd)]})


def head_probs(F: np.ndarray, head: dict, norm: dict, *, tta_flip: bool = True) -> np.ndarray:
    """Class probabilities from features (n, 2, D): the head on each view, averaged over views with ``tta_flip``."""
    F = F if tta_flip else F[:, :1]
    f = (F - np.asarray(norm["mean"], np.float32)) / np.asarray(norm["std"], np.float32)
    logits = f @ head["kernel"] + head["bias"]
    p = np.exp(logits - logits.max(axis=-1, keepdims=True))
    p /= p.sum(axis=-1, keepdims=True)
    return p.mean(axis=1)


# ---------------------------------------------------------------- operating point

def recall_threshold(probs: np.ndarray, y: np.ndarray, cls: int, target: float) -> float:
    """The largest threshold t on P(cls) with recall(cls) ≥ ``target`` on (probs, y): predict cls when p ≥ t."""
    if not 0 < target <= 1:
        raise ValueError(f"target recall must be in (0, 1], got {target}")
    scores = np.sort(probs[y == cls, cls])[::-1]
    if len(scores) == 0:
        raise ValueError("no example of the target-recall class in the selection data")
    need = int(np.ceil(target * len(scores)))
    return float(scores[need - 1])


def decide(probs: np.ndarray, operating_point: dict | None) -> np.ndarray:
    """Predicted class per row: arg-max, or the operating point's class when its probability ≥ threshold
    (otherwise the arg-max of the other classes)."""
    pred = probs.argmax(axis=1)
    if not operating_point:
        return pred
    c, t = operating_point["class_index"], operating_point["threshold"]
    others = probs.copy()
    others[:, c] = -np.inf
    return np.where(probs[:, c] >= t, c, others.argmax(axis=1))
