"""Train an MLP with the hand-written gradients (Nielsen's setup by default).

    python -m experiments.train_mlp                          # scikit-learn digits (embedded)
    python -m experiments.train_mlp --data ../shared/data/mnist.npz        # network.py: ≥ 95.0 %
    python -m experiments.train_mlp --data ../shared/data/mnist.npz --preset network2   # ≥ 97.5 %

Presets (any flag given explicitly overrides them):
  network   hidden 30, sigmoid, half_sse, η 3.0, minibatch 10, 30 epochs, W ~ N(0, 1)
  network2  hidden 100, cross_entropy, λ 5.0, η 0.5, minibatch 10, 30 epochs, W ~ N(0, 1/n_in)
On the 64-pixel digits the ``network`` preset draws W ~ N(0, 1/n_in) unless
``--weight-scale`` says otherwise (N(0, 1) saturates some seeds there).

Writes ``history.{md,csv}``, ``summary.{md,csv}`` and ``learning_curve.png`` to ``--out``.
"""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from experiments.cli import add_common, nonnegative_float, positive_float, positive_int, run_command
from experiments.names import ACTIVATIONS, COSTS, MLP_PRESETS

if TYPE_CHECKING:
    from training.data.arrays import ArrayData


def load(data: str | None, seed: int) -> ArrayData:
    from training.data.arrays import load_digits_data, load_mnist_npz

    return load_digits_data(seed=seed) if data is None else load_mnist_npz(data)


def run(args: argparse.Namespace) -> dict:
    import jax
    import jax.numpy as jnp

    import manual_backprop as mb
    from common.files import output_dir
    from common.tables import pyplot, save_figure, write_table
    from common.timing import device_description
    from training.loop.config import MLP_PRESETS

    data = load(args.data, args.seed)
    out = output_dir(args.out)  # made only once the data is read: a missing file leaves no folder behind
    cfg = dict(MLP_PRESETS[args.preset])
    if args.data is None and args.preset == "network":
        cfg["weight_scale"] = "fan_in"
    for name in cfg:
        if getattr(args, name, None) is not None:
            cfg[name] = getattr(args, name)
    sizes = [data.train.x.shape[1], *cfg["hidden"], data.n_classes]
    key_init, key_train = jax.random.split(jax.random.PRNGKey(args.seed))
    params = mb.init_mlp(key_init, sizes, weight_scale=cfg["weight_scale"])
    print(f"{data.name}: {len(data.train.x)} train / {len(data.test.x)} test; sizes {sizes}; {cfg}")
    start = time.perf_counter()
    params, history = mb.train(
        params, jnp.asarray(data.train.x), jnp.asarray(data.train.y),
        jnp.asarray(data.test.x), jnp.asarray(data.test.y),
        key=key_train, epochs=cfg["epochs"], batch_size=cfg["batch_size"], eta=cfg["eta"],
        activation=cfg["activation"], cost=cfg["cost"], lmbda=cfg["lmbda"], progress=not args.no_progress,
    )
    seconds = time.perf_counter() - start
    rows = [r._asdict() for r in history]
    write_table(rows, out, "history", title=f"Per-epoch history, {data.name}")
    summary = {
        "data": data.name, "sizes": "-".join(map(str, sizes)), **{k: v for k, v in cfg.items() if k != "hidden"},
        "seed": args.seed, "final_test_accuracy": history[-1].test_accuracy,
        "best_test_accuracy": max(r.test_accuracy for r in history),
        "best_epoch": max(history, key=lambda r: r.test_accuracy).epoch, "train_seconds": seconds,
    }
    if data.valid is not None:
        summary["final_valid_accuracy"] = float(mb.accuracy(
            params, jnp.asarray(data.valid.x), jnp.asarray(data.valid.y),
            activation=cfg["activation"], cost=cfg["cost"]))
    write_table([summary], out, "summary", title="MLP trained with the hand-written gradients",
                notes=f"Device: {device_description()}. Wall time includes compilation.\n")
    plt = pyplot()
    fig, ax1 = plt.subplots(figsize=(6, 4))
    epochs = [r.epoch for r in history]
    ax1.plot(epochs, [100 * r.test_accuracy for r in history], "o-", color="C0", label="test accuracy")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("test accuracy (%)", color="C0")
    ax2 = ax1.twinx()
    ax2.plot(epochs, [r.train_cost for r in history], "s--", color="C1", label="train cost")
    ax2.set_ylabel(f"mean training cost ({cfg['cost']})", color="C1")
    ax1.set_title(f"{data.name}, {'-'.join(map(str, sizes))}, η={cfg['eta']}")
    fig.tight_layout()
    save_figure(fig, out / "learning_curve.png", dpi=120)
    plt.close(fig)
    print(f"final test accuracy {100 * summary['final_test_accuracy']:.2f}% "
          f"(best {100 * summary['best_test_accuracy']:.2f}% at epoch {summary['best_epoch']}), "
          f"{seconds:.1f} s")
    print(f"trained {summary['sizes']} for {cfg['epochs']} epochs: tables {out / 'history.md'}, "
          f"{out / 'summary.md'} (and .csv), plot {out / 'learning_curve.png'}")
    return summary


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p, "data", "out", "seed", "no-progress",
               out="runs/train_mlp",
               data_help="MNIST .npz (x_train/y_train/x_valid/y_valid/x_test/y_test); default: digits")
    p.add_argument("--preset", choices=sorted(MLP_PRESETS), default="network",
                   help="network: Nielsen's network.py (sigmoid, quadratic cost); network2: cross-entropy and L2 "
                        "(default network); the flags below override it")
    p.add_argument("--hidden", type=positive_int, nargs="+", help="hidden layer widths")
    p.add_argument("--activation", choices=sorted(ACTIVATIONS), help="of every layer")
    p.add_argument("--cost", choices=sorted(COSTS), help="the cost C whose gradient the hand-written backward gives")
    p.add_argument("--eta", type=positive_float, help="the learning rate η of plain minibatch SGD")
    p.add_argument("--lmbda", type=nonnegative_float, help="L2 strength λ (the term is λ/2n Σw²)")
    p.add_argument("--batch-size", type=positive_int, help="examples per SGD step")
    p.add_argument("--epochs", type=positive_int)
    p.add_argument("--weight-scale", choices=["unit", "fan_in"],
                   help="initial weights N(0, 1) (network.py) or N(0, 1/fan_in)")
    return p


def main(argv: list[str] | None = None) -> None:
    run_command(parser(), run, argv)


if __name__ == "__main__":
    main()
