"""Several processes as one job: joining it (``jax.distributed``), sharding work by process, gathering results.

Every heavy command joins a job the same way (:func:`job_from`, then :func:`join`):

- flags: ``--coordinator HOST:PORT --num-processes N --process-id I``;
- or the environment: ``JAX_COORDINATOR_ADDRESS`` (read by ``jax.distributed.initialize`` itself) with
  ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID``;
- or a scheduler JAX detects by itself: SLURM (``SLURM_NTASKS`` > 1) and Open MPI (``OMPI_COMM_WORLD_SIZE``
  > 1), which supply all three.

Nothing is home-made: after :func:`join`, ``jax.devices()`` lists every process's devices and JAX's own
collectives (gloo on CPU, NCCL or ICI on accelerators) carry the data. What this module adds is a bounded
wait: a process that cannot join within ``timeout_s`` seconds (coordinator unreachable, a peer never
started) prints one line and exits 1, instead of JAX's abort with a C++ stack trace after five minutes.
Once joined, a process that dies is noticed by the others within ``timeout_s`` (JAX's heartbeat), and
they stop too: a job never hangs.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
from jax.experimental import multihost_utils


@dataclass(frozen=True)
class Job:
    """A job to join. ``coordinator``, ``num_processes`` and ``process_id`` are all set, or all ``None``
    (a scheduler JAX detects supplies them). ``timeout_s``: the longest wait to join, and to notice a
    dead peer."""

    coordinator: str | None
    num_processes: int | None
    process_id: int | None
    timeout_s: float = 120.0

    def describe(self) -> str:
        if self.coordinator is None:
            return "the job the scheduler describes (SLURM or Open MPI)"
        return f"the job at {self.coordinator} as process {self.process_id} of {self.num_processes}"


def _host_port(text: str, what: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what}: expected HOST:PORT (e.g. 10.0.0.1:12355), got {text!r}")
    return text


def _int(text: str | int | None, what: str) -> int:
    try:
        return int(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{what}: expected an integer, got {text!r}") from None


def job_from(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None, *,
             timeout_s: float = 120.0, environ: Mapping[str, str] | None = None) -> Job | None:
    """The job these flags (or else this environment) describe; ``None`` for a single process.

    Flags win over the environment. A partial description (``--coordinator`` without
    ``--num-processes``, a process id out of range, …) raises ``ValueError`` naming what is wrong.
    """
    env = os.environ if environ is None else environ
    flags = {"--coordinator": coordinator, "--num-processes": num_processes, "--process-id": process_id}
    if any(v is not None for v in flags.values()):
        missing = [k for k, v in flags.items() if v is None]
        if missing:
            raise ValueError(f"{', '.join(missing)}: needed with {', '.join(k for k in flags if k not in missing)} "
                             "(a job is described by all three)")
        address, n, i = _host_port(coordinator, "--coordinator"), int(num_processes), int(process_id)
        names = ("--num-processes", "--process-id")
    elif env.get("JAX_COORDINATOR_ADDRESS"):
        address = _host_port(env["JAX_COORDINATOR_ADDRESS"], "JAX_COORDINATOR_ADDRESS")
        for name in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
            if not env.get(name):
                raise ValueError(f"{name}: not set, but JAX_COORDINATOR_ADDRESS is (a job is described by "
                                 "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID)")
        n, i = _int(env["JAX_NUM_PROCESSES"], "JAX_NUM_PROCESSES"), _int(env["JAX_PROCESS_ID"], "JAX_PROCESS_ID")
        names = ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID")
    else:
        for size in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
            if env.get(size, "").isdigit() and int(env[size]) > 1:
                return Job(None, None, None, timeout_s)
        return None
    if n < 1:
        raise ValueError(f"{names[0]}: expected an integer ≥ 1, got {n}")
    if not 0 <= i < n:
        raise ValueError(f"{names[1]}: expected 0 ≤ id < {n} (the number of processes), got {i}")
    if not timeout_s > 0:
        raise ValueError(f"--join-timeout: expected a number of seconds > 0, got {timeout_s}")
    return None if n == 1 else Job(address, n, i, timeout_s)


def join(job: Job | None) -> None:
    """Join ``job`` (nothing for ``None``, or when this process has joined already), within ``job.timeout_s``.

    A process that has not joined in time prints ``error: …`` (one line, naming the job) and exits 1.
    On CPU the processes exchange data with gloo. Process 0's coordinator listens on the given
    address only, not on every interface: the job has no authentication, so it belongs on a private
    network, and ``127.0.0.1:PORT`` keeps a one-machine job on loopback.
    """
    if job is None or jax.distributed.is_initialized():
        return

    def give_up() -> None:
        print(f"error: could not join {job.describe()} within {job.timeout_s:g} s: is every process started, "
              "and the coordinator reachable from here? (--join-timeout sets the wait)", file=sys.stderr, flush=True)
        os._exit(1)  # the main thread is inside JAX's C++ connect: it cannot be interrupted

    timer = threading.Timer(job.timeout_s, give_up)
    timer.daemon = True
    timer.start()
    try:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # used by CPU devices only
        seconds = max(int(job.timeout_s), 1)
        jax.distributed.initialize(
            coordinator_address=job.coordinator, num_processes=job.num_processes, process_id=job.process_id,
            coordinator_bind_address=job.coordinator, initialization_timeout=seconds + 60,  # ours fires first
            # a dead peer is noticed by its missing heartbeats; at exit, one process may wait long for the
            # others to finish their work (process 0 joins outputs), so the exit barrier waits up to a day
            heartbeat_timeout_seconds=max(seconds, 10), shutdown_timeout_seconds=86_400)
    finally:
        timer.cancel()


def process_index() -> int:
    return jax.process_index()


def process_count() -> int:
    return jax.process_count()


def shard(n: int, *, block: int = 1, index: int | None = None, count: int | None = None) -> slice:
    """This process's contiguous part of ``n`` ordered items, in whole blocks of ``block`` items.

    The ``⌈n / block⌉`` blocks are dealt in order, as evenly as possible: process ``i`` of ``P`` gets
    ``⌊B/P⌋`` blocks, one more if ``i < B mod P``. Concatenating the parts of processes 0 … P−1 gives
    the items in their order, and a block of this run is a block of the one-process run.
    """
    i = process_index() if index is None else index
    p = process_count() if count is None else count
    blocks = -(-n // block)
    first = i * (blocks // p) + min(i, blocks % p)
    last = first + blocks // p + (1 if i < blocks % p else 0)
    return slice(min(first * block, n), min(last * block, n))


def barrier(name: str) -> None:
    """Wait until every process of the job reaches ``barrier(name)`` (nothing for one process)."""
    if process_count() > 1:
        multihost_utils.sync_global_devices(name)


def gather_rows(local: np.ndarray) -> np.ndarray:
    """Every process's ``local`` rows (any count per process, the same trailing shape and dtype),
    concatenated in process order, in every process. One process: ``local`` itself."""
    if process_count() == 1:
        return local
    counts = np.asarray(multihost_utils.process_allgather(np.array([len(local)], np.int64))).reshape(-1)
    padded = np.zeros((int(counts.max()), *local.shape[1:]), local.dtype)
    padded[: len(local)] = local
    every = np.asarray(multihost_utils.process_allgather(padded))
    return np.concatenate([every[k, : int(c)] for k, c in enumerate(counts)])


def any_process(flags: np.ndarray) -> np.ndarray:
    """Elementwise OR of a boolean vector over every process (the same length in each)."""
    if process_count() == 1:
        return flags
    every = np.asarray(multihost_utils.process_allgather(flags.astype(np.int32)))
    return every.reshape(process_count(), -1).any(axis=0)


def from_process_0(flag: bool) -> bool:
    """Process 0's ``flag`` in every process (for choices that must be the same everywhere)."""
    if process_count() == 1:
        return flag
    return bool(multihost_utils.broadcast_one_to_all(np.array(flag, np.int32)))


def to_host(a) -> np.ndarray:
    """A JAX array as NumPy, whole: gathered from every process when it spans devices of other processes."""
    if getattr(a, "is_fully_addressable", True):
        return np.asarray(a)
    return np.asarray(multihost_utils.process_allgather(a, tiled=True))


@contextlib.contextmanager
def outputs_of_this_process(out: str | Path) -> Iterator[Path]:
    """Where this process writes a command's outputs: ``out`` for process 0; for the others a folder of
    the same name in a temporary directory, removed afterwards (they compute the same, write nothing kept)."""
    if process_index() == 0:
        yield Path(out)
        return
    with tempfile.TemporaryDirectory(prefix=f"process-{process_index()}-") as tmp:
        yield Path(tmp) / Path(out).name
