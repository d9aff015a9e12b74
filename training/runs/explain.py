"""Predict, and show what the model looks at: the whole of ``experiments.explain`` as one library call.

:func:`explain_photos` is predict plus pictures. It reads the run folder once and builds predict's classifier (the
same engine, the mirror-image average of a pretrained run, the run's calibration, the saved operating point of a
--target-recall run), so its probabilities, decisions and paths are predict's. For each photo it writes one PNG:
the photo as the model sees it (titled with the predicted class and its probability), then each map of the
predicted class over it (:mod:`training.evaluation.explain`; bright: raises that class's score), computed on the
photo itself, not its mirror image; then ``explanations.csv`` (predict's columns, then ``png``).

Photos are decoded a few chunks ahead by a thread pool; the maps of a chunk come from one batched, jitted pass (one
forward and one backward for all methods together; the backward reaches the image only for saliency), dispatched
while the PNGs of the chunk before are drawn and encoded by another thread.
"""

from __future__ import annotations

import csv
import functools
import os
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

DEFAULT_METHODS = ("grad_cam", "grad_cam_plus_plus")  # the gradient at the last feature maps flows through the head


@dataclass(frozen=True)
class ExplainOptions:
    """How an explanation goes: the maps to draw (``grad_cam``, ``grad_cam_plus_plus``, ``saliency``; repeats
    dropped), the engine of the probabilities (``auto``, ``jax`` or ``onnxruntime``), photos per batched pass
    (None: the run's; rounded up to a multiple of the devices), decoding threads, skip unreadable photos (else the
    first one stops the run naming it), a progress bar."""

    methods: tuple[str, ...] = DEFAULT_METHODS
    engine: str = "auto"
    batch_size: int | None = None
    workers: int | None = None
    skip_bad: bool = False
    progress: bool = True


class ExplainRow(NamedTuple):
    """One photo's row of ``explanations.csv``: its path (as predict writes it), the predicted class, the
    probability of each class (in the run's class order), the predicted class's, and the PNG drawn."""

    path: str
    predicted: str
    probabilities: dict[str, float]
    probability: float
    png: str

    def as_dict(self) -> dict[str, str | float]:
        """The row as the CSV's columns name it: path, predicted, p_<class> …, probability, png."""
        return {"path": self.path, "predicted": self.predicted,
                **{f"p_{n}": p for n, p in self.probabilities.items()}, "probability": self.probability,
                "png": self.png}


class ExplainReport(NamedTuple):
    """What :func:`explain_photos` gives back: the rows, in the order of the photos; the bad files skipped and
    the entries left out as not photos, ``(path, reason)`` each; the maps drawn; the engine that computed the
    probabilities; the output folder and the CSV in it."""

    rows: list[ExplainRow]
    skipped: list[tuple[str, str]]
    ignored: list[tuple[str, str]]
    methods: tuple[str, ...]
    engine: str
    out: str
    csv: str

    def closing_line(self) -> str:
        """The one line that says what was written where (the command prints it)."""
        n = len(self.rows)
        return (f"{n} photos explained ({', '.join(self.methods)}; probabilities by {self.engine}): "
                f"{self.csv} and {n} PNGs in {self.out}"
                + (f"; {len(self.skipped)} bad files skipped" if self.skipped else "")
                + (f"; {len(self.ignored)} entries left out (not photos)" if self.ignored else ""))


def explain_photos(checkpoint: str | os.PathLike, images: list[str], out: str | os.PathLike,
                   options: ExplainOptions = ExplainOptions()) -> ExplainReport:
    """Draw the maps of each photo under ``images`` (files and folders, in any mix) into the folder ``out``, with
    the predictions of the run folder ``checkpoint``, and write ``out/explanations.csv``.

    ``out`` is made only once the run and the photos are found. Raises
    :class:`~common.files.FileFormatError`, :class:`~training.data.decoding.BadImageError` (without
    ``options.skip_bad``), :class:`FileNotFoundError` or :class:`ValueError` naming the file or value.
    """
    import jax
    import jax.numpy as jnp
    import numpy as np
    from tqdm.auto import tqdm

    from common.files import atomic_open, csv_row, output_dir
    from training.data.decoding import BadImageError
    from training.data.discovery import photo_inputs
    from training.data.prefetch import decode_chunks
    from training.evaluation.explain import METHODS, batched
    from training.inference.engine import trained_classifier
    from training.inference.stream import csv_header, require_finite
    from training.loop.devices import DataParallel
    from training.runs.saved import load_trained, read_saved_run

    methods = tuple(dict.fromkeys(options.methods))
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ValueError(f"methods {list(options.methods)[:5]}: expected one or more of {list(METHODS)}")
    saved = read_saved_run(checkpoint)  # the run is read once, here
    model, params, config, class_names = load_trained(saved)
    op = saved.operating_point.as_json() if saved.operating_point else None
    c, engine = trained_classifier(model, params, config, class_names, op, options.engine,
                                   calibration=saved.calibration)
    ignored: list[tuple[str, str]] = []
    photos = photo_inputs(images, ignored=ignored)
    names = dict(photos)
    maps_fn = batched(model, methods)
    dp = DataParallel(jax.local_devices())
    size = dp.padded_batch_size(min(options.batch_size or config.batch_size, len(photos)))  # few photos: no padding
    probs_params = dp.put_replicated(c.params) if c.on_device else c.params
    shape = (size, c.pre.image_size, c.pre.image_size, c.pre.channels)
    out = output_dir(out)  # made once the run and the photos are found
    pngs = PngNames(out)
    rows: list[ExplainRow] = []
    skipped: list[tuple[str, str]] = []
    bar = tqdm(total=len(photos), unit="photo", desc="explain", disable=not options.progress, smoothing=0.1)
    queued = None  # (photos, probabilities, classes, maps still on the device) of the chunk drawn next

    def draw(good, probs, k, maps) -> None:
        maps = {m: np.asarray(v) for m, v in maps.items()}  # waits for the device
        for i, (f, a) in enumerate(good):
            cls = int(k[i])
            png = pngs.next(names[f])
            drawing.append(painter.submit(draw_explanation, png, a, {m: maps[m][i] for m in methods},
                                          f"{c.class_names[cls]} {probs[i, cls]:.2f}", names[f]))
            rows.append(ExplainRow(path=names[f], predicted=c.class_names[cls],
                                   probabilities={n: float(p) for n, p in zip(c.class_names, probs[i], strict=True)},
                                   probability=float(probs[i, cls]), png=str(png)))
        bar.update(len(good))

    drawing: list = []
    with ThreadPoolExecutor(1) as painter:  # PNGs drawn and encoded beside the next chunk's maps
        for chunk in decode_chunks([f for f, _ in photos], c.pre, chunk_size=size, workers=options.workers):
            good = [(f, a) for f, a in chunk if not isinstance(a, str)]
            for f, a in chunk:
                if isinstance(a, str):
                    if not options.skip_bad:
                        raise BadImageError(a)
                    skipped.append((names[f], a))
                    bar.update(1)
            if not good:
                continue
            x = np.zeros(shape, np.float32)
            x[: len(good)] = np.stack([a for _, a in good])
            probs = np.asarray(c.probs_fn(probs_params, dp.put_batch(x) if c.on_device else x))[: len(good)]
            require_finite(probs, [names[f] for f, _ in good])  # as predict: no row, no picture of a broken model
            k = np.zeros(size, np.int32)
            k[: len(good)] = c.decide(probs)
            maps = maps_fn(params, jnp.asarray(x), jnp.asarray(k))  # dispatched: runs while the last is drawn
            if queued is not None:
                draw(*queued)
            queued = (good, probs, k, maps)
        if queued is not None:
            draw(*queued)
        for done in drawing:
            done.result()  # a failed drawing raises here
    bar.close()
    header = [*csv_header(c.class_names), "png"]
    table = out / "explanations.csv"
    with atomic_open(table, newline="", encoding="utf-8", errors="surrogateescape") as f:
        csv.writer(f).writerows([header, *[csv_row(r.as_dict()[h] for h in header) for r in rows]])
    return ExplainReport(rows=rows, skipped=skipped, ignored=ignored, methods=methods, engine=engine, out=str(out),
                         csv=str(table))


class PngNames:
    """``out/<the photo's path, flattened to one safe name>_explained.png``, unique within the run.

    The path's suffix is dropped and its ``/`` become ``__`` (``siteA/IMG_1.jpg`` → ``siteA__IMG_1``), then
    :func:`~common.files.safe_name` makes it one plain file-name part (no separator, ``..``, NUL or control
    character) of its last :data:`CHARS` characters, cut to :data:`BYTES` bytes of UTF-8, so that the whole name
    stays far below the file systems' 255 bytes. Two photos whose names differ only by case, by Unicode
    normalization or by characters made safe get distinct files (``…_2``, ``…_3``): a case-insensitive file system
    (macOS, Windows) would otherwise write one over the other."""

    CHARS, BYTES = 150, 200

    def __init__(self, out: Path):
        self.out, self.used = Path(out), set()

    def next(self, name: str) -> Path:
        from common.files import inside, safe_name

        flat = name.rsplit(".", 1)[0].replace("/", "__")[-self.CHARS:]
        stem = safe_name(flat, limit=self.BYTES).strip("._") or "photo"  # ≤ CHARS characters, ≤ BYTES bytes
        candidate, n = stem, 1
        while self._key(candidate) in self.used:
            n += 1
            candidate = f"{stem}_{n}"
        self.used.add(self._key(candidate))
        return inside(self.out, f"{candidate}_explained.png")

    @staticmethod
    def _key(name: str) -> str:
        return unicodedata.normalize("NFKD", name).casefold()


@functools.cache
def _font():
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=13)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def draw_explanation(path: Path, x, maps: dict, title: str, name: str) -> None:
    """The photo ``x`` (H, W, C) in [0, 1] and each map (H, W) in [0, 1] over it (jet, 45 %), side by side, at
    least 160 px wide, with ``name`` above and ``title`` and the maps' names over the panels; written atomically
    to ``path`` (Pillow, no figure engine)."""
    import numpy as np
    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    from common.files import atomic_open

    side = x.shape[0]
    scale = max(1, -(-160 // side))  # small inputs drawn at least 160 px wide
    rgb = np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x
    panels = [rgb]
    for heat in maps.values():
        colour = colormaps["jet"](np.clip(heat, 0, 1))[..., :3]
        panels.append(0.55 * rgb + 0.45 * colour)
    strip = np.concatenate([np.pad(p, ((0, 0), (0, 4), (0, 0)), constant_values=1.0) for p in panels], axis=1)
    image = Image.fromarray((np.clip(strip, 0, 1) * 255).astype(np.uint8))
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    font = _font()
    canvas = Image.new("RGB", (image.width, image.height + 40), "white")
    canvas.paste(image, (0, 40))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), name[-100:], fill="black", font=font)
    for i, label in enumerate([title, *maps]):
        draw.text((i * (side + 4) * scale + 4, 21), label, fill="black", font=font)
    with atomic_open(path, "wb") as f:
        canvas.save(f, format="PNG", compress_level=1)  # 3-4× faster to encode than the default 6
