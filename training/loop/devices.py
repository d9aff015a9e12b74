"""Data parallelism over all local devices with ``jax.sharding``: batch axis sharded, parameters replicated;
and which engine runs a frozen network forward (:func:`resolve_engine`: ONNX Runtime on CPU, JAX elsewhere).

The same code runs on CPU, GPU and TPU. For several processes or hosts, join the job first
(:mod:`training.loop.distributed`); ``jax.devices()`` then lists every process's devices."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

ENGINES = ("auto", "jax", "onnxruntime")


def onnxruntime_available() -> bool:
    """Whether ``onnx`` and ``onnxruntime`` import (the ``deploy`` extra)."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def resolve_engine(requested: str, *, exportable: bool = True, what: str = "the model") -> str:
    """``"jax"`` or ``"onnxruntime"`` for ``requested`` (one of :data:`ENGINES`). ``"auto"``: ONNX Runtime on a
    CPU backend when it is installed and ``exportable`` (since the JAX forward runs one image at a time on CPU,
    the two engines run at about the same speed there and the measurements do not clearly favour a switch:
    benchmarks/RESULTS.md, "predict against the bound"), else JAX (and always JAX on GPU or TPU). An
    impossible request raises ``ValueError`` naming it."""
    if requested not in ENGINES:
        raise ValueError(f"unknown engine {requested!r}; expected one of {list(ENGINES)}")
    if requested == "onnxruntime":
        if not onnxruntime_available():
            raise ValueError("--engine onnxruntime needs the onnx and onnxruntime packages: "
                             "pip install -e '.[deploy]'")
        if not exportable:
            raise ValueError(f"--engine onnxruntime: {what} has no ONNX form (Model 1 and "
                             "EfficientNet-Lite do); use --engine jax")
        return requested
    if requested == "auto" and exportable and jax.default_backend() == "cpu" and onnxruntime_available():
        return "onnxruntime"
    return "jax"


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
