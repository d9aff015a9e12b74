"""Predict, and show what the model looks at: Grad-CAM and Grad-CAM++ (and saliency) over each photo.

    python -m experiments.explain --checkpoint runs/NAME --images DIR --out reports/explain
    python -m experiments.explain --checkpoint runs/NAME --images photo.jpg DIR2 other.png

``explain`` is ``predict`` plus pictures. Its probabilities are predict's, computed by the same
function (the same engine, the mirror-image average of a pretrained run, the run's calibration, the saved operating
point of a --target-recall run), and its paths have predict's form: a photo found in a folder
given to --images is named relative to that folder, a file given directly as given.

Writes ``explanations.csv`` (predict's columns: path, predicted, p_<class> …, then png) and one
PNG per photo: the photo as the model sees it (titled with the predicted class and its
probability), then each map of the predicted class over it (bright: raises that class's score).
The maps are computed on the photo itself, not its mirror image. Photos are decoded a few
chunks ahead by a thread pool; the maps of a chunk come from one batched, jitted pass (one
forward and one backward for all methods together; the backward reaches the image only for saliency).
"""

from __future__ import annotations

import argparse
import csv
import functools
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from experiments.cli import add_common, positive_int, run_command
from experiments.names import EXPLAIN_METHODS


def run(args: argparse.Namespace) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from tqdm.auto import tqdm

    from common.files import atomic_open, csv_row, output_dir
    from training.data.decoding import BadImageError
    from training.data.discovery import photo_inputs
    from training.data.prefetch import decode_chunks
    from training.evaluation.explain import batched
    from training.inference.engine import trained_classifier
    from training.inference.stream import csv_header
    from training.loop.devices import DataParallel
    from training.runs.saved import load_trained, read_saved_run

    if args.cache_dir is not None:
        print("warning: --cache-dir is deprecated and ignored: explain streams the photos as predict does",
              file=sys.stderr)
    saved = read_saved_run(args.checkpoint)  # the run is read once, here
    model, params, config, class_names = load_trained(saved)
    op = saved.operating_point.as_json() if saved.operating_point else None
    c, engine = trained_classifier(model, params, config, class_names, op, args.engine,
                                   calibration=saved.calibration)
    ignored: list[tuple[str, str]] = []
    photos = photo_inputs(args.images, ignored=ignored)
    names = dict(photos)
    methods = tuple(dict.fromkeys(args.methods))
    maps_fn = batched(model, methods)
    dp = DataParallel(jax.local_devices())
    size = dp.padded_batch_size(min(args.batch_size or config.batch_size, len(photos)))  # few photos: no padding
    probs_params = dp.put_replicated(c.params) if c.on_device else c.params
    shape = (size, c.pre.image_size, c.pre.image_size, c.pre.channels)
    out = output_dir(args.out)  # made once the run and the photos are found
    pngs = _PngNames(out)
    rows, skipped = [], []
    bar = tqdm(total=len(photos), unit="photo", desc="explain", disable=args.no_progress, smoothing=0.1)
    queued = None  # (photos, probabilities, classes, maps still on the device) of the chunk drawn next

    def draw(good, probs, k, maps) -> None:
        maps = {m: np.asarray(v) for m, v in maps.items()}  # waits for the device
        for i, (f, a) in enumerate(good):
            cls = int(k[i])
            png = pngs.next(names[f])
            drawing.append(painter.submit(_draw, png, a, {m: maps[m][i] for m in methods},
                                          f"{c.class_names[cls]} {probs[i, cls]:.2f}", names[f]))
            rows.append({"path": names[f], "predicted": c.class_names[cls],
                         **{f"p_{n}": float(p) for n, p in zip(c.class_names, probs[i])},
                         "probability": float(probs[i, cls]), "png": str(png)})
        bar.update(len(good))

    drawing: list = []
    with ThreadPoolExecutor(1) as painter:  # PNGs drawn and encoded beside the next chunk's maps
        for chunk in decode_chunks([f for f, _ in photos], c.pre, chunk_size=size, workers=args.workers):
            good = [(f, a) for f, a in chunk if not isinstance(a, str)]
            for f, a in chunk:
                if isinstance(a, str):
                    if not args.skip_bad:
                        raise BadImageError(a)
                    skipped.append((names[f], a))
                    bar.update(1)
            if not good:
                continue
            x = np.zeros(shape, np.float32)
            x[: len(good)] = np.stack([a for _, a in good])
            probs = np.asarray(c.probs_fn(probs_params, dp.put_batch(x) if c.on_device else x))[: len(good)]
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
    with atomic_open(out / "explanations.csv", newline="", encoding="utf-8", errors="surrogateescape") as f:
        csv.writer(f).writerows([header, *[csv_row(r[h] for h in header) for r in rows]])
    for _, reason in skipped:
        print(f"skipped: {reason}", file=sys.stderr)
    print(f"{len(rows)} photos explained ({', '.join(methods)}; probabilities by {engine}): "
          f"{out / 'explanations.csv'} and {len(rows)} PNGs in {out}"
          + (f"; {len(skipped)} bad files skipped" if skipped else "")
          + (f"; {len(ignored)} entries left out (not photos)" if ignored else ""))
    return rows


class _PngNames:
    """``out/<photo's path, flattened to safe characters>_explained.png``, made unique within the run."""

    def __init__(self, out: Path):
        self.out, self.used = out, set()

    def next(self, name: str) -> Path:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name.rsplit(".", 1)[0].replace("/", "__")).strip("._") or "photo"
        stem = stem[-150:]
        candidate, n = stem, 1
        while candidate.lower() in self.used:
            n += 1
            candidate = f"{stem}_{n}"
        self.used.add(candidate.lower())
        return self.out / f"{candidate}_explained.png"


@functools.cache
def _font():
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=13)
    except TypeError:  # Pillow without FreeType sizes
        return ImageFont.load_default()


def _draw(path: Path, x, maps: dict, title: str, name: str) -> None:
    """The photo and each map over it, side by side, titled; written atomically (Pillow, no figure engine)."""
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


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a run folder written by experiments.train")
    p.add_argument("--images", required=True, nargs="+", metavar="PHOTO_OR_DIR",
                   help="photo files and folders of photos (read recursively), in any mix; paths as predict "
                        "writes them")
    p.add_argument("--methods", nargs="+", choices=EXPLAIN_METHODS, default=["grad_cam", "grad_cam_plus_plus"],
                   help="which maps to draw (default grad_cam grad_cam_plus_plus: the gradient at the last feature "
                        "maps flows back through the head alone; saliency needs a backward pass through the whole "
                        "network, about 5× the CPU time a photo)")
    add_common(p, "out", "skip-bad", "workers", "no-progress", "engine", out="reports/explain")
    p.add_argument("--batch-size", type=positive_int,
                   help="photos per batched pass (default: the run's), rounded up to a multiple of the devices")
    p.add_argument("--cache-dir", help=argparse.SUPPRESS)  # deprecated: photos are streamed, as predict's are
    return p


def main(argv: list[str] | None = None) -> list[dict]:
    return run_command(parser(), run, argv)


if __name__ == "__main__":
    main()
