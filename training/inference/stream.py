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
complete. The chunks are those of a one-process run, so the CSV is byte-identical to one.

What is read back is verified, not trusted: the partial record and the shard reports are parsed once into typed
records (:class:`ResumeState`, :func:`read_shard_report`), every row is checked against the :class:`Plan` (the
folder's listing and the classes: :class:`RowChecker`) before it is kept or joined, and the processes of a job
agree on a fingerprint of the plan before any work (:func:`agree_on_plan`). Every file is opened as a regular file
only, never through a symbolic link and never blocking on a FIFO (``common.files.open_regular``)."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import jax
import numpy as np

from common.files import (
    FileFormatError,
    atomic_open,
    check_destination,
    csv_row,
    csv_value,
    open_regular,
    read_regular,
    write_json_atomic,
)
from training.data.decoding import BadImageError, Preprocess
from training.data.prefetch import decode_chunks
from training.loop.devices import DataParallel
from training.loop.distributed import barrier, gather_rows, process_count, process_index, shard

log = logging.getLogger(__name__)  # shown by the commands (experiments.cli); silent in library use


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


PARTIAL_RECORD_LIMIT = 64 << 20  # bytes of OUT.partial.json or a shard's report read at most
CSV_FIELD_LIMIT = 128 << 10  # bytes of one CSV field (the csv module's own limit): a longer one is refused
PROBABILITY_SUM_TOLERANCE = 1e-3  # |Σp − 1| of a row read back: float32 softmax over ≤ 10,000 classes is within
# 10⁴ · 2⁻²⁴ ≈ 6e-4 of 1, and the CSV holds the float32 values exactly


@dataclass(frozen=True)
class Plan:
    """What a prediction writes, to check what it reads back against: the files (paths relative to the folder,
    POSIX, in the order predicted) and the class names (the columns)."""

    paths: tuple[str, ...]
    class_names: tuple[str, ...]

    @property
    def position(self) -> dict[str, int]:
        return {p: i for i, p in enumerate(self.paths)}


@dataclass(frozen=True)
class ResumeState:
    """``OUT.partial.json``, parsed: the signature of the run that wrote ``OUT.partial``, the byte length of its
    complete rows, and the files skipped so far as (path, reason)."""

    signature: dict[str, str | int]
    complete_bytes: int
    skipped: tuple[tuple[str, str], ...]


def _skipped(value: Any, path: Path, field: str = "skipped") -> tuple[tuple[str, str], ...]:
    if not isinstance(value, list):
        raise FileFormatError(path, field, f"a list of [path, reason] pairs expected, not {type(value).__name__}")
    for k, item in enumerate(value):
        if not (isinstance(item, list) and len(item) == 2 and all(isinstance(x, str) for x in item)):
            raise FileFormatError(path, f"{field}[{k}]", "a [path, reason] pair of strings expected")
    return tuple((a, b) for a, b in value)


def _json_object(path: Path, what: str, keys: set[str]) -> dict:
    data = read_regular(path, what, limit=PARTIAL_RECORD_LIMIT)
    try:
        meta = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise FileFormatError(path, "", f"{what}: not JSON ({' '.join(str(exc).split())[:200]})") from None
    if not isinstance(meta, dict):
        raise FileFormatError(path, "", f"{what}: a JSON object expected, not {type(meta).__name__}")
    if unknown := sorted(set(meta) - keys):
        raise FileFormatError(path, unknown[0], f"{what}: unknown field")
    return meta


def read_resume_state(path: Path) -> ResumeState:
    """Parse ``OUT.partial.json`` (a regular file of at most :data:`PARTIAL_RECORD_LIMIT` bytes, checked before
    it is opened); anything else is one :class:`FileFormatError` naming the file and the field."""
    meta = _json_object(path, "the partial output's record", {"signature", "complete_bytes", "skipped"})
    signature = meta.get("signature")
    if not isinstance(signature, dict):
        raise FileFormatError(path, "signature", f"an object expected, not {type(signature).__name__}")
    for k, v in signature.items():
        if not isinstance(v, (str, int)) or isinstance(v, bool):
            raise FileFormatError(path, f"signature.{k}", f"a string or integer expected, not {type(v).__name__}")
    length = meta.get("complete_bytes")
    if not isinstance(length, int) or isinstance(length, bool) or not 0 <= length < 1 << 62:
        raise FileFormatError(path, "complete_bytes", f"a byte length (an integer ≥ 0) expected, not {length!r:.40}")
    return ResumeState(signature, length, _skipped(meta.get("skipped", []), path))


def read_shard_report(path: Path) -> tuple[tuple[str, str], ...]:
    """The skipped files recorded beside a complete shard (``OUT.shard-I-of-N.json``), parsed like
    :func:`read_resume_state`."""
    meta = _json_object(path, "a shard's report", {"skipped"})
    if "skipped" not in meta:
        raise FileFormatError(path, "skipped", "missing")
    return _skipped(meta["skipped"], path)


class RowChecker:
    """Every row read back from a partial or shard file, checked against the :class:`Plan` before it is kept:
    ``len(header)`` fields; the path (its CSV text unescaped) in the listing, after the previous row's (in order,
    so never twice) and not among the skipped files; the predicted label one of the classes; probabilities
    finite, in [0, 1], summing to 1 within :data:`PROBABILITY_SUM_TOLERANCE`. A row that fails is one
    :class:`FileFormatError` naming the file, the line and the field."""

    def __init__(self, path: Path, plan: Plan, skipped: Sequence[tuple[str, str]]):
        self.file, self.plan, self.last = path, plan, -1
        self.position = plan.position
        self.width = 2 + len(plan.class_names)
        self.classes = set(plan.class_names)
        self.skipped: set[str] = set()
        for k, (name, _) in enumerate(skipped):
            if name not in self.position:
                raise FileFormatError(path, f"skipped[{k}]", f"{name!r:.200} is not a file of this prediction")
            if name in self.skipped:
                raise FileFormatError(path, f"skipped[{k}]", f"{name!r:.200} is listed twice")
            self.skipped.add(name)
        self.paths: list[str] = []
        self.seen: set[str] = set()

    def check(self, row: list[str], line: int) -> None:
        where = f"line {line}"
        if len(row) != self.width:
            raise FileFormatError(self.file, where, f"{len(row)} fields, {self.width} expected")
        name = csv_value(row[0])
        k = self.position.get(name)
        if k is None:
            raise FileFormatError(self.file, f"{where}, path", f"{name!r:.200} is not a file of this prediction")
        if k <= self.last:
            problem = "twice" if name in self.seen else "out of order"
            raise FileFormatError(self.file, f"{where}, path", f"{name!r:.200} is listed {problem}")
        if name in self.skipped:
            raise FileFormatError(self.file, f"{where}, path", f"{name!r:.200} is also recorded as skipped")
        if csv_value(row[1]) not in self.classes:
            raise FileFormatError(self.file, f"{where}, predicted", f"{row[1]!r:.200} is not one of the classes")
        try:
            probs = np.array([float(x) for x in row[2:]], np.float64)
        except ValueError:
            raise FileFormatError(self.file, f"{where}, probabilities", "not numbers") from None
        if not (np.all(np.isfinite(probs)) and np.all(probs >= 0) and np.all(probs <= 1)
                and abs(probs.sum() - 1) <= PROBABILITY_SUM_TOLERANCE):
            raise FileFormatError(self.file, f"{where}, probabilities",
                                  f"not finite probabilities in [0, 1] summing to 1 (sum {probs.sum():.6g})")
        self.last = k
        self.paths.append(name)
        self.seen.add(name)

    def rows(self, f: IO[str], header: list[str]) -> Iterator[list[str]]:
        """The rows of the CSV text ``f`` after ``header`` (its CSV cells), each checked; CSV errors (a field over
        :data:`CSV_FIELD_LIMIT` bytes, a NUL, a broken quote) and bytes that are not text name the file."""
        reader = csv.reader(f)
        try:
            with _csv_field_limit(CSV_FIELD_LIMIT):
                first = next(reader, None)
                if first != header:
                    raise FileFormatError(self.file, "line 1", "not the header of this prediction's CSV")
                for row in reader:
                    self.check(row, reader.line_num)
                    yield row
        except csv.Error as exc:
            raise FileFormatError(self.file, f"line {reader.line_num}", f"not CSV ({exc})") from None


@contextlib.contextmanager
def _csv_field_limit(limit: int) -> Iterator[None]:
    old = csv.field_size_limit(limit)
    try:
        yield
    finally:
        csv.field_size_limit(old)


class PartialCSV:
    """``OUT.partial`` (rows so far) and ``OUT.partial.json`` (its complete length and the run's signature).

    Both are opened only as regular files, never through a symbolic link and never blocking on a FIFO
    (``common.files.open_regular``); what is read back is parsed (:func:`read_resume_state`) and
    every row checked (:class:`RowChecker`) before any of it is kept."""

    def __init__(self, out: Path, header: list[str], signature: dict):
        self.out, self.header, self.signature = out, header, signature
        self.path = out.with_name(out.name + ".partial")
        self.meta = out.with_name(out.name + ".partial.json")

    def exists(self) -> bool:
        return os.path.lexists(self.path) or os.path.lexists(self.meta)

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)  # (a link is removed, never followed)
        self.meta.unlink(missing_ok=True)

    def check_destinations(self) -> None:
        """Refuse, before any work, a link, FIFO, device or folder at ``OUT``, ``OUT.partial`` or its record."""
        for path in (self.out, self.path, self.meta):
            check_destination(path)

    def _write_meta(self, length: int, skipped: list) -> None:
        with atomic_open(self.meta, encoding="utf-8") as f:
            json.dump({"signature": self.signature, "complete_bytes": length, "skipped": skipped}, f)

    def start(self) -> None:
        fd = open_regular(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, "the partial output")
        with os.fdopen(fd, "wb") as f:
            f.write(_csv_bytes([csv_row(self.header)]))
            f.flush()
            os.fsync(f.fileno())
            length = f.tell()
        self._write_meta(length, [])

    def resume(self, plan: Plan) -> tuple[set[str], list]:
        """The paths already written (after cutting the file back to its last complete chunk) and the skips,
        each checked against ``plan``."""
        state = read_resume_state(self.meta)
        diffs = [f"{k}: {state.signature.get(k)!r} → {v!r}" for k, v in self.signature.items()
                 if state.signature.get(k) != v]
        if diffs:
            raise ValueError(f"--resume: {self.path} was written with other settings: " + "; ".join(diffs)
                             + " (use --overwrite to start again)")
        checker = RowChecker(self.path, plan, state.skipped)
        if not os.path.lexists(self.path):
            raise FileNotFoundError(f"{self.path}: missing beside its record {self.meta}; use --overwrite to start "
                                    "again")
        fd = open_regular(self.path, os.O_RDWR, "the partial output")
        with os.fdopen(fd, "r+b") as raw:
            if os.fstat(fd).st_size < state.complete_bytes:
                raise FileFormatError(self.path, "", f"shorter than the {state.complete_bytes} bytes its record "
                                      f"{self.meta.name} gives; use --overwrite to start again")
            raw.truncate(state.complete_bytes)  # rows of a chunk that was being written when the run stopped
            raw.seek(0)
            text = io.TextIOWrapper(raw, encoding="utf-8", errors="surrogateescape", newline="")
            for _ in checker.rows(text, [str(c) for c in csv_row(self.header)]):
                pass
            text.detach()
        return set(checker.paths), list(state.skipped)

    def append(self, rows: list[list], skipped: list) -> None:
        """Append whole rows (their CSV cells), make them durable, then record the new complete length."""
        fd = open_regular(self.path, os.O_WRONLY | os.O_APPEND, "the partial output")
        with os.fdopen(fd, "ab") as f:
            f.write(_csv_bytes(rows))
            f.flush()
            os.fsync(f.fileno())
            length = f.tell()
        self._write_meta(length, [list(s) for s in skipped])

    def finish(self) -> None:
        check_destination(self.out)
        os.replace(self.path, self.out)
        self.meta.unlink(missing_ok=True)


def _csv_bytes(rows: Iterable[list]) -> bytes:
    """Rows of CSV cells (already escaped: ``csv_row``) as the bytes of CSV lines."""
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
    rel = dict(zip(files, row_names(files, root, names), strict=True))
    partial.check_destinations()
    if o.resume and partial.exists():
        done, report.skipped = partial.resume(Plan(tuple(rel[f] for f in files), tuple(c.class_names)))
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
        require_finite(p, [rel[f] for f in paths])  # no row of a broken model; the partial file keeps what was good
        k = c.decide(p)
        partial.append([csv_row([rel[f], c.class_names[int(i)], *map(float, row)]) for f, row, i in zip(paths, p, k)],
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


def require_finite(probs: np.ndarray, names: Sequence[str]) -> None:
    """Refuse probabilities that are not finite (NaN or infinite: a run's broken weights), naming the first photo
    (``names[i]`` is row i's), with one ``FloatingPointError`` line."""
    bad = ~np.isfinite(probs).all(axis=1)
    if bad.any():
        raise FloatingPointError(f"the model's probabilities for {names[int(np.argmax(bad))]!r:.200} are not finite "
                                 "(NaN or infinite): the run's weights are broken; train it again")


def csv_header(class_names: Sequence[str]) -> list[str]:
    """The prediction CSV's columns: path, predicted, then ``p_<class>`` per class."""
    return ["path", "predicted", *[f"p_{n}" for n in class_names]]


def shard_path(out: Path, index: int, count: int) -> Path:
    """Where process ``index`` of ``count`` writes its shard of ``out`` (a complete shard; its partial
    file is beside it, named as :class:`PartialCSV` names it, and its report beside as ``….json``)."""
    return out.with_name(f"{out.name}.shard-{index}-of-{count}")


def _shard_report(shard: Path) -> Path:
    return shard.with_name(shard.name + ".json")


PLAN_PARTS = ("file list", "chunking", "model", "options")


def plan_fingerprint(paths: Sequence[str], classifier: Classifier, signature: dict, *, chunk: int,
                     options: StreamOptions, overwrite: bool, count: int) -> np.ndarray:
    """The SHA-256 of each part of a job's plan (:data:`PLAN_PARTS`), as a ``(len(PLAN_PARTS), 32)`` uint8
    array: the files in order; the chunking (padded chunk, batch size, process count); the model (the
    signature: checkpoint, its config, the folder; the classes and the engine); the options that change what is
    written (resume, overwrite, skip-bad). Every process of a job must compute the same."""
    parts = [list(paths), [chunk, options.batch_size, count],
             [signature, list(classifier.class_names), classifier.on_device],
             [options.resume, overwrite, options.skip_bad]]
    digests = [hashlib.sha256(json.dumps(x, sort_keys=True, ensure_ascii=False).encode("utf-8", "surrogateescape")
                              ).digest() for x in parts]
    return np.frombuffer(b"".join(digests), np.uint8).reshape(len(PLAN_PARTS), 32)


def plan_disagreement(fingerprints: np.ndarray) -> str | None:
    """For every process's :func:`plan_fingerprint` (stacked, process order): None when they all agree, else
    one line naming the processes and the parts that differ from process 0's."""
    fingerprints = np.asarray(fingerprints)
    differ = {}
    for k in range(1, len(fingerprints)):
        parts = [PLAN_PARTS[j] for j in range(len(PLAN_PARTS)) if not np.array_equal(fingerprints[k, j],
                                                                                      fingerprints[0, j])]
        if parts:
            differ[k] = parts
    if not differ:
        return None
    said = [f"process {k}'s {', '.join(parts)} {'differ' if len(parts) > 1 else 'differs'} from process 0's"
            for k, parts in differ.items()]
    return ("the processes of this job were given different plans: " + "; ".join(said)
        + " (give every process the same --checkpoint, --images, --batch-size and options, and the same devices)")


def agree_on_plan(fingerprint: np.ndarray) -> None:
    """Exchange every process's :func:`plan_fingerprint` before any work; a difference is one ``ValueError``
    line on every process (each compares them all)."""
    every = gather_rows(np.asarray(fingerprint, np.uint8)[None])
    if message := plan_disagreement(every):
        raise ValueError(message)


def row_names(files: Sequence[Path], root: Path | None, names: Mapping[Path, str] | None) -> list[str]:
    """Each file's name in the CSV's ``path`` column: ``names[f]`` when given (``photo_inputs``' names), else its
    path relative to ``root``."""
    return [names[f] for f in files] if names is not None else [f.relative_to(root).as_posix() for f in files]


def predict_sharded(files: Sequence[Path], root: Path | None, classifier: Classifier, out: Path, *, signature: dict,
                    options: StreamOptions = StreamOptions(), overwrite: bool = False,
                    names: Mapping[Path, str] | None = None) -> StreamReport:
    """:func:`predict_folder` as one process of a job (one process: the same call).

    The processes first agree on the plan (:func:`agree_on_plan`). Process ``i`` of ``N`` predicts
    :func:`~training.loop.distributed.shard` ``(len(files), block=B)`` of the files, ``B`` the padded chunk
    size, into :func:`shard_path` ``(out, i, N)``; a shard that is complete already is kept with
    ``options.resume``. Then every process waits for the others, and process 0 writes ``out`` (atomically):
    the header once, then each shard's rows in process order, each row checked against that shard's part of the
    plan (:class:`RowChecker`: exactly its files less its skipped ones, in order); a shard that fails is one
    line naming it and nothing is joined. Then it removes the shards. Every process returns its own shard's
    report.
    """
    count, index = process_count(), process_index()
    if count == 1:
        return predict_folder(files, root, classifier, out, signature=signature, options=options, names=names)
    dp = DataParallel(jax.local_devices())
    chunk = dp.padded_batch_size(options.batch_size)
    rel = row_names(files, root, names)
    agree_on_plan(plan_fingerprint(rel, classifier, signature, chunk=chunk, options=options, overwrite=overwrite,
                                   count=count))
    parts = [shard(len(files), block=chunk, index=k, count=count) for k in range(count)]
    shards = [shard_path(out, k, count) for k in range(count)]
    mine, part = shards[index], parts[index]
    sig = {**signature, "shard": f"{index} of {count}", "chunk": chunk}
    check_destination(out)
    for path in (mine, _shard_report(mine)):
        check_destination(path)
    if overwrite:
        PartialCSV(mine, [], sig).discard()
        mine.unlink(missing_ok=True)
    if options.resume and os.path.lexists(mine) and os.path.lexists(_shard_report(mine)):
        skipped = list(read_shard_report(_shard_report(mine)))
        report = StreamReport(resumed=max(len(files[part]) - len(skipped), 0), skipped=skipped)
        log.info(f"process {index}: its shard is complete already ({mine})")
    else:
        report = predict_folder(files[part], root, classifier, mine, signature=sig, options=options, dp=dp,
                                names=names)
        write_json_atomic(_shard_report(mine), {"skipped": [list(s) for s in report.skipped]})
    barrier(f"predict {out}")
    if index == 0:
        join_shards(out, shards, [Plan(tuple(rel[p]), tuple(classifier.class_names)) for p in parts],
                    csv_header(classifier.class_names))
        for path in shards:
            path.unlink()
            _shard_report(path).unlink(missing_ok=True)
    return report


def join_shards(out: Path, shards: Sequence[Path], plans: Sequence[Plan], header: list[str]) -> None:
    """Write ``out`` (atomically): ``header``, then the rows of each shard, checked against its plan and its
    report (:func:`read_shard_report`): together they must be exactly the plan's files. A shard that fails is
    one :class:`FileFormatError` naming it; ``out`` is then left as it was."""
    cells = [str(c) for c in csv_row(header)]
    with atomic_open(out, "wb") as f:
        f.write(_csv_bytes([cells]))
        for path, plan in zip(shards, plans):
            skipped = read_shard_report(_shard_report(path))
            checker = RowChecker(path, plan, skipped)
            fd = open_regular(path, os.O_RDONLY, "a shard of this prediction")
            with os.fdopen(fd, "r", encoding="utf-8", errors="surrogateescape", newline="") as text:
                block: list[list[str]] = []
                for row in checker.rows(text, cells):
                    block.append(row)
                    if len(block) == 1024:
                        f.write(_csv_bytes(block))
                        block = []
                f.write(_csv_bytes(block))
            if len(checker.paths) + len(checker.skipped) != len(plan.paths):
                missing = len(plan.paths) - len(checker.paths) - len(checker.skipped)
                raise FileFormatError(path, "", f"{missing} of its {len(plan.paths)} files have no row and were "
                                      "not skipped (an incomplete shard)")
