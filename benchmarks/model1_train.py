"""Model 1 training throughput: Flax/Optax train step vs the same network in PyTorch eager, same run.

    python -m benchmarks.model1_train [--sizes 108 224] [--batch 32] [--steps 5] [--out runs/bench_model1]

Per image size (grayscale, 2 classes, batch 32, Adam 1e-3, dropout on):
- images/s of ``training.loop.steps.make_train_step`` (after compilation; compile time reported), with
  ``jax.grad`` and with ``--grad manual`` (Model 1's hand-written backward), interleaved;
- images/s of the same architecture in PyTorch eager (``bench`` extra: torch==2.13.0), if installed;
- the fraction of the machine's float32 matmul ceiling (measured here) that the step's FLOPs reach
  (training ≈ 3× the forward FLOPs of ``models.model1.model1_forward_flops``);
- per convolution: forward and backward (input and kernel gradients) in JAX vs PyTorch, GFLOP/s.
"""

from __future__ import annotations

import argparse
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.mlp_epoch import matmul_ceiling_gflops
from models.model1 import model1_forward_flops, model1_layer_shapes
from training.common.files import output_dir
from training.common.tables import write_table
from training.common.timing import device_description, time_interleaved
from training.loop.config import get_config
from training.loop.steps import create_model, create_state, make_batch, make_train_step


def torch_model1(channels: int, n_classes: int, image_size: int):
    import torch.nn.functional as F
    from torch import nn

    class TorchModel1(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(channels, 64, 7, stride=2)
            self.conv2 = nn.Conv2d(64, 128, 3, padding=1)
            self.conv3 = nn.Conv2d(128, 128, 3, padding=1)
            self.conv4 = nn.Conv2d(128, 256, 3, padding=1)
            self.conv5 = nn.Conv2d(256, 256, 3, padding=1)
            side = -(-image_size // 2) // 8
            self.fc1, self.fc2 = nn.Linear(side * side * 256, 128), nn.Linear(128, 64)
            self.out = nn.Linear(64, n_classes)
            out = -(-image_size // 2)
            pad = max((out - 1) * 2 + 7 - image_size, 0)  # TensorFlow/Flax SAME padding for the strided conv
            self.pad = (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2)

        def forward(self, x):
            x = F.max_pool2d(F.relu(self.conv1(F.pad(x, self.pad))), 2)
            x = F.max_pool2d(F.relu(self.conv3(F.relu(self.conv2(x)))), 2)
            x = F.max_pool2d(F.relu(self.conv5(F.relu(self.conv4(x)))), 2)
            x = F.dropout(F.relu(self.fc1(x.flatten(1))), 0.5, self.training)
            x = F.dropout(F.relu(self.fc2(x)), 0.5, self.training)
            return self.out(x)

    return TorchModel1()


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


def jax_throughput(size: int, batch: int, steps: int) -> dict[str, tuple[float, float, float]]:
    """Per gradient (``autodiff``: jax.grad; ``manual``: the hand-written backward through a custom_vjp):
    (minimum, median seconds per step, compile seconds) of the Flax/Optax train step, the two steps
    interleaved so that both see the same machine state."""
    config = get_config("lab-2020", image_size=size, batch_size=batch)
    model = create_model(config, 2)
    state0 = create_state(model, config, (size, size, 1), key=jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (batch, size, size, 1)).astype(np.float32)
    y = (np.arange(batch) % 2).astype(np.int32)
    b = jax.tree_util.tree_map(jnp.asarray, make_batch(x, y, np.arange(batch), batch, np.ones(2, np.float32)))
    grads = ("autodiff", "manual")
    step = {g: make_train_step(model, grad=g) for g in grads}
    state, compile_s, times = {}, {}, {g: [] for g in grads}
    for g in grads:
        start = time.perf_counter()
        state[g], m = step[g](state0, b, jax.random.PRNGKey(0))
        jax.block_until_ready(m)
        compile_s[g] = time.perf_counter() - start
    for i in range(steps):
        for g in grads:
            start = time.perf_counter()
            state[g], m = step[g](state[g], b, jax.random.PRNGKey(i + 1))
            jax.block_until_ready(m)
            times[g].append(time.perf_counter() - start)
    return {g: (min(times[g]), float(np.median(times[g])), compile_s[g]) for g in grads}


def torch_throughput(size: int, batch: int, steps: int) -> float:
    import torch

    torch.manual_seed(0)
    net = torch_model1(1, 2, size)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.rand(batch, 1, size, size)
    y = torch.arange(batch) % 2
    times = []
    for i in range(steps + 1):
        start = time.perf_counter()
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        if i:
            times.append(time.perf_counter() - start)
    return min(times)


def per_layer_rows(size: int, batch: int, repeats: int) -> list[dict]:
    rows = []
    for layer in model1_layer_shapes(size, 1):
        k, s = layer["k"], layer["stride"]
        h, w, c_in = layer["in"]
        c_out = layer["out"][2]
        flops = 2 * k * k * c_in * c_out * layer["out"][0] * layer["out"][1] * batch
        key_x, key_k = jax.random.split(jax.random.PRNGKey(0))
        x = jax.random.normal(key_x, (batch, h, w, c_in))
        kern = jax.random.normal(key_k, (k, k, c_in, c_out))

        def conv(x, kern, s=s):
            return jax.lax.conv_general_dilated(x, kern, (s, s), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))

        fwd = jax.jit(conv)
        out = fwd(x, kern)
        bwd = jax.jit(lambda x, kern, g: jax.vjp(conv, x, kern)[1](g))
        fns = {"jax forward": lambda: fwd(x, kern), "jax backward": lambda: bwd(x, kern, out)}
        if torch_available():
            import torch
            import torch.nn.functional as F

            xt = torch.randn(batch, c_in, h, w, requires_grad=True)
            kt = torch.randn(c_out, c_in, k, k, requires_grad=True)
            pad = (k - 1) // 2 if s == 1 else 0
            ot = F.conv2d(xt, kt, stride=s, padding=pad)
            gt = torch.randn_like(ot)

            def torch_fwd():
                with torch.no_grad():
                    return F.conv2d(xt, kt, stride=s, padding=pad)

            def torch_bwd():
                o = F.conv2d(xt, kt, stride=s, padding=pad)
                return torch.autograd.grad(o, (xt, kt), gt)

            fns["torch forward"], fns["torch backward"] = torch_fwd, torch_bwd
        times = time_interleaved(fns, repeats=repeats)
        row = {"image_size": size, "layer": layer["name"], "in": f"{h}x{w}x{c_in}", "out_channels": c_out}
        for name, (best, _) in times.items():
            work = flops if "forward" in name else 2 * flops
            row[f"{name} ms"] = best * 1e3
            row[f"{name} GFLOP/s"] = work / best / 1e9
        if "torch backward ms" in row:
            row["jax/torch backward time"] = row["jax backward ms"] / row["torch backward ms"]
        rows.append(row)
    return rows


def run(sizes, batch: int, steps: int, out: str) -> dict:
    out_path = output_dir(out)
    ceiling = matmul_ceiling_gflops()
    have_torch = torch_available()
    if have_torch:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
    rows, layers = [], []
    for size in sizes:
        step_flops = 3 * model1_forward_flops(size, 1, 2) * batch
        timed = jax_throughput(size, batch, steps)
        jax_s, _, compile_s = timed["autodiff"]
        manual_s, manual_median, _ = timed["manual"]
        row = {"image_size": size, "batch": batch, "jax images/s": batch / jax_s, "jax compile s": compile_s,
               "jax GFLOP/s": step_flops / jax_s / 1e9, "jax fraction of ceiling": step_flops / jax_s / 1e9 / ceiling,
               "--grad manual images/s": batch / manual_s,
               "manual/autodiff time (median)": manual_median / timed["autodiff"][1]}
        if have_torch:
            torch_s = torch_throughput(size, batch, steps)
            row.update({"torch images/s": batch / torch_s, "jax/torch speed": torch_s / jax_s,
                        "torch fraction of ceiling": step_flops / torch_s / 1e9 / ceiling})
        rows.append(row)
        print(row, flush=True)
        layers.extend(per_layer_rows(size, batch, repeats=max(3, steps)))
    notes = (f"Device: {device_description()}; PyTorch {'present' if have_torch else 'not installed'}. "
             f"Ceiling {ceiling:.0f} GFLOP/s (best jitted float32 square matmul, this run). Step FLOPs = "
             "3 × forward FLOPs × batch. Times are the minimum over the measured steps. "
             "jax/torch speed > 1: JAX is faster. Target: ≥ 1.0. manual/autodiff time: the same jitted Optax "
             "step with the hand-written backward over jax.grad (medians; ≤ 1.0, or ≤ 1.05 within noise).\n")
    write_table(rows, out_path, "model1_train", title="Model 1 training step, grayscale, 2 classes", notes=notes)
    write_table(layers, out_path, "model1_layers", title="Model 1 convolutions, batch 32: forward and backward",
                notes="backward = gradients for both the input and the kernel (2× the forward FLOPs).\n")
    print((out_path / "model1_train.md").read_text())
    print((out_path / "model1_layers.md").read_text())
    return {"rows": rows, "layers": layers}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[108, 224])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--out", default="runs/bench_model1")
    a = p.parse_args(argv)
    run(a.sizes, a.batch, a.steps, a.out)


if __name__ == "__main__":
    main()
