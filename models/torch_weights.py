"""Read a PyTorch state dict from disk without running pickled code, and without torch.

A ``.pth`` file is a pickle whose tensors point at raw storages. Unpickling it with
:mod:`pickle` would let the file call any importable function. Here every pickle in the file
goes through two gates:

1. :func:`_scan_pickle` walks the opcodes with :func:`pickletools.genops`, which parses but
   executes nothing. It refuses the opcodes a state dict never needs (``INST``, ``OBJ``,
   ``NEWOBJ``, ``NEWOBJ_EX``, the extension registry, out-of-band buffers), any ``GLOBAL`` /
   ``INST`` name outside the allow-list, memo indexes beyond the number of opcodes read (the C
   unpickler would size its memo table from them), and pickles larger than
   :data:`MAX_PICKLE_BYTES`.
2. :class:`_StateDictUnpickler` then loads it. ``find_class`` admits only
   ``collections.OrderedDict`` (as :class:`_SafeOrderedDict`), ``torch._utils._rebuild_tensor_v2``
   / ``_rebuild_parameter`` and the typed storages (``torch.FloatStorage`` …); persistent ids
   must have torch's exact form; ``BUILD`` is refused on everything but an ``OrderedDict``'s
   ``_metadata``.

Both of torch's layouts are read:

- the legacy (non-zip) serialization: five pickles (magic number, protocol 1001, system
  info, the object, the storage keys) followed by each storage as an int64 element count
  and its little-endian bytes;
- the zip serialization (torch ≥ 1.6): ``<root>/data.pkl`` with storages in ``<root>/data/<key>``.
  Entries are checked in the archive's directory before any is read: unique, relative names
  under one root, and sizes that fit the file (a compressed entry cannot expand past what
  its storage declares).

A tensor's offset and strides must be non-negative, its shape at most :data:`MAX_DIMS`
dimensions of at most :data:`MAX_TENSOR_ELEMENTS` elements, and every element it reads must
lie inside its storage: ``offset + Σ (size_i − 1)·stride_i < numel``. A storage's element
count must match its bytes. The arrays that come back (always copies) may not add up to more
than :data:`MAX_EXPANSION` times the storages' bytes, so a small file cannot ask for a large
allocation. Every refusal is a :class:`WeightsFileError` naming the file.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import pickletools
import re
import zipfile
from pathlib import Path

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

MAX_PICKLE_BYTES = 64 << 20  # a state dict's object pickle: ~100 KB for ResNet-50
MAX_DIMS = 16
MAX_TENSOR_ELEMENTS = 1 << 31
MAX_EXPANSION = 4  # materialized bytes ≤ MAX_EXPANSION × storage bytes + 1 MiB (shared views)
MAX_OBJECTS = 1_000_000  # dicts, tensors and scalars in the state dict

# typed storage name → NumPy dtype
STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16, "CharStorage": np.int8,
    "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}

# Opcodes a state dict never needs. Everything that calls a callable (REDUCE, BUILD) is allowed,
# because the only callables a pickle can reach are the ones ``find_class`` returns.
REFUSED_OPCODES = frozenset({"INST", "OBJ", "NEWOBJ", "NEWOBJ_EX", "EXT1", "EXT2", "EXT4",
                             "BYTEARRAY8", "NEXT_BUFFER", "READONLY_BUFFER"})
MEMO_OPCODES = frozenset({"PUT", "BINPUT", "LONG_BINPUT", "GET", "BINGET", "LONG_BINGET"})
_KEY = re.compile(r"[A-Za-z0-9_.]{1,64}")


class WeightsFileError(ValueError):
    """A weights file that is not a readable PyTorch state dict; the message names the file."""


def _refuse(message: str):
    raise WeightsFileError(message)


class _Frozen:
    """Objects the unpickler makes: ``BUILD`` on them is refused, so their checked fields stay."""

    __slots__ = ()

    def __setstate__(self, state):
        _refuse(f"refused BUILD on a {type(self).__name__.strip('_')}")


class _StorageType(_Frozen):
    __slots__ = ("name", "dtype")

    def __init__(self, name: str):
        self.name = name
        self.dtype = np.dtype(STORAGE_DTYPES[name])

    def __repr__(self) -> str:
        return f"torch.{self.name}"


class _Storage(_Frozen):
    """A storage's dtype, key and element count; its bytes are attached once read and checked."""

    __slots__ = ("dtype", "key", "numel", "data")

    def __init__(self, dtype: np.dtype, key: str, numel: int):
        self.dtype, self.key, self.numel = dtype, key, numel
        self.data: np.ndarray | None = None

    def attach(self, raw, offset: int = 0) -> None:
        nbytes = self.numel * self.dtype.itemsize
        if len(raw) - offset < nbytes:
            _refuse(f"storage {self.key} holds fewer bytes than its {self.numel} elements need (truncated)")
        self.data = np.frombuffer(raw, dtype=self.dtype.newbyteorder("<"), count=self.numel, offset=offset)


def _check_int(value, what: str, low: int = 0, high: int = 1 << 62) -> int:
    if type(value) is not int or not low <= value <= high:  # bool and huge ints refused
        _refuse(f"{what} {value!r:.60} is not an integer in [{low}, {high}]")
    return value


class _LazyTensor(_Frozen):
    __slots__ = ("storage", "offset", "size", "stride", "numel")

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        if not isinstance(storage, _Storage):
            _refuse(f"tensor storage is a {type(storage).__name__}, not a storage")
        if not isinstance(size, tuple) or not isinstance(stride, tuple) or len(size) != len(stride):
            _refuse("tensor size and stride must be tuples of equal length")
        if len(size) > MAX_DIMS:
            _refuse(f"tensor with {len(size)} dimensions (at most {MAX_DIMS})")
        offset = _check_int(offset, "tensor offset")
        for s, st in zip(size, stride):
            _check_int(s, "tensor dimension", high=MAX_TENSOR_ELEMENTS)
            _check_int(st, "tensor stride", high=MAX_TENSOR_ELEMENTS)
        numel = int(np.prod(size, dtype=object)) if size else 1
        if numel > MAX_TENSOR_ELEMENTS:
            _refuse(f"tensor of shape {size} has {numel} elements (at most {MAX_TENSOR_ELEMENTS})")
        if numel and offset + sum((s - 1) * st for s, st in zip(size, stride)) >= storage.numel:
            _refuse(f"tensor of shape {size}, stride {stride}, offset {offset} reads past its storage "
                    f"({storage.numel} elements)")
        self.storage, self.offset, self.size, self.stride, self.numel = storage, offset, size, stride, numel

    def materialize(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            _refuse(f"storage {self.storage.key} was never written in the file")
        if self.numel == 0:
            return np.zeros(self.size, dtype=self.storage.dtype)
        item = data.dtype.itemsize
        view = np.lib.stride_tricks.as_strided(data[self.offset:], shape=self.size,
                                               strides=tuple(st * item for st in self.stride), writeable=False)
        return np.array(view, dtype=self.storage.dtype)


class _SafeOrderedDict(collections.OrderedDict):
    """``OrderedDict`` whose ``BUILD`` may set only torch's ``_metadata`` (kept aside, never used)."""

    def __setstate__(self, state):
        if not (isinstance(state, dict) and set(state) <= {"_metadata"}):
            _refuse("refused BUILD on an OrderedDict with state other than _metadata")


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    return _LazyTensor(storage, storage_offset, size, stride)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    if not isinstance(data, _LazyTensor):
        _refuse(f"parameter wraps a {type(data).__name__}, not a tensor")
    return data


ALLOWED = {
    ("collections", "OrderedDict"): _SafeOrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


def _allowed_global(module, name) -> bool:
    return (module, name) in ALLOWED or (module == "torch" and name in STORAGE_DTYPES)


def _scan_pickle(stream: io.BytesIO) -> int:
    """Walk one pickle's opcodes without running any; return where it ends (after STOP).

    Raises :class:`WeightsFileError` for a refused opcode or global, a memo index past the
    opcodes read so far, or a pickle over :data:`MAX_PICKLE_BYTES`.
    """
    start = stream.tell()
    n_ops = 0
    for op, arg, pos in pickletools.genops(stream):
        n_ops += 1
        if pos - start > MAX_PICKLE_BYTES:
            _refuse(f"pickle longer than {MAX_PICKLE_BYTES} bytes")
        if op.name in REFUSED_OPCODES:
            _refuse(f"refused pickle opcode {op.name} at byte {pos}")
        if op.name == "GLOBAL":
            module, _, name = str(arg).partition(" ")
            if not _allowed_global(module, name):
                _refuse(f"refused to load {module}.{name}: only tensors and dicts are allowed")
        if op.name in MEMO_OPCODES and not (type(arg) is int and 0 <= arg <= n_ops):
            _refuse(f"memo index {arg!r:.30} at byte {pos} is out of range")
    return stream.tell()


class _StateDictUnpickler(pickle.Unpickler):
    def __init__(self, file, storages: dict[str, _Storage]):
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str):
        if (module, name) in ALLOWED:
            return ALLOWED[(module, name)]
        if module == "torch" and name in STORAGE_DTYPES:
            return _StorageType(name)
        _refuse(f"refused to load {module}.{name}: only tensors and dicts are allowed")

    def persistent_load(self, pid):
        # zip: ('storage', type, key, location, numel); legacy: the same + view metadata (None)
        if not (type(pid) is tuple and len(pid) in (5, 6) and pid[0] == "storage"
                and (len(pid) == 5 or pid[5] is None)):
            _refuse(f"unexpected persistent id {pid!r:.80}")
        _, storage_type, key, location, numel = pid[:5]
        if not isinstance(storage_type, _StorageType):
            _refuse(f"unexpected storage type {storage_type!r:.40}")
        if not (isinstance(key, str) and _KEY.fullmatch(key)) or not isinstance(location, str):
            _refuse(f"unexpected storage key {key!r:.40}")
        numel = _check_int(numel, f"storage {key} element count")
        old = self.storages.get(key)
        if old is None:
            self.storages[key] = _Storage(storage_type.dtype, key, numel)
        elif old.dtype != storage_type.dtype or old.numel != numel:
            _refuse(f"storage {key} declared twice with different types or sizes")
        return self.storages[key]


def _load_pickle(stream: io.BytesIO, storages: dict[str, _Storage]):
    """Scan, then load, the pickle at the stream's position; leave the stream after it."""
    start = stream.tell()
    end = _scan_pickle(stream)
    stream.seek(start)
    obj = _StateDictUnpickler(stream, storages).load()
    if stream.tell() != end:
        _refuse("pickle ended where its opcodes did not")
    return obj


def _materialize(obj, budget: int):
    """The state dict as plain dicts and arrays; shared objects are converted once."""
    done: dict[int, object] = {}
    count = 0

    def convert(o, depth: int):
        nonlocal count, budget
        count += 1
        if count > MAX_OBJECTS or depth > 64:
            _refuse("state dict too large or too deeply nested")
        if id(o) in done:
            return done[id(o)]
        if isinstance(o, _LazyTensor):
            budget -= o.numel * o.storage.dtype.itemsize
            if budget < 0:
                _refuse("tensors add up to more bytes than the file's storages hold")
            out = o.materialize()
        elif isinstance(o, dict):
            out = {}
            for k, v in dict.items(o):
                if type(k) is not str:
                    _refuse(f"state dict key {k!r:.40} is not a string")
                out[k] = convert(v, depth + 1)
        elif o is None or type(o) in (bool, int, float, str):
            out = o
        else:
            _refuse(f"unexpected object of type {type(o).__name__} in the state dict")
        done[id(o)] = out
        return out

    return convert(obj, 0)


def _expansion_budget(storages: dict[str, _Storage]) -> int:
    return MAX_EXPANSION * sum(s.numel * s.dtype.itemsize for s in storages.values()) + (1 << 20)


def _load_legacy(raw: bytes) -> tuple[object, dict[str, _Storage]]:
    stream = io.BytesIO(raw)
    magic = _load_pickle(stream, {})
    if type(magic) is not int or magic != LEGACY_MAGIC:
        _refuse("not a PyTorch file (wrong magic number)")
    if _load_pickle(stream, {}) != LEGACY_PROTOCOL:
        _refuse("unsupported PyTorch legacy protocol version")
    sys_info = _load_pickle(stream, {})
    if not isinstance(sys_info, dict) or sys_info.get("little_endian") is not True:
        _refuse("not a little-endian PyTorch legacy file")
    storages: dict[str, _Storage] = {}
    obj = _load_pickle(stream, storages)
    keys = _load_pickle(stream, storages)
    if not isinstance(keys, list) or len(set(map(str, keys))) != len(keys):
        _refuse("the storage key list is not a list of distinct keys")
    for key in keys:
        storage = storages.get(str(key))
        if storage is None:
            _refuse(f"storage {key!r:.40} is listed but no tensor uses it")
        numel = int.from_bytes(stream.read(8), "little", signed=True)
        if numel != storage.numel:
            _refuse(f"storage {key} holds {numel} elements where its tensor declared {storage.numel}")
        storage.attach(raw, stream.tell())
        stream.seek(storage.numel * storage.dtype.itemsize, os.SEEK_CUR)
    if stream.tell() != len(raw):
        _refuse(f"{len(raw) - stream.tell()} unexpected bytes after the last storage")
    return obj, storages


def _check_zip_directory(zf: zipfile.ZipFile, file_size: int) -> tuple[str, dict[str, zipfile.ZipInfo]]:
    """The archive's root and entries, checked from the central directory before anything is read."""
    infos = zf.infolist()
    names = [i.filename for i in infos]
    if len(set(names)) != len(names):
        _refuse("zip archive with duplicate entry names")
    for name in names:
        parts = name.split("/")
        if not name or name.startswith("/") or "\\" in name or "\0" in name or ".." in parts or ":" in parts[0]:
            _refuse(f"zip entry with a path-like name {name!r:.80}")
    pkl = [n for n in names if n.count("/") == 1 and n.endswith("/data.pkl")] + [n for n in names if n == "data.pkl"]
    if len(pkl) != 1:
        _refuse("zip archive without exactly one data.pkl" if not pkl else "zip archive with several data.pkl")
    root = pkl[0][: -len("data.pkl")]
    if any(not n.startswith(root) for n in names):
        _refuse("zip archive with entries outside its root folder")
    for info in infos:
        if info.flag_bits & 0x1 or info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            _refuse(f"zip entry {info.filename!r:.80} is encrypted or uses an unsupported compression")
    if sum(i.file_size for i in infos) > 2 * file_size + (1 << 20):
        _refuse("zip entries declare more bytes than the archive could hold (a compression bomb?)")
    if zf.getinfo(pkl[0]).file_size > MAX_PICKLE_BYTES:
        _refuse(f"data.pkl larger than {MAX_PICKLE_BYTES} bytes")
    return root, {i.filename: i for i in infos}


def _read_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    with zf.open(info) as f:
        data = f.read(info.file_size + 1)  # bounded by the directory's size, CRC-checked at the end
    if len(data) != info.file_size:
        _refuse(f"zip entry {info.filename} does not hold the {info.file_size} bytes its directory declares")
    return data


def _load_zip(path: Path, file_size: int) -> tuple[object, dict[str, _Storage]]:
    with zipfile.ZipFile(path) as zf:
        root, entries = _check_zip_directory(zf, file_size)
        order = entries.get(f"{root}byteorder")
        if order is not None and order.file_size <= 16 and _read_entry(zf, order) != b"little":
            _refuse("big-endian storages are not supported")
        storages: dict[str, _Storage] = {}
        obj = _load_pickle(io.BytesIO(_read_entry(zf, entries[f"{root}data.pkl"])), storages)
        for key, storage in storages.items():
            info = entries.get(f"{root}data/{key}")
            if info is None:
                _refuse(f"storage {key} was never written in the file")
            if info.file_size != storage.numel * storage.dtype.itemsize:
                _refuse(f"storage {key} holds {info.file_size} bytes where its {storage.numel} elements "
                        f"need {storage.numel * storage.dtype.itemsize}")
            storage.attach(_read_entry(zf, info))
    return obj, storages


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """The tensors of a PyTorch ``state_dict`` file as ``{name: ndarray}``; no code in the file is run.

    A ``{"state_dict": {...}}`` or ``{"model": {...}}`` wrapper is unwrapped. Anything that is
    not a state dict (another pickle, a truncated, corrupt or hostile file) raises
    :class:`WeightsFileError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        file_size = path.stat().st_size
        if zipfile.is_zipfile(path):
            obj, storages = _load_zip(path, file_size)
        else:
            obj, storages = _load_legacy(path.read_bytes())
        state = _materialize(obj, _expansion_budget(storages))
    except WeightsFileError as exc:
        raise WeightsFileError(f"{path}: {exc}") from exc
    except MemoryError:
        raise  # the bounds above make this unreachable; if one is missing, the tests must see it, not a file error
    except Exception as exc:  # noqa: BLE001 - any failure to parse an untrusted file is the file's fault
        raise WeightsFileError(f"{path}: not a readable PyTorch state dict ({type(exc).__name__}: {exc})"[:500]) \
            from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not state or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise WeightsFileError(f"{path}: not a PyTorch state dict (no name → tensor mapping)")
    return state
