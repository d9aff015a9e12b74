"""Streaming prediction: photos are read, preprocessed and predicted in chunks, in bounded memory.

Whatever the folder's size, at most ``prefetch + 2`` chunks of images are held at once:

- decoding runs in a thread pool (Pillow releases the GIL) and stays ``prefetch`` chunks ahead
  of the device, so that reading photos overlaps with the forward passes;
- each chunk is padded to a fixed batch (one compilation) and sharded over all local devices;
- JAX dispatches the forward pass asynchronously: the rows of chunk k are written while the
  device computes chunk k + 1.

Finished rows are appended to ``OUT.partial`` and flushed to disk chunk by chunk; the byte
length that is complete is then recorded (atomically) in ``OUT.partial.json``. After a crash
``resume`` cuts the partial file back to that length and skips the photos already there. At the
end the partial file is renamed over ``OUT`` in one step: ``OUT`` is either absent, the old
file, or the complete new one.

Several processes (:func:`predict_sharded`): each takes a contiguous shard of the sorted files, in
whole chunks, and streams it into its own ``OUT.shard-I-of-N`` (with its own partial file, so a
killed process resumes its shard only); process 0 joins the shards into ``OUT`` when all are
complete. The chunks are those of a one-process run, so the CSV is byte-identical to one."""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import numpy as np

from training.common.files import atomic_open, write_json_atomic
from training.data.images import BadImageError, Preprocess
from training.data.prefetch import decode_chunks
from training.loop.devices import DataParallel
from training.loop.distributed import barrier, process_count, process_index, shard

log = logging.getLogger(__name__)  # shown by the commands (experiments.errors); silent in library use


@dataclass(frozen=True)
class Classifier:
    """A trained classifier ready for photos: ``probs_fn(params, x)`` → probabilities (jitted JAX, or ONNX
    Runtime: ``training.inference.engine``), the preprocessing its inputs need, the class names, and
    ``decide(probs)`` → class indices. ``on_device``: ``x`` and ``params`` go to the JAX devices (sharded,
    replicated) first; ONNX Runtime takes them as they are."""

    probs_fn: Callable
    params: Any
    pre: Preprocess
    class_names: list[str]
    decide: Callable[[np.ndarray], np.ndarray]
    on_device: bool = True


@dataclass(frozen=True)
class StreamOptions:
    """How to stream: photos per forward pass (rounded up to a multiple of the devices), decoding
    threads (None: one per core), continue an interrupted ``OUT.partial``, count bad files instead of
    stopping, show a progress bar."""

    batch_size: int = 32
    workers: int | None = None
    resume: bool = False
    skip_bad: bool = False
    progress: bool = True


@dataclass
class StreamReport:
    """What happened to every file: predicted, skipped (bad, with ``skip_bad``) or done before a resume."""

    predicted: int = 0
    resumed: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)


class PartialCSV:
    """``OUT.partial`` (rows so far) and ``OUT.partial.json`` (its complete length and the run's signature)."""

    def __init__(self, out: Path, header: list[str], signature: dict):
        self.out, self.header, self.signature = out, header, signature
        self.path = out.with_name(out.name + ".partial")
        self.meta = out.with_name(out.name + ".partial.json")

    def exists(self) -> bool:
        return self.path.exists() or self.meta.exists()

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)
        self.meta.unlink(missing_ok=True)

    def _write_meta(self, length: int, skipped: list) -> None:
        with atomic_open(self.meta, encoding="utf-8") as f:
            json.dump({"signature": self.signature, "complete_bytes": length, "skipped": skipped}, f)

    def start(self) -> None:
        with open(self.path, "wb") as f:
            f.write(_csv_bytes([self.header]))
            f.flush()
            os.fsync(f.fileno())
        self._write_meta(self.path.stat().st_size, [])

    def resume(self) -> tuple[set[str], list]:
        """The paths already written (after cutting the file back to its last complete chunk) and the skips."""
        try:
            meta = json.loads(self.meta.read_text(encoding="utf-8"))
            length = int(meta["complete_bytes"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{self.meta}: cannot resume from it ({exc}); use --overwrite to start again") from exc
        diffs = [f"{k}: {meta['signature'].get(k)!r} → {v!r}" for k, v in self.signature.items()
                 if meta["signature"].get(k) != v]
        if diffs:
            raise ValueError(f"--resume: {self.path} was written with other settings: " + "; ".join(diffs)
                             + " (use --overwrite to start again)")
        if not self.path.is_file() or self.path.stat().st_size < length:
            raise ValueError(f"{self.path}: shorter than its recorded {length} bytes; use --overwrite to start again")
        with open(self.path, "r+b") as f:
            f.truncate(length)  # rows of a chunk that was being written when the run stopped
        with open(self.path, newline="", encoding="utf-8", errors="surrogateescape") as f:
            rows = list(csv.reader(f))
        if not rows or rows[0] != self.header:
            raise ValueError(f"{self.path}: not the partial output of this prediction; use --overwrite")
        return {r[0] for r in rows[1:]}, [tuple(s) for s in meta.get("skipped", [])]

    def append(self, rows: list[list], skipped: list) -> None:
        """Append whole rows, make them durable, then record the new complete length."""
        with open(self.path, "ab") as f:
            f.write(_csv_bytes(rows))
            f.flush()
            os.fsync(f.fileno())
            length = f.tell()
        self._write_meta(length, [list(s) for s in skipped])

    def finish(self) -> None:
        os.replace(self.path, self.out)
        self.meta.unlink(missing_ok=True)


def _csv_bytes(rows: Iterable[list]) -> bytes:
    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerows(rows)
    # names that are not valid UTF-8 were decoded with surrogateescape: written back byte for byte
    return buffer.getvalue().encode("utf-8", errors="surrogateescape")


def predict_folder(files: Sequence[Path], root: Path | None, classifier: Classifier, out: Path, *, signature: dict,
                   options: StreamOptions = StreamOptions(), dp: DataParallel | None = None,
                   names: Mapping[Path, str] | None = None) -> StreamReport:
    """Predict every file and write ``out`` (path relative to ``root``, or ``names[file]``, predicted label,
    ``p_<class>`` …).

    Each chunk ``x`` is padded to a multiple of the local device count and sharded over them.
    With ``options.resume`` the photos already in ``OUT.partial`` are skipped (``signature`` must
    match the one recorded there). A bad image stops the run naming it, or with
    ``options.skip_bad`` is counted (rows written so far stay, and resume continues).
    """
    from tqdm.auto import tqdm

    c, o = classifier, options
    dp = dp or DataParallel(jax.local_devices())
    size = dp.padded_batch_size(o.batch_size)
    partial = PartialCSV(out, csv_header(c.class_names), signature)
    report = StreamReport()
    rel = {f: names[f] for f in files} if names is not None else {f: f.relative_to(root).as_posix() for f in files}
    if o.resume and partial.exists():
        done, report.skipped = partial.resume()
        skipped = {path for path, _ in report.skipped}  # counted once, not tried again
        todo = [f for f in files if rel[f] not in done and rel[f] not in skipped]
        report.resumed = sum(rel[f] in done for f in files)
        log.info(f"resuming: {report.resumed} photos already predicted in {partial.path}")
    else:
        partial.start()
        todo = list(files)
    params = dp.put_replicated(c.params) if c.on_device else c.params
    shape = (size, c.pre.image_size, c.pre.image_size, c.pre.channels)
    bar = tqdm(total=len(todo), unit="photo", desc="predict", disable=not o.progress, smoothing=0.1)
    queued = None  # (paths, device result) of the chunk whose rows are written next

    def write(paths: list[Path], probs) -> None:
        p = np.asarray(probs)[: len(paths)]
        k = c.decide(p)
        partial.append([[rel[f], c.class_names[int(i)], *map(float, row)] for f, row, i in zip(paths, p, k)],
                       report.skipped)
        report.predicted += len(paths)
        bar.update(len(paths))

    for chunk in decode_chunks(todo, c.pre, chunk_size=size, workers=o.workers):
        good = [(f, a) for f, a in chunk if not isinstance(a, str)]
        for f, a in chunk:
            if isinstance(a, str):
                if not o.skip_bad:
                    raise BadImageError(a)
                report.skipped.append((rel[f], a))
                bar.update(1)
        if not good:
            continue
        x = np.zeros(shape, np.float32)
        x[: len(good)] = np.stack([a for _, a in good])
        result = c.probs_fn(params, dp.put_batch(x) if c.on_device else x)  # JAX: dispatched, runs while the
        # previous rows are written
        if queued is not None:
            write(*queued)
        queued = ([f for f, _ in good], result)
    if queued is not None:
        write(*queued)
    bar.close()
    partial.finish()
    return report


def csv_header(class_names: Sequence[str]) -> list[str]:
    """The prediction CSV's columns: path, predicted, then ``p_<class>`` per class."""
    return ["path", "predicted", *[f"p_{n}" for n in class_names]]


def shard_path(out: Path, index: int, count: int) -> Path:
    """Where process ``index`` of ``count`` writes its shard of ``out`` (a complete shard; its partial
    file is beside it, named as :class:`PartialCSV` names it, and its report beside as ``….json``)."""
    return out.with_name(f"{out.name}.shard-{index}-of-{count}")


def _shard_report(shard: Path) -> Path:
    return shard.with_name(shard.name + ".json")


def predict_sharded(files: Sequence[Path], root: Path | None, classifier: Classifier, out: Path, *, signature: dict,
                    options: StreamOptions = StreamOptions(), overwrite: bool = False,
                    names: Mapping[Path, str] | None = None) -> StreamReport:
    """:func:`predict_folder` as one process of a job (one process: the same call).

    Process ``i`` of ``N`` predicts :func:`~training.loop.distributed.shard` ``(len(files), block=B)``
    of the files, ``B`` the padded chunk size, into :func:`shard_path` ``(out, i, N)``; a shard that
    is complete already is kept with ``options.resume``. Then every process waits for the others,
    and process 0 writes ``out`` (atomically): the header once, then each shard's rows in process
    order, and removes the shards. Every process returns its own shard's report.
    """
    count, index = process_count(), process_index()
    if count == 1:
        return predict_folder(files, root, classifier, out, signature=signature, options=options, names=names)
    dp = DataParallel(jax.local_devices())
    chunk = dp.padded_batch_size(options.batch_size)
    part = shard(len(files), block=chunk)
    shards = [shard_path(out, k, count) for k in range(count)]
    mine = shards[index]
    sig = {**signature, "shard": f"{index} of {count}", "chunk": chunk}
    if overwrite:
        PartialCSV(mine, [], sig).discard()
        mine.unlink(missing_ok=True)
    if options.resume and mine.is_file() and _shard_report(mine).is_file():
        skipped = [tuple(s) for s in json.loads(_shard_report(mine).read_text(encoding="utf-8"))["skipped"]]
        report = StreamReport(resumed=len(files[part]) - len(skipped), skipped=skipped)
        log.info(f"process {index}: its shard is complete already ({mine})")
    else:
        report = predict_folder(files[part], root, classifier, mine, signature=sig, options=options, dp=dp,
                                names=names)
        write_json_atomic(_shard_report(mine), {"skipped": [list(s) for s in report.skipped]})
    barrier(f"predict {out}")
    if index == 0:
        header = _csv_bytes([csv_header(classifier.class_names)])
        with atomic_open(out, "wb") as f:
            f.write(header)
            for path in shards:
                data = path.read_bytes()
                if not data.startswith(header):
                    raise ValueError(f"{path}: not a shard of this prediction")
                f.write(data[len(header):])
        for path in shards:
            path.unlink()
            _shard_report(path).unlink(missing_ok=True)
    return report
