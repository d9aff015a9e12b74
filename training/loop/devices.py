"""Data parallelism over all local devices with ``jax.sharding``: batch axis sharded, parameters replicated.

The same code runs on CPU, GPU and TPU. For several processes or hosts, join the job first
(:mod:`training.loop.distributed`); ``jax.devices()`` then lists every process's devices."""

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
