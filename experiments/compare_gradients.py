"""Manual backprop vs jax.grad: relative error in float32/float64 and jitted timings.

    python -m experiments.compare_gradients [--out runs/compare_gradients] [--quick]
    python -m experiments.compare_gradients --cnn [--image-size 108] [--batch 32]

``--cnn``: Model 1's hand-written backward (``manual_backprop.cnn``) against ``jax.grad`` of
the Flax model: per-parameter relative error (float64, float32) and per-layer backward times.
The whole run is one library call: ``training.runs.gradients.compare_gradients`` (``compare_cnn_gradients``
with ``--cnn``).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from experiments.cli import add_common, deprecated_alias, image_size, positive_int, run_command

if TYPE_CHECKING:
    from training.runs.gradients import CnnGradientReport, GradientReport


def run(args: argparse.Namespace) -> GradientReport | CnnGradientReport:
    from training.runs.gradients import CnnGradientOptions, GradientOptions, compare_cnn_gradients, compare_gradients

    if args.cnn:
        report = compare_cnn_gradients(args.out, CnnGradientOptions(image_size=args.image_size,
                                                                    batch_size=args.batch_size, quick=args.quick))
        print_cnn_report(report)
    else:
        report = compare_gradients(args.out, GradientOptions(quick=args.quick))
        print_report(report)
    return report


def print_report(report: GradientReport) -> None:
    """The closing lines of the MLP comparison (``experiments.main`` prints them too)."""
    print(f"max relative error vs jax.grad: float64 {report.worst_float64:.2e}, float32 {report.worst_float32:.2e}")
    print(f"{len(report.errors)} gradient comparisons and {len(report.timings)} timings: tables "
          f"{report.errors_table}, {report.timings_table} (and .csv), plot {report.plot}")


def print_cnn_report(report: CnnGradientReport) -> None:
    """Both tables as written, then where they are."""
    print(report.errors_markdown)
    print(report.timings_markdown)
    print(f"Model 1's backward compared with jax.grad: tables {report.errors_table}, {report.timings_table} "
          "(and .csv)")


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
    run_command(parser, run, argv)


if __name__ == "__main__":
    main()
