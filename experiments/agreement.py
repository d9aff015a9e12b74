"""Model vs professional ratings (and rater vs rater): κ, weighted κ, mean absolute level error, confusion tables.

    python -m experiments.agreement --predictions predictions.csv --ratings ratings.csv [--out reports/agreement]

predictions.csv: from ``experiments.predict`` (columns path, predicted, …).
ratings.csv: a ``path`` column and one or two rating columns (e.g. ``rater1,rater2``). Rows are
matched by path, relative to the folder given to predict (as predict writes it); a bare file name
is enough when it is unique, and one that matches two photos is an error naming both.
Ratings and predictions must use the ordered labels of
``--order`` (default Improbable Possible Probable); a grouped model's labels
(e.g. Probable+Possible) can be compared after mapping with ``--map 'Probable+Possible=Probable'``.
The ordinal metrics (linear- and quadratic-weighted κ, mean absolute level error in levels) take the
order's positions as the levels: training.evaluation.ordinal. In Python:
``training.runs.agreement.compare_ratings``.
"""

from __future__ import annotations

import argparse

from experiments.cli import add_common, mapping, run_command

ORDER = ("Improbable", "Possible", "Probable")  # training.evaluation.agreement.ORDER, lowest first


def run(args: argparse.Namespace) -> list[dict]:
    from training.runs.agreement import AgreementOptions, compare_ratings

    options = AgreementOptions(order=tuple(args.order) if args.order else None, relabel=tuple(args.map or ()),
                               overwrite=args.overwrite)
    report = compare_ratings(args.predictions, args.ratings, args.out, options)
    print(report.markdown)
    print(report.closing_line())
    return [row.table_row() for row in report.rows]


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--predictions", required=True, help="a CSV written by experiments.predict")
    p.add_argument("--ratings", required=True,
                   help="a CSV with a path column and one or two rating columns (e.g. rater1,rater2)")
    p.add_argument("--order", nargs="+", help=f"ordered labels, lowest first (default {' '.join(ORDER)})")
    p.add_argument("--map", nargs="*", type=mapping, metavar="OLD=NEW",
                   help="relabel predictions, e.g. 'Probable+Possible=Probable'")
    add_common(p, "out", "no-progress", out="reports/agreement")
    p.add_argument("--overwrite", action="store_true", help="replace the report of an earlier run in --out")
    return run_command(p, run, argv)


if __name__ == "__main__":
    main()
