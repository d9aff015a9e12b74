"""Time against depth: the naive chain rule (O(L²)) vs cached backprop and jax.grad (O(L)).

    python -m experiments.backprop_depth [--depths 2 4 8 16 32 64] [--width 32] [--batch 64]

Writes ``depth_timings.{md,csv}`` and a log-log plot ``depth_timings.png``; the table's
notes give the fitted slope of log(time) against log(L) for each method.
"""

from __future__ import annotations

import argparse
from functools import partial

from experiments.cli import add_common, deprecated_alias, positive_int, run_command

METHODS = ("naive chain", "cached backprop", "jax.grad")


def gradient_functions(activation: str = "sigmoid", cost: str = "half_sse") -> dict:
    """Jitted minibatch-mean gradients by each method (per-example functions, vmapped)."""
    import jax
    import jax.numpy as jnp

    import manual_backprop as mb

    kw = dict(activation=activation, cost=cost)

    def mean_over_batch(per_example):
        def f(params, X, Y):
            grads = jax.vmap(partial(per_example, params, **kw))(X, Y)
            return jax.tree_util.tree_map(lambda g: jnp.mean(g, axis=0), grads)

        return jax.jit(f)

    return {
        "naive chain": mean_over_batch(mb.naive_gradients),
        "cached backprop": mean_over_batch(mb.backprop),
        "jax.grad": mean_over_batch(jax.grad(mb.example_cost)),
    }


def fitted_slope(depths, seconds) -> float:
    """Least-squares slope of log(seconds) against log(depth)."""
    import numpy as np

    return float(np.polyfit(np.log(depths), np.log(seconds), 1)[0])


def run(out: str, depths=(2, 4, 8, 16, 32, 64), width: int = 32, batch: int = 64, repeats: int = 7) -> dict:
    import jax

    import manual_backprop as mb
    from common.files import output_dir
    from common.tables import pyplot, save_figure, write_table
    from common.timing import device_description, time_call

    out_path = output_dir(out)
    fns = gradient_functions()
    rows = []
    for L in depths:
        sizes = [width] * (L + 1)
        key_p, key_x, key_y = jax.random.split(jax.random.PRNGKey(L), 3)
        params = mb.init_mlp(key_p, sizes, weight_scale="fan_in")
        X = jax.random.uniform(key_x, (batch, width))
        Y = jax.random.uniform(key_y, (batch, width))
        row = {"depth_L": L, "width": width, "batch": batch}
        for name, f in fns.items():
            row[f"{name} ms"] = time_call(lambda f=f: f(params, X, Y), repeats=repeats) * 1e3
        row["naive / cached"] = row["naive chain ms"] / row["cached backprop ms"]
        rows.append(row)
        print(f"L={L:3d}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k.endswith("ms")))
    slopes = {m: fitted_slope(depths, [r[f"{m} ms"] for r in rows]) for m in METHODS}
    # the asymptotic slope: fitted on the deeper half, where per-call overhead no longer dominates
    deep = [d for d in depths if d >= 8]
    deep = deep if len(deep) >= 2 else list(depths)
    deep_slopes = {m: fitted_slope(deep, [r[f"{m} ms"] for r in rows if r["depth_L"] in deep]) for m in METHODS}
    notes = (
        "Fitted slope of log(time) vs log(L), all depths: "
        + ", ".join(f"{m} {s:.2f}" for m, s in slopes.items())
        + f".\nOn L ≥ {deep[0]}: " + ", ".join(f"{m} {s:.2f}" for m, s in deep_slopes.items())
        + f".\nExpected: naive ≈ 2 (L − l products for each layer l), cached ≈ 1.\nDevice: {device_description()}.\n"
    )
    write_table(rows, out_path, "depth_timings", title="Gradient time against depth", notes=notes)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for m in METHODS:
        ax.loglog(depths, [r[f"{m} ms"] for r in rows], "o-", label=f"{m} (slope {deep_slopes[m]:.2f})")
    ax.set_xlabel("depth L (layers)")
    ax.set_ylabel("ms per minibatch gradient (jitted)")
    ax.set_title(f"width {width}, batch {batch}")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, out_path / "depth_timings.png", dpi=120)
    plt.close(fig)
    print(notes)
    print(f"{len(rows)} depths timed: table {out_path / 'depth_timings.md'} (and .csv), plot "
          f"{out_path / 'depth_timings.png'}")
    return {"slopes": slopes, "deep_slopes": deep_slopes, "rows": rows}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(parser, "out", "no-progress", out="runs/backprop_depth")
    parser.add_argument("--depths", type=positive_int, nargs="+", default=[2, 4, 8, 16, 32, 64],
                        help="numbers of layers L timed (default 2 4 8 16 32 64)")
    parser.add_argument("--width", type=positive_int, default=32, help="units per layer (default 32)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="examples per gradient (default 64)")
    deprecated_alias(parser, "--batch", "--batch-size", "batch_size", type=positive_int)
    parser.add_argument("--repeats", type=positive_int, default=7, help="timed repeats, the median kept (default 7)")
    run_command(parser, lambda a: run(a.out, tuple(a.depths), a.width, a.batch_size, a.repeats), argv)


if __name__ == "__main__":
    main()
