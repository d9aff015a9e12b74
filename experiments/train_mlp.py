"""Train an MLP with the hand-written gradients (Nielsen's setup by default).

    python -m experiments.train_mlp                          # scikit-learn digits (embedded)
    python -m experiments.train_mlp --data ../shared/data/mnist.npz        # network.py: ≥ 95.0 %
    python -m experiments.train_mlp --data ../shared/data/mnist.npz --preset network2   # ≥ 97.5 %

Presets (any flag given explicitly overrides them):
  network   hidden 30, sigmoid, half_sse, η 3.0, minibatch 10, 30 epochs, W ~ N(0, 1)
  network2  hidden 100, cross_entropy, λ 5.0, η 0.5, minibatch 10, 30 epochs, W ~ N(0, 1/n_in)
On the 64-pixel digits the ``network`` preset draws W ~ N(0, 1/n_in) unless
``--weight-scale`` says otherwise (N(0, 1) saturates some seeds there).

Writes ``history.{md,csv}``, ``summary.{md,csv}`` and ``learning_curve.png`` to ``--out``. The whole run is one
library call: ``training.loop.mlp.train_mlp``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from experiments.cli import add_common, nonnegative_float, positive_float, positive_int, run_command
from experiments.names import ACTIVATIONS, COSTS, MLP_PRESETS

if TYPE_CHECKING:
    from training.loop.mlp import MlpReport


def run(args: argparse.Namespace) -> MlpReport:
    from training.loop.mlp import MlpOptions, train_mlp

    options = MlpOptions(preset=args.preset, hidden=None if args.hidden is None else tuple(args.hidden),
                         activation=args.activation, cost=args.cost, eta=args.eta, lmbda=args.lmbda,
                         batch_size=args.batch_size, epochs=args.epochs, weight_scale=args.weight_scale,
                         seed=args.seed, progress=not args.no_progress)
    report = train_mlp(args.data, args.out, options)
    print_report(report)
    return report


def print_report(report: MlpReport) -> None:
    """The closing lines: the accuracy, then where the tables and the plot are (``experiments.main`` prints them
    too)."""
    out = Path(report.out)
    print(f"final test accuracy {100 * report.final_test_accuracy:.2f}% "
          f"(best {100 * report.best_test_accuracy:.2f}% at epoch {report.best_epoch}), "
          f"{report.train_seconds:.1f} s")
    print(f"trained {'-'.join(map(str, report.sizes))} for {report.settings['epochs']} epochs: tables "
          f"{out / 'history.md'}, {out / 'summary.md'} (and .csv), plot {out / 'learning_curve.png'}")


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
