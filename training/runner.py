"""One training run over a loaded data set: the seeded split (or K folds), fit, report per fold."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from training.checkpoints import write_json_atomic
from training.data import Dataset
from training.labels import stratified_folds, stratified_split
from training.report import write_run_report
from training.tables import device_description, output_dir
from training.train import TrainConfig, fit


def splits_for(data: Dataset, config: TrainConfig) -> list[tuple[np.ndarray, np.ndarray]]:
    """K stratified folds, or one stratified train/validation split, on unique images."""
    if config.folds > 1:
        return stratified_folds(data.y, config.folds, seed=config.seed, class_names=data.class_names)
    return [stratified_split(data.y, val_fraction=config.val_fraction, seed=config.seed,
                             class_names=data.class_names)]


def run_folds(data: Dataset, config: TrainConfig, out: str | Path, *, resume: bool = False,
              progress: bool = True) -> list[dict]:
    """Fit on every split; each fold's folder gets split.json and its report. Returns per-fold results."""
    out = output_dir(out)
    splits = splits_for(data, config)
    results = []
    for k, (tr, va) in enumerate(splits, start=1):
        fold_out = out if len(splits) == 1 else output_dir(out / f"fold_{k}")
        write_json_atomic(fold_out / "split.json", {"train": [data.paths[i] for i in tr],
                                                    "validation": [data.paths[i] for i in va]})
        start = time.perf_counter()
        result = fit(config, data.x[tr], data.y[tr], data.x[va], data.y[va], data.class_names, fold_out,
                     resume=resume, progress=progress)
        result["seconds"] = time.perf_counter() - start
        header = (f"Model: {config.model}. Data: {data.source} ({data.grouping.name}; "
                  f"{len(tr)} train / {len(va)} validation"
                  f"{'' if len(splits) == 1 else f', fold {k} of {len(splits)}'}). Image {config.image_size} px "
                  f"{'RGB' if config.rgb else 'grayscale'}, {config.epochs} epochs, batch {config.batch_size}, "
                  f"Adam {config.learning_rate}. Device: {device_description()}.")
        result["verdict"] = write_run_report(fold_out, result, data.class_names, header)
        results.append(result)
    return results
