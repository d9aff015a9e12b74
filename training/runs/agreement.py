"""Model vs professional ratings (and rater vs rater): the whole of ``experiments.agreement`` as one library call.

:func:`compare_ratings` reads predict's CSV and a ratings CSV (a ``path`` column and one or two rating columns),
matches their rows by path (:func:`~training.evaluation.agreement.match_paths`), computes every pair's agreement
(:func:`~training.evaluation.agreement.agreement`: κ, linear- and quadratic-weighted κ, mean absolute level error,
the confusion table) before anything is written, then writes ``agreement.md``/``.csv`` and one confusion table per
pair into the output folder.
"""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

NOTES = ("κ = 1: perfect agreement; 0: chance level. Weighted κ counts a Probable↔Improbable disagreement 2× "
         "(linear) or 4× (quadratic) a one-step one. Mean absolute level error: the mean number of levels between "
         "the two ratings (order: {order}); 0 is perfect. n/a: every rating on one level (κ is 0/0).\n")


@dataclass(frozen=True)
class AgreementOptions:
    """How the ratings are compared: the ordered labels, lowest first (None: Improbable Possible Probable,
    :data:`training.evaluation.agreement.ORDER`); ``(old, new)`` relabellings of the predictions (a grouped
    model's ``Probable+Possible`` → ``Probable``); replace the report of an earlier comparison in the output."""

    order: tuple[str, ...] | None = None
    relabel: tuple[tuple[str, str], ...] = ()
    overwrite: bool = False


class AgreementRow(NamedTuple):
    """One pair's row of ``agreement.md``: ``"a vs b"``, the photos compared, the fraction on the same label,
    Cohen's κ, linear- and quadratic-weighted κ (None where κ is 0/0: every rating on one level) and the mean
    absolute level error (in levels)."""

    pair: str
    n: int
    agreement: float
    cohen_kappa: float | None
    linear_weighted_kappa: float | None
    quadratic_weighted_kappa: float | None
    mean_absolute_level_error: float

    def table_row(self) -> dict[str, str | int | float]:
        """The row as the table writes it: an undefined κ is ``n/a``."""
        return {k: "n/a" if v is None else v for k, v in self._asdict().items()}


class AgreementReport(NamedTuple):
    """What :func:`compare_ratings` gives back: one row per pair (model vs each rater, then rater vs rater), the
    rated photos compared, the output folder, the report ``agreement.md`` (and its text, as written), the
    confusion tables written."""

    rows: list[AgreementRow]
    rated: int
    out: str
    table: str
    markdown: str
    confusion_tables: list[str]

    def closing_line(self) -> str:
        """The one line that says what was written where (the command prints it after the table)."""
        return (f"{self.rated} rated photos compared ({len(self.rows)} pairs): table {self.table} (and .csv), "
                f"confusion tables {self.out}/confusion_*.md")


def read_rows(path: str | os.PathLike, *, written: bool = False) -> list[dict]:
    """The rows of a CSV with a ``path`` column (BOM and CRLF accepted): every row with the header's fields, no
    field over 128 KiB (:func:`~common.files.read_csv_checked`; ``written``: predict's CSV, read back
    through the CSV rule); anything else is one line."""
    from common.files import FileFormatError, read_csv_checked

    rows = read_csv_checked(path, "a CSV with a 'path' column", required=("path",), errors="surrogateescape",
                            written=written).rows
    if not rows:
        raise FileFormatError(path, "", "needs a 'path' column and at least one row")
    return rows


def compare_ratings(predictions: str | os.PathLike, ratings: str | os.PathLike, out: str | os.PathLike,
                    options: AgreementOptions = AgreementOptions()) -> AgreementReport:
    """Compare the predictions in predict's CSV ``predictions`` with the ratings in ``ratings`` (a ``path``
    column and one or two rating columns; its first two are used), matched by path, and write the tables into
    the folder ``out``.

    Every pair is computed before anything is written: a bad file, an unmatched or ambiguous path, or a label
    outside the order leaves no output folder. An existing ``out/agreement.md`` is replaced only with
    ``options.overwrite``. Raises :class:`~common.files.FileFormatError`, :class:`ValueError` or
    :class:`FileExistsError` naming the file or value.
    """
    from common.files import output_dir, safe_name
    from common.tables import write_table
    from training.evaluation.agreement import ORDER, agreement, match_paths

    relabel = dict(options.relabel)
    predicted = read_rows(predictions, written=True)
    if "predicted" not in predicted[0]:
        raise ValueError(f"{predictions}: no 'predicted' column (is it a CSV written by experiments.predict?)")
    preds = {r["path"]: relabel.get(r["predicted"], r["predicted"]) for r in predicted}
    if len(preds) < len(predicted):
        seen = collections.Counter(r["path"] for r in predicted)
        raise ValueError(f"{predictions}: the path {seen.most_common(1)[0][0]!r} has more than one row")
    rated = read_rows(ratings)
    raters = [c for c in rated[0] if c != "path"][:2]
    if not raters:
        raise ValueError(f"{ratings}: no rating column besides 'path'")
    # output file names are made from the column names: one plain, safe name each (never a path), distinct
    stems = {name: safe_name(name, limit=60) for name in ["model", *raters]}
    if len(set(stems.values())) < len(stems):
        raise ValueError(f"{ratings}: the rating columns {raters} give the same file name once made safe "
                         f"({sorted(stems.values())}): rename one")
    model = [preds[p] for p in match_paths([r["path"] for r in rated], list(preds), ratings)]
    order = list(options.order or ORDER)
    pairs = [("model", rater) for rater in raters] + ([tuple(raters)] if len(raters) == 2 else [])
    # every pair computed before anything is written: a bad label leaves no output folder behind
    try:
        results = [agreement(model if first == "model" else [r[first] for r in rated],
                             [r[second] for r in rated], order) for first, second in pairs]
    except ValueError as exc:  # a label outside the order: name the file it came from
        raise ValueError(f"{ratings}: {exc}") from None
    report = Path(out) / "agreement.md"
    if (report.exists() or report.is_symlink()) and not options.overwrite:  # a user's earlier report is kept
        raise FileExistsError(f"{report} exists: pass --overwrite to replace it (or choose another --out)")
    out = output_dir(out)
    rows, confusion = [], []
    shown = [_shown(label) for label in order]
    for (first, second), result in zip(pairs, results, strict=True):
        a, b = _shown(first), _shown(second)
        rows.append(AgreementRow(pair=f"{a} vs {b}", n=result["n"], agreement=result["agreement"],
                                 cohen_kappa=result["cohen_kappa"],
                                 linear_weighted_kappa=result["linear_weighted_kappa"],
                                 quadratic_weighted_kappa=result["quadratic_weighted_kappa"],
                                 mean_absolute_level_error=result["mean_absolute_level_error"]))
        table = [{a + " \\ " + b: lab, **{lab2: result["confusion"][i][j] for j, lab2 in enumerate(shown)}}
                 for i, lab in enumerate(shown)]
        md = write_table(table, out, f"confusion_{stems[first]}_vs_{stems[second]}",
                         title=f"{a} (rows) vs {b} (columns)").md
        confusion.append(str(md))
    title, notes = "Agreement with professional ratings", NOTES.format(order=" < ".join(shown))
    table_rows = [r.table_row() for r in rows]
    written = write_table(table_rows, out, "agreement", title=title, notes=notes)
    return AgreementReport(rows=rows, rated=len(rated), out=str(out), table=str(written.md),
                           markdown=written.markdown, confusion_tables=confusion)


def _shown(name: str) -> str:
    """A column name as written into the tables (UTF-8): bytes that were not UTF-8 shown as U+FFFD (they were a
    UnicodeEncodeError naming no file, after the output folder was made)."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")

