"""Model 1 training throughput: Flax/Optax train step vs the same network in PyTorch eager, same run.

    python -m benchmarks.model1_train [--sizes 108 224] [--batch 32] [--steps 5] [--out runs/bench_model1]

Per image size (grayscale, 2 classes, batch 32, Adam 1e-3, dropout on):
- images/s of ``training.loop.steps.make_train_step`` (after compilation; compile time reported), with
  ``jax.grad`` and with ``--grad manual`` (Model 1's hand-written backward), and of the same architecture
  in PyTorch eager (``bench`` extra: torch==2.13.0, if installed), the three steps interleaved;
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
from common.files import output_dir
from common.tables import write_table
from common.timing import device_description, time_interleaved
from models.model1 import model1_forward_flops, model1_layer_shapes
from training.loop.config import get_config
from training.loop.registry import build_model
from training.loop.state import create_state
from training.loop.steps import make_batch, make_train_step


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


def jax_step(size: int, batch: int, grad: str):
    """``(step, compile seconds)``: ``step()`` runs one jitted Flax/Optax train step of Model 1 (lab-2020, the
    gradient ``grad``) on a fixed batch, carrying its state, and blocks on the result."""
    config = get_config("lab-2020", image_size=size, batch_size=batch, grad=grad)
    model = build_model(config, 2)
    state = create_state(model, config, (size, size, 1), key=jax.random.PRNGKey(0))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (batch, size, size, 1)).astype(np.float32)
    y = (np.arange(batch) % 2).astype(np.int32)
    b = jax.tree_util.tree_map(jnp.asarray, make_batch(x, y, np.arange(batch), batch, np.ones(2, np.float32)))
    train_step = make_train_step(model, grad=grad)
    carry = {"state": state, "i": 0}

    def step():
        carry["state"], m = train_step(carry["state"], b, jax.random.PRNGKey(carry["i"]))
        carry["i"] += 1
        return jax.block_until_ready(m)

    start = time.perf_counter()
    step()
    return step, time.perf_counter() - start


def torch_step(size: int, batch: int):
    """``step()``: one eager PyTorch Adam step of the same network on a fixed batch."""
    import torch

    torch.manual_seed(0)
    net = torch_model1(1, 2, size)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.rand(batch, 1, size, size)
    y = torch.arange(batch) % 2

    def step():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
        return loss

    step()
    return step


def step_times(size: int, batch: int, steps: int, *, with_torch: bool) -> dict[str, tuple[float, float, float]]:
    """Per contender (``autodiff``: jax.grad; ``manual``: the hand-written backward through a custom_vjp;
    ``torch``: PyTorch eager): (minimum, median seconds per step, compile seconds). The steps are interleaved,
    each round starting with the next contender, so that all see the same machine state."""
    steps_fn, compile_s = {}, {}
    for g in ("autodiff", "manual"):
        steps_fn[g], compile_s[g] = jax_step(size, batch, g)
    if with_torch:
        steps_fn["torch"], compile_s["torch"] = torch_step(size, batch), 0.0
    times = time_interleaved(steps_fn, repeats=steps, rotate=True)
    return {g: (*times[g], compile_s[g]) for g in steps_fn}


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
        timed = step_times(size, batch, steps, with_torch=have_torch)
        jax_s, jax_median, compile_s = timed["autodiff"]
        manual_s, manual_median, _ = timed["manual"]
        best_s, best_median = min(jax_s, manual_s), min(jax_median, manual_median)
        row = {"image_size": size, "batch": batch, "jax images/s": batch / jax_s, "jax compile s": compile_s,
               "--grad manual images/s": batch / manual_s,
               "jax GFLOP/s": step_flops / best_s / 1e9,
               "jax fraction of ceiling": step_flops / best_s / 1e9 / ceiling,
               "manual/autodiff time (median)": manual_median / jax_median}
        if have_torch:
            torch_s, torch_median, _ = timed["torch"]
            row.update({"torch images/s": batch / torch_s,
                        "best jax/torch speed (median)": torch_median / best_median,
                        "best jax/torch speed (min)": torch_s / best_s,
                        "torch fraction of ceiling": step_flops / torch_s / 1e9 / ceiling})
        rows.append(row)
        print(row, flush=True)
        layers.extend(per_layer_rows(size, batch, repeats=max(3, steps)))
    notes = (f"Device: {device_description()}; PyTorch {'present' if have_torch else 'not installed'}. "
             f"Ceiling {ceiling:.0f} GFLOP/s (best jitted float32 square matmul, this run). Step FLOPs = "
             "3 × forward FLOPs × batch. The three steps are interleaved (each round starts with the next one); "
             "images/s from the best step; best jax = the faster of autodiff and --grad manual (GFLOP/s and "
             "fraction of ceiling are its). jax/torch speed > 1: JAX is faster. Target: ≥ 1.0. manual/autodiff "
             "time: the same jitted Optax step with the hand-written backward over jax.grad (medians; target ≤ 1.0).\n")
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
