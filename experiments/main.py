"""The README's main job, on the embedded default data (nothing to download).

    python -m experiments.main [--out runs/main] [--no-progress]

1. Hand-written backprop vs jax.grad over architectures × activations × costs.
2. An MLP trained with the hand-written gradients on scikit-learn's digits.
3. The lab's Model 1 CNN (Flax, Optax Adam) on the digits upscaled to 32 px, 4 epochs,
   with its report (metrics beside the majority baseline), plots and checkpoints.

Running it again replaces these outputs. Each step is one library call: ``training.runs.gradients.compare_gradients``,
``training.loop.mlp.train_mlp`` and ``training.runs.experiment.train_and_evaluate``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from experiments.cli import add_common, run_command


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common(p, "out", "no-progress", out="runs/main")
    run_command(p, run, argv)


def run(args: argparse.Namespace) -> None:
    from experiments.compare_gradients import print_report
    from experiments.train import print_summary
    from experiments.train_mlp import print_report as print_mlp_report
    from training.loop.mlp import MlpOptions, train_mlp
    from training.runs.experiment import DataSpec, RunOptions, train_and_evaluate, training_config
    from training.runs.gradients import GradientOptions, compare_gradients

    out = Path(args.out)
    print("== 1. manual backprop vs jax.grad")
    print_report(compare_gradients(out / "compare_gradients", GradientOptions(quick=True)))
    print("== 2. MLP on scikit-learn digits with the manual gradients")
    print_mlp_report(train_mlp(None, out / "train_mlp", MlpOptions(progress=not args.no_progress)))
    print("== 3. Model 1 CNN on the digits (32 px), Optax Adam, 4 epochs")
    digits = DataSpec(None)
    cnn = str(out / "train_cnn")
    print_summary(train_and_evaluate(training_config("lab-2020", digits), digits, cnn,
                                     RunOptions(overwrite=True, progress=not args.no_progress)), cnn)
    print(f"done: tables (.md, .csv) and plots (.png) under {out}/")


if __name__ == "__main__":
    main()
