"""Two processes train as one: jax.distributed on the loopback address, JAX's CPU collectives (gloo)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_take_the_single_process_step():
    """The README's commands: each process holds half the batch; loss, gradients and the Adam step equal the
    single-process ones. Float64 arithmetic: the gradients differ by the cross-process reduction order only,
    O(m·2⁻⁵³) ≈ 1e-15 relative (bound 1e-12); Adam's update lr·g/(|g|+ε) turns that into at most
    lr·|Δg|/ε ≈ 1e-3·1e-15/1e-8 = 1e-10 relative in the parameters (bound 1e-9)."""
    port = _free_port()
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO)}
    env.pop("XLA_FLAGS", None)  # one CPU device per process
    procs = [subprocess.Popen([sys.executable, "-m", "experiments.distributed_step", "--coordinator",  # noqa: S603 (argv is this interpreter and paths the caller made; no shell)
                               f"127.0.0.1:{port}", "--num-processes", "2", "--process-id", str(i)],
                              cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    reports = []
    for p in procs:
        try:
            out, err = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, err[-3000:]
        reports.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["process"] for r in reports) == [0, 1]
    for r in reports:
        assert r["processes"] == 2 and r["global_devices"] == 2 and r["local_rows"] == 4  # half the batch each
        assert abs(r["loss"] - r["loss_single"]) <= 1e-12 * abs(r["loss_single"])
        assert abs(r["step_loss"] - r["step_loss_single"]) <= 1e-12 * abs(r["step_loss_single"])
        assert r["worst_grad_rel"] <= 1e-12
        assert r["worst_param_rel"] <= 1e-9
