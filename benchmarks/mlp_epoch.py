"""Speed of one SGD epoch with the hand-written gradients, against peers measured in the same run.

    python -m benchmarks.mlp_epoch [--data ../shared/data/mnist.npz] [--out runs/bench_mlp]

1. One epoch of [784, 30, 10] sigmoid/½‖a−y‖² SGD, η 3.0, minibatch 10, on 50,000
   MNIST-shaped rows (the real ones with --data, else seeded random pixels: speed
   does not depend on the values):
   - manual backprop in one jitted ``lax.scan`` (``mb.sgd_epoch``: matrix form, and the per-example
     rule vmapped over the minibatch);
   - ``jax.value_and_grad`` of the same cost in the same scan (``method="autodiff"``);
   - a per-example plain-NumPy loop of the same algorithm (Nielsen's ``update_mini_batch``);
   - PyTorch CPU (``torch.autograd`` per minibatch) when the ``bench`` extra installed it.
2. One jitted minibatch value-and-gradient on [784, 512, 512, 10], batch 256: manual vs jax.grad.
3. The machine's float32 matmul ceiling (a 2048² jnp matmul, all cores) measured here, and
   each JAX result as a fraction of it.
"""

from __future__ import annotations

import argparse
import os
import time
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

import manual_backprop as mb
from common.files import output_dir
from common.tables import write_table
from common.timing import device_description, time_call, time_interleaved

SIZES = [784, 30, 10]
ETA, BATCH = 3.0, 10


def mnist_like(data: str | None, n: int = 50_000):
    if data:
        from training.data.arrays import load_mnist_npz

        d = load_mnist_npz(data)
        return d.train.x[:n], d.train.y[:n], "MNIST train"
    rng = np.random.default_rng(0)
    return (rng.integers(0, 256, (n, 784)) / 256).astype(np.float32), rng.integers(0, 10, n), "random pixels"


def epoch_flops(sizes, n: int) -> float:
    """Matmul FLOPs of one epoch: forward Σ2·n_in·n_out, ∂C/∂W the same, δ propagation for l ≥ 2."""
    pairs = list(zip(sizes[:-1], sizes[1:]))
    per_example = sum(2 * i * o for i, o in pairs) * 2 + sum(2 * i * o for i, o in pairs[1:])
    return float(per_example * n)


def numpy_epoch(params, X, Y, perm, eta, batch_size):
    """Nielsen's per-example loop in plain NumPy (column-vector free, same math)."""
    params = [(W.copy(), b.copy()) for W, b in params]

    def sigmoid(z):
        return 1.0 / (1.0 + np.exp(-z))

    for start in range(0, len(perm), batch_size):
        nabla = [(np.zeros_like(W), np.zeros_like(b)) for W, b in params]
        for i in perm[start:start + batch_size]:
            a, zs, acts = X[i], [], [X[i]]
            for W, b in params:
                z = W @ a + b
                a = sigmoid(z)
                zs.append(z)
                acts.append(a)
            delta = (acts[-1] - Y[i]) * acts[-1] * (1 - acts[-1])
            grads = [None] * len(params)
            grads[-1] = (np.outer(delta, acts[-2]), delta)
            for l in range(len(params) - 1, 0, -1):
                s = acts[l]
                delta = (params[l][0].T @ delta) * s * (1 - s)
                grads[l - 1] = (np.outer(delta, acts[l - 1]), delta)
            nabla = [(nw + gw, nb + gb) for (nw, nb), (gw, gb) in zip(nabla, grads)]
        m = len(perm[start:start + batch_size])
        params = [(W - eta / m * nw, b - eta / m * nb) for (W, b), (nw, nb) in zip(params, nabla)]
    return params


def torch_epoch_seconds(params, X, Y, perm, eta, batch_size) -> float | None:
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(os.cpu_count() or 1)
    Ws = [torch.tensor(np.asarray(W), requires_grad=True) for W, _ in params]
    bs = [torch.tensor(np.asarray(b), requires_grad=True) for _, b in params]
    Xt, Yt = torch.tensor(X), torch.tensor(Y)
    order = torch.tensor(perm).reshape(-1, batch_size)

    def run():
        for idx in order:
            a, y = Xt[idx], Yt[idx]
            for W, b in zip(Ws, bs):
                a = torch.sigmoid(a @ W.T + b)
            loss = 0.5 * ((a - y) ** 2).sum(1).mean()
            grads = torch.autograd.grad(loss, Ws + bs)
            with torch.no_grad():
                for p, g in zip(Ws + bs, grads):
                    p -= eta * g

    run()  # warm-up
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def matmul_ceiling_gflops(sizes=(1024, 2048, 3072)) -> float:
    """Best float32 GFLOP/s of a jitted square matmul over a few sizes (all cores)."""
    best = 0.0
    for n in sizes:
        a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
        f = jax.jit(lambda a: a @ a)
        best = max(best, 2 * n**3 / time_call(lambda: f(a), repeats=5) / 1e9)
    return best


def run(data: str | None, out: str, repeats: int = 9) -> list[dict]:
    out_path = output_dir(out)
    X_np, y_np, source = mnist_like(data)
    n = len(X_np)
    Y_np = np.eye(10, dtype=np.float32)[y_np]
    X, Y = jnp.asarray(X_np), jnp.asarray(Y_np)
    params = mb.init_mlp(jax.random.PRNGKey(0), SIZES)
    key = jax.random.PRNGKey(1)
    ceiling = matmul_ceiling_gflops()
    flops = epoch_flops(SIZES, n)
    # the three gradient methods in the very same jitted sgd_epoch scan and update
    names = {"matrix": "manual (matrix) lax.scan", "vmap": "manual (vmap) lax.scan",
             "autodiff": "jax.value_and_grad lax.scan"}
    timed = time_interleaved({
        name: partial(mb.sgd_epoch, params, X, Y, key=key, eta=ETA, batch_size=BATCH, method=method)
        for method, name in names.items()}, repeats=repeats)
    t = {name: best for name, (best, _) in timed.items()}
    medians = {name: median for name, (_, median) in timed.items()}
    perm = np.asarray(jax.random.permutation(key, n))
    params_np = [(np.asarray(W, np.float64), np.asarray(b, np.float64)) for W, b in params]
    start = time.perf_counter()
    numpy_epoch(params_np, X_np.astype(np.float64), Y_np.astype(np.float64), perm, ETA, BATCH)
    t["NumPy per-example loop"] = medians["NumPy per-example loop"] = time.perf_counter() - start
    torch_s = torch_epoch_seconds(params, X_np, Y_np, perm, ETA, BATCH)
    if torch_s is not None:
        t["PyTorch CPU autograd loop"] = medians["PyTorch CPU autograd loop"] = torch_s
    manual = t["manual (matrix) lax.scan"]
    rows = [{
        "benchmark": f"epoch 784-30-10, m=10, n={n}", "method": name, "seconds": s,
        "median_seconds": medians[name], "manual_speedup": s / manual, "GFLOP/s": flops / s / 1e9,
        "fraction_of_ceiling": flops / s / 1e9 / ceiling,
    } for name, s in t.items()]

    # wide net, one minibatch value-and-gradient
    sizes = [784, 512, 512, 10]
    wide = mb.init_mlp(jax.random.PRNGKey(2), sizes, weight_scale="fan_in")
    Xw, Yw = X[:256], Y[:256]
    f_manual = jax.jit(mb.value_and_gradients)
    f_auto = jax.jit(jax.value_and_grad(mb.batch_cost))
    wide_flops = epoch_flops(sizes, 256)
    wide_t = time_interleaved({"manual value_and_gradients": lambda: f_manual(wide, Xw, Yw),
                               "jax.value_and_grad": lambda: f_auto(wide, Xw, Yw)}, repeats=50)
    tm, ta = wide_t["manual value_and_gradients"][0], wide_t["jax.value_and_grad"][0]
    for name, (s, med) in wide_t.items():
        rows.append({
            "benchmark": "784-512-512-10, batch 256", "method": name, "seconds": s, "median_seconds": med,
            "manual_speedup": s / tm, "GFLOP/s": wide_flops / s / 1e9,
            "fraction_of_ceiling": wide_flops / s / 1e9 / ceiling,
        })
    notes = (
        f"Data: {source}. Device: {device_description()}. Ceiling: {ceiling:.1f} GFLOP/s "
        "(best jitted square float32 matmul, measured in this run). seconds: minimum over interleaved "
        "repeats (NumPy and PyTorch: one epoch after a warm-up). manual_speedup = seconds / manual seconds "
        "(> 1: manual is faster). Targets: epoch ≤ 0.10 s; ≥ 25× NumPy; manual (matrix and vmap) ≤ 1.0× "
        "jax.grad (≤ 1.05 within noise, medians); wide ratio ≤ 1.05.\n\nEpoch, medians: matrix/jax.grad = "
        f"{medians[names['matrix']] / medians[names['autodiff']]:.3f}, vmap/jax.grad = "
        f"{medians[names['vmap']] / medians[names['autodiff']]:.3f}; "
        f"NumPy/manual = {t['NumPy per-example loop'] / manual:.1f}×; wide manual/jax.grad = {tm / ta:.3f}.\n"
    )
    write_table(rows, out_path, "mlp_epoch", title="SGD epoch benchmark", notes=notes)
    print((out_path / "mlp_epoch.md").read_text())
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="MNIST .npz; default: seeded random MNIST-shaped pixels")
    p.add_argument("--out", default="runs/bench_mlp")
    p.add_argument("--repeats", type=int, default=9)
    a = p.parse_args(argv)
    run(a.data, a.out, a.repeats)


if __name__ == "__main__":
    main()
