"""Streaming prediction: peak memory against folder size, and photos/s against the forward pass alone.

    python -m benchmarks.predict_stream [--sizes 500 4000] [--out runs/bench_predict]

1. Generates JPEG photos (640×480, smooth random content; seeded) and trains the default model
   (ImageNet EfficientNet-Lite1 features + head) on 24 of them, so the checkpoint is real.
2. Peak RSS: ``python -m experiments.predict`` in a fresh process on folders of each size
   (``os.wait4`` gives the child's maximum resident set). Streaming should make them equal:
   the target is the largest within 10% of the smallest.
3. Photos/s end to end (reading, decoding, preprocessing, the device, the CSV) on the largest
   folder, in this process after compiling, with each engine of ``predict`` (JAX; ONNX Runtime on the
   run's ONNX graph when the ``deploy`` extra is installed); for JAX, against the same jitted forward pass (with flip
   averaging, as predict runs it) on batches already in memory, measured before and after (the
   faster is kept). Their ratio is the fraction of time the device is kept busy; the target on
   CPU is ≥ 80%. On a CPU the "device" shares its cores with the decoding threads.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jax
import numpy as np
from PIL import Image

from common.files import output_dir
from common.tables import write_table
from common.timing import device_description
from training.inference.engine import probs_function
from training.loop.devices import onnxruntime_available


def make_photos(folder: Path, n: int, *, seed: int, size=(640, 480)) -> Path:
    """``n`` smooth random JPEGs (a 12×9 colour grid, bicubic-upscaled, with grain)."""
    folder.mkdir(parents=True, exist_ok=True)

    def one(i: int) -> None:
        rng = np.random.default_rng((seed, i))
        small = Image.fromarray(rng.integers(0, 256, (9, 12, 3), dtype=np.uint8))
        arr = np.asarray(small.resize(size, Image.Resampling.BICUBIC), np.int16)
        arr = np.clip(arr + rng.integers(-12, 13, arr.shape), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"IMG_{i:05d}.jpg", quality=90)

    with ThreadPoolExecutor(os.cpu_count() or 1) as pool:
        list(pool.map(one, range(n)))
    return folder


def peak_rss_mb(argv: list[str]) -> tuple[float, float]:
    """(peak resident MB, wall seconds) of a child process running ``argv``."""
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # noqa: S603 (argv is this interpreter and paths the caller made; no shell)
    _, status, usage = os.wait4(proc.pid, 0)
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {stderr[-2000:]}")
    scale = 1024 if sys.platform != "darwin" else 1  # Linux reports KiB, macOS bytes
    return usage.ru_maxrss * scale / 2**20, time.perf_counter() - start


def train_default_run(tmp: Path) -> Path:
    """``tmp/run``: the default model (no flag) trained by ``experiments.train`` on 24 generated photos of 2
    classes, so the checkpoint is real."""
    from experiments import train

    for k, label in enumerate(("a", "b")):
        make_photos(tmp / "labelled" / label, 12, seed=100 + k)
    train.main(["--data", str(tmp / "labelled"), "--out", str(tmp / "run"), "--cache-dir", str(tmp / "cache"),
                "--no-progress"])
    return tmp / "run"


def run(sizes: list[int], out: str, workers: int | None = None) -> list[dict]:
    from training.data.decoding import Preprocess
    from training.data.discovery import image_files
    from training.evaluation.decision import decide
    from training.inference.stream import Classifier, StreamOptions, predict_folder
    from training.runs.saved import load_trained

    out_path = output_dir(out)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run_dir = train_default_run(tmp)
        folders = {n: make_photos(tmp / f"photos_{n}", n, seed=n) for n in sizes}
        for n, folder in folders.items():
            rss, wall = peak_rss_mb([sys.executable, "-m", "experiments.predict", "--checkpoint", str(run_dir),
                                     "--images", str(folder), "--out", str(tmp / f"p{n}.csv"), "--no-progress"])
            rows.append({"measure": f"peak RSS, {n} photos (fresh process)", "value": rss, "unit": "MB",
                         "wall s": wall})
            print(rows[-1], flush=True)

        # throughput in this process, compiled first
        model, params, config, names = load_trained(run_dir)
        eval_step, jax_params, _ = probs_function(model, params, config, "jax")  # what predict runs in JAX
        from training.loop.devices import DataParallel

        dp = DataParallel(jax.local_devices())
        batch = dp.padded_batch_size(config.batch_size)
        pre = Preprocess(config.image_size, config.crop, config.rgb)
        x = dp.put_batch(np.random.default_rng(0).uniform(0, 1, (batch, *(pre.image_size,) * 2, 3))
                         .astype(np.float32))
        replicated = dp.put_replicated(jax_params)
        jax.block_until_ready(eval_step(replicated, x))

        def forward_seconds_per_photo(reps: int = 8) -> float:
            times = []
            for _ in range(reps):
                start = time.perf_counter()
                jax.block_until_ready(eval_step(replicated, x))
                times.append(time.perf_counter() - start)
            return float(np.median(times)) / batch

        before = forward_seconds_per_photo()
        n = max(sizes)
        files = image_files(folders[n])
        end_to_end = {}
        for engine in ("jax", "onnxruntime") if onnxruntime_available() else ("jax",):
            probs_fn, fn_params, _ = probs_function(model, params, config, engine)
            classifier = Classifier(probs_fn, fn_params, pre, names, lambda p: decide(p, None),
                                    on_device=engine == "jax")
            predict_folder(files[:batch], folders[n], classifier, tmp / f"warm-{engine}.csv", signature={},
                           options=StreamOptions(batch_size=config.batch_size, workers=workers, progress=False), dp=dp)
            start = time.perf_counter()
            predict_folder(files, folders[n], classifier, tmp / f"inproc-{engine}.csv", signature={},
                           options=StreamOptions(batch_size=config.batch_size, workers=workers, progress=False), dp=dp)
            end_to_end[engine] = time.perf_counter() - start
        # the forward pass alone, before and after: the faster of the two (the stricter peer)
        forward_per_photo = min(before, forward_seconds_per_photo())
    rss = [r["value"] for r in rows]
    rows += [
        {"measure": "peak RSS, largest / smallest folder", "value": max(rss) / min(rss), "unit": "ratio"},
        {"measure": f"forward pass alone ({config.model}, {pre.image_size} px, flip-averaged, batch {batch})",
         "value": 1 / forward_per_photo, "unit": "photos/s"},
        *({"measure": f"end to end, {n} photos (decode + preprocess + forward + CSV), engine {engine}",
           "value": n / seconds, "unit": "photos/s"} for engine, seconds in end_to_end.items()),
        {"measure": "device busy (JAX forward time / JAX end-to-end time)",
         "value": forward_per_photo * n / end_to_end["jax"], "unit": "fraction"},
    ]
    notes = (f"Device: {device_description()}; {len(jax.local_devices())} local device(s); decoding threads: "
             f"{workers or os.cpu_count()}. Photos: 640×480 JPEG (quality 90), generated. Targets: peak RSS of "
             "the largest folder within 10% of the smallest; device busy ≥ 0.80 on CPU.\n")
    write_table(rows, out_path, "predict_stream", title="Streaming prediction", notes=notes)
    print((out_path / "predict_stream.md").read_text())
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[500, 4000])
    p.add_argument("--workers", type=int, help="decoding threads (default: all cores)")
    p.add_argument("--out", default="runs/bench_predict")
    a = p.parse_args(argv)
    run(a.sizes, a.out, a.workers)


if __name__ == "__main__":
    main()
