"""Transfer learning from an ImageNet backbone: the classifier, cached features, the head's honest fit.

``TransferClassifier`` = EfficientNet-Lite features (1280-d, pooled) → optional standardization
→ dense head. Three ways to fine-tune (``TrainConfig.finetune``):

- ``head``: the backbone is frozen. Its features of every image (and of its mirror image, for
  flip augmentation and test-time averaging) are computed once and cached on disk under the
  image's SHA-256, the backbone, its weights, the preprocessing and the engine (ONNX Runtime on CPU,
  JAX elsewhere; BatchNorm folded either way), so a second run reads them.
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
picked on the inner folds' out-of-fold probabilities (:func:`recall_threshold`)."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from common.files import cache_root, load_cached_npy
from models.efficientnet_lite import EfficientNetLite, map_images
from training.data.augment import Augment, augment_image
from training.loop.devices import resolve_engine
from training.loop.distributed import any_process, gather_rows, process_count, process_index, shard

log = logging.getLogger(__name__)  # shown by the commands (experiments.cli)


def feature_cache_dir(cache_dir: str | Path | None, variant: str, weights_digest: str, pre_key: str,
                      engine: str = "jax") -> Path:
    """Features are cached per engine: JAX's and ONNX Runtime's agree to 1e-4, not bit for bit, and a run
    reads back exactly the numbers its engine computes."""
    return cache_root(cache_dir, "features") / f"{variant}-{weights_digest[:16]}-{pre_key}-{engine}"


@functools.lru_cache(maxsize=8)
def make_feature_fn(variant: str, depthwise: str = "shift"):
    """``features(params, x) -> (B, 2, D)``: pooled features of each image and of its mirror image, jitted
    (one function per backbone: a second extraction in the same process compiles nothing). ``params``: the
    backbone's with BatchNorm folded (:func:`~models.efficientnet_lite.fold_batchnorm`). Batched by
    :func:`~models.efficientnet_lite.map_images` (on CPU one image, and then its mirror image, at a time)."""
    model = EfficientNetLite(variant, depthwise=depthwise, folded=True)

    @jax.jit
    def features(params, x):
        one = lambda im: model.apply({"params": params}, im, features_only=True)  # noqa: E731
        return map_images(lambda im: jnp.stack([one(im), one(im[:, ::-1, :])]), x)

    return features


@functools.lru_cache(maxsize=8)
def make_block_input_fn(variant: str, block: int, depthwise: str = "shift"):
    """``maps(params, x) -> (B, 2, h, w, C)``: the activation map at the input of MBConv block ``block`` of each
    image and of its mirror image, jitted. ``params``: the backbone's as trained (BatchNorm not folded), so
    the map is the one the whole classifier computes there. Batched by :func:`~models.efficientnet_lite.map_images`."""
    model = EfficientNetLite(variant, depthwise=depthwise)

    @jax.jit
    def maps(params, x):
        one = lambda im: model.apply({"params": params}, im, stop_block=block)  # noqa: E731
        return map_images(lambda im: jnp.stack([one(im), one(im[:, ::-1, :])]), x)

    return maps


def feature_function(variant: str, backbone_params, *, image_size: int, engine: str = "jax"):
    """``features(x) -> (B, 2, D)`` (NumPy, float32) of the frozen backbone, by ``engine`` (``"jax"`` or
    ``"onnxruntime"``, as :func:`training.loop.devices.resolve_engine` chooses). Both run the backbone with
    its BatchNorm folded into the convolutions (once, here): JAX through :func:`make_feature_fn`, ONNX Runtime
    on :func:`models.onnx_graph.features_to_onnx`'s graph, built in memory."""
    from models.efficientnet_lite import fold_batchnorm

    if engine == "onnxruntime":
        import onnxruntime as ort

        from models.onnx_graph import features_to_onnx

        proto = features_to_onnx(variant, backbone_params, image_size=image_size)
        session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        return lambda x: session.run(["features"], {"image": np.asarray(x, np.float32)})[0]
    if engine != "jax":
        raise ValueError(f"unknown feature engine {engine!r}; expected 'jax' or 'onnxruntime'")
    fn = make_feature_fn(variant)
    params = jax.device_put(fold_batchnorm({k: v for k, v in backbone_params.items() if k != "fc"}))
    return lambda x: np.asarray(fn(params, x), np.float32)


class Views(NamedTuple):
    """Augmented views of every photo, for the head's training loss (``TrainConfig.head_views``).

    View ``i`` of a photo is ``augment_image(x, key=fold_in(fold_in(key(seed), h), i))`` with ``h`` the first 32
    bits of the photo's SHA-256, so it depends on the photo and ``i`` alone and is cached like the plain
    features; the backbone sees it and its mirror image (``augment.flip`` is therefore off)."""

    count: int
    augment: Augment
    seed: int = 0

    def cache_key(self) -> str:
        spec = json.dumps([list(self.augment), self.seed], separators=(",", ":"))
        return "views-" + hashlib.sha256(spec.encode()).hexdigest()[:16]


@functools.partial(jax.jit, static_argnames="augment")
def _augmented(x, photo, view, seed, *, augment: Augment):
    """Each row of ``x`` augmented with its own key, from ``(seed, photo hash, view index)``."""
    def one(image, h, i):
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), h), i)
        return augment_image(image, key=key, aug=augment)

    return jax.vmap(one)(x, photo, view)


def views_for(config, count: int | None = None) -> Views | None:
    """``count`` augmented views (default: the :class:`~training.loop.config.TrainConfig`'s ``head_views``), as
    the config asks for them, or None for 0."""
    count = config.head_views if count is None else count
    if count == 0:
        return None
    augment = config.augment or Augment(crop_pad=max(config.image_size // 10, 1))
    return Views(count, augment._replace(flip=False), config.seed)


def _load_cached(path: Path, shape: tuple[int, ...] | None) -> np.ndarray | None:
    """A cached float32 entry of ``shape`` ((2, D) features of any D when None), or None when absent, damaged, of
    another shape or not finite (a NaN): it is then computed again, and rewritten."""
    def accept(found: tuple[int, ...], dtype) -> bool:
        ok = found == shape if shape is not None else len(found) == 2 and found[0] == 2
        return ok and dtype == np.float32

    entry = load_cached_npy(path, accept)
    return entry if entry is not None and np.isfinite(entry).all() else None


@functools.lru_cache(maxsize=32)
def block_input_shape(variant: str, block: int, image_size: int) -> tuple[int, int, int]:
    """The shape (h, w, C) of the activation map at the input of MBConv block ``block`` for ``image_size`` px."""
    model = EfficientNetLite(variant)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((image_size, image_size, 3))))
    return tuple(jax.eval_shape(lambda p: model.apply(p, jnp.zeros((image_size, image_size, 3)),
                                                      stop_block=block), params).shape)


def extract_features(x: np.ndarray | Sequence[str | Path], digests: Sequence[str], variant: str, backbone_params,
                     weights_digest: str, pre_key: str, *, pre=None, cache_dir: str | Path | None = None,
                     batch_size: int = 32, progress: bool = False, engine: str = "auto",
                     views: Views | None = None, block: int | None = None) -> tuple[np.ndarray, int]:
    """``(features (n, 2, D), n computed)``: cached features where present, the backbone's for the rest.

    ``engine``: ``"auto"`` (ONNX Runtime on CPU when installed: 1.5–1.8× the JAX forward there; JAX otherwise
    and on GPU/TPU), ``"jax"`` or ``"onnxruntime"`` (:func:`training.loop.devices.resolve_engine`).

    ``views``: instead, the features of ``views.count`` augmented views of each photo and of their mirror
    images, ``(n, 2·count, D)`` (:class:`Views`), each view cached on its own.

    ``block``: instead of the pooled features, the activation maps at the input of that MBConv block
    (:func:`make_block_input_fn`, by JAX), ``(n, 2, h, w, C)`` (or ``(n, 2·count, h, w, C)`` with ``views``):
    what the frozen blocks below a fine-tuned top compute, cached the same way.

    ``x``: the preprocessed images (n, s, s, 3), or their files, with ``pre`` (a
    :class:`~training.data.decoding.Preprocess`): then only the photos missing from the cache are read,
    in chunks decoded by threads ahead of the backbone (:func:`training.data.prefetch.decode_chunks`),
    so memory stays bounded however many photos there are. An unreadable photo raises
    :class:`~training.data.decoding.BadImageError` naming it. In a job of several processes each computes
    a contiguous shard of the missing photos (:func:`~training.loop.distributed.shard`, whole chunks) and
    every process returns all of them (``n computed``: photos, by the whole job).
    """
    from tqdm.auto import tqdm

    from common.files import save_npy_atomic
    from training.data.decoding import BadImageError
    from training.data.prefetch import decode_chunks

    engine = resolve_engine(engine) if block is None else "jax"
    folder = feature_cache_dir(cache_dir, variant, weights_digest, pre_key, engine)
    # the pooled features' width is the head convolution's: an entry of another width is computed again
    shape = (2, int(np.shape(backbone_params["conv_head"]["kernel"])[-1])) if "conv_head" in backbone_params \
        else None
    if block is not None:
        shape = (2, *block_input_shape(variant, block, _image_size(x, pre)))
        folder = folder / f"block{block}"
    if views is not None:
        folder = folder / views.cache_key()
    names = [""] if views is None else [f"-{i}" for i in range(views.count)]  # one cache file per view
    out: list[list[np.ndarray | None]] = [[_load_cached(folder / f"{d}{v}.npy", shape) for v in names]
                                          for d in digests]
    # in a job of several processes: the photos missing from any process's cache, each process computing a
    # contiguous shard of them in whole chunks (the chunks of one process), then every process gets them all
    everyone = np.flatnonzero(any_process(np.array([any(a is None for a in row) for row in out], bool))).tolist()
    missing = everyone[shard(len(everyone), block=batch_size)]
    if missing:
        if block is not None:
            maps = make_block_input_fn(variant, block)
            params = jax.device_put({k: v for k, v in backbone_params.items() if k != "fc"})
            fn = lambda im: np.asarray(maps(params, im), np.float32)  # noqa: E731
        else:
            fn = feature_function(variant, backbone_params, image_size=_image_size(x, pre), engine=engine)
        in_memory = isinstance(x, np.ndarray)
        if not in_memory and pre is None:
            raise ValueError("extract_features from files needs pre (the preprocessing)")
        # one chunk at a time either way: indexing the array copies, so it is done per chunk
        chunks = ((x[missing[i:i + batch_size]] for i in range(0, len(missing), batch_size)) if in_memory else
                  decode_chunks([Path(x[i]) for i in missing], pre, chunk_size=batch_size))
        what = "backbone features" if block is None else f"frozen blocks' maps (input of block {block})"
        bar = tqdm(total=len(missing), desc=what + (f", {views.count} views" if views is not None else ""),
                   unit="photo", disable=not progress)
        for start, chunk in zip(range(0, len(missing), batch_size), chunks):
            if not in_memory:
                bad = [a for _, a in chunk if isinstance(a, str)]
                if bad:
                    raise BadImageError(bad[0])
                chunk = np.stack([a for _, a in chunk])
            idx = missing[start:start + batch_size]
            for v, name in enumerate(names):
                images = chunk if views is None else np.asarray(_augmented(
                    chunk, np.array([int(digests[i][:8], 16) for i in idx], np.uint32),
                    np.full(len(idx), v, np.uint32), views.seed, augment=views.augment))
                feats = _padded(fn, images, batch_size)
                for i, f in zip(idx, feats):
                    out[i][v] = f
                    save_npy_atomic(folder / f"{digests[i]}{name}.npy", f)
            bar.update(len(idx))
        bar.close()
    rows = [np.concatenate(row) if all(a is not None for a in row) else None for row in out]
    width = 2 * len(names)
    entry = shape[1:] if shape is not None else (next((a.shape[1] for a in rows if a is not None), 1280),)
    if process_count() > 1 and everyone:
        log.info(f"process {process_index()} of {process_count()}: {len(missing)} of the job's {len(everyone)} "
                 "photos computed here")
        mine = np.stack([rows[i] for i in missing]) if missing else np.zeros((0, width, *entry), np.float32)
        for i, f in zip(everyone, gather_rows(mine)):
            rows[i] = f
    return (np.stack(rows) if rows else np.zeros((0, width, *entry), np.float32)), len(everyone)


def _padded(fn, images: np.ndarray, batch_size: int) -> np.ndarray:
    """``fn`` on ``images`` padded with zeros to ``batch_size`` rows (one shape: one compilation), unpadded."""
    n = len(images)
    if n < batch_size:
        images = np.concatenate([images, np.zeros((batch_size - n, *images.shape[1:]), images.dtype)])
    return fn(images)[:n]


def _image_size(x, pre) -> int:
    return int(x.shape[1]) if isinstance(x, np.ndarray) else int(pre.image_size)


def backbone_for(config, *, cache_dir: str | Path | None = None) -> tuple[dict, str]:
    """The pretrained backbone parameters (without the ImageNet classifier) and the weights' SHA-256."""
    from models.pretrained import load_backbone

    params, digest = load_backbone(config.model, config.weights, cache_dir=cache_dir)
    return {k: v for k, v in params.items() if k != "fc"}, digest
