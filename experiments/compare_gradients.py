"""Manual backprop vs jax.grad: relative error in float32/float64 and jitted timings.

    python -m experiments.compare_gradients [--out runs/compare_gradients] [--quick]
    python -m experiments.compare_gradients --cnn [--image-size 108] [--batch 32]

``--cnn``: Model 1's hand-written backward (``manual_backprop.cnn``) against ``jax.grad`` of
the Flax model: per-parameter relative error (float64, float32) and per-layer backward times.
"""

from __future__ import annotations

import argparse
import functools
from functools import partial

from experiments.cli import add_common, deprecated_alias, image_size, positive_int, run_command

ARCHITECTURES = {
    "3-2-3-5": [3, 2, 3, 5],
    "1-1-1-1": [1, 1, 1, 1],
    "784-30-10": [784, 30, 10],
    "8x10": [8] * 10,
    "784-100-10": [784, 100, 10],
}
TIMED = {"784-30-10": [784, 30, 10], "784-100-10": [784, 100, 10], "8x10": [8] * 10, "wide 784-512-512-10": [
    784, 512, 512, 10]}


def problem(sizes, dtype, batch, cost, seed=0):
    """Parameters (fan-in scaled), inputs X ~ U[0, 1) and targets Y ~ U[0.05, 0.95) (rows summing to 1 for
    the softmax cost), from ``seed``: one compiled program per architecture, not one per drawn shape."""
    import jax
    import jax.numpy as jnp

    import manual_backprop as mb

    key_p, key_x, key_y = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = mb.init_mlp(key_p, sizes, weight_scale="fan_in", dtype=dtype)
    dtype = jnp.dtype(dtype)
    X, Y = _inputs(key_x, key_y, (batch, sizes[0]), (batch, sizes[-1]), dtype, cost == "softmax_cross_entropy")
    return params, X, Y


def _draw_inputs(key_x, key_y, x_shape, y_shape, dtype, normalize):
    import jax
    import jax.numpy as jnp

    X = jax.random.uniform(key_x, x_shape, dtype)
    Y = jax.random.uniform(key_y, y_shape, dtype, 0.05, 0.95)
    if normalize:
        Y = Y / jnp.sum(Y, axis=1, keepdims=True)
    return X, Y


@functools.cache
def _inputs_jitted():
    import jax

    return jax.jit(_draw_inputs, static_argnums=(2, 3, 4, 5))


def _inputs(*args):
    """X, Y drawn by one compiled program per shape (compiled on first use, not at import)."""
    return _inputs_jitted()(*args)


def error_rows(batch: int = 16) -> list[dict]:
    import jax
    import jax.numpy as jnp

    import manual_backprop as mb
    from manual_backprop.check import max_relative_error

    rows = []
    for arch, sizes in ARCHITECTURES.items():
        for activation in sorted(mb.ACTIVATIONS):
            for cost in sorted(mb.COSTS):
                row = {"architecture": arch, "activation": activation, "cost": cost}
                for dtype in (jnp.float32, jnp.float64):
                    params, X, Y = problem(sizes, dtype, batch, cost)
                    kw = dict(activation=activation, cost=cost)
                    # both in one compiled program (not an eager dispatch, and compilation, per operation)
                    manual, auto = jax.jit(lambda p, X, Y, kw=kw: (mb.batch_gradients(p, X, Y, **kw), jax.grad(
                        partial(mb.batch_cost, **kw))(p, X, Y)))(params, X, Y)
                    row[f"max_rel_err_{jnp.dtype(dtype).name}"] = max_relative_error(manual, auto)
                rows.append(row)
    return rows


CALLS_PER_SAMPLE = 10
CONTROL = "jax.grad again (control)"


def timing_rows(batch: int = 64, repeats: int = 21, calls: int = CALLS_PER_SAMPLE) -> list[dict]:
    """Jitted gradient times per architecture: the methods called in turn (interleaved), ``repeats``
    samples of ``calls`` calls each; the median and the fastest sample per call, and the median's ratio
    to jax.grad's. (Timing each method in a block, one after the other, let the machine's drift pass for
    a difference between methods.) The naive chain, 2–20× slower, is timed in its own interleaved pairing
    with jax.grad: among the others, whichever method followed it ran up to 1.3× slower.

    ``CONTROL`` is a second, separately jitted copy of jax.grad timed among the others: the same program, so
    its ratio departs from 1 only by the machine's noise, which shows how far from 1 a ratio must be to mean
    anything (on a shared 2-core host it measured 0.87–1.10)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    import manual_backprop as mb
    from common.timing import time_interleaved

    rows = []
    kw = dict(activation="sigmoid", cost="half_sse")
    for arch, sizes in TIMED.items():
        params, X, Y = problem(sizes, jnp.float32, batch, "half_sse")
        grad = jax.jit(jax.grad(partial(mb.batch_cost, **kw)))
        fns = {
            "manual (matrix)": jax.jit(partial(mb.batch_gradients_matrix, **kw)),
            "manual (vmap)": jax.jit(partial(mb.batch_gradients, **kw)),
            "jax.grad": grad,
            CONTROL: jax.jit(jax.grad(partial(mb.batch_cost, **kw))),
        }
        naive = jax.jit(lambda p, X, Y: jax.tree_util.tree_map(
            lambda g: jnp.mean(g, 0), jax.vmap(partial(mb.naive_gradients, p, **kw))(X, Y)))
        # samples of at least ~10 ms: a sub-millisecond call's samples are otherwise mostly timer noise
        one = time_interleaved({"jax.grad": lambda: grad(params, X, Y)}, repeats=3, calls=calls)["jax.grad"][0]
        n_calls = max(calls, int(np.ceil(0.01 / max(one, 1e-7))))
        times = time_interleaved({name: (lambda f=f: f(params, X, Y)) for name, f in fns.items()},
                                 repeats=repeats, calls=n_calls, rotate=True)
        pair = time_interleaved({"jax.grad": lambda: grad(params, X, Y), "naive": lambda: naive(params, X, Y)},
                                repeats=max(5, repeats // 3), calls=calls)
        for name, (fastest, median) in times.items():
            rows.append({
                "architecture": arch, "batch": batch, "method": name, "ms": median * 1e3, "min ms": fastest * 1e3,
                "ratio_vs_jax_grad": median / times["jax.grad"][1], "calls per sample": n_calls,
            })
        rows.append({"architecture": arch, "batch": batch, "method": "naive chain (vmap)", "ms": pair["naive"][1] * 1e3,
                     "min ms": pair["naive"][0] * 1e3, "ratio_vs_jax_grad": pair["naive"][1] / pair["jax.grad"][1],
                     "calls per sample": calls})
    return rows


def plot(errors: list[dict], timings: list[dict], path) -> None:
    import numpy as np

    from common.tables import pyplot, save_figure

    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    labels = [f"{r['architecture']}\n{r['activation']}/{r['cost']}" for r in errors]
    x = np.arange(len(errors))
    for key, marker in [("max_rel_err_float32", "o"), ("max_rel_err_float64", "s")]:
        vals = np.array([max(r[key], 1e-18) for r in errors])
        ax1.semilogy(x, vals, marker, label=key.removeprefix("max_rel_err_"), markersize=3)
    ax1.set_xticks([])
    ax1.set_xlabel(f"{len(labels)} architecture × activation × cost cases")
    ax1.set_ylabel("max per-array relative error vs jax.grad")
    ax1.axhline(1e-12, color="grey", lw=0.8, ls="--")
    ax1.legend()
    archs = list(dict.fromkeys(r["architecture"] for r in timings))
    methods = list(dict.fromkeys(r["method"] for r in timings))
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        vals = [next(r["ms"] for r in timings if r["architecture"] == a and r["method"] == m) for a in archs]
        ax2.bar(np.arange(len(archs)) + i * width, vals, width, label=m)
    ax2.set_xticks(np.arange(len(archs)) + 0.4 - width / 2, archs, fontsize=8)
    ax2.set_yscale("log")
    ax2.set_ylabel("ms per minibatch gradient (jitted)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


def run(out: str, quick: bool = False) -> dict:
    from common.files import output_dir
    from common.tables import write_table
    from common.timing import device_description
    from training.loop.devices import float64

    out_path = output_dir(out)
    with float64():  # the error table compares in float64 (and float32) where asked
        errors = error_rows()
    timings = timing_rows(repeats=5 if quick else 21)  # float32, as users run
    worst64 = max(r["max_rel_err_float64"] for r in errors)
    worst32 = max(r["max_rel_err_float32"] for r in errors)
    write_table(
        errors, out_path, "gradient_errors", title="Manual backprop vs jax.grad: max per-array relative error",
        notes=f"Worst case: float64 {worst64:.2e}, float32 {worst32:.2e}. Device: {device_description()}.\n",
    )
    write_table(
        timings, out_path, "gradient_timings", title="Jitted minibatch gradient timings (float32, sigmoid, ½‖a−y‖²)",
        notes="Median (and fastest) per call of interleaved samples, after compilation: the hand-written rules and "
              f"jax.grad take turns, each sample at least {CALLS_PER_SAMPLE} calls and about 10 ms; the naive chain "
              "is timed in its own pairing with jax.grad. The control row is jax.grad timed again, jitted separately, "
              "among the others: the same program, so its distance from 1 is this run's noise. "
              f"Device: {device_description()}.\n",
    )
    plot(errors, timings, out_path / "gradient_comparison.png")
    print(f"max relative error vs jax.grad: float64 {worst64:.2e}, float32 {worst32:.2e}")
    print(f"{len(errors)} gradient comparisons and {len(timings)} timings: tables {out_path / 'gradient_errors.md'}, "
          f"{out_path / 'gradient_timings.md'} (and .csv), plot {out_path / 'gradient_comparison.png'}")
    return {"worst_float64": worst64, "worst_float32": worst32}


def run_cnn(out: str, image_size: int = 108, batch: int = 32, quick: bool = False) -> dict:
    from common.files import output_dir
    from common.tables import write_table
    from common.timing import device_description
    from experiments import compare_cnn
    from training.loop.devices import float64

    out_path = output_dir(out)
    with float64():
        errors = compare_cnn.error_rows(image_size)
    timings = compare_cnn.timing_rows(image_size, batch=batch, repeats=3 if quick else 5)
    worst = max(r["rel_err_float64"] for r in errors)
    write_table(errors, out_path, "cnn_gradient_errors",
                title=f"Model 1 ({image_size} px, dropout on): manual backward vs jax.grad, per parameter",
                notes=f"Worst float64 relative error {worst:.2e}. Device: {device_description()}.\n")
    write_table(timings, out_path, "cnn_backward_timings",
                title=f"Model 1 backward, batch {batch}, {image_size} px, float32: manual vs autodiff",
                notes="autodiff/manual > 1: the manual backward is faster. Median of interleaved repeats. "
                      f"Device: {device_description()}.\n")
    print((out_path / "cnn_gradient_errors.md").read_text())
    print((out_path / "cnn_backward_timings.md").read_text())
    print(f"Model 1's backward compared with jax.grad: tables {out_path / 'cnn_gradient_errors.md'}, "
          f"{out_path / 'cnn_backward_timings.md'} (and .csv)")
    return {"worst_float64": worst, "timings": timings}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(parser, "out", "no-progress", out="runs/compare_gradients")
    parser.add_argument("--quick", action="store_true", help="fewer timing repeats")
    parser.add_argument("--cnn", action="store_true", help="Model 1's hand-written backward instead of the MLP")
    parser.add_argument("--image-size", type=image_size, default=108,
                        help="with --cnn: Model 1's input side (default 108)")
    parser.add_argument("--batch-size", type=positive_int, default=32,
                        help="with --cnn: photos per gradient (default 32)")
    deprecated_alias(parser, "--batch", "--batch-size", "batch_size", type=positive_int)
    run_command(parser, lambda a: run_cnn(a.out, a.image_size, a.batch_size, quick=a.quick) if a.cnn
                else run(a.out, quick=a.quick), argv)


if __name__ == "__main__":
    main()
