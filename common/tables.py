"""Output folders, Markdown/CSV tables, plots and timing helpers shared by runs, experiments and benchmarks."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

from common.files import atomic_open, csv_cell, csv_row, inside


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e6):
            return f"{value:.3e}"
        return f"{value:.4g}"
    return str(value)


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """A GitHub-flavoured Markdown table of ``rows`` (dicts sharing keys)."""
    if not rows:
        return "(no rows)\n"
    columns = list(columns or rows[0].keys())
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def markdown_document(rows: Sequence[dict[str, Any]], *, title: str, notes: str = "",
                      columns: Sequence[str] | None = None) -> str:
    """The text of the ``name.md`` that :func:`write_table` writes: the title, the table and the notes."""
    columns = list(columns or (rows[0].keys() if rows else []))
    return f"# {title}\n\n{markdown_table(rows, columns)}\n{notes}".rstrip() + "\n"


class TableFiles(NamedTuple):
    """What :func:`write_table` wrote: the Markdown and CSV files, and the Markdown's text."""

    md: Path
    csv: Path
    markdown: str


def write_table(
    rows: Sequence[dict[str, Any]],
    out: Path,
    name: str,
    *,
    title: str,
    notes: str = "",
    columns: Sequence[str] | None = None,
) -> TableFiles:
    """Write ``name.md`` (title, table, notes) and ``name.csv`` into ``out``; return both paths and the Markdown.

    ``name`` must be a plain file name (:func:`~common.files.inside`; one made from data goes through
    ``safe_name`` first); the CSV's text cells follow the project's formula rule (``csv_cell``)."""
    columns = list(columns or (rows[0].keys() if rows else []))
    md_path, csv_path = inside(out, f"{name}.md"), inside(out, f"{name}.csv")
    text = markdown_document(rows, title=title, notes=notes, columns=columns)
    with atomic_open(md_path, encoding="utf-8") as f:
        f.write(text)
    with atomic_open(csv_path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        writer = csv.writer(f)
        writer.writerow(csv_row(columns))
        writer.writerows([csv_cell(row.get(c, "")) for c in columns] for row in rows)
    return TableFiles(md_path, csv_path, text)


def save_figure(fig, path: Path, **kwargs: Any) -> Path:
    """``fig.savefig`` through the project's one writer (atomic, the user's umask, never through a link); the
    format follows the suffix."""
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format=Path(path).suffix.lstrip(".") or "png", **kwargs)
    return Path(path)


class _Figures:
    """Figures drawn with matplotlib's object API (``matplotlib.figure.Figure``): no pyplot state, and no
    backend is chosen or changed, so a caller's interactive session is left as it was."""

    @staticmethod
    def subplots(*args: Any, figsize: tuple[float, float] | None = None, **kwargs: Any):
        from matplotlib.figure import Figure

        fig = Figure(figsize=figsize)
        return fig, fig.subplots(*args, **kwargs)

    @staticmethod
    def close(fig) -> None:
        """Nothing to release: the figure is not registered with pyplot."""


def plain_text(text: str) -> str:
    """``text`` (a class or file name from the data) for a matplotlib label: every ``$`` escaped, so it is drawn as
    written and never parsed as mathtext (a name holding ``$x^{{{…$`` raised RecursionError, ``$\\foo$``
    ValueError, when the figure was saved at the end of a run)."""
    return str(text).replace("$", r"\$")


def pyplot() -> _Figures:
    """``subplots`` and ``close`` as pyplot spells them, for figures saved to files (see :class:`_Figures`)."""
    return _Figures()
