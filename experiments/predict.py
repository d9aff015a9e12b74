"""Predict with a trained run on new photos: one CSV row per image.

    python -m experiments.predict --checkpoint runs/NAME --images DIR --out predictions.csv

Columns: path (relative to DIR, as experiments.agreement matches it), predicted label, then one
probability column per class (p_<class>). A run trained with
--target-recall predicts its class whenever that class's probability reaches the saved threshold.
Every file in DIR (recursively, hidden files and .md/.txt/.csv/.json aside) is read;
an unreadable one stops the run naming it, or with --skip-bad is listed on stderr and counted.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

from experiments.errors import run_command
from training.images import Preprocess, load_unlabelled
from training.tables import atomic_open
from training.train import load_operating_point, load_trained, make_eval_step, predict_proba
from training.transfer import decide


def run(args: argparse.Namespace) -> list[dict]:
    model, params, config, class_names = load_trained(args.checkpoint)
    op = load_operating_point(args.checkpoint)
    images = load_unlabelled(args.images, Preprocess(config.image_size, config.crop, config.rgb),
                             skip_bad=args.skip_bad, cache_dir=args.cache_dir)
    eval_step = make_eval_step(model, tta_flip=config.pretrained and config.tta_flip)
    probs = predict_proba(eval_step, params, images.x, batch_size=config.batch_size)
    predicted = decide(probs, op)
    if op:
        print(f"operating point: {op['class']} when its probability ≥ {op['threshold']:.4f} "
              f"(chosen for recall ≥ {op['target_recall']:g})")
    rows = []
    for path, p, k in zip(images.paths, probs, predicted):
        row = {"path": Path(path).relative_to(args.images).as_posix(), "predicted": class_names[int(k)]}
        row.update({f"p_{name}": float(p[i]) for i, name in enumerate(class_names)})
        rows.append(row)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    # written to a temporary file, then renamed: a failure never touches an existing CSV. File names
    # that are not valid UTF-8 are written byte for byte (surrogateescape), not fatal.
    with atomic_open(out, newline="", encoding="utf-8", errors="surrogateescape") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "predicted", *[f"p_{n}" for n in class_names]])
        writer.writeheader()
        writer.writerows(rows)
    for path, reason in images.report.skipped:
        print(f"skipped: {reason}", file=sys.stderr)
    print(f"{len(rows)} predictions written to {out}"
          + (f"; {len(images.report.skipped)} bad files skipped" if images.report.skipped else ""))
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a run folder written by experiments.train")
    p.add_argument("--images", required=True, help="folder of photos")
    p.add_argument("--out", default="predictions.csv")
    p.add_argument("--skip-bad", action="store_true")
    p.add_argument("--cache-dir")
    run_command(p, run, argv)


if __name__ == "__main__":
    main()
