"""EfficientNet-Lite forward pass on CPU: JAX against PyTorch and ONNX Runtime, same weights, same run.

    python -m benchmarks.backbone_forward [--variant efficientnet_lite1] [--batch 32] [--repeats 7]

Prints images/s of the jitted JAX forward with BatchNorm folded (what prediction and feature extraction run)
batched by ``models.efficientnet_lite.map_images``: one image at a time (the CPU default), chunks of 2 and 4
images, and ``jax.vmap`` over the whole batch (the default before issue 37); the model as it trains (BatchNorm
as an affine) one image at a time; PyTorch eager (``torch.inference_mode``, if installed:
``pip install -e '.[bench]'``); ONNX Runtime on PyTorch's ``torch.onnx.export`` of the same network and on this
project's own graph (``models.onnx_graph``). Each row carries its ratio to ONNX Runtime on PyTorch's export and the
fraction of this machine's float32 matmul ceiling (measured in the same run) that the forward's FLOPs reach.

Per layer: every distinct depthwise shape in six formulations (shifted slices batched by ``vmap`` and one image
at a time, taps padded inside the fusion, NCHW shifted slices, XLA's grouped convolution NHWC and NCHW) with a
copy of the same input beside (the memory bound); every distinct MBConv block batched by ``vmap`` and one image at
a time; every block's 1×1 projection as ``dot_general`` and as ``conv_general_dilated``.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.mlp_epoch import matmul_ceiling_gflops
from common.files import output_dir
from common.tables import write_table
from common.timing import device_description, time_interleaved
from models.common import same_padding
from models.efficientnet_lite import (
    EfficientNetLite,
    PointwiseConv,
    block_specs,
    depthwise_shift,
    fold_batchnorm,
    map_images,
    native_size,
)
from models.pretrained import load_backbone, packaged_weights_file
from models.torch_weights import load_state_dict


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


def _depthwise_formulations(x: jax.Array, k: jax.Array, stride: int) -> dict:
    """One depthwise layer (batch ``x`` NHWC, kernel (k, k, 1, C)) in each formulation measured, jitted; the NCHW
    ones take ``x`` transposed (outside the timing: inside a network the layout would be NCHW throughout)."""
    c = x.shape[-1]
    kk = k.shape[0]

    def padded_taps(a):  # each tap reads the unpadded input through lax.pad: no padded copy is written
        n, h, w, _ = a.shape
        (ho, pt, _), (wo, pl, _) = same_padding(h, kk, stride), same_padding(w, kk, stride)
        out = None
        for u in range(kk):
            for v in range(kk):
                rows = (pt - u, u - pt + (ho - 1) * stride + 1 - h, 0)
                cols = (pl - v, v - pl + (wo - 1) * stride + 1 - w, 0)
                win = jax.lax.pad(a, jnp.zeros((), a.dtype), ((0, 0, 0), rows, cols, (0, 0, 0)))
                term = win[:, ::stride, ::stride] * k[u, v, 0]
                out = term if out is None else out + term
        return out

    def shift_nchw(a):
        n, _, h, w = a.shape
        (ho, pt, pb), (wo, pl, pr) = same_padding(h, kk, stride), same_padding(w, kk, stride)
        ap = jnp.pad(a, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
        out = None
        for u in range(kk):
            for v in range(kk):
                win = jax.lax.slice(ap, (0, 0, u, v), (n, c, u + (ho - 1) * stride + 1, v + (wo - 1) * stride + 1),
                                    (1, 1, stride, stride))
                term = win * k[u, v, 0][None, :, None, None]
                out = term if out is None else out + term
        return out

    one = lambda im: depthwise_shift(im, k, stride)  # noqa: E731
    return {
        "copy": (jax.jit(lambda a: a + 1.0), False),
        "shift, vmap": (jax.jit(jax.vmap(one)), False),
        "shift, per image": (jax.jit(lambda a: map_images(one, a, chunk=1)), False),
        "taps padded in the fusion": (jax.jit(padded_taps), False),
        "shift, NCHW": (jax.jit(shift_nchw), True),
        "lax NHWC": (jax.jit(lambda a: jax.lax.conv_general_dilated(
            a, k, (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c)), False),
        "lax NCHW": (jax.jit(lambda a: jax.lax.conv_general_dilated(
            a, k.transpose(3, 2, 0, 1), (stride, stride), "SAME", dimension_numbers=("NCHW", "OIHW", "NCHW"),
            feature_group_count=c)), True),
    }


def _depthwise_row(batch: int, side: int, spec, mid: int, repeats: int) -> dict:
    xs = jnp.asarray(np.random.default_rng(1).uniform(size=(batch, side, side, mid)), jnp.float32)
    xc = jnp.asarray(np.asarray(xs).transpose(0, 3, 1, 2))
    k = jnp.asarray(np.random.default_rng(2).normal(size=(spec.kernel, spec.kernel, 1, mid)), jnp.float32)
    forms = _depthwise_formulations(xs, k, spec.stride)
    reference = np.asarray(forms["shift, vmap"][0](xs))
    for name, (f, nchw) in forms.items():
        if name != "copy":
            out = np.asarray(f(xc if nchw else xs))
            np.testing.assert_allclose(out.transpose(0, 2, 3, 1) if nchw else out, reference, rtol=1e-4, atol=1e-4)
    t = time_interleaved({name: (lambda f=f, a=(xc if nchw else xs): f(a)) for name, (f, nchw) in forms.items()},
                         repeats=repeats)
    side_out = -(-side // spec.stride)
    flops = 2 * batch * spec.kernel**2 * mid * side_out * side_out
    best = min((name for name in t if name != "copy"), key=lambda name: t[name][1])
    row = {"input": f"{side}×{side}×{mid}", "kernel": spec.kernel, "stride": spec.stride}
    row.update({f"{name} ms": 1e3 * t[name][1] for name in t})
    row.update({"fastest": best, "fastest GFLOP/s": flops / t[best][1] / 1e9,
                "per image / vmap": t["shift, per image"][1] / t["shift, vmap"][1]})
    return row


def _block_row(variant: str, folded: dict, i: int, side: int, batch: int, repeats: int) -> dict:
    """MBConv block ``i`` (BatchNorm folded) on a batch of maps, batched by ``vmap`` and one image at a time."""
    model = EfficientNetLite(variant, folded=True)
    s = block_specs(variant)[i]
    xs = jnp.asarray(np.random.default_rng(3).uniform(size=(batch, side, side, s.c_in)), jnp.float32)
    one = lambda p, h: model.apply({"params": p}, h, start_block=i, stop_block=i + 1)  # noqa: E731
    fns = {chunk: jax.jit(lambda p, a, chunk=chunk: map_images(lambda h: one(p, h), a, chunk=chunk))
           for chunk in (0, 1)}
    t = time_interleaved({chunk: (lambda f=f: f(folded, xs)) for chunk, f in fns.items()}, repeats=repeats)
    return {"block": i, "input": f"{side}×{side}×{s.c_in}", "expanded": s.c_in * s.expand, "kernel": s.kernel,
            "stride": s.stride, "vmap ms": 1e3 * t[0][1], "per image ms": 1e3 * t[1][1],
            "per image / vmap": t[1][1] / t[0][1]}


JAX_ROWS = (  # (name, BatchNorm folded, map_images chunk)
    ("JAX, BatchNorm folded, one image at a time (map_images: the CPU default)", True, 1),
    ("JAX, BatchNorm folded, chunks of 2 images", True, 2),
    ("JAX, BatchNorm folded, chunks of 4 images", True, 4),
    ("JAX, BatchNorm folded, vmap over the batch (the default before issue 37)", True, 0),
    ("JAX, BatchNorm as an affine (the model as it trains), one image at a time", False, 1),
)
PEER = "onnxruntime, PyTorch-exported graph"  # the peer of issue 37's targets
ENGINE = "onnxruntime, this project's export"  # the project's CPU engine


def run(variant: str, batch: int, repeats: int, out: str, layers: bool = True) -> list[dict]:
    size = native_size(variant)
    params, _ = load_backbone(variant)
    x = np.random.default_rng(0).uniform(0, 1, (batch, size, size, 3)).astype(np.float32)
    fns = {}
    xj = jnp.asarray(x)
    folded = jax.device_put(fold_batchnorm(params))
    for name, fold, chunk in JAX_ROWS:
        model = EfficientNetLite(variant, folded=fold)
        f = jax.jit(lambda p, xs, m=model, chunk=chunk: map_images(lambda im: m.apply({"params": p}, im), xs,
                                                                   chunk=chunk))
        fns[name] = lambda f=f, p=(folded if fold else params): f(p, xj)
    reference = np.asarray(fns[JAX_ROWS[3][0]]())
    for name, *_ in JAX_ROWS[:3]:
        np.testing.assert_allclose(np.asarray(fns[name]()), reference, rtol=1e-4, atol=1e-4)
    try:
        import torch

        from benchmarks.torch_reference import torch_efficientnet_lite

        forward = torch_efficientnet_lite(load_state_dict(packaged_weights_file(variant)), variant)
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())

        def torch_fn():
            with torch.inference_mode():
                return forward(xt)

        fns["PyTorch eager"] = torch_fn
        torch_info = f"torch {torch.__version__}, {torch.get_num_threads()} threads"
        _add_torch_exported(fns, forward, xt)
    except ImportError:
        torch_info = "torch not installed: no peer measured"
    ort_info = _add_onnxruntime(fns, variant, params, x)
    times = time_interleaved(fns, repeats=repeats, rotate=True)
    ceiling = matmul_ceiling_gflops()
    flops = forward_flops(variant, size) * batch
    ref, engine = times.get(PEER), times.get(ENGINE)
    rows = []
    for name, (best, median) in times.items():
        rows.append({"implementation": name, "images/s (best)": batch / best, "images/s (median)": batch / median,
                     "vs ONNX Runtime on PyTorch's export (median)": (ref[1] / median) if ref else "",
                     "vs ONNX Runtime on this project's export (median)": (engine[1] / median) if engine else "",
                     "GFLOP/s (median)": flops / median / 1e9,
                     "fraction of matmul ceiling": flops / median / 1e9 / ceiling})
    notes = (f"{variant} at {size} px, batch {batch}, float32, {forward_flops(variant, size) / 1e9:.2f} GFLOP per "
             f"image. Device: {device_description()}; {torch_info}. Matmul ceiling measured in this run: "
             f"{ceiling:.0f} GFLOP/s. Ratios compare medians of {repeats} interleaved rounds. {ort_info}\n")
    path = output_dir(out)
    write_table(rows, path, "backbone_forward", title="Backbone forward", notes=notes)
    print((path / "backbone_forward.md").read_text(), flush=True)
    if not layers:
        return rows
    layer_rows, block_rows, pointwise_rows = [], [], []
    seen = set()
    side = -(-size // 2)
    for i, s in enumerate(block_specs(variant)):
        mid = s.c_in * s.expand
        key = (side, s.c_in, mid, s.c_out, s.kernel, s.stride)
        if key not in seen:
            seen.add(key)
            block_rows.append(_block_row(variant, folded, i, side, batch, repeats))
            layer_rows.append(_depthwise_row(batch, side, s, mid, max(3, repeats // 2)))
            print(layer_rows[-1], block_rows[-1], flush=True)
        side = -(-side // s.stride)
        key = (side, mid, s.c_out)
        if key not in seen:  # the block's projection: a 1×1 convolution
            seen.add(key)
            pointwise_rows.append(_pointwise_row(batch, side, mid, s.c_out))
    write_table(layer_rows, path, "depthwise_layers", title="Depthwise convolution per shape: six formulations",
                notes=f"Per distinct block shape of {variant}, batch {batch}, ms a batch (medians of interleaved "
                      f"rounds); 'copy' is x + 1 on the same input, the memory bound beside. Matmul ceiling "
                      f"{ceiling:.0f} GFLOP/s.\n")
    write_table(block_rows, path, "blocks", title="MBConv blocks (BatchNorm folded): vmap vs one image at a time",
                notes=f"Per distinct block shape of {variant}, batch {batch}, ms a batch (medians).\n")
    write_table(pointwise_rows, path, "pointwise_layers", title="1×1 convolution: dot_general vs conv_general_dilated",
                notes=f"Each block's projection (H×W×C_in → C_out) of {variant}, batch {batch}, best of 3.\n")
    for name in ("depthwise_layers", "blocks", "pointwise_layers"):
        print((path / f"{name}.md").read_text())
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", default="efficientnet_lite1")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--no-layers", action="store_true", help="the whole forward only, no per-layer tables")
    p.add_argument("--out", default="runs/bench_backbone")
    args = p.parse_args(argv)
    run(args.variant, args.batch, args.repeats, args.out, layers=not args.no_layers)


if __name__ == "__main__":
    main()
