"""Export a trained run as one ONNX file: the whole of ``experiments.export`` as one library call.

:func:`export_onnx` checks the output before any work, reads the run folder once and writes the classifier
(backbone and head, or Model 1, with the run's calibration inside the graph) and the metadata a user of the file
needs (:func:`export_metadata`) atomically. In a job of several processes only process 0 writes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple


@dataclass(frozen=True)
class ExportOptions:
    """How an export goes: replace an existing output."""

    overwrite: bool = False


class ExportReport(NamedTuple):
    """What :func:`export_onnx` gives back: the file written, its size in bytes, the model, the classes, the input
    image size and channels; ``out`` is None on a process other than 0 of a job (it writes nothing)."""

    out: str | None
    size_bytes: int | None = None
    model: str | None = None
    classes: list[str] | None = None
    image_size: int | None = None
    channels: int | None = None


def export_metadata(config, class_names: list[str], op: dict | None, calibration=None,
                    referral: dict | None = None) -> dict[str, str]:
    """What a user of the file needs besides the graph, as strings (ONNX ``metadata_props``)."""
    from training.loop.registry import mirror_average

    calibrated = calibration is not None and calibration.method != "none"
    shift_note = (f" after log(p) − shift, shift = {list(calibration.shift)} (the calibration's shift, left out of "
                  "the decision)" if calibrated and any(calibration.shift) else "")
    return {
        "input": "image: float32 (N, H, W, C), NHWC, RGB (C = 3) or ITU-R 601 luma (C = 1), values in [0, 1]",
        "image_size": str(config.image_size),
        "channels": "3" if config.rgb else "1",
        "preprocessing": (f"decode, apply the EXIF orientation, {'take the largest centred square' if config.crop == 'center' else 'use the whole photo (squashed)'}, "  # noqa: E501
                          f"bicubic resize to {config.image_size}×{config.image_size}, divide by 255"),
        "output": "probabilities: float32 (N, classes), softmax" + (
            "; the mean of the image's and its mirror image's" if mirror_average(config) else "")
            + ("; then calibrated inside the graph: softmax(scale * log(max(p, 1e-12)) + shift)" if calibrated else ""),
        "calibration": json.dumps(calibration.to_json() if calibrated else None),
        "referral": json.dumps(None if referral is None else {
            "threshold": referral["threshold"], "rule": "send the photo to a person when its largest probability < "
                                                        "threshold (chosen on inner predictions)"}),
        "class_names": json.dumps(class_names),
        "decision": (json.dumps({"class": op["class"], "class_index": op["class_index"], "threshold": op["threshold"],
                                 "rule": "predict this class when its probability ≥ threshold, else the most "
                                         "probable other class" + shift_note}) if op else
                     "the most probable class" + shift_note),
        "model": config.model + (f" (finetune {config.finetune})" if config.pretrained else ""),
        "producer": "tree-risk-jax experiments.export",
    }


def export_onnx(checkpoint: str | os.PathLike, out: str | os.PathLike,
                options: ExportOptions = ExportOptions()) -> ExportReport:
    """Write the run folder ``checkpoint``'s classifier as one ONNX file at ``out``.

    An existing ``out`` is replaced only with ``options.overwrite``; a link, FIFO or folder there is refused
    before any work. Raises :class:`FileExistsError`, :class:`~common.files.FileFormatError` or
    :class:`ValueError` (no ``onnx`` package; a model that does not export) naming the file or value.
    """
    from common.files import atomic_open, check_destination
    from training.loop.distributed import process_index

    if process_index() != 0:  # one small file: process 0 writes it, the others have nothing to do
        return ExportReport(out=None)
    out = Path(out)
    check_destination(out)  # a link, FIFO or folder at --out: refused before any work
    if out.exists() and not options.overwrite:
        raise FileExistsError(f"{out} exists: pass --overwrite to replace it (or choose another --out)")
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise ValueError("experiments.export needs the onnx package: pip install -e '.[deploy]'") from None
    from models.onnx_graph import classifier_to_onnx
    from training.loop.registry import mirror_average
    from training.runs.saved import load_trained, read_saved_run

    saved = read_saved_run(checkpoint)  # the run is read once, here
    model, params, config, class_names = load_trained(saved)
    op = saved.operating_point.as_json() if saved.operating_point else None
    channels = 3 if config.rgb else 1
    proto = classifier_to_onnx(model, params, image_size=config.image_size, channels=channels,
                               tta_flip=mirror_average(config), calibration=saved.calibration,
                               metadata=export_metadata(config, class_names, op, saved.calibration,
                                                        saved.referral.as_json() if saved.referral else None))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out, "wb") as f:
        f.write(proto.SerializeToString())
    return ExportReport(out=str(out), size_bytes=out.stat().st_size, model=config.model, classes=class_names,
                        image_size=config.image_size, channels=channels)


