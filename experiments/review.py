"""A review page for a folder of predictions: thumbnails, ratings, probabilities, referral, Grad-CAM on a click.

    python -m experiments.review --predictions predictions.csv --images DIR [--explain reports/explain]
                                 [--ratings ratings.csv] --out reports/review

Writes OUT/index.html (one file, inline CSS and JavaScript: open it from disk, no network) and
OUT/thumbs/ (small JPEGs; the originals are linked, relative to the page). The photos are sorted
uncertain-first (lowest top probability, then smallest margin); with --ratings (the CSV agreement
reads: path and rating columns) the photos where the person and the model disagree come first.
The page filters by predicted class, referral (when predict wrote a refer column) and disagreement.
--explain: explain's output folder; each photo it drew gets its Grad-CAM overlay on a click.
An existing page is replaced only with --overwrite. Library: training.evaluation.review.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from experiments.cli import add_common, mapping, positive_int, run_command
from experiments.names import THUMB_SIZE

if TYPE_CHECKING:
    from training.evaluation.review import ReviewSummary


def _shown(text: str) -> str:
    """``text`` for the terminal: one line, no escape sequences (non-printable characters as Python escapes)."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def run(args: argparse.Namespace) -> ReviewSummary:
    from training.evaluation.review import write_review

    s = write_review(args.predictions, args.images, args.out, explain=args.explain, ratings=args.ratings,
                     rater=args.rater, relabel=dict(args.map or []), overwrite=args.overwrite,
                     thumb_size=args.thumb_size, workers=args.workers, title=args.title)
    for path, why in s.missing[:10]:  # a name from the data: its control characters (a newline, ESC) escaped
        print(f"no thumbnail: {_shown(path)}: {_shown(why)}")
    if len(s.missing) > 10:
        print(f"no thumbnail: … and {len(s.missing) - 10} more")
    parts = [f"{s.photos} photos", f"{s.thumbnails_made} thumbnails made, {s.thumbnails_reused} reused"
             + (f", {len(s.missing)} missing" if s.missing else "")]
    if s.referred is not None:
        parts.append(f"{s.referred} referred")
    if args.ratings:
        parts.append(f"{s.rated} rated, {s.disagreements} disagreements"
                     + (f", {s.unmatched_ratings} rated photos without a prediction" if s.unmatched_ratings else ""))
    if args.explain:
        parts.append(f"{s.overlays} Grad-CAM overlays")
    print(f"review page written to {s.page} ({s.html_bytes / 1e6:.2f} MB; {'; '.join(parts)})")
    return s


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--predictions", required=True, help="the CSV written by experiments.predict")
    p.add_argument("--images", required=True, help="the folder given to predict (the CSV's paths are relative to it)")
    p.add_argument("--explain", help="explain's output folder: Grad-CAM overlays on a click")
    p.add_argument("--ratings", help="a person's ratings (path and rating columns, as for agreement): "
                                     "disagreements first")
    p.add_argument("--rater", help="the rating column to use (default: the first after path)")
    p.add_argument("--map", nargs="*", type=mapping, metavar="OLD=NEW",
                   help="relabel predictions for the comparison, as agreement does, e.g. 'Probable+Possible=Probable'")
    p.add_argument("--thumb-size", type=positive_int, default=THUMB_SIZE,
                   help=f"the longer side of a thumbnail in pixels (default {THUMB_SIZE})")
    p.add_argument("--title", help="the page's title (default: Review of PREDICTIONS)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing OUT/index.html")
    add_common(p, "out", "workers", out="reports/review")
    return p


def main(argv: list[str] | None = None) -> ReviewSummary:
    return run_command(parser(), run, argv)


if __name__ == "__main__":
    main()
