"""``experiments.predict`` as 1 process and as N processes of one job: photos/s, and the same CSV bytes.

    python -m benchmarks.predict_processes [--photos 1200] [--processes 1 2] [--out runs/bench_processes]

Generates 640×480 JPEGs (seeded), trains the default model on 24 of them, then times the command a
user types, ``python -m experiments.predict``, as each number of processes in ``--processes``
(started together on 127.0.0.1 with a free port; wall time from the first start to the last exit,
so it includes each process's start-up and compilation). Every N-process CSV must equal the
1-process CSV byte for byte. On a machine with GPUs, process ``i`` sees GPU ``i mod G`` only
(``CUDA_VISIBLE_DEVICES``); several processes on one GPU share its memory (``XLA_PYTHON_CLIENT_MEM_FRACTION``).
On one CPU machine the processes share its cores: the ratio shows the cost of the job, not a gain.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.predict_stream import make_photos, train_default_run
from common.files import output_dir
from common.tables import write_table
from common.timing import device_description


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gpus() -> int:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)  # noqa: S607 (the driver's own tool, on PATH)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in out.stdout.splitlines()) if out.returncode == 0 else 0


def predict_as(n: int, run_dir: Path, photos: Path, out: Path) -> float:
    """Wall seconds of ``experiments.predict`` as ``n`` processes (one process: no job flags)."""
    gpus = _gpus()
    port = _free_port()
    procs = []
    start = time.perf_counter()
    for i in range(n):
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
            sharing = -(-n // gpus)
            if sharing > 1:
                env["XLA_PYTHON_CLIENT_MEM_FRACTION"] = f"{0.9 / sharing:.2f}"
        job = [] if n == 1 else ["--coordinator", f"127.0.0.1:{port}", "--num-processes", str(n), "--process-id",
                                 str(i)]
        procs.append(subprocess.Popen([sys.executable, "-m", "experiments.predict", "--checkpoint", str(run_dir),  # noqa: S603 (argv is this interpreter and paths made here; no shell)
                                       "--images", str(photos), "--out", str(out), "--no-progress", *job],
                                      env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise RuntimeError(f"predict as {n} processes failed: {err[-2000:]}")
    return time.perf_counter() - start


def run(photos: int, processes: list[int], out: str) -> list[dict]:
    out_path = output_dir(out)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        run_dir = train_default_run(tmp)
        folder = make_photos(tmp / "photos", photos, seed=7)
        reference = None
        for n in sorted(set(processes) | {1}):
            csv = tmp / f"p{n}.csv"
            seconds = predict_as(n, run_dir, folder, csv)
            reference = reference if reference is not None else csv.read_bytes()
            same = csv.read_bytes() == reference
            rows.append({"processes": n, "wall s": seconds, "photos/s": photos / seconds,
                         "vs 1 process": rows[0]["wall s"] / seconds if rows else 1.0,
                         "CSV = 1 process's": "yes" if same else "NO"})
            print(rows[-1], flush=True)
            if not same:
                raise RuntimeError(f"the {n}-process CSV differs from the 1-process CSV")
    notes = (f"Device: {device_description()}; GPUs: {_gpus()}. {photos} photos, 640×480 JPEG, the default model "
             "(EfficientNet-Lite1 features + head, flip-averaged). Wall time from the first process's start to the "
             "last one's exit: start-up and compilation included.\n")
    write_table(rows, out_path, "predict_processes", title="predict as N processes", notes=notes)
    print((out_path / "predict_processes.md").read_text())
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--photos", type=int, default=1200)
    p.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    p.add_argument("--out", default="runs/bench_processes")
    args = p.parse_args(argv)
    run(args.photos, args.processes, args.out)


if __name__ == "__main__":
    main()
