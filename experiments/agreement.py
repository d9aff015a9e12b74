"""Model vs professional ratings (and rater vs rater): κ, quadratic-weighted κ, confusion tables.

    python -m experiments.agreement --predictions predictions.csv --ratings ratings.csv [--out reports/agreement]

predictions.csv: from ``experiments.predict`` (columns path, predicted, …).
ratings.csv: a ``path`` column and one or two rating columns (e.g. ``rater1,rater2``); rows
are matched on the file name. Ratings and predictions must use the ordered labels of
``--order`` (default Improbable Possible Probable); a grouped model's labels
(e.g. Probable+Possible) can be compared after mapping with ``--map 'Probable+Possible=Probable'``.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from training.agreement import ORDER, agreement
from training.tables import output_dir, write_table


def read_rows(path: str) -> list[dict]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or "path" not in rows[0]:
        raise ValueError(f"{path}: needs a 'path' column and at least one row")
    return rows


def run(args: argparse.Namespace) -> list[dict]:
    mapping = dict(m.split("=", 1) for m in (args.map or []))
    preds = {Path(r["path"]).name: mapping.get(r["predicted"], r["predicted"]) for r in read_rows(args.predictions)}
    ratings = read_rows(args.ratings)
    raters = [c for c in ratings[0] if c != "path"][:2]
    if not raters:
        raise ValueError(f"{args.ratings}: no rating column besides 'path'")
    missing = [r["path"] for r in ratings if Path(r["path"]).name not in preds]
    if missing:
        raise ValueError(f"{len(missing)} rated photo(s) have no prediction, e.g. {missing[:3]}")
    out = output_dir(args.out)
    order = args.order or list(ORDER)
    rows = []
    pairs = [("model", rater) for rater in raters] + ([tuple(raters)] if len(raters) == 2 else [])
    for first, second in pairs:
        a = [preds[Path(r["path"]).name] if first == "model" else r[first] for r in ratings]
        b = [r[second] for r in ratings]
        result = agreement(a, b, order)
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
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--predictions", required=True)
    p.add_argument("--ratings", required=True)
    p.add_argument("--order", nargs="+", help="ordered labels, lowest first")
    p.add_argument("--map", nargs="*", help="relabel predictions, e.g. 'Probable+Possible=Probable'")
    p.add_argument("--out", default="reports/agreement")
    run(p.parse_args(argv))


if __name__ == "__main__":
    main()
