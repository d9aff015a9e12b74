"""The lab's results table, reproduced honestly: scenarios × image sizes × {lab-2020, improved, pretrained}.

    python -m experiments.results_table --data DIR_OR_CSV --out reports/NAME \\
        [--scenario Pr_Im PrPo_Im Pr_PoIm Pr_Po_Im] [--image-size 108 224] [--configs lab-2020 improved pretrained] \\
        [--grouping FILE ...] [--rgb] [--model model1] [--max-epochs N]

Every row: the lab's columns (Prec., Recall — of the named positive class — and Acc.) plus
balanced accuracy, macro-F1, ROC-AUC (two classes), the majority-class baseline, mean ± std over
folds, training seconds, and whether the row beats the baseline. Writes results.{md,csv} and a
confusion-matrix PNG per row; each finished row is saved under rows/, so a re-run skips it.
``--grouping`` files replace the scenarios (e.g. tree vs not_a_tree). A row whose classes are
too small to split is reported as such, not trained. As N processes (--coordinator …, README
"Scaling"), each row's features are computed by shard of photos and its networks train
data-parallel; process 0 writes the table. The whole run is one library call:
``training.runs.grid.results_grid(data, out, GridOptions)``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from experiments.cli import DISTRIBUTED, add_common, deprecated_alias, image_size, positive_int, run_command
from experiments.names import SCENARIOS, TABLE_CONFIGS

if TYPE_CHECKING:
    from training.runs.grid import GridReport


def run(args: argparse.Namespace) -> GridReport:
    from training.runs.grid import GridOptions, results_grid

    options = GridOptions(scenarios=tuple(args.scenario), groupings=tuple(args.grouping or ()),
                          image_sizes=tuple(args.image_size), configs=tuple(args.configs), rgb=args.rgb,
                          model=args.model, max_epochs=args.max_epochs, seed=args.seed, skip_bad=args.skip_bad,
                          cache_dir=args.cache_dir, engine=args.engine, progress=not args.no_progress)
    report = results_grid(args.data, args.out, options)
    print(report.markdown)
    if report.process_index == 0:
        out = Path(report.out)
        print(f"{len(report.rows)} rows: table {out / 'results.md'} (and .csv), one confusion matrix per row "
              f"({out}/confusion_*.png), each row's runs under {out / 'runs'}")
    return report


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p, "data", "out", "seed", "skip-bad", "cache-dir", "no-progress", "engine", *DISTRIBUTED,
               out="reports/results",
               data_required=True)
    p.add_argument("--scenario", nargs="+", default=list(SCENARIOS), choices=sorted(SCENARIOS),
                   help="the lab's label groupings, one set of rows each (default all four)")
    deprecated_alias(p, "--scenarios", "--scenario", "scenario", nargs="+", choices=sorted(SCENARIOS))
    p.add_argument("--grouping", nargs="+", help="grouping files to use instead of the scenarios")
    p.add_argument("--image-size", nargs="+", type=image_size, default=[108, 224],
                   help="square sides in pixels, one row each (default 108 224)")
    deprecated_alias(p, "--sizes", "--image-size", "image_size", nargs="+", type=image_size)
    p.add_argument("--configs", nargs="+", default=list(TABLE_CONFIGS), choices=sorted(TABLE_CONFIGS),
                   help="lab-2020 (the lab's 2020 setup), improved (Model 1 from scratch, done well), pretrained "
                        "(the default: frozen EfficientNet-Lite1 and a head); default all three")
    p.add_argument("--rgb", action="store_true", help="improved configuration in colour")
    p.add_argument("--model", default="model1", choices=["model1", "resnet50", "googlenet"],
                   help="the network of the lab-2020 and improved rows")
    p.add_argument("--max-epochs", type=positive_int, help="cap every configuration's epochs (for quick runs)")
    return p


def main(argv: list[str] | None = None) -> None:
    run_command(parser(), run, argv)


if __name__ == "__main__":
    main()
