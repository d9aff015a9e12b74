"""How close ``predict`` comes to the bound its two costs set: decoding (D) and the engine (E), in one run.

    python -m benchmarks.predict_pipeline --checkpoint RUN [--images ../shared/data/trees] [--repeats 5]
        [--engines onnxruntime jax] [--workers 2] [--ort-threads 0] [--spin default on off]

For each configuration (engine × decoding workers × ONNX Runtime intra-op threads × spinning), three
measurements over the same photos, interleaved (D, E, P of every configuration, then again, ``--repeats``
times; the order rotates each repeat), medians reported:

- **D**, decode and preprocess alone: ``training.data.prefetch.decode_chunks`` with the workers ``predict``
  uses, each chunk stacked into its padded batch as ``predict`` does; photos/s.
- **E**, the engine alone: the classifier's ``probs_fn`` (flip-averaged, as ``predict`` runs it) on as many
  padded batches as the folder makes, already decoded in memory (for JAX: put on the device and read back, as
  ``predict`` does); photos/s.
- **P**, ``predict`` end to end: ``training.inference.stream.predict_folder`` on the folder, CSV written
  (fsynced chunk by chunk) to a temporary folder; photos/s.

On shared cores both costs must be paid, so the bound is ``1 / (1/D + 1/E)``; the target is P ≥ 0.9 × bound.
The table gives the load average before and after, so that figures from a busy machine read as such.
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from common.timing import device_description


def _engine(model, params, config, engine: str, threads: int, spin: str):
    """``(probs_fn, its params, on_device)`` as ``predict`` builds it, with ONNX Runtime's threads/spinning."""
    from training.inference.engine import onnxruntime_probs, probs_function
    from training.loop.registry import mirror_average

    if engine == "onnxruntime":
        probs_fn = onnxruntime_probs(model, params, image_size=config.image_size, channels=3 if config.rgb else 1,
                                     tta_flip=mirror_average(config), threads=threads or None,
                                     spin={"default": None, "on": True, "off": False}[spin])
        return probs_fn, None, False
    probs_fn, fn_params, _ = probs_function(model, params, config, "jax")
    return probs_fn, fn_params, True


def run(checkpoint: str, images: str, *, repeats: int, engines: list[str], workers: list[int],
        ort_threads: list[int], spins: list[str], batch_size: int | None) -> list[dict]:
    from training.data.decoding import Preprocess, load_image
    from training.data.discovery import image_files
    from training.data.prefetch import decode_chunks
    from training.evaluation.decision import decide
    from training.inference.stream import Classifier, StreamOptions, predict_folder
    from training.loop.devices import DataParallel
    from training.runs.saved import load_trained

    model, params, config, names = load_trained(Path(checkpoint))
    folder = Path(images)
    files = image_files(folder)
    n = len(files)
    pre = Preprocess(config.image_size, config.crop, config.rgb)
    dp = DataParallel()
    size = dp.padded_batch_size(batch_size or config.batch_size)
    batches = -(-n // size)
    sample = np.zeros((2, size, pre.image_size, pre.image_size, pre.channels), np.float32)
    for k in range(2):
        sample[k] = np.stack([load_image(f, pre) for f in files[k * size:(k + 1) * size]])

    configs = []
    for engine, w in itertools.product(engines, workers):
        for t, s in itertools.product(ort_threads, spins) if engine == "onnxruntime" else [(0, "default")]:
            probs_fn, fn_params, on_device = _engine(model, params, config, engine, t, s)
            classifier = Classifier(probs_fn, fn_params, pre, names, lambda p: decide(p, None), on_device=on_device)
            label = f"{engine}, workers {w}" + (f", ORT threads {t or 'default'}, spin {s}"
                                                if engine == "onnxruntime" else "")
            configs.append((label, classifier, w))

    def decode_rate(w: int) -> float:
        start = time.perf_counter()
        for chunk in decode_chunks(files, pre, chunk_size=size, workers=w):
            x = np.zeros((size, *sample.shape[2:]), np.float32)
            x[: len(chunk)] = np.stack([a for _, a in chunk])
        return n / (time.perf_counter() - start)

    def engine_rate(c: Classifier) -> float:
        fn_params = dp.put_replicated(c.params) if c.on_device else c.params
        start = time.perf_counter()
        for k in range(batches):
            x = sample[k % 2]
            np.asarray(c.probs_fn(fn_params, dp.put_batch(x) if c.on_device else x))
        return n / (time.perf_counter() - start)

    def predict_rate(c: Classifier, w: int, out: Path) -> float:
        start = time.perf_counter()
        predict_folder(files, folder, c, out, signature={},
                       options=StreamOptions(batch_size=size, workers=w, progress=False), dp=dp)
        return n / (time.perf_counter() - start)

    load_before = os.getloadavg()
    seen: dict[str, dict[str, list[float]]] = {label: {"D": [], "E": [], "P": []} for label, _, _ in configs}
    with tempfile.TemporaryDirectory() as tmp:
        for label, c, w in configs:  # warm: compile, first session run, page cache
            engine_rate(c)
            predict_rate(c, w, Path(tmp) / "warm.csv")
        for r in range(repeats):
            order = configs[r % len(configs):] + configs[: r % len(configs)]
            for label, c, w in order:
                steps = [("D", lambda: decode_rate(w)), ("E", lambda: engine_rate(c)),
                         ("P", lambda: predict_rate(c, w, Path(tmp) / "p.csv"))]
                for what, measure in steps[r % 3:] + steps[: r % 3]:
                    seen[label][what].append(measure())
                print(label, {k: round(v[-1], 1) for k, v in seen[label].items()}, flush=True)
    load_after = os.getloadavg()
    rows = []
    for label, _, _ in configs:
        d, e, p = (statistics.median(seen[label][k]) for k in "DEP")
        bound = 1 / (1 / d + 1 / e)
        rows.append({"configuration": label, "D": d, "E": e, "P": p, "bound": bound, "P/bound": p / bound,
                     "P/E": p / e, "P spread": f"{min(seen[label]['P']):.1f}–{max(seen[label]['P']):.1f}"})
    print(f"{n} photos in {folder}, batch {size}, {repeats} repeats (medians), {device_description()}; "
          f"load average before {load_before[0]:.1f}, after {load_after[0]:.1f}")
    print("| configuration | D photos/s | E photos/s | P photos/s | bound 1/(1/D+1/E) | P/bound | P/E | P range |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['configuration']} | {row['D']:.1f} | {row['E']:.1f} | {row['P']:.1f} | {row['bound']:.1f} | "
              f"{row['P/bound']:.2f} | {row['P/E']:.2f} | {row['P spread']} |")
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a trained run's folder")
    p.add_argument("--images", default="../shared/data/trees")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--engines", nargs="+", default=["onnxruntime", "jax"], choices=["onnxruntime", "jax"])
    p.add_argument("--workers", type=int, nargs="+", default=[os.cpu_count() or 1], help="decoding threads")
    p.add_argument("--ort-threads", type=int, nargs="+", default=[0], help="ONNX Runtime intra-op threads "
                   "(0: its default)")
    p.add_argument("--spin", nargs="+", default=["default"], choices=["default", "on", "off"],
                   help="ONNX Runtime's intra-op threads busy-wait between operators")
    p.add_argument("--batch-size", type=int, help="photos per forward pass (default: the run's)")
    a = p.parse_args(argv)
    run(a.checkpoint, a.images, repeats=a.repeats, engines=a.engines, workers=a.workers, ort_threads=a.ort_threads,
        spins=a.spin, batch_size=a.batch_size)


if __name__ == "__main__":
    main()
