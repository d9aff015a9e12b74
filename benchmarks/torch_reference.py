"""EfficientNet-Lite in plain PyTorch (functional, eval mode), built from a state dict: the peer of the Flax model.

Written independently of ``models/efficientnet_lite.py``: TF-SAME padding by hand (the odd
pixel right and bottom), BatchNorm with eps 1e-3, ReLU6, inputs mapped from [0, 1] to [−1, 1].
Needs torch (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from models.efficientnet_lite import block_specs


def torch_efficientnet_lite(state: dict[str, np.ndarray], variant: str, *, tensors: dict | None = None) -> Callable:
    """``forward(x NCHW float32 tensor) -> logits`` using the tensors of ``state`` (or the given torch
    ``tensors`` of the same names, e.g. some with ``requires_grad`` for training)."""
    import torch
    import torch.nn.functional as F

    if tensors is None:
        tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}

    def same_pad(x, k, s):
        h, w = int(x.shape[-2]), int(x.shape[-1])  # Python ints: constants when torch.onnx traces it
        ph = max((-(-h // s) - 1) * s + k - h, 0)
        pw = max((-(-w // s) - 1) * s + k - w, 0)
        return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))

    def conv(x, name, s=1, groups=1):
        w = tensors[name + ".weight"]
        return F.conv2d(same_pad(x, w.shape[-1], s), w, stride=s, groups=groups)

    def bn(x, name):
        g = {f: tensors[f"{name}.{f}"] for f in ("weight", "bias", "running_mean", "running_var")}
        return F.batch_norm(x, g["running_mean"], g["running_var"], g["weight"], g["bias"], False, 0.0, 1e-3)

    def forward(x):
        x = F.relu6(bn(conv(x * 2 - 1, "_conv_stem", 2), "_bn0"))
        for i, spec in enumerate(block_specs(variant)):
            p = f"_blocks.{i}."
            h = x
            if f"{p}_expand_conv.weight" in tensors:
                h = F.relu6(bn(conv(h, p + "_expand_conv"), p + "_bn0"))
            h = F.relu6(bn(conv(h, p + "_depthwise_conv", spec.stride, groups=h.shape[1]), p + "_bn1"))
            h = bn(conv(h, p + "_project_conv"), p + "_bn2")
            x = h + x if (spec.stride == 1 and spec.c_in == spec.c_out) else h
        x = F.relu6(bn(conv(x, "_conv_head"), "_bn1")).mean(dim=(2, 3))
        return F.linear(x, tensors["_fc.weight"], tensors["_fc.bias"])

    return forward
