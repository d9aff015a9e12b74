"""Networks trained from scratch on the same folds, as one library call: :func:`compare_architectures` (behind
``experiments.architectures``).

    report = compare_architectures(DataSpec("photos/", scenario="Pr_Im"), "reports/arch", ArchitectureOptions())

Every model gets the ``improved`` configuration of :mod:`training.runs.results` (augmentation, balanced class
weights, standardized inputs, Adam 1e-4 with cosine decay, early stopping) and the same seeded stratified folds;
each is one :class:`~training.runs.results.ResultRow` (each metric's mean ± std over folds beside the majority
baseline's). Writes ``architectures.{md,csv}`` and each model's runs under ``OUT/<model>/``. Progress goes to the
``training`` logger (the commands show it on stdout).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, replace
from typing import NamedTuple

from training.runs.experiment import DataSpec
from training.runs.results import ResultRow

log = logging.getLogger(__name__)  # shown by the commands (experiments.cli); silent in library use

MODELS = ("model1", "resnet50", "googlenet")
COLUMNS = ("model", "positive class", "folds", "Prec.", "Recall", "Acc.", "Bal. acc.", "Macro-F1", "ROC-AUC",
           "Majority acc.", "Majority bal. acc.", "Majority macro-F1", "Quadratic κ", "Level error",
           "beats majority?", "train s")  # architectures.md's


@dataclass(frozen=True)
class ArchitectureOptions:
    """The networks to compare, the square image side, colour, the outer folds (the same for every model), at most
    this many epochs each, the seed; skipping unreadable photos, where caches live, progress bars, the engine."""

    models: tuple[str, ...] = MODELS
    image_size: int = 108
    rgb: bool = False
    folds: int = 5
    epochs: int = 30
    seed: int = 0
    skip_bad: bool = False
    cache_dir: str | None = None
    engine: str = "auto"
    progress: bool = True


class ArchitectureReport(NamedTuple):
    """What :func:`compare_architectures` gives back: one row per model (``model`` set), the photos they were
    compared on, the output folder and the table as ``architectures.md`` holds it."""

    rows: list[ResultRow]
    n_images: int
    out: str
    markdown: str


def compare_architectures(data: DataSpec, out: str | os.PathLike,
                          options: ArchitectureOptions = ArchitectureOptions()) -> ArchitectureReport:
    """Train and score each of ``options.models`` on the same folds of ``data``'s photos into ``out`` (see the
    module); the folder is made only once the photos are read."""
    from common.files import output_dir
    from common.tables import write_table
    from common.timing import device_description
    from training.data.dataset import load_dataset
    from training.data.decoding import Preprocess
    from training.runs.folds import run_folds
    from training.runs.results import config_for, table_row

    photos = load_dataset(data.source, Preprocess(options.image_size, "center", options.rgb),
                          scenario=data.scenario, grouping_file=data.grouping, skip_bad=options.skip_bad,
                          cache_dir=options.cache_dir, progress=False)
    log.info(f"{photos.source}: {photos.report.summary()}")
    out = output_dir(out)  # made only once the data is read: a run that stops early leaves no folder
    rows = []
    for name in options.models:
        config = config_for("improved", options.image_size, rgb=options.rgb, seed=options.seed, model=name,
                            folds=options.folds, epochs=options.epochs)
        log.info(f"== {name}")
        results = run_folds(photos, config, out / name, progress=options.progress, engine=options.engine)
        row, _ = table_row(results, photos.class_names)
        rows.append(replace(row, model=name))
    cells = [r.cells(COLUMNS) for r in rows]
    title = "Architectures on the same folds"
    notes = (f"Data: {data.source} ({photos.grouping.name}, {len(photos.y)} images), {options.image_size} px "
             f"{'RGB' if options.rgb else 'grayscale'}, {options.folds} folds, up to {options.epochs} epochs. "
             f"Device: {device_description()}.\n")
    written = write_table(cells, out, "architectures", title=title, notes=notes, columns=COLUMNS)
    return ArchitectureReport(rows, len(photos.y), str(out), written.markdown)
