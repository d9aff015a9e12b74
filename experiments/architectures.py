"""Model 1 vs ResNet-50 vs GoogLeNet on the same folds: accuracy, balanced accuracy, macro-F1, training time.

    python -m experiments.architectures --data DIR_OR_CSV [--scenario Pr_Im | --grouping FILE] \\
        [--image-size 108] [--folds 5] [--epochs 30] [--models model1 resnet50 googlenet] --out reports/arch

Every model gets the ``improved`` configuration of ``training.runs.results`` (augmentation, balanced
class weights, standardized inputs, Adam 1e-4 with cosine decay, early stopping) and the same
seeded stratified folds; the table has each metric's mean ± std over folds beside the majority baseline.
The whole run is one library call: ``training.runs.architectures.compare_architectures``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from experiments.cli import add_common, deprecated_alias, image_size, positive_int, run_command
from experiments.names import SCENARIOS

if TYPE_CHECKING:
    from training.runs.architectures import ArchitectureReport

MODELS = ("model1", "resnet50", "googlenet")  # training.runs.architectures.MODELS


def run(args: argparse.Namespace) -> ArchitectureReport:
    from training.runs.architectures import ArchitectureOptions, compare_architectures
    from training.runs.experiment import DataSpec

    options = ArchitectureOptions(models=tuple(args.models), image_size=args.image_size, rgb=args.rgb,
                                  folds=args.folds, epochs=args.epochs, seed=args.seed, skip_bad=args.skip_bad,
                                  cache_dir=args.cache_dir, engine=args.engine, progress=not args.no_progress)
    report = compare_architectures(DataSpec(args.data, args.scenario, args.grouping), args.out, options)
    print(report.markdown)
    print(f"{len(report.rows)} architectures compared on {report.n_images} photos: table "
          f"{Path(report.out) / 'architectures.md'} (and .csv), each model's runs under {report.out}/<model>/")
    return report


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p, "data", "out", "seed", "skip-bad", "cache-dir", "no-progress", "engine",
               out="reports/architectures",
               data_required=True)
    p.add_argument("--scenario", choices=sorted(SCENARIOS), help="the lab's label grouping (as train's)")
    p.add_argument("--grouping", help="JSON/TOML grouping file instead (as train's)")
    p.add_argument("--image-size", type=image_size, default=108, help="square side in pixels (default 108)")
    deprecated_alias(p, "--size", "--image-size", "image_size", type=image_size)
    p.add_argument("--rgb", action="store_true", help="keep colour (default grayscale)")
    p.add_argument("--folds", type=positive_int, default=5, help="outer folds, the same for every model (default 5)")
    p.add_argument("--epochs", type=positive_int, default=30, help="at most this many epochs each (default 30)")
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS,
                   help="networks trained from scratch with the improved recipe (default all three)")
    return p


def main(argv: list[str] | None = None) -> None:
    run_command(parser(), run, argv)


if __name__ == "__main__":
    main()
