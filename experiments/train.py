"""Train Model 1 on labelled photos (or the embedded digits) and write a report with baselines.

    python -m experiments.train --data DIR_OR_CSV --scenario Pr_Im --image-size 108 [--rgb] \\
        [--epochs 4] [--batch-size 32] [--folds K] [--grouping FILE] --out runs/NAME

DIR: one subfolder per label (Probable/, Possible/, Improbable/, or any labels);
CSV: columns path,label (paths relative to the CSV). Without --data the embedded
scikit-learn digits (upscaled to --image-size, default 32 for them) are used.
Writes to --out: data_report.json, split.json, metrics.{md,csv}, history.{md,csv,json},
learning_curves.png, confusion_matrix.png, checkpoints/{best,last,config.json}
(with --folds K: one fold_k/ folder each and summary.{md,csv} with mean ± std).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from training.checkpoints import write_json_atomic
from training.data import load_dataset
from training.images import Preprocess
from training.labels import SCENARIOS
from training.report import HEADLINE
from training.runner import run_folds
from training.tables import output_dir, write_table
from training.train import get_config


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", help="folder with one subfolder per label, or a CSV manifest (path,label)")
    p.add_argument("--scenario", choices=sorted(SCENARIOS), help="the lab's label grouping")
    p.add_argument("--grouping", help="JSON/TOML grouping file (classes → labels, exclude)")
    p.add_argument("--image-size", type=int, help="square side in pixels (default 108; 32 for digits)")
    p.add_argument("--rgb", action="store_true", help="keep colour (default: grayscale, as the lab)")
    p.add_argument("--crop", choices=["center", "squash"], default="center")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--class-weights", choices=["balanced"], help="weight the loss by inverse class frequency")
    p.add_argument("--standardize", action="store_true",
                   help="scale inputs by the training split's per-channel mean and std (saved with the model)")
    p.add_argument("--model", choices=["model1", "resnet50", "googlenet"], default="model1")
    p.add_argument("--augment", action="store_true", help="random crop/flip/rotation/brightness on training images")
    p.add_argument("--lr-schedule", choices=["cosine"], help="decay the learning rate to 0 over the run")
    p.add_argument("--patience", type=int, help="early stopping: epochs without a better validation macro-F1")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--folds", type=int, default=1, help="K > 1: stratified K-fold cross-validation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images (counted in data_report.json)")
    p.add_argument("--cache-dir", help="preprocessed-image cache (default ~/.cache/tree-risk-jax/images)")
    p.add_argument("--workers", type=int, help="decoding threads (default: all cores)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", default="runs/train")
    return p


def run(args: argparse.Namespace) -> dict:
    out = output_dir(args.out)
    image_size = args.image_size or (108 if args.data else 32)
    config = get_config(image_size=image_size, rgb=args.rgb, crop=args.crop, epochs=args.epochs,
                        batch_size=args.batch_size, learning_rate=args.lr, class_weights=args.class_weights,
                        standardize=args.standardize, model=args.model, augment=args.augment,
                        lr_schedule=args.lr_schedule, patience=args.patience,
                        val_fraction=args.val_fraction, folds=args.folds, seed=args.seed)
    data = load_dataset(args.data, Preprocess(image_size, args.crop, args.rgb), scenario=args.scenario,
                        grouping_file=args.grouping, skip_bad=args.skip_bad, cache_dir=args.cache_dir,
                        workers=args.workers, progress=not args.no_progress)
    counts = {name: int(np.sum(data.y == i)) for i, name in enumerate(data.class_names)}
    print(f"{data.source}: {data.report.summary()}; classes {counts}")
    write_json_atomic(out / "data_report.json", {"source": data.source, "grouping": data.grouping.name,
                                                 "class_counts": counts, **data.report.as_dict()})
    results = run_folds(data, config, out, resume=args.resume, progress=not args.no_progress)
    for r in results:
        print(f"validation: accuracy {r['metrics']['accuracy']:.3f}, balanced accuracy "
              f"{r['metrics']['balanced_accuracy']:.3f}, macro-F1 {r['metrics']['macro_f1']:.3f} "
              f"(majority baseline {r['baseline']['accuracy']:.3f} / "
              f"{r['baseline']['balanced_accuracy']:.3f} / {r['baseline']['macro_f1']:.3f}): {r['verdict']}")
    if len(results) > 1:
        rows = []
        for key in HEADLINE:
            vals = [r["metrics"][key] for r in results if r["metrics"].get(key) is not None]
            base = [r["baseline"][key] for r in results if r["baseline"].get(key) is not None]
            if vals:
                rows.append({"metric": key, "mean": float(np.mean(vals)), "std": float(np.std(vals)),
                             "baseline_mean": float(np.mean(base)) if base else ""})
        write_table(rows, out, "summary", title=f"{len(results)}-fold cross-validation (mean ± std over folds)")
    (out / "summary.json").write_text(json.dumps(
        [{"metrics": r["metrics"], "baseline": r["baseline"], "best_epoch": r["best_epoch"]} for r in results],
        indent=2))
    return {"results": results, "class_names": data.class_names, "out": str(out)}


def main(argv: list[str] | None = None) -> None:
    run(parser().parse_args(argv))


if __name__ == "__main__":
    main()
