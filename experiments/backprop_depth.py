"""Time against depth: the naive chain rule (O(L²)) vs cached backprop and jax.grad (O(L)).

    python -m experiments.backprop_depth [--depths 2 4 8 16 32 64] [--width 32] [--batch 64]

Writes ``depth_timings.{md,csv}`` and a log-log plot ``depth_timings.png``; the table's
notes give the fitted slope of log(time) against log(L) for each method. The whole run is one library
call: ``training.runs.gradients.backprop_depth``.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from experiments.cli import add_common, deprecated_alias, positive_int, run_command

if TYPE_CHECKING:
    from training.runs.gradients import DepthReport


def run(args: argparse.Namespace) -> DepthReport:
    from training.runs.gradients import DepthOptions, backprop_depth

    options = DepthOptions(depths=tuple(args.depths), width=args.width, batch_size=args.batch_size,
                           repeats=args.repeats)
    report = backprop_depth(args.out, options, on_depth=lambda row: print(
        f"L={row['depth_L']:3d}: " + ", ".join(f"{k} {v:.3f}" for k, v in row.items() if k.endswith("ms"))))
    print(report.notes)
    print(f"{len(report.rows)} depths timed: table {report.table} (and .csv), plot {report.plot}")
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(parser, "out", "no-progress", out="runs/backprop_depth")
    parser.add_argument("--depths", type=positive_int, nargs="+", default=[2, 4, 8, 16, 32, 64],
                        help="numbers of layers L timed (default 2 4 8 16 32 64)")
    parser.add_argument("--width", type=positive_int, default=32, help="units per layer (default 32)")
    parser.add_argument("--batch-size", type=positive_int, default=64, help="examples per gradient (default 64)")
    deprecated_alias(parser, "--batch", "--batch-size", "batch_size", type=positive_int)
    parser.add_argument("--repeats", type=positive_int, default=7, help="timed repeats, the median kept (default 7)")
    run_command(parser, run, argv)


if __name__ == "__main__":
    main()
