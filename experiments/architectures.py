"""Model 1 vs ResNet-50 vs GoogLeNet on the same folds: accuracy, balanced accuracy, macro-F1, training time.

    python -m experiments.architectures --data DIR_OR_CSV [--scenario Pr_Im | --grouping FILE] \\
        [--image-size 108] [--folds 5] [--epochs 30] [--models model1 resnet50 googlenet] --out reports/arch

Every model gets the ``improved`` configuration of ``training.runs.results`` (augmentation, balanced
class weights, standardized inputs, Adam 1e-4 with cosine decay, early stopping) and the same
seeded stratified folds; the table has each metric's mean ± std over folds beside the majority baseline.
"""

from __future__ import annotations

import argparse

from experiments.cli import add_common, deprecated_alias, image_size, positive_int, run_command
from experiments.names import SCENARIOS

MODELS = ("model1", "resnet50", "googlenet")


def run(args: argparse.Namespace) -> list[dict]:
    from common.files import output_dir
    from common.tables import write_table
    from common.timing import device_description
    from training.data.dataset import load_dataset
    from training.data.decoding import Preprocess
    from training.runs.folds import run_folds
    from training.runs.results import config_for, table_row

    data = load_dataset(args.data, Preprocess(args.image_size, "center", args.rgb), scenario=args.scenario,
                        grouping_file=args.grouping, skip_bad=args.skip_bad, cache_dir=args.cache_dir,
                        progress=False)
    print(f"{data.source}: {data.report.summary()}")
    out = output_dir(args.out)  # made only once the data is read: a run that stops early leaves no folder
    rows = []
    for name in args.models:
        config = config_for("improved", args.image_size, rgb=args.rgb, seed=args.seed, model=name, folds=args.folds,
                            epochs=args.epochs)
        print(f"== {name}")
        results = run_folds(data, config, out / name, progress=not args.no_progress, engine=args.engine)
        row = table_row(results, data.class_names)
        row.pop("_stats")
        row.pop("confusion (summed over folds)")
        rows.append({"model": name, **row})
    write_table(rows, out, "architectures", title="Architectures on the same folds",
                notes=f"Data: {args.data} ({data.grouping.name}, {len(data.y)} images), {args.image_size} px "
                      f"{'RGB' if args.rgb else 'grayscale'}, {args.folds} folds, up to {args.epochs} epochs. "
                      f"Device: {device_description()}.\n")
    print((out / "architectures.md").read_text())
    print(f"{len(rows)} architectures compared on {len(data.y)} photos: table {out / 'architectures.md'} "
          f"(and .csv), each model's runs under {out}/<model>/")
    return rows


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
