"""Data parallelism over all local devices with ``jax.sharding``: batch axis sharded, parameters replicated.

The same code runs on CPU, GPU and TPU. For several hosts, call
``jax.distributed.initialize()`` first on every host (see README); ``jax.devices()``
then lists all hosts' devices and each host feeds its own slice of the batch."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


@contextlib.contextmanager
def float64() -> Iterator[None]:
    """64-bit JAX arithmetic inside the block only (``jax.enable_x64``; ``jax.experimental`` on older JAX)."""
    scope = jax.enable_x64(True) if hasattr(jax, "enable_x64") else jax.experimental.enable_x64()
    with scope:
        yield


class DataParallel:
    """A 1-D mesh named ``data`` over ``devices`` (default: all)."""

    def __init__(self, devices=None):
        self.devices = list(devices or jax.devices())
        self.mesh = Mesh(np.array(self.devices), ("data",))
        self.batch = NamedSharding(self.mesh, PartitionSpec("data"))
        self.replicated = NamedSharding(self.mesh, PartitionSpec())

    @property
    def size(self) -> int:
        return len(self.devices)

    def padded_batch_size(self, batch_size: int) -> int:
        """The smallest multiple of the device count that holds ``batch_size`` rows."""
        return -(-batch_size // self.size) * self.size

    def put_batch(self, tree):
        return jax.device_put(tree, self.batch)

    def put_replicated(self, tree):
        return jax.device_put(tree, self.replicated)


def initialize_distributed(coordinator: str, num_processes: int, process_id: int) -> None:
    """Join a multi-process JAX job (one call per process, before any computation).

    ``coordinator``: ``host:port`` of process 0 (e.g. ``127.0.0.1:12355`` on one machine). On CPU
    the processes exchange data through JAX's CPU collectives (gloo); on GPU/TPU through the
    accelerator's own. Afterwards ``jax.devices()`` lists every process's devices.

    Process 0's coordinator listens on ``coordinator``'s own address only (``coordinator_bind_address``),
    not on every interface as JAX's default ``[::]`` would: the job has no authentication, so it
    belongs on a private network, and ``127.0.0.1:PORT`` keeps a one-machine job on loopback.
    """
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # used by CPU devices only
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id,
                               coordinator_bind_address=coordinator)


def put_process_batch(dp: DataParallel, tree):
    """A global batch sharded over ``dp``'s devices from each process's own rows.

    Every process passes its slice (rows ``[i·m/P, (i+1)·m/P)`` of the global batch of ``m`` for
    process ``i`` of ``P``); the result is one array of ``m`` rows spanning all processes.
    """
    return jax.tree_util.tree_map(lambda a: jax.make_array_from_process_local_data(dp.batch, np.asarray(a)), tree)
