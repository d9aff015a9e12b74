"""Two processes as one job: jax.distributed on the loopback address, JAX's CPU collectives (gloo), started
through the command lines a user types (the job flags, the one-line errors of a job's processes). The library's
side of a job (the job from flags or a scheduler's environment, shards, ports) is tested in
tests/training/loop/test_distributed.py."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import free_port as _free_port
from tests.helpers import job_env

REPO = Path(__file__).resolve().parents[2]
ENV = job_env()  # one CPU device per process


def _job(module: str, args: list[str], n: int = 2, *, timeout: float = 20, slow_decode: dict | None = None
         ) -> list[subprocess.Popen]:
    """``python -m module args --coordinator 127.0.0.1:PORT --num-processes n --process-id i`` for each i.
    ``slow_decode``: process id → seconds each photo's decoding is delayed by (the test's harness, not a flag)."""
    port, procs = _free_port(), []
    for i in range(n):
        argv = [*args, "--coordinator", f"127.0.0.1:{port}", "--num-processes", str(n), "--process-id", str(i),
                "--join-timeout", str(timeout)]
        delay = (slow_decode or {}).get(i)
        code = ["-m", module] if delay is None else ["-c", (
            "import sys, time, runpy; from training.data import prefetch; real = prefetch.load_image\n"
            f"prefetch.load_image = lambda p, pre: (time.sleep({delay}), real(p, pre))[1]\n"
            f"sys.argv[0] = {module!r}; runpy.run_module({module!r}, run_name='__main__')")]
        procs.append(subprocess.Popen([sys.executable, *code, *argv], cwd=REPO, env=ENV, stdout=subprocess.PIPE,  # noqa: S603 (argv is this interpreter and paths the test made; no shell)
                                      stderr=subprocess.PIPE, text=True))
    return procs


def _wait(procs: list[subprocess.Popen], timeout: float = 240) -> list[tuple[int, str, str]]:
    results = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        results.append((p.returncode, out, err))
    return results


@pytest.fixture
def model1_run(tiny_run):
    """The session's tiny Model 1 run (conftest.py) and its 14 photos."""
    return tiny_run


@pytest.mark.slow
def test_predict_as_two_processes_writes_the_one_process_csv_and_resumes_a_killed_shard(model1_run, tmp_path):
    """Each process predicts a contiguous shard of the sorted photos in whole chunks, so the joined CSV is
    byte-identical to one process's. Process 1 is then SIGKILLed inside its shard: process 0 finishes its own,
    notices the dead peer (heartbeat, --join-timeout) and stops on its own; rerun with --resume, process 0 keeps
    its complete shard, process 1 continues its partial one, and the CSV is again byte-identical."""
    from experiments import predict

    run, photos = model1_run
    common = ["--checkpoint", str(run), "--images", str(photos), "--batch-size", "2", "--no-progress"]
    predict.main([*common, "--out", str(tmp_path / "one.csv")])
    one = (tmp_path / "one.csv").read_bytes()
    results = _wait(_job("experiments.predict", [*common, "--out", str(tmp_path / "two.csv")]))
    assert all(rc == 0 for rc, _, _ in results), [err[-2000:] for _, _, err in results]
    assert (tmp_path / "two.csv").read_bytes() == one
    assert "shard 0 of 2" in results[0][1] and "(joined into it)" in results[0][1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.csv", "two.csv"]  # no shard or partial left

    out = tmp_path / "three.csv"
    procs = _job("experiments.predict", [*common, "--out", str(out)], timeout=10, slow_decode={1: 0.4})
    meta = out.with_name("three.csv.shard-1-of-2.partial.json")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # kill process 1 once a chunk of its shard is durable, before its last
        if meta.exists() and json.loads(meta.read_text())["complete_bytes"] > one.index(b"\n") + 1:
            break
        time.sleep(0.05)
    procs[1].send_signal(signal.SIGKILL)
    (rc0, _, err0), _ = _wait(procs, timeout=120)  # process 0 stops by itself: no hang, no abort
    assert rc0 == 1 and not out.exists()
    # one line: the watch's (process 1 silent for 10 s), or the collective's that process 1's socket closed
    assert len([line for line in err0.splitlines() if line.startswith("error: ")]) == 1, err0[-2000:]
    assert "Check failure" not in err0 and "Traceback" not in err0
    assert (tmp_path / "three.csv.shard-0-of-2").exists() and meta.exists()
    results = _wait(_job("experiments.predict", [*common, "--out", str(out), "--resume"]))
    assert all(rc == 0 for rc, _, _ in results), [err[-2000:] for _, _, err in results]
    assert out.read_bytes() == one
    assert "from the interrupted run" in results[1][1]
    assert not list(tmp_path.glob("three.csv.*"))


def _trained(run: Path):
    from training.runs.saved import load_trained

    _, params, _, names = load_trained(run)
    return json.loads((run / "summary.json").read_text()), params, names


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["pretrained", "lab-2020"], ids=["default-features-sharded", "model1-data-parallel"])
def test_train_as_two_processes_gives_the_one_process_run(model1_run, tmp_path, preset):
    """``experiments.train`` as 2 processes: process 0 alone writes the run folder, and its metrics and
    parameters are the one-process run's.

    default (frozen EfficientNet-Lite, here Lite0 at 32 px as in the other transfer tests, softmax head): each
    process computes the features of a contiguous shard of the photos, in the chunks one process uses, and they
    are gathered; the head is then fitted on the same numbers in the same order, so the parameters are equal bit
    for bit.

    Model 1 (lab-2020, one Adam step per epoch here): the batch is split over the 2 processes' devices, so
    only the order of the float32 sums differs. The loss, a weighted mean over m = 11 rows, then differs by at
    most γ_m = m·2⁻²⁴ ≈ 7e-7 relative (bound 1e-5). Adam's first update of each weight is lr·g/(|g| + ε): two
    gradients that differ in rounding move a weight by amounts that differ by at most 2·lr (opposite signs,
    g ≈ 0), and by about lr·ε·|Δg|/g² otherwise. So after T steps no weight differs by more than 2·lr·T
    (the bound checked), and the probabilities, hence the metrics, agree to rounding."""
    from experiments import train

    _, photos = model1_run
    args = ["--data", str(photos), "--preset", preset, "--epochs", "2", "--folds", "1", "--cache-dir",
            str(tmp_path / "c"), "--no-progress"]
    args += ["--image-size", "16"] if preset == "lab-2020" else ["--model", "efficientnet_lite0", "--image-size", "32"]
    train.main([*args, "--out", str(tmp_path / "one")])
    results = _wait(_job("experiments.train", [*args, "--out", str(tmp_path / "two"), "--cache-dir",
                                               str(tmp_path / "c2")]))
    assert all(rc == 0 for rc, _, _ in results), [err[-2000:] for _, _, err in results]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c", "c2", "one", "two"]  # process 1 kept nothing
    assert _outline(tmp_path / "two") == _outline(tmp_path / "one")  # the same files, checkpoints/last included
    (s1, p1, n1), (s2, p2, n2) = _trained(tmp_path / "one"), _trained(tmp_path / "two")
    assert n1 == n2
    if preset == "pretrained":
        assert [{k: v for k, v in f.items() if k != "seconds"} for f in s2["folds"]] == \
            [{k: v for k, v in f.items() if k != "seconds"} for f in s1["folds"]]
        assert all(np.array_equal(a, b) for a, b in zip(jax_leaves(p1), jax_leaves(p2)))
    else:
        np.testing.assert_allclose([f["metrics"]["accuracy"] for f in s2["folds"]],
                                   [f["metrics"]["accuracy"] for f in s1["folds"]])
        lr, steps = 1e-3, 2  # lab-2020's Adam rate; 2 epochs of one step (11 training photos < batch 32)
        assert max(float(np.max(np.abs(np.asarray(a) - np.asarray(b)))) for a, b in
                   zip(jax_leaves(p1), jax_leaves(p2))) <= 2 * lr * steps
        h1, h2 = (json.loads((tmp_path / r / "history.json").read_text()) for r in ("one", "two"))
        np.testing.assert_allclose([h["train_loss"] for h in h2], [h["train_loss"] for h in h1], rtol=1e-5)


def _outline(run):
    """A run folder's files and folders two levels deep (inside a checkpoint, orbax's own layout)."""
    return sorted(str(p.relative_to(run)) for p in run.rglob("*") if len(p.relative_to(run).parts) <= 2)


def jax_leaves(tree):
    import jax

    return jax.tree_util.tree_leaves(tree)


def test_a_bad_job_flag_is_one_error_before_any_runtime_starts(capsys):
    from experiments import predict

    with pytest.raises(SystemExit) as info:
        predict.main(["--checkpoint", "x", "--images", "y", "--coordinator", "127.0.0.1:9", "--num-processes",
                      "2147483648", "--process-id", "0"])
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        "error: --num-processes: expected an integer in 1 … 65536, got 2147483648")


def test_a_process_that_cannot_join_stops_with_one_line_within_its_timeout(tmp_path):
    """Process 1 of 2, and no process 0: one line naming the job, exit 1, within --join-timeout (2 s) plus
    start-up; JAX's own failure would be an abort with a C++ stack trace after 5 minutes."""
    port = _free_port()
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "experiments.predict", "--checkpoint", str(tmp_path), "--images",  # noqa: S603 (argv is this interpreter and paths the test made; no shell)
                           str(tmp_path), "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                           "--process-id", "1", "--join-timeout", "2"], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 1 and time.monotonic() - start < 60
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines == [f"error: could not join the job at 127.0.0.1:{port} as process 1 of 2 within 2 s: is every "
                     "process started, and the coordinator reachable from here? (--join-timeout sets the wait)"]


_PEER = """
import os, sys, time
from experiments.cli import add_common, run_command
import argparse
p = argparse.ArgumentParser()
add_common(p, "coordinator", "num-processes", "process-id", "join-timeout")
p.add_argument("--victim", type=int)
def run(args):
    from training.loop.distributed import process_index
    if process_index() == args.victim:
        os.kill(os.getpid(), 9)
    time.sleep(120)  # the survivor: stands for work that would wait on the victim for ever
run_command(p, run, sys.argv[1:])
"""


@pytest.mark.parametrize("victim", [1, 0], ids=["process-1-killed", "process-0-killed"])
def test_a_peer_that_dies_ends_the_job_with_one_line_not_an_abort(victim):
    """One process of 2 is killed once joined. JAX would abort the other from C++ (SIGABRT and a stack
    trace: process 0 when it misses process 1's heartbeats, process 1 at once when process 0's coordinator
    goes). Here the survivor ends with one line and exit 1, within --join-timeout (2 s) plus its polling;
    process 0's coordinator, in its helper process, is gone soon after."""
    port, procs = _free_port(), []
    for i in range(2):
        procs.append(subprocess.Popen([sys.executable, "-c", _PEER, "--coordinator", f"127.0.0.1:{port}",  # noqa: S603 (this interpreter and the test's code; no shell)
                                       "--num-processes", "2", "--process-id", str(i), "--join-timeout", "2",
                                       "--victim", str(victim)],
                                      cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = _wait(procs, timeout=60)
    (rc, _, err), (rc_victim, _, _) = results[1 - victim], results[victim]
    assert rc_victim == -signal.SIGKILL and rc == 1, err[-2000:]
    assert [line for line in err.splitlines() if line.startswith(("error", "F", "E", "*", "Traceback"))] == [
        f"error: process {victim} of the job stopped answering for 2 s (killed, out of memory, or its machine is "
        "down?); the job cannot go on, so this process stops too"]
