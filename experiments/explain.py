"""Heat maps of what a trained model looks at: saliency, Grad-CAM, Grad-CAM++ over each photo.

    python -m experiments.explain --checkpoint runs/NAME --images DIR --out DIR

Writes one PNG per photo (the preprocessed photo, then each map overlaid on it, titled with
the class experiments.predict decides and its probability: the run's calibrated probability, as predict
computes it, flip-averaged for a pretrained backbone) and ``explanations.csv``.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from experiments.errors import add_common, run_command
from training.common.files import atomic_open, csv_row, inside, output_dir, safe_name
from training.common.tables import pyplot, save_figure
from training.data.images import Preprocess, load_unlabelled
from training.evaluation.decision import decide
from training.evaluation.explain import METHODS, jitted
from training.inference.engine import probs_function
from training.runs.saved import load_trained, run_config, saved_calibration


def run(args: argparse.Namespace) -> list[dict]:
    model, params, config, class_names = load_trained(args.checkpoint)
    images = load_unlabelled(args.images, Preprocess(config.image_size, config.crop, config.rgb),
                             skip_bad=args.skip_bad, cache_dir=args.cache_dir)
    out = output_dir(args.out)
    # (params, batch) -> the calibrated probabilities, as predict computes them
    saved = run_config(args.checkpoint)[1]
    calibration, op = saved_calibration(saved), saved.get("operating_point")
    shift = None if calibration is None else calibration.shift
    probs_fn, fn_params, _ = probs_function(model, params, config, "jax", calibration=calibration)
    maps = {name: jitted(model, name) for name in args.methods}
    plt = pyplot()
    rows = []
    for path, x in zip(images.paths, images.x):
        probs = np.asarray(probs_fn(fn_params, x[None]))[0]
        cls = int(decide(probs[None], op, shift)[0])
        fig, axes = plt.subplots(1, 1 + len(maps), figsize=(3.2 * (1 + len(maps)), 3.6))
        shown = x[:, :, 0] if x.shape[-1] == 1 else x
        axes[0].imshow(shown, cmap="gray" if x.shape[-1] == 1 else None)
        axes[0].set_title(f"{class_names[cls]} {probs[cls]:.2f}", fontsize=9)
        for ax, (name, f) in zip(axes[1:], maps.items()):
            ax.imshow(shown, cmap="gray" if x.shape[-1] == 1 else None)
            ax.imshow(np.asarray(f(params, x, cls)), cmap="jet", alpha=0.45, vmin=0, vmax=1)
            ax.set_title(name, fontsize=9)
        for ax in axes:
            ax.axis("off")
        fig.suptitle(Path(path).name, fontsize=9)
        fig.tight_layout()
        png = inside(out, safe_name(f"{Path(path).stem}_explained") + ".png")
        save_figure(fig, png, dpi=100)
        plt.close(fig)
        rows.append({"path": path, "predicted": class_names[cls], "probability": float(probs[cls]), "png": str(png)})
    with atomic_open(out / "explanations.csv", newline="", encoding="utf-8", errors="surrogateescape") as f:
        columns = ["path", "predicted", "probability", "png"]
        writer = csv.writer(f)
        writer.writerow(columns)
        writer.writerows(csv_row(row[c] for c in columns) for row in rows)
    print(f"{len(rows)} explained photos written to {out}")
    return rows


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a run folder written by experiments.train")
    p.add_argument("--images", required=True, help="a folder of photos")
    p.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS),
                   help="which maps to draw (default all)")
    add_common(p, "out", "skip-bad", "cache-dir", out="reports/explain")
    return p


def main(argv: list[str] | None = None) -> list[dict]:
    return run_command(parser(), run, argv)


if __name__ == "__main__":
    main()
