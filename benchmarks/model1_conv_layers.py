"""Model 1's convolutions one by one: forward, input gradient, kernel gradient; JAX against PyTorch, same run.

    python -m benchmarks.model1_conv_layers [--size 108] [--batch 32] [--repeats 9] [--out runs/bench_model1_layers]

Per convolution of ``models.model1.model1_layer_shapes`` (float32, batch 32), interleaved (each round starts
with the next contender), medians in ms:
- forward: the model's ``lax.conv_general_dilated`` (NHWC, HWIO) and PyTorch's ``F.conv2d`` (NCHW);
- ∂C/∂x: ``manual_backprop.layers.conv2d_input_grad_batch``, the input gradient ``jax.vjp`` emits, and
  ``torch.nn.grad.conv2d_input``;
- ∂C/∂K: the formulation ``manual_backprop.layers.conv2d_backward_batch`` picks for the layer (k² GEMMs over
  strided slices, or one correlation), the kernel gradient ``jax.vjp`` emits, and ``torch.nn.grad.conv2d_weight``;
with the machine's float32 matmul ceiling measured in the same run.
"""

from __future__ import annotations

import argparse
import os

import jax

from benchmarks.mlp_epoch import matmul_ceiling_gflops
from common.files import output_dir
from common.tables import write_table
from common.timing import device_description, time_interleaved
from manual_backprop import layers
from models.common import same_padding
from models.model1 import model1_layer_shapes


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def layer_rows(size: int, batch: int, repeats: int) -> list[dict]:
    """One row per convolution: median ms of each contender and the ratios to PyTorch."""
    rows = []
    for layer in model1_layer_shapes(size, 1):
        k, s = layer["k"], layer["stride"]
        h, w, c_in = layer["in"]
        oh, ow, c_out = layer["out"]
        (_, pt, pb), (_, pl, pr) = same_padding(h, k, s), same_padding(w, k, s)
        pads = (pt, pb, pl, pr)
        flops = 2 * k * k * c_in * c_out * oh * ow * batch
        kx, kk, kd = jax.random.split(jax.random.PRNGKey(0), 3)
        x = jax.random.normal(kx, (batch, h, w, c_in))
        kern = jax.random.normal(kk, (k, k, c_in, c_out))
        delta = jax.random.normal(kd, (batch, oh, ow, c_out))

        def conv(x, kern, s=s, pads=pads):
            return jax.lax.conv_general_dilated(x, kern, (s, s), ((pads[0], pads[1]), (pads[2], pads[3])),
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))

        fns = {
            "jax forward": jax.jit(conv),
            "manual dx": jax.jit(lambda d, kern, s=s, pads=pads, hw=(h, w):
                                 layers.conv2d_input_grad_batch(d, kern, s, pads, hw)),
            "autodiff dx": jax.jit(lambda x, kern, d, conv=conv: jax.vjp(lambda x: conv(x, kern), x)[1](d)[0]),
            "manual dK": jax.jit(lambda d, x, kern, s=s, pads=pads:
                                 layers.conv2d_backward_batch(d, x, kern, s, pads, input_grad=False)[1]["kernel"]),
            "autodiff dK": jax.jit(lambda x, kern, d, conv=conv: jax.vjp(lambda k: conv(x, k), kern)[1](d)[0]),
        }
        calls = {"jax forward": lambda f=fns["jax forward"]: f(x, kern),
                 "manual dx": lambda f=fns["manual dx"]: f(delta, kern),
                 "autodiff dx": lambda f=fns["autodiff dx"]: f(x, kern, delta),
                 "manual dK": lambda f=fns["manual dK"]: f(delta, x, kern),
                 "autodiff dK": lambda f=fns["autodiff dK"]: f(x, kern, delta)}
        if layer["name"] == "conv1":  # the image's gradient is never formed
            del calls["manual dx"], calls["autodiff dx"]
        if torch_available():
            import torch
            import torch.nn.functional as F

            xt = F.pad(torch.randn(batch, c_in, h, w), (pl, pr, pt, pb))  # padded as the SAME convolution pads
            kt = torch.randn(c_out, c_in, k, k)
            dt = torch.randn(batch, c_out, oh, ow)

            def torch_forward(xt=xt, kt=kt, s=s):
                with torch.no_grad():
                    return F.conv2d(xt, kt, stride=s)

            calls["torch forward"] = torch_forward
            if layer["name"] != "conv1":
                calls["torch dx"] = lambda xt=xt, kt=kt, dt=dt, s=s: torch.nn.grad.conv2d_input(
                    xt.shape, kt, dt, stride=s)
            calls["torch dK"] = lambda xt=xt, kt=kt, dt=dt, s=s: torch.nn.grad.conv2d_weight(xt, kt.shape, dt, stride=s)
        times = time_interleaved(calls, repeats=repeats, rotate=True)
        row = {"image_size": size, "layer": layer["name"], "in": f"{h}x{w}x{c_in}", "out_channels": c_out,
               "dK formulation": "k² GEMMs" if c_in >= layers.TAPS_MIN_CHANNELS else "correlation"}
        for name, (_, median) in times.items():
            row[f"{name} ms"] = median * 1e3
        for part in ("forward", "dx", "dK"):
            ours = row.get(f"jax {part} ms", row.get(f"manual {part} ms"))
            if ours is not None and f"torch {part} ms" in row:
                row[f"{part} jax/torch time"] = ours / row[f"torch {part} ms"]
        row["GFLOP per part"] = flops / 1e9
        rows.append(row)
        print(row, flush=True)
    return rows


def run(size: int, batch: int, repeats: int, out: str) -> list[dict]:
    out_path = output_dir(out)
    if torch_available():
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
    ceiling = matmul_ceiling_gflops()
    rows = layer_rows(size, batch, repeats)
    notes = (f"Device: {device_description()}; PyTorch {'present' if torch_available() else 'not installed'}. "
             f"Ceiling {ceiling:.0f} GFLOP/s (best jitted float32 square matmul, this run). Medians of {repeats} "
             "interleaved rounds. manual = manual_backprop.layers (what --grad manual runs); autodiff = what "
             "jax.vjp emits; jax/torch time < 1: JAX is faster. Each part is GFLOP per part of work.\n")
    parts = [f"{who} {part} ms" for part, who_list in (("forward", ("jax", "torch")),
                                                        ("dx", ("manual", "autodiff", "torch")),
                                                        ("dK", ("manual", "autodiff", "torch"))) for who in who_list]
    columns = ["image_size", "layer", "in", "out_channels", "dK formulation", *parts,
               "forward jax/torch time", "dx jax/torch time", "dK jax/torch time", "GFLOP per part"]
    write_table(rows, out_path, "model1_conv_layers", title=f"Model 1 convolutions, {size} px, batch {batch}",
                notes=notes, columns=[c for c in columns if any(c in r for r in rows)])
    print((out_path / "model1_conv_layers.md").read_text())
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=108)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=9)
    p.add_argument("--out", default="runs/bench_model1_layers")
    a = p.parse_args(argv)
    run(a.size, a.batch, a.repeats, a.out)


if __name__ == "__main__":
    main()
