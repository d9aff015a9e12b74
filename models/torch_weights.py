"""Read a PyTorch state dict from disk without running pickled code, and without torch.

A ``.pth`` file is a pickle whose tensors point at raw storages. Unpickling it with
:mod:`pickle` would let the file call any importable function; :class:`_StateDictUnpickler`
admits only what a state dict is made of — ``collections.OrderedDict``, tensors rebuilt by
``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter`` and the typed storages
(``torch.FloatStorage`` …) — and refuses every other global, naming it. Both of torch's
layouts are read:

- the legacy (non-zip) serialization: five pickles (magic number, protocol 1001, system
  info, the object, the storage keys) followed by each storage as an int64 element count
  and its little-endian bytes;
- the zip serialization (torch ≥ 1.6): ``<root>/data.pkl`` with storages in ``<root>/data/<key>``.

Tensors come back as NumPy arrays with their shape and strides applied (always a copy).
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

# typed storage name → NumPy dtype
STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class WeightsFileError(ValueError):
    """A weights file that is not a readable PyTorch state dict; the message names the file."""


class _StorageType:
    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(STORAGE_DTYPES[name])


class _Storage:
    """A storage's dtype and key; its bytes are attached once read."""

    def __init__(self, dtype: np.dtype, key: str, numel: int):
        self.dtype, self.key, self.numel = dtype, key, numel
        self.data: np.ndarray | None = None


class _LazyTensor:
    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def materialize(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise WeightsFileError(f"storage {self.storage.key} was never written in the file")
        n_needed = self.offset + (sum((s - 1) * st for s, st in zip(self.size, self.stride)) + 1
                                  if all(s > 0 for s in self.size) else 0)
        if n_needed > data.size:
            raise WeightsFileError(f"tensor of shape {self.size} reads past its storage ({data.size} elements)")
        item = data.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(data[self.offset:], shape=self.size,
                                               strides=tuple(st * item for st in self.stride))
        return np.array(view)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    return data


ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _StateDictUnpickler(pickle.Unpickler):
    def __init__(self, file, storages: dict[str, _Storage]):
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str):
        if (module, name) in ALLOWED:
            return ALLOWED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}: only tensors and dicts are allowed")

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and pid and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unexpected persistent id {pid!r}")
        storage_type, key, _location, numel = pid[1], str(pid[2]), pid[3], int(pid[4])
        if len(pid) > 5 and pid[5] is not None:
            raise pickle.UnpicklingError("storage views are not supported")
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unexpected storage type {storage_type!r}")
        if key not in self.storages:
            self.storages[key] = _Storage(storage_type.dtype, key, numel)
        return self.storages[key]


def _materialize(obj):
    if isinstance(obj, _LazyTensor):
        return obj.materialize()
    if isinstance(obj, dict):
        return {str(k): _materialize(v) for k, v in obj.items()}
    if isinstance(obj, (int, float, str, type(None))):
        return obj
    raise WeightsFileError(f"unexpected object of type {type(obj).__name__} in the state dict")


def _load_legacy(f) -> dict:
    magic = pickle.load(f)  # plain ints only: safe to read with the restricted unpickler below too
    if magic != LEGACY_MAGIC:
        raise WeightsFileError("not a PyTorch file (wrong magic number)")
    if pickle.load(f) != LEGACY_PROTOCOL:
        raise WeightsFileError("unsupported PyTorch legacy protocol version")
    _StateDictUnpickler(f, {}).load()  # system info: a dict of ints and bools
    storages: dict[str, _Storage] = {}
    obj = _StateDictUnpickler(f, storages).load()
    keys = _StateDictUnpickler(f, storages).load()
    for key in keys:
        storage = storages[str(key)]
        numel = int.from_bytes(f.read(8), "little", signed=True)
        nbytes = numel * storage.dtype.itemsize
        buf = f.read(nbytes)
        if len(buf) != nbytes:
            raise WeightsFileError(f"file ends inside storage {key} (truncated)")
        storage.data = np.frombuffer(buf, dtype=storage.dtype.newbyteorder("<")).astype(storage.dtype)
    return obj


def _load_zip(path: Path) -> dict:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pkl:
            raise WeightsFileError("zip archive without data.pkl")
        root = pkl[0][: -len("data.pkl")]
        storages: dict[str, _Storage] = {}
        with zf.open(pkl[0]) as f:
            obj = _StateDictUnpickler(io.BytesIO(f.read()), storages).load()
        for key, storage in storages.items():
            raw = zf.read(f"{root}data/{key}")
            storage.data = np.frombuffer(raw, dtype=storage.dtype.newbyteorder("<")).astype(storage.dtype)
    return obj


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch ``state_dict`` file as ``{name: ndarray}``; no code in the file is run.

    A ``{"state_dict": {...}}`` or ``{"model": {...}}`` wrapper is unwrapped. Anything that is
    not a state dict (another pickle, a truncated or corrupt file) raises :class:`WeightsFileError`
    naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        if zipfile.is_zipfile(path):
            obj = _load_zip(path)
        else:
            with open(path, "rb") as f:
                obj = _load_legacy(f)
        state = _materialize(obj)
    except WeightsFileError as exc:
        raise WeightsFileError(f"{path}: {exc}") from exc
    except (pickle.UnpicklingError, EOFError, KeyError, ValueError, TypeError, IndexError, AttributeError,
            zipfile.BadZipFile, OSError) as exc:
        raise WeightsFileError(f"{path}: not a readable PyTorch state dict ({type(exc).__name__}: {exc})") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not state or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise WeightsFileError(f"{path}: not a PyTorch state dict (no name → tensor mapping)")
    return state
