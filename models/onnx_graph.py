"""A trained classifier as an ONNX graph that ONNX Runtime (or any ONNX runtime) runs without JAX.

The graph takes ``image``: float32 (N, H, W, C), NHWC, values in [0, 1], H = W = the run's image size
(the photo decoded, EXIF-rotated, centre-cropped or squashed and bicubic-resized, exactly as
``training.data.decoding.load_image`` does) and returns ``probabilities``: float32 (N, n_classes),
softmax over the classes (for a pretrained backbone with flip averaging: the mean of the image's and
its mirror image's, as ``experiments.predict`` does).

It is written from the Flax parameters with the operators ONNX Runtime is fast on: NCHW ``Conv`` (the
depthwise convolutions as ``Conv`` with ``group`` = channels), inference BatchNorm folded into the
preceding convolution's weights and bias, ReLU6 as ``Clip``, TF-SAME padding as explicit pads (the
image size is fixed), the feature standardization folded into the classifier's ``Gemm``. Needs the
``onnx`` package (``pip install -e '.[deploy]'``).
"""

from __future__ import annotations

import jax
import numpy as np

from models.common import same_padding

OPSET = 17
CALIBRATION_EPS = 1e-12  # training.evaluation.calibration.EPS (models stand below training: a test keeps them equal)


class UnsupportedModel(ValueError):
    """The model kind has no ONNX writer here."""


class _Graph:
    """Nodes and initializers, named in order."""

    def __init__(self):
        import onnx  # noqa: F401  (fails early, with the import error, when onnx is absent)

        self.nodes, self.inits, self.count = [], [], 0

    def name(self, stem: str) -> str:
        self.count += 1
        return f"{stem}_{self.count}"

    def const(self, stem: str, value) -> str:
        from onnx import numpy_helper

        name = self.name(stem)
        arr = np.asarray(value)
        arr = arr.astype(np.float32) if arr.dtype.kind == "f" else arr
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def op(self, op_type: str, inputs: list[str], stem: str | None = None, **attrs) -> str:
        from onnx import helper

        out = self.name(stem or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def conv(self, x: str, kernel_hwio: np.ndarray, bias: np.ndarray | None, *, size: int, stride: int = 1,
             groups: int = 1) -> tuple[str, int]:
        """NCHW Conv with TF-SAME pads for a ``size``×``size`` input; returns (output, output size)."""
        k = kernel_hwio.shape[0]
        out, lo, hi = same_padding(size, k, stride)
        w = np.transpose(np.asarray(kernel_hwio, np.float32), (3, 2, 0, 1))  # HWIO → OIHW (I = 1 when grouped)
        inputs = [x, self.const("W", w)] + ([self.const("B", bias)] if bias is not None else [])
        return self.op("Conv", inputs, "conv", kernel_shape=[k, k], strides=[stride, stride],
                       pads=[lo, lo, hi, hi], group=groups), out

    def to_model(self, x: str, y: str, n_inputs: tuple, n_outputs: int | tuple, metadata: dict[str, str],
                 name: str = "tree_risk_classifier"):
        import onnx
        from onnx import TensorProto, helper

        n_outputs = n_outputs if isinstance(n_outputs, tuple) else (n_outputs,)
        graph = helper.make_graph(
            self.nodes, name,
            [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", *n_inputs])],
            [helper.make_tensor_value_info(y, TensorProto.FLOAT, ["N", *n_outputs])], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="tree-risk-jax")
        model.ir_version = 8  # what onnxruntime ≥ 1.14 reads
        for key, value in metadata.items():
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.checker.check_model(model)
        return model


def _efficientnet_features(g: _Graph, x: str, backbone: dict, variant: str, size: int) -> str:
    """The pooled (N, 1280) features of NCHW ``x``; BatchNorm folded (:func:`fold_batchnorm`)."""
    from models.efficientnet_lite import block_specs, fold_batchnorm

    bb = fold_batchnorm(backbone)
    x = g.op("Add", [g.op("Mul", [x, g.const("two", np.float32(2))]), g.const("minus_one", np.float32(-1))])
    x, size = g.conv(x, bb["conv_stem"]["kernel"], bb["bn_stem"]["bias"], size=size, stride=2)
    lo, hi = g.const("zero", np.float32(0)), g.const("six", np.float32(6))

    def relu6(t):
        return g.op("Clip", [t, lo, hi], "relu6")

    x = relu6(x)
    for i, spec in enumerate(block_specs(variant)):
        p = bb[f"block{i}"]
        h = x
        if spec.expand != 1:
            h, _ = g.conv(h, p["expand_conv"]["kernel"], p["bn0"]["bias"], size=size)
            h = relu6(h)
        k = p["depthwise_conv"]["kernel"]  # (k, k, 1, C): HWIO with I = 1
        h, out = g.conv(h, k, p["bn1"]["bias"], size=size, stride=spec.stride, groups=k.shape[-1])
        h = relu6(h)
        h, _ = g.conv(h, p["project_conv"]["kernel"], p["bn2"]["bias"], size=out)
        x = g.op("Add", [h, x]) if (spec.stride == 1 and spec.c_in == spec.c_out) else h
        size = out
    x, _ = g.conv(x, bb["conv_head"]["kernel"], bb["bn_head"]["bias"], size=size)
    return g.op("Flatten", [g.op("GlobalAveragePool", [relu6(x)])], axis=1)


def _efficientnet(g: _Graph, x: str, params: dict, model, size: int) -> str:
    f = _efficientnet_features(g, x, params["backbone"], model.variant, size)
    W = np.asarray(params["head"]["kernel"], np.float64)
    b = np.asarray(params["head"]["bias"], np.float64)
    if model.feature_mean is not None:  # ((f − m)/s) W + b = f (W/s) + (b − (m/s) W)
        m, s = np.asarray(model.feature_mean, np.float64), np.asarray(model.feature_std, np.float64)
        W, b = W / s[:, None], b - (m / s) @ W
    return g.op("Gemm", [f, g.const("W_head", W.astype(np.float32)), g.const("b_head", b.astype(np.float32))],
                "logits")


def _activation(g: _Graph, x: str, name: str) -> str:
    if name == "relu":
        return g.op("Relu", [x])
    if name == "tanh":
        return g.op("Tanh", [x])
    if name == "elu":
        return g.op("Elu", [x], alpha=1.0)
    if name == "silu":
        return g.op("Mul", [x, g.op("Sigmoid", [x])])
    if name == "gelu":  # Flax's default, the tanh approximation: ½x(1 + tanh(√(2/π)(x + 0.044715x³)))
        cube = g.op("Mul", [g.op("Mul", [x, x]), x])
        inner = g.op("Add", [x, g.op("Mul", [cube, g.const("c", np.float32(0.044715))])])
        t = g.op("Tanh", [g.op("Mul", [inner, g.const("k", np.float32(np.sqrt(2 / np.pi)))])])
        half_x = g.op("Mul", [x, g.const("half", np.float32(0.5))])
        return g.op("Mul", [half_x, g.op("Add", [t, g.const("one", np.float32(1))])])
    raise UnsupportedModel(f"activation {name!r} has no ONNX form here")


def _model1(g: _Graph, x: str, params: dict, model, size: int) -> str:
    if model.input_mean is not None:
        shape = (1, -1, 1, 1)
        x = g.op("Div", [g.op("Sub", [x, g.const("mean", np.reshape(model.input_mean, shape))]),
                         g.const("std", np.reshape(model.input_std, shape))])

    def pool(t, size):  # 2×2, stride 2, VALID: an odd last row/column is dropped (floor), as the model does
        return g.op("MaxPool", [t], kernel_shape=[2, 2], strides=[2, 2]), size // 2

    for name in ("conv1", "conv2", "conv3", "conv4", "conv5"):
        x, size = g.conv(x, params[name]["kernel"], params[name]["bias"], size=size, stride=2 if name == "conv1" else 1)
        x = _activation(g, x, model.activation)
        if name in ("conv1", "conv3", "conv5"):
            x, size = pool(x, size)
    x = g.op("Flatten", [g.op("Transpose", [x], perm=[0, 2, 3, 1])], axis=1)  # Flax flattens (H, W, C)
    for i in range(1, len(model.head_units) + 1):
        d = params[f"dense{i}"]
        x = _activation(g, g.op("Gemm", [x, g.const("W", d["kernel"]), g.const("b", d["bias"])]), model.activation)
    return g.op("Gemm", [x, g.const("W", params["logits"]["kernel"]), g.const("b", params["logits"]["bias"])],
                "logits")


def _with_mirror(g: _Graph, x: str) -> str:
    """NCHW ``x`` (N images) → the 2N images: ``x``, then each image's mirror image (width reversed)."""
    mirror = g.op("Slice", [x, g.const("start", np.array([-1])), g.const("end", np.array([-(2 ** 63 - 1)])),
                            g.const("axis", np.array([3])), g.const("step", np.array([-1]))], "mirror")
    return g.op("Concat", [x, mirror], axis=0)


def features_to_onnx(variant: str, backbone: dict, *, image_size: int):
    """The frozen backbone's feature extractor as ONNX: ``image`` (N, H, W, 3) in [0, 1] → ``features``
    (N, 2, 1280), the pooled features of each image and of its mirror image, as
    :func:`training.transfer.features.make_feature_fn` computes them in JAX."""
    backbone = jax.tree_util.tree_map(np.asarray, {k: v for k, v in backbone.items() if k != "fc"})
    g = _Graph()
    x = _with_mirror(g, g.op("Transpose", ["image"], "nchw", perm=[0, 3, 1, 2]))
    f = _efficientnet_features(g, x, backbone, variant, image_size)  # (2N, D): images, then mirrors
    dim = np.asarray(backbone["conv_head"]["kernel"]).shape[-1]
    pair = g.op("Reshape", [f, g.const("pair", np.array([2, -1, dim]))])
    from onnx import helper

    g.nodes.append(helper.make_node("Transpose", [pair], ["features"], perm=[1, 0, 2]))
    return g.to_model("image", "features", (image_size, image_size, 3), (2, dim), {}, name="backbone_features")


def classifier_to_onnx(model, params: dict, *, image_size: int, channels: int, tta_flip: bool,
                       metadata: dict[str, str], calibration=None):
    """The ONNX model (``onnx.ModelProto``) of a trained :class:`models.model1.Model1` or
    :class:`models.transfer.TransferClassifier`; any other model raises :class:`UnsupportedModel`.
    ``calibration`` (a ``training.evaluation.calibration.Calibration``, not ``none``): the output is the
    calibrated ``softmax(scale ⊙ log(max(p, ε)) + shift)`` of the (flip-averaged) probabilities ``p``."""
    from models.registry import kind_of

    body = {"efficientnet_lite": _efficientnet, "model1": _model1}.get(kind_of(model).onnx)
    if body is None:
        raise UnsupportedModel(f"no ONNX export for {type(model).__name__}: only Model 1 and the EfficientNet-Lite "
                               "classifiers are written as ONNX graphs")
    params = jax.tree_util.tree_map(np.asarray, params)
    g = _Graph()
    x = g.op("Transpose", ["image"], "nchw", perm=[0, 3, 1, 2])
    if tta_flip:  # the image and its mirror image as one batch of 2N; their probabilities averaged
        x = _with_mirror(g, x)
    probs = g.op("Softmax", [body(g, x, params, model, image_size)], axis=1)
    if tta_flip:
        pair = g.op("Reshape", [probs, g.const("pair", np.array([2, -1, params["head"]["kernel"].shape[1]]))])
        probs = g.op("ReduceMean", [pair], axes=[0], keepdims=0)
    if calibration is not None and calibration.method != "none":
        z = g.op("Log", [g.op("Max", [probs, g.const("eps", np.array(CALIBRATION_EPS, np.float32))])])
        z = g.op("Add", [g.op("Mul", [z, g.const("cal_scale", np.asarray(calibration.scale, np.float32))]),
                         g.const("cal_shift", np.asarray(calibration.shift, np.float32))])
        probs = g.op("Softmax", [z], axis=1)
    from onnx import helper

    g.nodes.append(helper.make_node("Identity", [probs], ["probabilities"]))
    n_classes = (params["head"]["kernel"] if "head" in params else params["logits"]["kernel"]).shape[1]
    return g.to_model("image", "probabilities", (image_size, image_size, channels), n_classes, metadata)

