"""Model vs professional ratings (and rater vs rater): κ, quadratic-weighted κ, confusion tables.

    python -m experiments.agreement --predictions predictions.csv --ratings ratings.csv [--out reports/agreement]

predictions.csv: from ``experiments.predict`` (columns path, predicted, …).
ratings.csv: a ``path`` column and one or two rating columns (e.g. ``rater1,rater2``). Rows are
matched by path, relative to the folder given to predict (as predict writes it); a bare file name
is enough when it is unique, and one that matches two photos is an error naming both.
Ratings and predictions must use the ordered labels of
``--order`` (default Improbable Possible Probable); a grouped model's labels
(e.g. Probable+Possible) can be compared after mapping with ``--map 'Probable+Possible=Probable'``.
"""

from __future__ import annotations

import argparse
import collections
import csv
from pathlib import PurePosixPath

from experiments.errors import add_common, mapping, run_command

ORDER = ("Improbable", "Possible", "Probable")  # training.evaluation.agreement.ORDER, lowest first


def read_rows(path: str) -> list[dict]:
    """The rows of a CSV with a ``path`` column (BOM and CRLF accepted)."""
    try:
        with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise FileNotFoundError(f"file not found: {path}") from None
    except (UnicodeError, csv.Error) as exc:
        raise ValueError(f"{path}: not a readable CSV ({exc})") from exc
    if not rows or "path" not in rows[0]:
        raise ValueError(f"{path}: needs a 'path' column and at least one row")
    return rows


def match_paths(rated: list[str], predicted: list[str], ratings_file: str) -> list[str]:
    """For each rated path, the one predicted path it names.

    Paths are compared as relative POSIX paths, component by component: a rating ``siteA/IMG_1.jpg``
    (or just ``IMG_1.jpg`` when the name is unique) matches the prediction whose path ends with
    those components. A rating that matches two predictions is an error naming both; one that
    matches none is counted and named.
    """
    def parts(path: str) -> tuple[str, ...]:
        return tuple(part for part in PurePosixPath(path.replace("\\", "/")).parts if part not in (".", "/"))

    by_suffix: dict[tuple[str, ...], list[str]] = {}
    for p in predicted:
        q = parts(p)
        for k in range(len(q)):
            by_suffix.setdefault(q[k:], []).append(p)
    matched, missing = [], []
    for r in rated:
        q = parts(r)
        hits = by_suffix.get(q, [])
        for k in range(1, len(q)):  # a longer rated path (e.g. absolute) ending in a predicted one
            if hits:
                break
            hits = [p for p in by_suffix.get(q[k:], []) if parts(p) == q[k:]]
        if len(hits) > 1:
            raise ValueError(f"{ratings_file}: {r!r} matches more than one prediction ({hits[0]!r} and "
                             f"{hits[1]!r}): give its path relative to the folder given to predict")
        if not hits:
            missing.append(r)
        else:
            matched.append(hits[0])
    if missing:
        raise ValueError(f"{len(missing)} rated photo(s) in {ratings_file} have no prediction, e.g. {missing[:3]}")
    return matched


def run(args: argparse.Namespace) -> list[dict]:
    from training.common.files import output_dir
    from training.common.tables import write_table
    from training.evaluation.agreement import agreement

    relabel = dict(args.map or [])
    predictions = read_rows(args.predictions)
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
    model = [preds[p] for p in match_paths([r["path"] for r in ratings], list(preds), args.ratings)]
    order = args.order or list(ORDER)
    pairs = [("model", rater) for rater in raters] + ([tuple(raters)] if len(raters) == 2 else [])
    results = [agreement(model if first == "model" else [r[first] for r in ratings],
                         [r[second] for r in ratings], order) for first, second in pairs]
    out = output_dir(args.out)  # made only once every pair is scored: a failure leaves no folder behind
    rows = []
    for (first, second), result in zip(pairs, results):
        rows.append({"pair": f"{first} vs {second}", "n": result["n"], "agreement": result["agreement"],
                     "cohen_kappa": result["cohen_kappa"],
                     "quadratic_weighted_kappa": result["quadratic_weighted_kappa"]})
        table = [{first + " \\ " + second: lab, **{lab2: result["confusion"][i][j] for j, lab2 in enumerate(order)}}
                 for i, lab in enumerate(order)]
        write_table(table, out, f"confusion_{first}_vs_{second}", title=f"{first} (rows) vs {second} (columns)")
    write_table(rows, out, "agreement", title="Agreement with professional ratings",
                notes="κ = 1: perfect agreement; 0: chance level. Quadratic weights count a "
                      "Probable↔Improbable disagreement 4× a one-step one.\n")
    print((out / "agreement.md").read_text())
    print(f"{len(ratings)} rated photos compared ({len(pairs)} pairs): table {out / 'agreement.md'} (and .csv), "
          f"confusion tables {out}/confusion_*.md")
    return rows


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--predictions", required=True, help="a CSV written by experiments.predict")
    p.add_argument("--ratings", required=True,
                   help="a CSV with a path column and one or two rating columns (e.g. rater1,rater2)")
    p.add_argument("--order", nargs="+", help="ordered labels, lowest first (default Improbable Possible Probable)")
    p.add_argument("--map", nargs="*", type=mapping, metavar="OLD=NEW",
                   help="relabel predictions, e.g. 'Probable+Possible=Probable'")
    add_common(p, "out", "no-progress", out="reports/agreement")
    return run_command(p, run, argv)


if __name__ == "__main__":
    main()
