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
order's positions as the levels: training.evaluation.ordinal.
"""

from __future__ import annotations

import argparse
import collections
from pathlib import Path

from experiments.cli import add_common, mapping, run_command

ORDER = ("Improbable", "Possible", "Probable")  # training.evaluation.agreement.ORDER, lowest first


def read_rows(path: str, *, written: bool = False) -> list[dict]:
    """The rows of a CSV with a ``path`` column (BOM and CRLF accepted): every row with the header's fields, no
    field over 128 KiB (:func:`~common.files.read_csv_checked`; ``written``: predict's CSV, read back
    through the CSV rule); anything else is one line."""
    from common.files import FileFormatError, read_csv_checked

    rows = read_csv_checked(path, "a CSV with a 'path' column", required=("path",), errors="surrogateescape",
                            written=written).rows
    if not rows:
        raise FileFormatError(path, "", "needs a 'path' column and at least one row")
    return rows


def run(args: argparse.Namespace) -> list[dict]:
    from common.files import output_dir, safe_name
    from common.tables import write_table
    from training.evaluation.agreement import agreement, match_paths

    relabel = dict(args.map or [])
    predictions = read_rows(args.predictions, written=True)
    if "predicted" not in predictions[0]:
        raise ValueError(f"{args.predictions}: no 'predicted' column (is it a CSV written by experiments.predict?)")
    preds = {r["path"]: relabel.get(r["predicted"], r["predicted"]) for r in predictions}
    if len(preds) < len(predictions):
        seen = collections.Counter(r["path"] for r in predictions)
        raise ValueError(f"{args.predictions}: the path {seen.most_common(1)[0][0]!r} has more than one row")
    ratings = read_rows(args.ratings)
    raters = [c for c in ratings[0] if c != "path"][:2]
    if not raters:
        raise ValueError(f"{args.ratings}: no rating column besides 'path'")
    # output file names are made from the column names: one plain, safe name each (never a path), distinct
    stems = {name: safe_name(name, limit=60) for name in ["model", *raters]}
    if len(set(stems.values())) < len(stems):
        raise ValueError(f"{args.ratings}: the rating columns {raters} give the same file name once made safe "
                         f"({sorted(stems.values())}): rename one")
    model = [preds[p] for p in match_paths([r["path"] for r in ratings], list(preds), args.ratings)]
    order = args.order or list(ORDER)
    pairs = [("model", rater) for rater in raters] + ([tuple(raters)] if len(raters) == 2 else [])
    # every pair computed before anything is written: a bad label leaves no output folder behind
    try:
        results = [agreement(model if first == "model" else [r[first] for r in ratings],
                             [r[second] for r in ratings], order) for first, second in pairs]
    except ValueError as exc:  # a label outside --order: name the file it came from
        raise ValueError(f"{args.ratings}: {exc}") from None
    report = Path(args.out) / "agreement.md"
    if (report.exists() or report.is_symlink()) and not args.overwrite:  # a user's earlier report is kept
        raise FileExistsError(f"{report} exists: pass --overwrite to replace it (or choose another --out)")
    out = output_dir(args.out)
    rows = []
    shown = [_shown(label) for label in order]
    for (first, second), result in zip(pairs, results, strict=True):
        a, b = _shown(first), _shown(second)
        rows.append({"pair": f"{a} vs {b}", "n": result["n"], "agreement": result["agreement"],
                     "cohen_kappa": _or_na(result["cohen_kappa"]),
                     "linear_weighted_kappa": _or_na(result["linear_weighted_kappa"]),
                     "quadratic_weighted_kappa": _or_na(result["quadratic_weighted_kappa"]),
                     "mean_absolute_level_error": result["mean_absolute_level_error"]})
        table = [{a + " \\ " + b: lab, **{lab2: result["confusion"][i][j] for j, lab2 in enumerate(shown)}}
                 for i, lab in enumerate(shown)]
        write_table(table, out, f"confusion_{stems[first]}_vs_{stems[second]}", title=f"{a} (rows) vs {b} (columns)")
    write_table(rows, out, "agreement", title="Agreement with professional ratings",
                notes="κ = 1: perfect agreement; 0: chance level. Weighted κ counts a Probable↔Improbable "
                      "disagreement 2× (linear) or 4× (quadratic) a one-step one. Mean absolute level error: "
                      f"the mean number of levels between the two ratings (order: {' < '.join(shown)}); "
                      "0 is perfect. n/a: every rating on one level (κ is 0/0).\n")
    print((out / "agreement.md").read_text())
    print(f"{len(ratings)} rated photos compared ({len(pairs)} pairs): table {out / 'agreement.md'} (and .csv), "
          f"confusion tables {out}/confusion_*.md")
    return rows


def _shown(name: str) -> str:
    """A column name as written into the tables (UTF-8): bytes that were not UTF-8 shown as U+FFFD (they were a
    UnicodeEncodeError naming no file, after the output folder was made)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _or_na(value: float | None) -> float | str:
    return "n/a" if value is None else value


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--predictions", required=True, help="a CSV written by experiments.predict")
    p.add_argument("--ratings", required=True,
                   help="a CSV with a path column and one or two rating columns (e.g. rater1,rater2)")
    p.add_argument("--order", nargs="+", help="ordered labels, lowest first (default Improbable Possible Probable)")
    p.add_argument("--map", nargs="*", type=mapping, metavar="OLD=NEW",
                   help="relabel predictions, e.g. 'Probable+Possible=Probable'")
    add_common(p, "out", "no-progress", out="reports/agreement")
    p.add_argument("--overwrite", action="store_true", help="replace the report of an earlier run in --out")
    return run_command(p, run, argv)


if __name__ == "__main__":
    main()
