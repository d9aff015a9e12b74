"""The README's main job, on the embedded default data (nothing to download).

    python -m experiments.main [--out runs/main]

1. Hand-written backprop vs jax.grad over architectures × activations × costs.
2. An MLP trained with the hand-written gradients on scikit-learn's digits.
3. The lab's Model 1 CNN (Flax, Optax Adam) on the digits upscaled to 32 px, 4 epochs,
   with its report (metrics beside the majority baseline), plots and checkpoints.

Running it again replaces these outputs.
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
    from experiments import compare_gradients, train, train_mlp

    out = Path(args.out)
    print("== 1. manual backprop vs jax.grad")
    compare_gradients.run(str(out / "compare_gradients"), quick=True)
    print("== 2. MLP on scikit-learn digits with the manual gradients")
    quiet = ["--no-progress"] if args.no_progress else []
    train_mlp.main(["--out", str(out / "train_mlp"), *quiet])
    print("== 3. Model 1 CNN on the digits (32 px), Optax Adam, 4 epochs")
    train.main(["--preset", "lab-2020", "--overwrite", "--out", str(out / "train_cnn"), *quiet])
    print(f"done: tables (.md, .csv) and plots (.png) under {out}/")


if __name__ == "__main__":
    main()
