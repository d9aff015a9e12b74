"""EfficientNet-Lite forward pass on CPU: Flax (four formulations) against PyTorch, same weights, same run.

    python -m benchmarks.backbone_forward [--variant efficientnet_lite0] [--batch 32] [--repeats 5]

Prints images/s of the jitted, vmapped Flax forward: the default (depthwise convolution as shifted
slices, 1×1 convolutions as ``dot_general``), the same with BatchNorm folded into the convolutions
(``fold_batchnorm``: what prediction and feature extraction run), with the 1×1 convolutions as XLA convolutions
(``conv``), and with the depthwise convolution as XLA's grouped convolution (``lax``); of PyTorch
eager (``torch.inference_mode``, if installed: ``pip install -e '.[bench]'``); the ratio
Flax/PyTorch, and the fraction of this machine's float32 matmul ceiling (measured in the same run)
that the forward's FLOPs reach. Also per layer shape: depthwise shift vs lax, 1×1 dot vs conv.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.mlp_epoch import matmul_ceiling_gflops
from models.efficientnet_lite import (
    EfficientNetLite,
    PointwiseConv,
    block_specs,
    depthwise_shift,
    fold_batchnorm,
    native_size,
)
from models.pretrained import load_backbone, packaged_weights_file
from models.torch_weights import load_state_dict
from training.common.files import output_dir
from training.common.tables import write_table
from training.common.timing import device_description, time_interleaved


def forward_flops(variant: str, size: int) -> int:
    """FLOPs (2 per multiply-add) of one image: stem, every block's expand/depthwise/project, head, classifier."""
    side = -(-size // 2)
    total = 2 * 9 * 3 * 32 * side * side
    for s in block_specs(variant):
        mid = s.c_in * s.expand
        if s.expand != 1:
            total += 2 * s.c_in * mid * side * side
        side = -(-side // s.stride)
        total += 2 * s.kernel**2 * mid * side * side + 2 * mid * s.c_out * side * side
    return total + 2 * block_specs(variant)[-1].c_out * 1280 * side * side + 2 * 1280 * 1000


def _pointwise_row(batch: int, side: int, c_in: int, c_out: int) -> dict:
    """One 1×1 convolution's shape, the model's own layer (``PointwiseConv``) timed with ``impl="dot"`` and
    ``impl="conv"``, vmapped over the batch as in the model, interleaved."""
    xs = jnp.asarray(np.random.default_rng(1).uniform(size=(batch, side, side, c_in)), jnp.float32)
    params = PointwiseConv(c_out).init(jax.random.key(2), xs[0])
    dot, conv = (jax.jit(jax.vmap(lambda a, m=PointwiseConv(c_out, impl): m.apply(params, a)))
                 for impl in ("dot", "conv"))
    t = time_interleaved({"dot": lambda: dot(xs), "conv": lambda: conv(xs)}, repeats=3)
    flops = 2 * batch * side * side * c_in * c_out
    return {"input": f"{side}×{side}×{c_in}", "output channels": c_out, "dot ms": 1e3 * t["dot"][0],
            "conv ms": 1e3 * t["conv"][0], "conv / dot": t["conv"][0] / t["dot"][0],
            "dot GFLOP/s": flops / t["dot"][0] / 1e9, "conv GFLOP/s": flops / t["conv"][0] / 1e9}


def _add_onnxruntime(fns: dict, variant: str, params: dict, x: np.ndarray) -> str:
    """ONNX Runtime on this project's export of the same backbone (``models.onnx_graph``; a 2-class head,
    no flip averaging), if onnx and onnxruntime are installed (``pip install -e '.[deploy]'``)."""
    try:
        import onnxruntime as ort

        from models.onnx_graph import classifier_to_onnx
    except ImportError:
        return "onnx/onnxruntime not installed: no ONNX Runtime row."
    from models.transfer import TransferClassifier

    head = {"kernel": np.zeros((1280, 2), np.float32), "bias": np.zeros(2, np.float32)}
    proto = classifier_to_onnx(TransferClassifier(variant, 2), {"backbone": params, "head": head},
                               image_size=x.shape[1], channels=3, tta_flip=False, metadata={})
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    fns["onnxruntime, this project's export"] = lambda: session.run(["probabilities"], {"image": x})
    return f"ONNX Runtime {ort.__version__} ({ort.get_device()}), default threads."


def _add_torch_exported(fns: dict, forward, xt) -> None:
    """ONNX Runtime on the PyTorch reference exported by ``torch.onnx.export`` (opset 17, TorchScript tracer),
    the graph people deploy from PyTorch, if onnxruntime is installed."""
    import io

    import torch

    try:
        import onnxruntime as ort
    except ImportError:
        return

    class Reference(torch.nn.Module):
        def forward(self, x):
            return forward(x)

    buffer = io.BytesIO()
    torch.onnx.export(Reference(), (xt,), buffer, opset_version=17, input_names=["x"], output_names=["logits"],
                      dynamo=False)
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    x = xt.numpy()
    with torch.inference_mode():
        np.testing.assert_allclose(session.run(None, {"x": x})[0], forward(xt).numpy(), atol=1e-4)
    fns["onnxruntime, PyTorch-exported graph"] = lambda: session.run(None, {"x": x})


def run(variant: str, batch: int, repeats: int, out: str) -> list[dict]:
    size = native_size(variant)
    params, _ = load_backbone(variant)
    x = np.random.default_rng(0).uniform(0, 1, (batch, size, size, 3)).astype(np.float32)
    fns = {}
    xj = jnp.asarray(x)
    folded = jax.device_put(fold_batchnorm(params))
    for depthwise, pointwise, fold in (("shift", "dot", True), ("shift", "dot", False), ("shift", "conv", False),
                                       ("lax", "dot", False)):
        model = EfficientNetLite(variant, depthwise=depthwise, pointwise=pointwise, folded=fold)
        f = jax.jit(jax.vmap(lambda p, im, m=model: m.apply({"params": p}, im), (None, 0)))
        name = f"flax (depthwise {depthwise}, 1×1 {pointwise}{', BatchNorm folded' if fold else ''})"
        fns[name] = lambda f=f, p=(folded if fold else params): f(p, xj)
    try:
        import torch

        from benchmarks.torch_reference import torch_efficientnet_lite

        forward = torch_efficientnet_lite(load_state_dict(packaged_weights_file(variant)), variant)
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())

        def torch_fn():
            with torch.inference_mode():
                return forward(xt)

        fns["pytorch eager"] = torch_fn
        torch_info = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
        _add_torch_exported(fns, forward, xt)
    except ImportError:
        torch_info = "torch not installed: no peer measured"
    ort_info = _add_onnxruntime(fns, variant, params, x)
    times = time_interleaved(fns, repeats=repeats)
    ceiling = matmul_ceiling_gflops()
    flops = forward_flops(variant, size) * batch
    ref = times.get("pytorch eager")
    rows = []
    for name, (best, median) in times.items():
        rows.append({"implementation": name, "images/s (best)": batch / best, "images/s (median)": batch / median,
                     "vs PyTorch (median)": (ref[1] / median) if ref else "",
                     "GFLOP/s": flops / best / 1e9, "fraction of matmul ceiling": flops / best / 1e9 / ceiling})
    layer_rows, pointwise_rows = [], []
    seen = set()
    side = -(-size // 2)
    for s in block_specs(variant):
        mid = s.c_in * s.expand
        key = (side, mid, s.kernel, s.stride)
        if key not in seen:
            seen.add(key)
            xs = jnp.asarray(np.random.default_rng(1).uniform(size=(batch, side, side, mid)), jnp.float32)
            k = jnp.asarray(np.random.default_rng(2).normal(size=(s.kernel, s.kernel, 1, mid)), jnp.float32)
            shift = jax.jit(jax.vmap(lambda im, k=k, st=s.stride: depthwise_shift(im, k, st)))
            lax = jax.jit(lambda a, k=k, st=s.stride, c=mid: jax.lax.conv_general_dilated(
                a, k, (st, st), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c))
            t = time_interleaved({"shift": lambda f=shift, a=xs: f(a), "lax": lambda f=lax, a=xs: f(a)},
                                 repeats=3)
            layer_rows.append({"input": f"{side}×{side}×{mid}", "kernel": s.kernel, "stride": s.stride,
                               "shift ms": 1e3 * t["shift"][0], "lax ms": 1e3 * t["lax"][0],
                               "lax / shift": t["lax"][0] / t["shift"][0]})
        side = -(-side // s.stride)
        key = (side, mid, s.c_out)
        if key not in seen:  # the block's projection: a 1×1 convolution
            seen.add(key)
            pointwise_rows.append(_pointwise_row(batch, side, mid, s.c_out))
    notes = (f"{variant} at {size} px, batch {batch}, float32, {forward_flops(variant, size) / 1e9:.2f} GFLOP per "
             f"image. Device: {device_description()}; {torch_info}. Matmul ceiling measured in this run: "
             f"{ceiling:.0f} GFLOP/s. Ratios compare medians of interleaved runs. {ort_info}\n")
    path = output_dir(out)
    write_table(rows, path, "backbone_forward", title="Backbone forward", notes=notes)
    write_table(layer_rows, path, "depthwise_layers", title="Depthwise convolution: shifted slices vs XLA grouped conv",
                notes=f"Per distinct layer shape of {variant}, batch {batch}, best of 3.\n")
    write_table(pointwise_rows, path, "pointwise_layers", title="1×1 convolution: dot_general vs conv_general_dilated",
                notes=f"Each block's projection (H×W×C_in → C_out) of {variant}, batch {batch}, best of 3.\n")
    print((path / "backbone_forward.md").read_text())
    print((path / "depthwise_layers.md").read_text())
    print((path / "pointwise_layers.md").read_text())
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="efficientnet_lite0")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="runs/bench_backbone")
    args = p.parse_args(argv)
    run(args.variant, args.batch, args.repeats, args.out)


if __name__ == "__main__":
    main()
