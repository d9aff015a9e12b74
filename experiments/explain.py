"""Predict, and show what the model looks at: Grad-CAM and Grad-CAM++ (and saliency) over each photo.

    python -m experiments.explain --checkpoint runs/NAME --images DIR --out reports/explain
    python -m experiments.explain --checkpoint runs/NAME --images photo.jpg DIR2 other.png

``explain`` is ``predict`` plus pictures (in Python: ``training.runs.explain.explain_photos``). Its
probabilities are predict's, computed by the same function (the same engine, the mirror-image average of a
pretrained run, the run's calibration, the saved operating point of a --target-recall run), and its paths have
predict's form: a photo found in a folder given to --images is named relative to that folder, a file given directly
as given.

Writes ``explanations.csv`` (predict's columns: path, predicted, p_<class> …, then png) and one
PNG per photo: the photo as the model sees it (titled with the predicted class and its
probability), then each map of the predicted class over it (bright: raises that class's score).
The maps are computed on the photo itself, not its mirror image. Photos are decoded a few
chunks ahead by a thread pool; the maps of a chunk come from one batched, jitted pass (one
forward and one backward for all methods together; the backward reaches the image only for saliency).
"""

from __future__ import annotations

import argparse
import sys

from experiments.cli import add_common, positive_int, run_command
from experiments.names import EXPLAIN_METHODS


def run(args: argparse.Namespace) -> list[dict]:
    from training.runs.explain import ExplainOptions, explain_photos

    if args.cache_dir is not None:
        print("warning: --cache-dir is deprecated and ignored: explain streams the photos as predict does",
              file=sys.stderr)
    options = ExplainOptions(methods=tuple(args.methods), engine=args.engine, batch_size=args.batch_size,
                             workers=args.workers, skip_bad=args.skip_bad, progress=not args.no_progress)
    report = explain_photos(args.checkpoint, args.images, args.out, options)
    for _, reason in report.skipped:
        print(f"skipped: {reason}", file=sys.stderr)
    print(report.closing_line())
    return [row.as_dict() for row in report.rows]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a run folder written by experiments.train")
    p.add_argument("--images", required=True, nargs="+", metavar="PHOTO_OR_DIR",
                   help="photo files and folders of photos (read recursively), in any mix; paths as predict "
                        "writes them")
    p.add_argument("--methods", nargs="+", choices=EXPLAIN_METHODS, default=["grad_cam", "grad_cam_plus_plus"],
                   help="which maps to draw (default grad_cam grad_cam_plus_plus: the gradient at the last feature "
                        "maps flows back through the head alone; saliency needs a backward pass through the whole "
                        "network, about 5× the CPU time a photo)")
    add_common(p, "out", "skip-bad", "workers", "no-progress", "engine", out="reports/explain")
    p.add_argument("--batch-size", type=positive_int,
                   help="photos per batched pass (default: the run's), rounded up to a multiple of the devices")
    p.add_argument("--cache-dir", help=argparse.SUPPRESS)  # deprecated: photos are streamed, as predict's are
    return p


def main(argv: list[str] | None = None) -> list[dict]:
    return run_command(parser(), run, argv)


if __name__ == "__main__":
    main()
