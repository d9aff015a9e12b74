"""Output folders, Markdown/CSV tables, plots and timing helpers shared by runs, experiments and benchmarks."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.common.files import atomic_open


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


def write_table(
    rows: Sequence[dict[str, Any]],
    out: Path,
    name: str,
    *,
    title: str,
    notes: str = "",
    columns: Sequence[str] | None = None,
) -> tuple[Path, Path]:
    """Write ``name.md`` (title, table, notes) and ``name.csv`` into ``out``; return both paths."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise ValueError(f"table name {name[:80]!r}: expected a file name (no folder part)")
    columns = list(columns or (rows[0].keys() if rows else []))
    md_path, csv_path = out / f"{name}.md", out / f"{name}.csv"
    with atomic_open(md_path, encoding="utf-8") as f:
        f.write(f"# {title}\n\n{markdown_table(rows, columns)}\n{notes}".rstrip() + "\n")
    with atomic_open(csv_path, newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return md_path, csv_path


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
