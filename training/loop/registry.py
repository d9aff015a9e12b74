"""The model registry's training side: the model a config builds, and how it trains.

The facts of each kind (its module, hand-written backward, ONNX graph, native size, whether it is a pretrained
backbone) are :data:`models.registry.KINDS`. What depends on a :class:`~training.loop.config.TrainConfig` is
here, decided once:

- :func:`build_model`: the one place a model is built from ``(config, n_classes, normalization)``;
- :func:`strategy`: how a run trains it (:class:`Strategy`);
- :func:`mirror_average`: whether its predictions average each image with its mirror image;
- :func:`torchvision_weights`: whether a network trained by epochs starts from a user's ImageNet weights file.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from models.registry import ModelKind, model_kind
from training.loop.config import TrainConfig


class Strategy(enum.Enum):
    """How a run trains its model."""

    EPOCHS = "network by epochs"  # the whole network (or a fine-tuned backbone's trainable part), by epochs
    HEAD = "head on cached features"  # a frozen backbone's features computed once; a softmax head by Adam steps
    TOP_MAPS = "top on cached maps"  # the frozen blocks' activation maps computed once; the top by epochs

    @property
    def decodes_photos(self) -> bool:
        """Whether the run needs every photo decoded in memory (a cached strategy reads them in chunks)."""
        return self is Strategy.EPOCHS


def kind(config: TrainConfig) -> ModelKind:
    """The kind of ``config.model`` (:data:`models.registry.KINDS`)."""
    return model_kind(config.model)


def strategy(config: TrainConfig) -> Strategy:
    """A network from scratch trains by epochs; a pretrained backbone by ``finetune``: ``"head"`` on its cached
    features, ``"top"`` with ``top_views`` on the cached maps below the top, otherwise by epochs."""
    if not kind(config).pretrained:
        return Strategy.EPOCHS
    if config.finetune == "head":
        return Strategy.HEAD
    return Strategy.TOP_MAPS if config.top_views else Strategy.EPOCHS


def mirror_average(config: TrainConfig) -> bool:
    """Whether predictions average each image's probabilities with its mirror image's (``tta_flip``, which only a
    pretrained backbone's run uses)."""
    return kind(config).pretrained and config.tta_flip


def torchvision_weights(config: TrainConfig) -> bool:
    """Whether a network trained from its own initialisation starts from a user's ImageNet weights file instead
    (ResNet-50's torchvision ones; a pretrained backbone's ``weights`` replace its packaged ones, see
    :func:`training.transfer.features.backbone_for`)."""
    k = kind(config)
    return k.weights_file and not k.pretrained and bool(config.weights)


def _model1(config: TrainConfig, n_classes: int, mean, std):
    from models.model1 import Model1, feature_side

    if feature_side(config.image_size) < 1:
        raise ValueError(f"image size {config.image_size} is too small for Model 1 (three 2×2 pools after a "
                         "stride-2 convolution): use --image-size 16 or more")
    return Model1(n_classes=n_classes, first_kernel=config.first_kernel, head_units=tuple(config.head_units),
                  dropout_rate=config.dropout_rate, activation=config.activation, input_mean=mean, input_std=std)


def _resnet50(config: TrainConfig, n_classes: int, mean, std):
    from models.resnet import IMAGENET_MEAN, IMAGENET_STD, ResNet50

    if config.weights:  # torchvision weights: BatchNorm layout, ImageNet input normalization
        if not config.rgb:
            raise ValueError("torchvision resnet50 weights need RGB input: leave out --gray")
        return ResNet50(n_classes=n_classes, norm="batch", input_mean=IMAGENET_MEAN, input_std=IMAGENET_STD)
    return ResNet50(n_classes=n_classes, input_mean=mean, input_std=std)


def _googlenet(config: TrainConfig, n_classes: int, mean, std):
    from models.googlenet import GoogLeNet

    return GoogLeNet(n_classes=n_classes, input_mean=mean, input_std=std)


def _transfer(config: TrainConfig, n_classes: int, mean, std):
    from models.transfer import TransferClassifier

    return TransferClassifier(config.model, n_classes, feature_mean=mean, feature_std=std)


_BUILDERS: dict[str, Callable] = {"model1": _model1, "resnet50": _resnet50, "googlenet": _googlenet}


def build_model(config: TrainConfig, n_classes: int, normalization: dict | None = None):
    """The config's model; ``normalization`` = {"mean": [...], "std": [...]} per input channel (or, for a
    pretrained backbone, per feature), or None."""
    k = kind(config)
    norm = normalization or {}
    mean = tuple(norm["mean"]) if norm else None
    std = tuple(norm["std"]) if norm else None
    return (_transfer if k.pretrained else _BUILDERS[k.name])(config, n_classes, mean, std)
