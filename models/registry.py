"""What the project knows about each kind of model, in one table: :data:`KINDS`, name → :class:`ModelKind`.

A kind says which Flax module it is, whether its backward pass is written by hand (``manual_backprop``) and for
which activations, whether it has an ONNX graph (``models.onnx_graph``), the image size its weights expect, and
whether it is a pretrained backbone whose training strategy follows ``finetune`` (frozen features, a fine-tuned
top, or the whole network; ``training.loop.registry`` decides it from a config). Questions about a built model go
through :func:`kind_of` (its module and, for a backbone, its variant), never through ``isinstance`` at the call site.

The modules are named, not imported: reading this table imports no network.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from types import MappingProxyType

from models.efficientnet_lite import VARIANTS, native_size


@dataclass(frozen=True)
class ModelKind:
    """One kind of model and its facts."""

    name: str  # as ``TrainConfig.model`` and ``--model`` spell it
    module_path: str  # "package.module.Class" of its Flax module
    manual_activations: tuple[str, ...]  # the activations its hand-written backward covers; () when none
    onnx: str | None  # its graph's body in models.onnx_graph (None: no ONNX export)
    native_size: int | None  # the image size its pretrained weights were trained at; None: any size, from scratch
    pretrained: bool  # an ImageNet backbone with a head: its strategy follows ``finetune``
    weights_file: bool = False  # takes ImageNet weights from a user's file (``--weights``)
    activation: str | None = None  # a fixed activation (None: the module's ``activation`` field says it)
    eval_chunk: int | None = 0  # images per step of models.efficientnet_lite.map_images (0: vmap the batch;
    # None: map_images' per-device default, one image at a time on CPU)

    @property
    def module(self) -> type:
        """The Flax module class (imported on first use)."""
        package, _, cls = self.module_path.rpartition(".")
        return getattr(importlib.import_module(package), cls)

    def manual_backward(self, model=None) -> bool:
        """Whether ``model`` (of this kind; None: the kind's default activation) has a hand-written backward."""
        activation = self.activation or getattr(model, "activation", None) or "relu"
        return activation in self.manual_activations


def _backbone(variant: str) -> ModelKind:
    return ModelKind(variant, "models.transfer.TransferClassifier", ("relu6",), onnx="efficientnet_lite",
                     native_size=native_size(variant), pretrained=True, weights_file=True, activation="relu6",
                     eval_chunk=None)


KINDS: MappingProxyType[str, ModelKind] = MappingProxyType({
    "model1": ModelKind("model1", "models.model1.Model1", ("relu",), onnx="model1", native_size=None,
                        pretrained=False),
    "resnet50": ModelKind("resnet50", "models.resnet.ResNet50", (), onnx=None, native_size=None, pretrained=False,
                          weights_file=True),
    "googlenet": ModelKind("googlenet", "models.googlenet.GoogLeNet", (), onnx=None, native_size=None,
                           pretrained=False),
    **{variant: _backbone(variant) for variant in VARIANTS},
})

def model_kind(name: str) -> ModelKind:
    """The kind called ``name``; ``ValueError`` naming the known ones otherwise."""
    if name not in KINDS:
        raise ValueError(f"unknown model {name!r}; expected one of {list(KINDS)}")
    return KINDS[name]


def kind_of(model) -> ModelKind:
    """The kind of a built Flax module (a backbone's by its ``variant``); ``ValueError`` for a module of none."""
    path = f"{type(model).__module__}.{type(model).__qualname__}"
    for kind in KINDS.values():
        if kind.module_path == path and (not kind.pretrained or getattr(model, "variant", None) == kind.name):
            return kind
    raise ValueError(f"{type(model).__name__} is not a registered model kind ({list(KINDS)})")
