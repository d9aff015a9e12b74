"""The hand-written backward against ``jax.grad``, as library calls that write their tables and plots.

    report = compare_gradients("runs/compare_gradients", GradientOptions(quick=True))
    report = compare_cnn_gradients("runs/compare_cnn", CnnGradientOptions(image_size=108, batch_size=32))
    report = backprop_depth("runs/backprop_depth", DepthOptions(depths=(2, 4, 8, 16, 32, 64)))

- :func:`compare_gradients` (``experiments.compare_gradients``; step 1 of ``experiments.main``): the MLP
  rules over architectures × activations × costs, their largest relative error against ``jax.grad`` in float64
  and float32, and jitted timings. Writes ``gradient_errors.{md,csv}``, ``gradient_timings.{md,csv}`` and
  ``gradient_comparison.png``.
- :func:`compare_cnn_gradients` (``experiments.compare_gradients --cnn``): Model 1's hand-written backward per
  parameter (error) and per layer (time). Writes ``cnn_gradient_errors.{md,csv}`` and
  ``cnn_backward_timings.{md,csv}``.
- :func:`backprop_depth` (``experiments.backprop_depth``): time against depth L, the naive chain rule (O(L²))
  beside cached backprop and ``jax.grad`` (O(L)), with the fitted log-log slopes. Writes
  ``depth_timings.{md,csv}`` and ``depth_timings.png``.

The rows come from :mod:`training.evaluation.gradients`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from training.evaluation.gradients import MLP_ARCHITECTURES, TIMED_ARCHITECTURES


def _copy(architectures: dict[str, list[int]]) -> Callable[[], dict[str, list[int]]]:
    return lambda: {name: list(sizes) for name, sizes in architectures.items()}


@dataclass(frozen=True)
class GradientOptions:
    """``quick``: 5 timing repeats instead of 21; the architectures whose errors are compared (each with every
    activation and cost) and those timed: name → layer sizes."""

    quick: bool = False
    architectures: dict[str, list[int]] = field(default_factory=_copy(MLP_ARCHITECTURES))
    timed: dict[str, list[int]] = field(default_factory=_copy(TIMED_ARCHITECTURES))


class GradientReport(NamedTuple):
    """What :func:`compare_gradients` gives back: the worst relative errors against ``jax.grad`` in float64 and
    float32, the error rows, the timing rows and the files written."""

    worst_float64: float
    worst_float32: float
    errors: list[dict]
    timings: list[dict]
    errors_table: Path
    timings_table: Path
    plot: Path


def compare_gradients(out: str | os.PathLike, options: GradientOptions = GradientOptions()) -> GradientReport:
    """Compare the MLP rules with ``jax.grad`` (errors in float64 and float32, timings in float32, as users run)
    and write the tables and the plot into ``out`` (see the module)."""
    from common.files import output_dir
    from common.tables import write_table
    from common.timing import device_description
    from training.evaluation.gradients import CALLS_PER_SAMPLE, mlp_error_rows, mlp_timing_rows
    from training.loop.devices import float64

    out_path = output_dir(out)
    with float64():  # the error table compares in float64 (and float32) where asked
        errors = mlp_error_rows(architectures=options.architectures)
    timings = mlp_timing_rows(repeats=5 if options.quick else 21, architectures=options.timed)
    worst64 = max(r["max_rel_err_float64"] for r in errors)
    worst32 = max(r["max_rel_err_float32"] for r in errors)
    errors_table = write_table(
        errors, out_path, "gradient_errors", title="Manual backprop vs jax.grad: max per-array relative error",
        notes=f"Worst case: float64 {worst64:.2e}, float32 {worst32:.2e}. Device: {device_description()}.\n",
    )
    timings_table = write_table(
        timings, out_path, "gradient_timings", title="Jitted minibatch gradient timings (float32, sigmoid, ½‖a−y‖²)",
        notes="Median (and fastest) per call of interleaved samples, after compilation: the hand-written rules and "
              f"jax.grad take turns, each sample at least {CALLS_PER_SAMPLE} calls and about 10 ms; the naive chain "
              "is timed in its own pairing with jax.grad. The control row is jax.grad timed again, jitted separately, "
              "among the others: the same program, so its distance from 1 is this run's noise. "
              f"Device: {device_description()}.\n",
    )
    plot = out_path / "gradient_comparison.png"
    _plot_comparison(errors, timings, plot)
    return GradientReport(worst64, worst32, errors, timings, errors_table.md, timings_table.md, plot)


def _plot_comparison(errors: list[dict], timings: list[dict], path: Path) -> None:
    """Left: every case's float32 and float64 error (log scale); right: each method's time per architecture."""
    import numpy as np

    from common.tables import pyplot, save_figure

    plt = pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.5))
    labels = [f"{r['architecture']}\n{r['activation']}/{r['cost']}" for r in errors]
    x = np.arange(len(errors))
    for key, marker in [("max_rel_err_float32", "o"), ("max_rel_err_float64", "s")]:
        vals = np.array([max(r[key], 1e-18) for r in errors])
        ax1.semilogy(x, vals, marker, label=key.removeprefix("max_rel_err_"), markersize=3)
    ax1.set_xticks([])
    ax1.set_xlabel(f"{len(labels)} architecture × activation × cost cases")
    ax1.set_ylabel("max per-array relative error vs jax.grad")
    ax1.axhline(1e-12, color="grey", lw=0.8, ls="--")
    ax1.legend()
    archs = list(dict.fromkeys(r["architecture"] for r in timings))
    methods = list(dict.fromkeys(r["method"] for r in timings))
    width = 0.8 / len(methods)
    for i, m in enumerate(methods):
        vals = [next(r["ms"] for r in timings if r["architecture"] == a and r["method"] == m) for a in archs]
        ax2.bar(np.arange(len(archs)) + i * width, vals, width, label=m)
    ax2.set_xticks(np.arange(len(archs)) + 0.4 - width / 2, archs, fontsize=8)
    ax2.set_yscale("log")
    ax2.set_ylabel("ms per minibatch gradient (jitted)")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)


@dataclass(frozen=True)
class CnnGradientOptions:
    """Model 1's input side in pixels, the photos per timed gradient, ``quick``: 3 timing repeats instead of 5."""

    image_size: int = 108
    batch_size: int = 32
    quick: bool = False


class CnnGradientReport(NamedTuple):
    """What :func:`compare_cnn_gradients` gives back: the worst float64 relative error, the rows, the tables
    written and their Markdown text (what the ``.md`` files hold)."""

    worst_float64: float
    errors: list[dict]
    timings: list[dict]
    errors_table: Path
    timings_table: Path
    errors_markdown: str
    timings_markdown: str


def compare_cnn_gradients(out: str | os.PathLike,
                          options: CnnGradientOptions = CnnGradientOptions()) -> CnnGradientReport:
    """Compare Model 1's hand-written backward with ``jax.grad`` of the Flax model, per parameter (float64 and
    float32, dropout on) and per layer (times, float32), and write both tables into ``out``."""
    from common.files import output_dir
    from common.tables import write_table
    from common.timing import device_description
    from training.evaluation.gradients import model1_error_rows, model1_timing_rows
    from training.loop.devices import float64

    size, batch = options.image_size, options.batch_size
    out_path = output_dir(out)
    with float64():
        errors = model1_error_rows(size)
    timings = model1_timing_rows(size, batch=batch, repeats=3 if options.quick else 5)
    worst = max(r["rel_err_float64"] for r in errors)
    tables = {
        "cnn_gradient_errors": (errors, f"Model 1 ({size} px, dropout on): manual backward vs jax.grad, per parameter",
                                f"Worst float64 relative error {worst:.2e}. Device: {device_description()}.\n"),
        "cnn_backward_timings": (timings, f"Model 1 backward, batch {batch}, {size} px, float32: manual vs autodiff",
                                 "autodiff/manual > 1: the manual backward is faster. Median of interleaved repeats. "
                                 f"Device: {device_description()}.\n"),
    }
    paths, texts = [], []
    for name, (rows, title, notes) in tables.items():
        written = write_table(rows, out_path, name, title=title, notes=notes)
        paths.append(written.md)
        texts.append(written.markdown)
    return CnnGradientReport(worst, errors, timings, *paths, *texts)


@dataclass(frozen=True)
class DepthOptions:
    """The depths L timed (layers), units per layer, examples per gradient, timed repeats (the median kept)."""

    depths: tuple[int, ...] = (2, 4, 8, 16, 32, 64)
    width: int = 32
    batch_size: int = 64
    repeats: int = 7


class DepthReport(NamedTuple):
    """What :func:`backprop_depth` gives back: one row per depth, each method's fitted log-log slope over all
    depths and over the deeper ones (L ≥ ``deep_from``), the table's notes (the slopes in words), the files."""

    rows: list[dict]
    slopes: dict[str, float]
    deep_slopes: dict[str, float]
    deep_from: int
    notes: str
    table: Path
    plot: Path


def backprop_depth(out: str | os.PathLike, options: DepthOptions = DepthOptions(), *,
                   on_depth: Callable[[dict], None] | None = None) -> DepthReport:
    """Time each method's jitted minibatch gradient at every depth, fit log(time) against log(L), and write the
    table and the log-log plot into ``out``. ``on_depth`` is called with each depth's row as it is timed."""
    from common.files import output_dir
    from common.tables import write_table
    from common.timing import device_description
    from training.evaluation.gradients import DEPTH_METHODS, depth_gradient_functions, depth_timing_row, fitted_slope

    depths = tuple(options.depths)
    out_path = output_dir(out)
    fns = depth_gradient_functions()
    rows = []
    for L in depths:
        rows.append(depth_timing_row(fns, L, options.width, options.batch_size, options.repeats))
        if on_depth is not None:
            on_depth(rows[-1])
    slopes = {m: fitted_slope(depths, [r[f"{m} ms"] for r in rows]) for m in DEPTH_METHODS}
    # the asymptotic slope: fitted on the deeper half, where per-call overhead no longer dominates
    deep = [d for d in depths if d >= 8]
    deep = deep if len(deep) >= 2 else list(depths)
    deep_slopes = {m: fitted_slope(deep, [r[f"{m} ms"] for r in rows if r["depth_L"] in deep]) for m in DEPTH_METHODS}
    notes = (
        "Fitted slope of log(time) vs log(L), all depths: "
        + ", ".join(f"{m} {s:.2f}" for m, s in slopes.items())
        + f".\nOn L ≥ {deep[0]}: " + ", ".join(f"{m} {s:.2f}" for m, s in deep_slopes.items())
        + f".\nExpected: naive ≈ 2 (L − l products for each layer l), cached ≈ 1.\nDevice: {device_description()}.\n"
    )
    table = write_table(rows, out_path, "depth_timings", title="Gradient time against depth", notes=notes).md
    plot = out_path / "depth_timings.png"
    _plot_depth(rows, depths, deep_slopes, options, plot)
    return DepthReport(rows, slopes, deep_slopes, deep[0], notes, table, plot)


def _plot_depth(rows: list[dict], depths: tuple[int, ...], deep_slopes: dict[str, float], options: DepthOptions,
                path: Path) -> None:
    """Each method's time against depth, log-log, labelled with its slope over the deeper depths."""
    from common.tables import pyplot, save_figure
    from training.evaluation.gradients import DEPTH_METHODS

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for m in DEPTH_METHODS:
        ax.loglog(depths, [r[f"{m} ms"] for r in rows], "o-", label=f"{m} (slope {deep_slopes[m]:.2f})")
    ax.set_xlabel("depth L (layers)")
    ax.set_ylabel("ms per minibatch gradient (jitted)")
    ax.set_title(f"width {options.width}, batch {options.batch_size}")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
    plt.close(fig)
