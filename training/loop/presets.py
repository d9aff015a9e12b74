"""Every named configuration of the project, in one registry: the one place a preset is defined.

Each entry is a :class:`Preset` of a *kind*:

- ``"train"``: :class:`~training.loop.config.TrainConfig` fields of a training preset (``train --preset``,
  ``get_config(name)``); ``default`` is ``pretrained``.
- ``"recipe"``: the fields fine-tuning puts on top of a preset when a pretrained backbone is fine-tuned
  (``finetune`` ``top`` or ``all``): :func:`recipe_for`; ``get_config`` applies them, the caller's overrides win.
- ``"table"``: the results table's configurations (``experiments.results_table``): a training preset and its
  number of folds.
- ``"mlp"``: the hand-written MLP's settings (``experiments.train_mlp``): Nielsen's network.py and network2.py.
- ``"mnist"``: ``experiments.mnist_cnn``'s Model 1 on MNIST, on top of its ``base`` training preset.

The old names stay as read-only views of this registry: ``training.loop.config.PRESETS``, ``FINETUNE_RECIPE``,
``TOP_RECIPE`` and ``MLP_PRESETS``, ``training.runs.results.CONFIGS``. A preset's settings are what a saved
run's ``config.json`` records once resolved, so renaming nothing here leaves every saved run readable.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from models.transfer import BACKBONES
from training.data.augment import Augment

KINDS = ("train", "recipe", "table", "mlp", "mnist")


@dataclass(frozen=True)
class Preset:
    """One named configuration: ``settings`` (read-only) applied on top of ``base`` (a ``"train"`` preset; the
    :class:`~training.loop.config.TrainConfig` defaults where ``None``). ``doc`` says what it is and why."""

    kind: str
    name: str
    doc: str
    settings: Mapping[str, Any]
    base: str | None = None


REGISTRY: dict[tuple[str, str], Preset] = {}


def _register(kind: str, name: str, doc: str, base: str | None = None, **settings: Any) -> Preset:
    if kind not in KINDS or (kind, name) in REGISTRY:
        raise ValueError(f"preset {kind}/{name}: an unknown kind, or defined twice")
    REGISTRY[kind, name] = entry = Preset(kind, name, doc, MappingProxyType(settings), base)
    return entry


def preset(kind: str, name: str) -> Preset:
    """The registered ``name`` of ``kind``; a ``ValueError`` naming the choices otherwise."""
    if (kind, name) not in REGISTRY:
        raise ValueError(f"unknown {kind} preset {name!r}; expected one of {sorted(presets(kind))}")
    return REGISTRY[kind, name]


def presets(kind: str) -> Mapping[str, Mapping[str, Any]]:
    """``name → settings`` of every preset of ``kind``, in the order they were registered (read-only)."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind of preset {kind!r}; expected one of {list(KINDS)}")
    return MappingProxyType({name: p.settings for (k, name), p in REGISTRY.items() if k == kind})


def recipe_for(model: str | None, finetune: str) -> Mapping[str, Any]:
    """The fields fine-tuning adds for ``model`` at ``finetune`` (none for a frozen head, or a model that is not a
    pretrained backbone of ``models.transfer``)."""
    if model not in BACKBONES or finetune == "head":
        return MappingProxyType({})
    return preset("recipe", finetune).settings


# --- training presets (TrainConfig fields) ------------------------------------------------------------------------

_register(
    "train", "lab-2020",
    "The lab's Dec 2020 deck: grayscale Model 1, Adam 1e-3, 4 epochs, batch 32, one seeded 80:20 split; the 4th "
    "epoch is scored (no choice is made on the validation split).",
    model="model1", image_size=108, rgb=False, crop="center", epochs=4, batch_size=32,
    learning_rate=1e-3, class_weights=None, standardize=False, augment=None, lr_schedule=None,
    patience=None, selection="last", folds=1, tta_flip=False, grad="manual", calibration="none",
    refer_coverage=None)
_register(
    "train", "improved",
    "The best from-scratch Model 1 settings: colour, augmentation, balanced weights, standardized inputs, Adam 1e-4 "
    "with cosine decay, early stopping on an inner validation split.",
    model="model1", image_size=108, rgb=True, augment=Augment(), class_weights="balanced",
    standardize=True, learning_rate=1e-4, lr_schedule="cosine", epochs=30, patience=6,
    selection="inner", batch_size=32, tta_flip=False, grad="manual")
_register(
    "train", "pretrained",
    "The best measured: ImageNet EfficientNet-Lite1 (240 px), frozen, softmax head chosen on inner folds.",
    model="efficientnet_lite1", image_size=240, rgb=True, finetune="head", learning_rate=1e-2,
    class_weights="balanced", standardize=False, augment=None, selection="inner",
    tta_flip=True)
_register("train", "default", "The defaults: the pretrained preset.", **REGISTRY["train", "pretrained"].settings)

# --- fine-tuning's recipes (on top of a training preset whose backbone is fine-tuned) ------------------------------

_FINETUNE = dict(learning_rate=3e-4, lr_schedule="cosine", warmup_epochs=1, epochs=10,
                 weight_decay=1e-4, augment=Augment(crop_pad=16), patience=4,
                 selection="inner", head_init=True, grad="manual")
_register(
    "recipe", "all",
    "What ``finetune='all'`` changes in a backbone's preset (each override the user gives still wins): Keras' and "
    "fastai's recipe. The head first (the frozen-feature head chosen by inner CV), then the whole network with it "
    "at a 30× lower rate, warmed up over one epoch and cosine-decayed, AdamW weight decay, augmented training "
    "photos, and the epoch chosen (with early stopping) on an inner split of the training part. BatchNorm stays in "
    "inference form. Adam at the head's 1e-2 on a random head collapses to the constant predictor (issue 17). The "
    "steps run on the hand-written backward (manual_backprop.efficientnet): the same gradients as jax.grad, 0.40x "
    "its time for ``all`` (benchmarks/RESULTS.md).",
    **_FINETUNE)
_register(
    "recipe", "top",
    "``finetune='top'``: the ``all`` recipe for the top blocks, and the frozen blocks' maps of each photo and of 8 "
    "augmented views (and their mirror images) computed once and cached, so that each step runs the trainable top "
    "alone (issue 17, item 2).",
    **_FINETUNE, top_views=8)

# --- the results table's configurations ---------------------------------------------------------------------------
# (results.config_for builds every row on the lab-2020 preset: these rows take TrainConfig's default calibration and
# referral back; a test keeps the two equal)
_CALIBRATED = {"calibration": "auto", "refer_coverage": 0.8}

_register("table", "lab-2020", "The deck's setup on its one seeded 80:20 split.", base="lab-2020",
          **{**REGISTRY["train", "lab-2020"].settings, "folds": 1})
_register("table", "improved", "The improved Model 1 by stratified 5-fold cross-validation.", base="improved",
          **{**REGISTRY["train", "improved"].settings, "folds": 5, **_CALIBRATED})
_register("table", "pretrained", "The pretrained backbone's head by stratified 5-fold cross-validation.",
          base="pretrained", **{**REGISTRY["train", "pretrained"].settings, "folds": 5, **_CALIBRATED})

# --- the hand-written MLP (experiments.train_mlp) ------------------------------------------------------------------

_register("mlp", "network", "Nielsen's network.py: 30 sigmoid units, half SSE, η 3.0, minibatch 10, 30 epochs, "
          "W ~ N(0, 1).",
          hidden=[30], activation="sigmoid", cost="half_sse", eta=3.0, lmbda=0.0,
          batch_size=10, epochs=30, weight_scale="unit")
_register("mlp", "network2", "Nielsen's network2.py: 100 sigmoid units, cross-entropy, L2 λ 5.0, η 0.5, "
          "minibatch 10, 30 epochs, W ~ N(0, 1/n_in).",
          hidden=[100], activation="sigmoid", cost="cross_entropy", eta=0.5, lmbda=5.0,
          batch_size=10, epochs=30, weight_scale="fan_in")

# --- Model 1 on MNIST (experiments.mnist_cnn) ----------------------------------------------------------------------

_register("mnist", "mnist_cnn",
          "Model 1 on MNIST's 28 px digits: a 5×5 first kernel, batch 128, Adam 1e-3 with cosine decay, standardized "
          "inputs, light augmentation (2 px shifts, 8° rotations, no flips), the epoch chosen on the validation split.",
          base="lab-2020", image_size=28, first_kernel=5, batch_size=128,
          learning_rate=1e-3, lr_schedule="cosine", standardize=True,
          augment=Augment(crop_pad=2, flip=False, max_degrees=8.0, brightness=0.0, contrast=0.0),
          selection="inner")
