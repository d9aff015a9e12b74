"""Photos per second: plain full decode + bicubic vs this project's loader (draft, threads, cache).

    python -m benchmarks.preprocess --images ../shared/data/tree-risk-examples [--repeat 5]

Plain: ``Image.open`` → ``exif_transpose`` → ``convert("L")`` → centre-crop bicubic resize, one
photo after another. Ours: :func:`training.data.loading.load_images` with JPEG draft decoding over
all cores, first with an empty cache (cold), then again (warm: no decoding at all).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageOps

from common.files import output_dir
from common.tables import write_table
from training.data.cache import ImageCache
from training.data.decoding import Preprocess
from training.data.discovery import discover
from training.data.loading import load_images


def plain(path: Path, size: int) -> None:
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im).convert("L")
        w, h = im.size
        s = min(w, h)
        im.resize((size, size), Image.Resampling.BICUBIC, box=((w - s) / 2, (h - s) / 2, (w + s) / 2, (h + s) / 2))


def run(images: str, out: str, size: int = 108, repeat: int = 5) -> list[dict]:
    items = discover(images) * repeat
    n = len(items)
    pre = Preprocess(image_size=size)
    start = time.perf_counter()
    for path, _ in items:
        plain(path, size)
    t_plain = time.perf_counter() - start
    rows = [{"method": "plain full decode + bicubic, serial", "photos": n, "seconds": t_plain,
             "photos_per_s": n / t_plain, "speedup": 1.0}]
    with tempfile.TemporaryDirectory() as tmp:
        warm = ImageCache(Path(tmp) / "warm")
        load_images(discover(images), pre, cache=warm)  # fill it once, untimed
        for label in ("draft + threads, cold cache", "warm cache (no decoding)"):
            start = time.perf_counter()
            # the same unique photos `repeat` times (one call each: de-duplication would merge repeats)
            for r in range(repeat):
                cache = warm if "warm" in label else ImageCache(Path(tmp) / f"cold{r}")
                load_images(discover(images), pre, cache=cache)
            t = time.perf_counter() - start
            rows.append({"method": label, "photos": n, "seconds": t, "photos_per_s": n / t, "speedup": t_plain / t})
    write_table(rows, output_dir(out), "preprocess", title=f"Preprocessing {n} photo loads to {size}px grayscale",
                notes=f"Photos: {images}. Target: ≥ 4× the plain path.\n")
    print((Path(out) / "preprocess.md").read_text())
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True)
    p.add_argument("--out", default="runs/bench_preprocess")
    p.add_argument("--size", type=int, default=108)
    p.add_argument("--repeat", type=int, default=5)
    a = p.parse_args(argv)
    run(a.images, a.out, a.size, a.repeat)


if __name__ == "__main__":
    main()
