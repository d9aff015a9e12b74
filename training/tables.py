"""Output folders, Markdown/CSV tables, plots and timing helpers shared by runs, experiments and benchmarks."""

from __future__ import annotations

import contextlib
import csv
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import jax


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on success rename it over ``path``.

    A failure (or a kill) never leaves ``path`` cut short: it keeps its old content or is absent.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def output_dir(path: str | Path) -> Path:
    """Create (if needed) and return the output folder."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    return path


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
    columns = list(columns or (rows[0].keys() if rows else []))
    md_path, csv_path = out / f"{name}.md", out / f"{name}.csv"
    with atomic_open(md_path, encoding="utf-8") as f:
        f.write(f"# {title}\n\n{markdown_table(rows, columns)}\n{notes}".rstrip() + "\n")
    with atomic_open(csv_path, newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return md_path, csv_path


def time_call(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``fn()`` (its result blocked on), after ``warmup`` calls."""
    for _ in range(warmup):
        jax.block_until_ready(fn())
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_interleaved(fns: dict[str, Callable[[], Any]], *, repeats: int = 7) -> dict[str, tuple[float, float]]:
    """``{name: (min, median)}`` seconds, calling the functions in turn ``repeats`` times.

    Interleaving spreads a noisy machine's slow moments over all contenders; the
    minimum is the least disturbed run. Each function is called once first (compile).
    """
    for fn in fns.values():
        jax.block_until_ready(fn())
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            jax.block_until_ready(fn())
            times[name].append(time.perf_counter() - start)
    return {name: (min(t), statistics.median(t)) for name, t in times.items()}


def device_description() -> str:
    """E.g. ``cpu ×1 (jax 0.10.2)``."""
    devices = jax.devices()
    return f"{devices[0].platform} ×{len(devices)} ({devices[0].device_kind}; jax {jax.__version__})"


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
