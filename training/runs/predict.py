"""Predict with a trained run on new photos: the whole of ``experiments.predict`` as one library call.

:func:`predict_photos` checks the outputs before any work, reads the run folder once, builds its classifier
(calibrated as the run was, with its saved decision threshold), lists the photos, streams their rows into the
CSV (sharded over the processes of a job, resumable) and, where asked or where the run saved a referral
threshold, adds the ``refer`` column. Progress goes to the ``training`` logger (the commands show it on stdout).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger(__name__)  # shown by the commands (experiments.cli); silent in library use


@dataclass(frozen=True)
class PredictOptions:
    """How a prediction goes: continue or replace OUT, skip unreadable photos, the least confident fraction to
    refer (None: the run's saved threshold, if any), photos per forward pass (None: the run's), decoding threads,
    progress bars, the engine (``auto``, ``jax`` or ``onnxruntime``)."""

    resume: bool = False
    overwrite: bool = False
    skip_bad: bool = False
    refer: float | None = None
    batch_size: int | None = None
    workers: int | None = None
    progress: bool = True
    engine: str = "auto"


class PredictReport(NamedTuple):
    """What :func:`predict_photos` gives back: the rows in this process's output (``resumed`` of them from an
    interrupted run), the bad files skipped ``(path, reason)``, the entries left out as not photos
    ``(path, reason)``, how many photos were referred (None: no refer column), the referral rule, the rows the
    refer column covers, the output, and this process's place in the job."""

    rows: int
    resumed: int
    skipped: list[tuple[str, str]]
    ignored: list[tuple[str, str]]
    referred: int | None
    referral_rule: str | None
    referral_rows: int | None
    out: str
    process_index: int
    process_count: int


def images_signature(images: list[str]) -> str:
    """What --images names, as a resumed run's partial file records it (one folder: its absolute path)."""
    resolved = [str(Path(i).resolve()) for i in images]
    return resolved[0] if len(resolved) == 1 else json.dumps(resolved)


def predict_photos(checkpoint: str | os.PathLike, images: list[str], out: str | os.PathLike,
                   options: PredictOptions = PredictOptions()) -> PredictReport:
    """Write one CSV row per photo under ``images`` (files and folders, in any mix) to ``out``, predicted by the
    run folder ``checkpoint``.

    An existing ``out`` or interrupted prediction into it is refused unless ``options.resume`` (continue it, its
    rows checked) or ``options.overwrite`` (start again); a link, FIFO, device or folder there is refused before
    any work. Raises :class:`FileExistsError`, :class:`~common.files.FileFormatError` or :class:`ValueError`
    naming the file or value.
    """
    from training.data.discovery import photo_inputs
    from training.inference.engine import trained_classifier
    from training.inference.refer import add_refer_column
    from training.inference.stream import PartialCSV, StreamOptions, predict_sharded, shard_path
    from training.loop.distributed import process_count, process_index
    from training.runs.saved import load_trained, read_saved_run

    out = Path(out)
    count, index = process_count(), process_index()
    # this process's partial output: of OUT, or of its shard of OUT in a job of several processes (only its paths
    # are used here; predict_sharded writes it)
    partial = PartialCSV(out if count == 1 else shard_path(out, index, count), [], {})
    partial.check_destinations()  # a link, FIFO, device or folder at OUT or a partial file: refused before any work
    mine = partial.out  # this process's output: OUT, or its complete shard
    if options.overwrite:
        pass  # discarded once the run is loaded
    elif partial.exists() and not options.resume:
        raise FileExistsError(f"an interrupted prediction into {out} exists ({partial.path}): pass --resume to "
                              "continue it or --overwrite to start again")
    elif os.path.lexists(out) and not options.resume:
        raise FileExistsError(f"{out} exists: pass --overwrite to replace it (or choose another --out)")
    elif os.path.lexists(out) and not partial.exists() and (count == 1 or not os.path.lexists(mine)):
        raise FileExistsError(f"{out} is complete and there is no interrupted prediction into it to resume "
                              f"({partial.path}): --resume never replaces it; pass --overwrite to predict again")
    saved = read_saved_run(checkpoint)  # the run is read once, here
    model, params, config, class_names = load_trained(saved)
    op = saved.operating_point.as_json() if saved.operating_point else None
    classifier, _ = trained_classifier(model, params, config, class_names, op, options.engine,
                                       calibration=saved.calibration)
    signature = {"checkpoint": str(Path(checkpoint).resolve()), "images": images_signature(images),
                 "checkpoint_config_sha256": saved.sha256}
    if options.overwrite:
        partial.discard()
    ignored: list[tuple[str, str]] = []
    photos = photo_inputs(images, ignored=ignored)
    files, names = [f for f, _ in photos], dict(photos)
    out.parent.mkdir(parents=True, exist_ok=True)
    if op:
        log.info(f"operating point: {op['class']} when its probability ≥ {op['threshold']:.4f}"
                 + (f" (chosen for recall ≥ {op['target_recall']:g})" if "target_recall" in op else ""))
    calibration = saved.calibration
    if calibration is not None:
        log.info(f"probabilities calibrated by the run's {calibration.method} scaling (fitted on inner predictions)")
    stream = StreamOptions(batch_size=options.batch_size or config.batch_size, workers=options.workers,
                           resume=options.resume, skip_bad=options.skip_bad, progress=options.progress)
    report = predict_sharded(files, None, classifier, out, signature=signature, options=stream,
                             overwrite=options.overwrite, names=names)
    referral = None
    threshold = saved.referral.threshold if saved.referral else None
    if index == 0 and (options.refer is not None or threshold is not None):  # OUT is complete (joined) here
        referral = add_refer_column(out, class_names, threshold=None if options.refer is not None else threshold,
                                    fraction=options.refer, shift=None if calibration is None else calibration.shift)
    return PredictReport(rows=report.predicted + report.resumed, resumed=report.resumed, skipped=report.skipped,
                         ignored=ignored, referred=None if referral is None else referral.referred,
                         referral_rule=None if referral is None else referral.rule,
                         referral_rows=None if referral is None else referral.rows, out=str(out),
                         process_index=index, process_count=count)
