"""Training configuration: ``TrainConfig`` (checked when built), the presets, ``get_config``."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from models.model1 import ACTIVATIONS
from models.registry import KINDS
from training.data.augment import Augment
from training.data.decoding import CROPS
from training.loop.presets import REGISTRY, presets, recipe_for

MODELS = tuple(KINDS)  # the model registry's kinds (models.registry)
GRADS = ("autodiff", "manual")
FINETUNE = ("head", "top", "all")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs. The defaults are the best configuration measured (``PRESETS["pretrained"]``):
    ImageNet EfficientNet-Lite1 features, a softmax head with λ and steps chosen on inner folds,
    flip test-time averaging; ``PRESETS["lab-2020"]`` is the lab's Dec 2020 setup."""

    model: str = "efficientnet_lite1"  # "model1", "resnet50", "googlenet" or an EfficientNet-Lite backbone
    image_size: int = 240
    rgb: bool = True
    crop: str = "center"
    epochs: int = 4
    batch_size: int = 32
    learning_rate: float = 1e-2
    class_weights: str | None = "balanced"  # None or "balanced"
    standardize: bool = False  # inputs ← (x − mean) / std per channel, from the training split
    val_fraction: float = 0.2
    folds: int = 1
    seed: int = 0
    first_kernel: int = 7
    head_units: tuple[int, ...] = (128, 64)
    dropout_rate: float = 0.5
    activation: str = "relu"
    # None: no augmentation; an Augment: random crop, flip, rotation, brightness/contrast of the training images
    augment: Augment | None = None
    lr_schedule: str | None = None  # None (constant) or "cosine" (decay to 0 over all steps)
    warmup_epochs: int = 0  # with "cosine": the rate rises linearly from 0 over these first epochs
    weight_decay: float = 0.0  # > 0: AdamW's decoupled decay of the kernels (not biases, BatchNorm, …)
    patience: int | None = None  # stop after this many epochs without a better validation macro-F1
    # "inner": the best epoch / early stop / head regularisation is chosen on data inside the training
    # part and the validation fold is scored once; "last": no choice at all, the last epoch is scored.
    selection: str = "inner"
    # pretrained backbones
    finetune: str = "head"  # "head" (frozen backbone, cached features), "top" or "all"
    top_blocks: int = 2  # with finetune="top": how many of the last MBConv blocks train
    # with finetune="top"/"all": discriminative rates; a stage k below the classifier trains at decay^k × the rate
    block_lr_decay: float = 1.0
    # with finetune="top"/"all": start from the frozen-feature softmax head (λ and steps chosen by inner CV on
    # the training part), as fastai's fine_tune trains the head first, instead of a random head
    head_init: bool = False
    weights: str | None = None  # a .pth file instead of the packaged ImageNet weights
    tta_flip: bool = True  # average the probabilities of each photo and its mirror image
    head_l2_grid: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
    head_steps: int = 300
    # with finetune="head": this many augmented views of each photo (``augment``, or shifts of up to a tenth of
    # the image, ±10°, brightness and contrast; and each view's mirror image), computed once by the frozen
    # backbone and cached, join the head's training loss (training photos only; nothing is scored on them)
    head_views: int = 0
    # with finetune="top": > 0 caches what the frozen blocks compute. The activation maps at the input of the
    # first trainable block, of each photo and of this many augmented views of it (``augment``, as head_views
    # draws them), each with its mirror image, are computed once (and cached on disk like the features); each
    # epoch trains every photo on one of its maps, drawn at random, so only the trainable top runs forward and
    # backward at each step. 0: the whole network runs at every step, on images augmented on the device.
    top_views: int = 0
    # with selection="inner" (a network trained by epochs): once the epoch is chosen on the inner split, train
    # again on the whole training part for that many epochs; that model is saved and scored (as the head is
    # refit on the whole training part once its λ and steps are chosen)
    refit: bool = False
    inner_folds: int = 4
    target_recall: tuple[str, float] | None = None  # (class, recall): the operating point's threshold
    # how the probabilities are calibrated (training.evaluation.calibration), fitted on predictions of the
    # training part that its model did not train on: a frozen head's inner out-of-fold predictions, or a network's
    # inner validation split. "none" keeps the raw softmax. "auto" (the default): the lowest cross-validated
    # log-loss among none, temperature, Platt (two classes) and vector scaling on those predictions; it chose Platt
    # in every fold of tree vs not_a_tree (benchmarks/RESULTS.md, issue 36)
    calibration: str = "auto"
    # referral: photos whose calibrated confidence is below a threshold chosen on the same inner predictions go to
    # a person. refer_coverage c keeps the most confident fraction c; refer_accuracy B (instead) the most photos
    # whose balanced accuracy reaches B. Both None: no threshold is saved
    refer_coverage: float | None = 0.8
    refer_accuracy: float | None = None
    # "autodiff" (jax.grad) or "manual": Model 1's hand-written backward (manual_backprop.cnn) through a
    # jax.custom_vjp; the optimizer and the jitted step are the same. The Model 1 presets (lab-2020, improved)
    # train on "manual", the faster of the two (benchmarks/RESULTS.md, issue 37)
    grad: str = "autodiff"

    def __post_init__(self):
        _check_config(self)

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["augment"] = None if self.augment is None else self.augment._asdict()
        return data

    @classmethod
    def from_json(cls, data: dict) -> TrainConfig:
        """A config from ``config.json`` (possibly someone else's): every field checked, unknown ones refused.

        Only JSON values are accepted (strings, numbers, booleans, lists); names are checked against the
        registries (models, crops, schedules …) and numbers against their ranges. Nothing is evaluated.
        """
        if not isinstance(data, dict):
            raise ValueError(f"the configuration is a {type(data).__name__}, not an object")
        data = _from_flat_augment(data)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(str(k)[:40] for k in data if k not in known)
        if unknown:
            raise ValueError(f"unknown configuration fields {unknown}")
        data = dict(data)
        for name in ("head_units", "head_l2_grid", "target_recall"):
            if isinstance(data.get(name), list):
                data[name] = tuple(data[name])
        if isinstance(data.get("augment"), dict):
            fields = data["augment"]
            unknown = sorted(str(k)[:40] for k in fields if k not in Augment._fields)
            if unknown:
                raise ValueError(f"unknown augmentation fields {unknown}")
            data["augment"] = Augment(**fields)
        return cls(**data)

    @property
    def pretrained(self) -> bool:
        """A pretrained backbone (:attr:`models.registry.ModelKind.pretrained`): its strategy follows ``finetune``
        (:func:`training.loop.registry.strategy`)."""
        return self.model in KINDS and KINDS[self.model].pretrained


_FLAT_AUGMENT = {"augment_crop_pad": "crop_pad", "augment_flip": "flip", "augment_degrees": "max_degrees",
                 "augment_brightness": "brightness", "augment_contrast": "contrast"}


def _from_flat_augment(data: dict) -> dict:
    """A config.json written before ``augment`` held an ``Augment`` (a bool and five ``augment_*`` fields)."""
    if not isinstance(data.get("augment"), bool) or not set(_FLAT_AUGMENT) <= set(data):
        return data
    data = dict(data)
    fields = {new: data.pop(old) for old, new in _FLAT_AUGMENT.items()}
    data["augment"] = fields if data["augment"] else None
    return data


_CHOICES: dict[str, tuple] = {
    "crop": CROPS, "class_weights": (None, "balanced"), "activation": tuple(ACTIVATIONS),
    "lr_schedule": (None, "cosine"), "selection": ("inner", "last"), "finetune": FINETUNE,
    "grad": ("autodiff", "manual"), "calibration": ("none", "temperature", "platt", "vector", "auto"),
}


# field → (lowest, highest) for integers; None: unbounded above
_INTS = {"image_size": (8, 4096), "epochs": (1, 100_000), "batch_size": (1, 1 << 20), "folds": (1, 1000),
         "seed": (-(2**63), 2**63 - 1), "first_kernel": (1, 64), "top_blocks": (0, 64),
         "head_steps": (1, 1_000_000), "inner_folds": (2, 100), "warmup_epochs": (0, 100_000),
         "head_views": (0, 64), "top_views": (0, 64)}


MAX_BATCH_VALUES = 1 << 31  # batch_size × image_size² × channels

_BOOLS = ("rgb", "standardize", "tta_flip", "head_init", "refit")


def is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def is_real(v) -> bool:
    """A finite number (not a bool); an integer too large for a float (JSON allows 400 digits) is not one."""
    if not isinstance(v, (int, float, np.integer, np.floating)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def _check_config(c: TrainConfig) -> None:
    """Every field of ``c`` of its type and in its range; ``ValueError`` naming the first that is not."""
    def fail(name: str, expected: str):
        raise ValueError(f"configuration field {name}={getattr(c, name)!r:.80}: expected {expected}")

    for name, choices in {"model": MODELS, **_CHOICES}.items():
        value = getattr(c, name)
        if not isinstance(value, (str, type(None))) or value not in choices:
            raise ValueError(f"unknown {name} {value!r:.80}; expected one of {list(choices)}")
    for name, (lo, hi) in _INTS.items():
        if not is_int(getattr(c, name)) or not lo <= getattr(c, name) <= hi:
            fail(name, f"an integer in [{lo}, {hi}]")
    for name in _BOOLS:
        if not isinstance(getattr(c, name), (bool, np.bool_)):
            fail(name, "true or false")
    per_image = c.image_size ** 2 * (3 if c.rgb else 1)
    if c.batch_size * per_image > MAX_BATCH_VALUES:  # (predict allocates a batch of images up front: a config.json
        # of batch_size 2^20 at 4096 px asked for 192 TiB and died with a MemoryError)
        fail("batch_size", f"at most {MAX_BATCH_VALUES // per_image} images of {c.image_size} px (a batch of at "
                           f"most 2^31 values, 8 GiB of float32)")
    for name, lo, hi in (("learning_rate", 0, 10), ("val_fraction", 0, 1), ("dropout_rate", -1e-12, 1),
                         ("weight_decay", -1e-12, 1)):
        if not is_real(getattr(c, name)) or not lo < getattr(c, name) < hi:
            fail(name, f"a number in ({max(lo, 0)}, {hi})")
    if not (is_real(c.block_lr_decay) and 0 < c.block_lr_decay <= 1):
        fail("block_lr_decay", "a number in (0, 1]")
    if c.augment is not None:
        a = c.augment
        ranges = ((a.max_degrees, 180), (a.brightness, 1), (a.contrast, 1)) if isinstance(a, Augment) else ()
        if not (isinstance(a, Augment) and is_int(a.crop_pad) and 0 <= a.crop_pad <= 1024
                and isinstance(a.flip, (bool, np.bool_)) and all(is_real(v) and 0 <= v <= hi for v, hi in ranges)):
            fail("augment", "null or {crop_pad: 0–1024, flip: true/false, max_degrees: 0–180, brightness: 0–1, "
                            "contrast: 0–1}")
    if c.top_views and not (c.pretrained and c.finetune == "top"):
        raise ValueError(f"top_views={c.top_views} caches the frozen blocks below a fine-tuned top: it needs "
                         f"finetune 'top' with an EfficientNet-Lite backbone (here {c.model}, finetune "
                         f"{c.finetune!r}); use 0")
    if c.refit and c.selection != "inner":
        raise ValueError(f"refit trains again for the epoch chosen on an inner split: it needs selection 'inner' "
                         f"(here {c.selection!r})")
    for name in ("refer_coverage", "refer_accuracy"):
        if getattr(c, name) is not None and not (is_real(getattr(c, name)) and 0 < getattr(c, name) <= 1):
            fail(name, "null or a number in (0, 1]")
    frozen_head = c.pretrained and c.finetune == "head"  # its inner predictions are the head's own inner CV
    if (c.selection != "inner" and not frozen_head
            and (c.calibration != "none" or c.refer_coverage or c.refer_accuracy)):
        raise ValueError(f"calibration and referral are fitted on inner predictions of the training part: they need "
                         f"selection 'inner' (here {c.selection!r}); use --calibration none (and no --refer-*)")
    if c.patience is not None and not (is_int(c.patience) and c.patience >= 1):
        fail("patience", "null or an integer ≥ 1")
    if not (isinstance(c.head_units, tuple) and 0 < len(c.head_units) <= 8
            and all(is_int(u) and 1 <= u <= 65536 for u in c.head_units)):
        fail("head_units", "1 to 8 integers in [1, 65536]")
    if not (isinstance(c.head_l2_grid, tuple) and 0 < len(c.head_l2_grid) <= 100
            and all(is_real(v) and v >= 0 for v in c.head_l2_grid)):
        fail("head_l2_grid", "1 to 100 numbers ≥ 0")
    if c.weights is not None and not isinstance(c.weights, str):
        fail("weights", "null or a file name")
    if c.target_recall is not None and not (
            isinstance(c.target_recall, tuple) and len(c.target_recall) == 2 and isinstance(c.target_recall[0], str)
            and is_real(c.target_recall[1]) and 0 < c.target_recall[1] <= 1):
        fail("target_recall", "null or [class name, recall in (0, 1]]")


# The presets are defined once, in training.loop.presets; these names are read-only views of that registry
PRESETS = presets("train")  # lab-2020, improved, pretrained and default (= pretrained)
FINETUNE_RECIPE = REGISTRY["recipe", "all"].settings  # what fine-tuning a backbone adds (finetune "all")
TOP_RECIPE = MappingProxyType({k: v for k, v in REGISTRY["recipe", "top"].settings.items()
                               if k not in FINETUNE_RECIPE})  # and what "top" adds to that (top_views)
MLP_PRESETS = presets("mlp")  # Nielsen's two networks for the hand-written MLP (experiments.train_mlp)


def get_config(preset: str = "default", *, recipe: bool = True, **overrides: Any) -> TrainConfig:
    """The ``preset``'s config with ``overrides`` (tests shrink it this way).

    A pretrained backbone fine-tuned (``finetune`` ``"top"`` or ``"all"``) takes fine-tuning's recipe
    (:func:`training.loop.presets.recipe_for`) on top of the preset, as ``train --finetune`` does; the
    ``overrides`` still win. ``recipe=False`` leaves it out: the preset and the overrides alone (for a test or a
    benchmark that pins one step's settings)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; expected one of {sorted(PRESETS)}")
    if recipe:
        base = PRESETS[preset]
        overrides = {**recipe_for(overrides.get("model", base.get("model")),
                                  overrides.get("finetune", base.get("finetune", "head"))), **overrides}
    fields = {**PRESETS[preset], **overrides}
    if ("grad" not in overrides and fields.get("grad") == "manual" and fields.get("model") == "model1"
            and fields.get("activation", "relu") != "relu"):
        fields["grad"] = "autodiff"  # a Model 1 preset's hand-written backward is ReLU's: jax.grad for the others
    if "grad" not in overrides and "model" in overrides and overrides["model"] != PRESETS[preset].get("model"):
        fields.pop("grad", None)  # a preset's gradient path is its model's: another model starts from the default
    return dataclasses.replace(TrainConfig(), **fields)
