"""The lab's results table as one library call: :func:`results_grid` (behind ``experiments.results_table``).

    report = results_grid("photos/", "reports/lab", GridOptions(scenarios=("Pr_Im",), image_sizes=(108,)))

Every (scenario or grouping file) × image size × configuration is one row (:class:`~training.runs.results.ResultRow`):
the folds of :func:`~training.runs.folds.run_folds` summarised by :func:`~training.runs.results.table_row`, the
pooled balanced accuracy's stratified bootstrap interval and the calibration cells beside them. Each finished row
is saved as ``rows/KEY.json`` and a later call skips it (read back, checked, by
:func:`~training.runs.results.read_result_row`); a row whose classes are too small to split is reported as such,
not trained. Writes ``results.{md,csv}``, a confusion matrix and a reliability diagram per row, and each row's runs
under ``runs/KEY``. In a job of several processes every process computes, process 0 alone writes. Progress goes to
the ``training`` logger (the commands show it on stdout).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

from training.data.labels import SCENARIOS
from training.runs.results import COLUMNS, CONFIGS, ResultRow

log = logging.getLogger(__name__)  # shown by the commands (experiments.cli); silent in library use


@dataclass(frozen=True)
class GridOptions:
    """What the grid holds and how it runs: the lab's ``scenarios`` (or ``groupings``, files that replace them),
    the square ``image_sizes``, the ``configs`` (``lab-2020``, ``improved``, ``pretrained``), colour for
    ``improved`` (``rgb``), the network of the lab-2020 and improved rows (``model``), a cap on every
    configuration's epochs (``max_epochs``), the seed, skipping unreadable photos, where caches live, progress
    bars and the features' engine."""

    scenarios: tuple[str, ...] = tuple(SCENARIOS)
    groupings: tuple[str, ...] = ()
    image_sizes: tuple[int, ...] = (108, 224)
    configs: tuple[str, ...] = tuple(CONFIGS)
    rgb: bool = False
    model: str = "model1"
    max_epochs: int | None = None
    seed: int = 0
    skip_bad: bool = False
    cache_dir: str | None = None
    engine: str = "auto"
    progress: bool = True


class GridReport(NamedTuple):
    """What :func:`results_grid` gives back: the rows in grid order (those done earlier read back; in a process
    other than 0 such a row holds only its ``key``), the output folder, the table as ``results.md`` holds it, and
    this process's place in the job."""

    rows: list[ResultRow]
    out: str
    markdown: str
    process_index: int


def results_grid(data: str | os.PathLike, out: str | os.PathLike, options: GridOptions = GridOptions()) -> GridReport:
    """Run (or resume) the results table of the photos ``data`` (a folder of class folders or a ``path,label``
    CSV) into ``out`` (see the module). An unknown configuration or scenario is a :class:`ValueError` before any
    work."""
    from common.files import output_dir
    from training.loop.distributed import outputs_of_this_process, process_index

    for what, names, known in (("configuration", options.configs, CONFIGS),
                               ("scenario", () if options.groupings else options.scenarios, SCENARIOS)):
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ValueError(f"unknown {what} {unknown[0]!r}; expected one of {sorted(known)}")
    with outputs_of_this_process(out) as mine:  # process 0 writes; the others compute alongside it
        rows, markdown = _grid(str(data), output_dir(mine), options)
    return GridReport(rows, str(out), markdown, process_index())


def _grid(data_path: str, out: Path, options: GridOptions) -> tuple[list[ResultRow], str]:
    from common.files import write_json_atomic
    from common.tables import write_table
    from common.timing import device_description
    from training.data.dataset import load_dataset
    from training.data.decoding import Preprocess
    from training.loop.distributed import from_process_0, process_index
    from training.runs.results import config_for, read_result_row

    if options.groupings:
        groupings = [("grouping", g) for g in options.groupings]
    else:
        groupings = [("scenario", s) for s in options.scenarios]
    grid = [(g, size, cfg) for g in groupings for size in options.image_sizes for cfg in options.configs]
    rows: list[ResultRow] = []
    loaded: dict = {}
    for i, ((kind, group), size, cfg_name) in enumerate(grid, start=1):
        overrides = {"model": options.model} if cfg_name != "pretrained" else {}
        if options.max_epochs and "epochs" in CONFIGS[cfg_name]:
            overrides["epochs"] = min(CONFIGS[cfg_name]["epochs"], options.max_epochs)
        config = config_for(cfg_name, size, rgb=options.rgb, seed=options.seed, **overrides)
        key = f"{Path(group).stem}-{config.image_size}-{cfg_name}"
        if any(r.key == key for r in rows):
            continue  # the pretrained row runs at its backbone's size, once
        row_file = out / "rows" / f"{key}.json"
        if from_process_0(row_file.exists()):  # process 0 holds the rows: every process skips the same ones
            rows.append(read_result_row(row_file, key) if process_index() == 0 else ResultRow(key=key))
            log.info(f"[{i}/{len(grid)}] {key}: done earlier, skipped")
            continue
        log.info(f"[{i}/{len(grid)}] {key}")
        cache_key = (kind, group, config.image_size, config.rgb)
        if cache_key not in loaded:
            loaded[cache_key] = load_dataset(
                data_path, Preprocess(config.image_size, "center", config.rgb),
                scenario=group if kind == "scenario" else None, grouping_file=group if kind == "grouping" else None,
                skip_bad=options.skip_bad, cache_dir=options.cache_dir, progress=False)
        row = _row(loaded[cache_key], config, cfg_name, key, out, options)
        write_json_atomic(row_file, row.as_json())
        rows.append(row)
        log.info("    " + ", ".join(f"{k} {v}" for k, v in row.cells(
            ("Acc.", "Bal. acc.", "Macro-F1", "beats majority?")).items()))
    notes = (f"Data: {data_path}. Model: {options.model} (pretrained: EfficientNet-Lite1). Device: "
             f"{device_description()}. Prec./Recall are those of the positive class. lab-2020: grayscale, Model 1, "
             "Adam 1e-3, 4 epochs, batch 32, one seeded stratified 80:20 split, the 4th epoch scored. improved: "
             "5-fold stratified CV (mean ± std), augmentation, balanced class weights, standardized inputs, "
             "Adam 1e-4 with cosine decay, best epoch and early stopping (patience 6) on an inner split of each "
             f"training fold{', RGB' if options.rgb else ''}. pretrained: 5-fold CV, ImageNet EfficientNet-Lite1 "
             "features (frozen, flip-averaged), softmax head whose L2 and step count are chosen by 4-fold CV inside "
             "each training fold. Every validation fold is scored once; the interval is a bootstrap over all scored "
             "images, resampled within each class. Calibration (improved, pretrained): fitted on inner predictions "
             "of each training part (the head's inner out-of-fold ones, Model 1's inner validation split); ECE on "
             "equal-mass bins of ≥ 40 photos (their count in brackets), of the probability of each decision; Brier "
             "is ½ Σ_k (q_k − y_k)², the usual (q − y)² for two classes; intervals are stratified bootstraps. "
             "\"beats majority?\" "
             "compares balanced accuracy and macro-F1 with always answering the "
             "training set's majority class.\n")
    cells = [r.cells(COLUMNS) for r in rows]
    return rows, write_table(cells, out, "results", title="Results table", notes=notes, columns=COLUMNS).markdown


def _row(data, config, cfg_name: str, key: str, out: Path, options: GridOptions) -> ResultRow:
    """One configuration's row: its folds trained and scored once, or why they could not be."""
    import jax

    from training.evaluation.metrics import bootstrap_interval
    from training.runs.folds import pooled_predictions, run_folds
    from training.runs.report import plot_confusion
    from training.runs.results import describe, table_row

    what = dict(key=key, classes=" vs ".join(data.class_names), size=config.image_size, config=cfg_name,
                n_images=len(data.y))
    try:
        results = run_folds(data, config, out / "runs" / key, progress=options.progress,
                            cache_dir=options.cache_dir, engine=options.engine)
    except ValueError as exc:  # e.g. too few images per class to split
        return ResultRow(**what, positive_class=data.class_names[0], beats_majority=f"not run: {exc}")
    stats, confusion = table_row(results, data.class_names)
    y_true, y_pred = pooled_predictions(results, data.y)
    lo, hi = bootstrap_interval(y_true, y_pred, key=jax.random.PRNGKey(options.seed))
    plot_confusion(confusion, data.class_names, out / f"confusion_{key}.png",
                   f"{key} (summed over {len(results)} fold(s))")
    return replace(stats, **what, balanced_accuracy_ci95=f"{100 * lo:.1f}–{100 * hi:.1f}",
                   **calibration_cells(results, data.y, options.seed, out / f"reliability_{key}.png", key),
                   settings=describe(config))


def calibration_cells(results, y, seed: int, png: Path, title: str) -> dict[str, str]:
    """The pooled scored photos' calibration (the decision's probability: ECE with its bins, Brier, log-loss, each
    with a stratified bootstrap interval) as :class:`ResultRow` fields, and their reliability diagram."""
    import jax

    from training.evaluation.calibration import calibration_metrics
    from training.runs.folds import pooled
    from training.runs.report import plot_reliability

    p = pooled(results, y)
    m = calibration_metrics(p.probs, p.y, y_pred=p.y_pred, key=jax.random.PRNGKey(seed))
    plot_reliability(p.probs, p.y, png, title, p.y_pred)
    chosen = sorted({r.calibration["method"] for r in results if r.calibration})
    requested = next((r.calibration["requested"] for r in results if r.calibration), "none")

    def cell(k):
        return f"{m[k]:.3f} [{m[k + '_ci95'][0]:.3f}, {m[k + '_ci95'][1]:.3f}]"

    return {"calibration": requested + (f" ({'/'.join(chosen)})" if requested == "auto" else ""),
            "ece": f"{cell('ece')} ({m['ece_bins']})", "brier": cell("brier"), "log_loss": cell("log_loss")}
