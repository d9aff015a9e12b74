"""explain's photos/s against predict's on the same photos, and the batched maps against one photo at a time.

    python -m benchmarks.explain_speed --checkpoint runs/NAME --images DIR [DIR …] [--batch-size 8]

1. ``experiments.explain`` (its default maps, Grad-CAM and Grad-CAM++) and ``experiments.predict`` on
   the same photos, in this process, each run twice: the first includes compiling, the second is
   warm. photos/s = photos / wall seconds of the whole command (decoding, the probabilities, the
   maps, the PNGs, the CSV), beside the CPU seconds the process used (all threads): on a shared
   machine wall time depends on the others' load; photos per CPU second, times the cores, bounds
   what an idle machine gives.
2. The maps alone, warm: the batched pass (``training.evaluation.explain.batched``: one forward and one
   backward for the methods together, vmapped over a chunk), for explain's default and for all three
   (saliency's backward reaches the image), against the three methods jitted one photo at a time
   (``jitted``, what explain ran before), on the same preprocessed photos.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import tempfile
import time


def _timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads) of ``fn()``."""
    start, cpu = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):
        fn()
    return time.perf_counter() - start, time.process_time() - cpu


def main(argv: list[str] | None = None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--images", nargs="+", required=True)
    p.add_argument("--batch-size", type=int, help="photos per pass (default: the run's, as the commands)")
    p.add_argument("--single", type=int, default=4, help="photos timed one at a time (default 4)")
    args = p.parse_args(argv)

    import jax
    import jax.numpy as jnp
    import numpy as np

    from common.timing import device_description
    from experiments import explain, predict
    from training.data.decoding import Preprocess, load_image
    from training.data.discovery import photo_inputs
    from training.evaluation.explain import METHODS, batched, jitted
    from training.runs.saved import load_trained

    load = os.getloadavg()
    photos = photo_inputs(args.images)
    n = len(photos)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        common = ["--checkpoint", args.checkpoint, "--images", *args.images, "--no-progress",
                  *(["--batch-size", str(args.batch_size)] if args.batch_size else [])]
        for attempt in ("first (compiles)", "second (warm)"):
            s, cpu = _timed(lambda: explain.main([*common, "--out", f"{tmp}/x"]))
            rows.append({"what": f"explain, {attempt}", "photos": n, "seconds": s, "photos/s": n / s, "cpu": cpu})
            s, cpu = _timed(lambda: predict.main([*common, "--out", f"{tmp}/p.csv", "--overwrite"]))
            rows.append({"what": f"predict, {attempt}", "photos": n, "seconds": s, "photos/s": n / s, "cpu": cpu})

    model, params, config, _ = load_trained(args.checkpoint)
    pre = Preprocess(config.image_size, config.crop, config.rgb)
    x = np.stack([load_image(f, pre) for f, _ in photos[: args.batch_size or config.batch_size]])
    k = jnp.zeros(len(x), jnp.int32)
    for methods in (("grad_cam", "grad_cam_plus_plus"), tuple(METHODS)):
        f = batched(model, methods)
        jax.block_until_ready(f(params, x, k))
        start, cpu = time.perf_counter(), time.process_time()
        jax.block_until_ready(f(params, x, k))
        s, cpu = time.perf_counter() - start, time.process_time() - cpu
        rows.append({"what": f"maps {' + '.join(methods)}, batched ({len(x)} photos, one pass)", "photos": len(x),
                     "seconds": s, "photos/s": len(x) / s, "cpu": cpu})
    single = {m: jitted(model, m) for m in METHODS}
    for m, g in single.items():
        jax.block_until_ready(g(params, x[0], 0))
    start = time.perf_counter()
    for i in range(min(args.single, len(x))):
        for g in single.values():
            jax.block_until_ready(g(params, x[i], 0))
    s = time.perf_counter() - start
    rows.append({"what": "maps, one photo and one method at a time (before)", "photos": min(args.single, len(x)),
                 "seconds": s, "photos/s": min(args.single, len(x)) / s})
    print(f"device: {device_description()}")
    print(f"load average before/after: {load[0]:.1f} / {os.getloadavg()[0]:.1f} (on {os.cpu_count()} cores)")
    print("| what | photos | wall s | photos/s | CPU s (all threads) | photos per CPU s |\n|---|---|---|---|---|---|")
    for r in rows:
        cpu = f"{r['cpu']:.1f} | {r['photos'] / r['cpu']:.2f}" if "cpu" in r else "– | –"
        print(f"| {r['what']} | {r['photos']} | {r['seconds']:.1f} | {r['photos/s']:.2f} | {cpu} |")
    return rows


if __name__ == "__main__":
    main()
