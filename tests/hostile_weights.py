"""Weights files written byte by byte for the security tests: valid ones and a hostile corpus.

Nothing here imports torch. :class:`Asm` assembles pickles opcode by opcode under protocols
0–5, so the tests can place a payload exactly where they mean to: in any of the five pickles
of torch's legacy layout or in the zip layout's ``data.pkl``, reached through ``GLOBAL`` or
``STACK_GLOBAL`` and called through ``REDUCE``, ``INST``, ``OBJ``, ``NEWOBJ`` or ``BUILD``.
:func:`write_legacy` and :func:`write_zip` write a valid state dict the way ``torch.save``
does (protocol 2), and :func:`reference_decode` is an independent decoder (pure-Python
unpickler, explicit index arithmetic) that the property test compares the reader against.
"""

from __future__ import annotations

import io
import pickle
import struct
import warnings
import zipfile
from pathlib import Path

import numpy as np

MAGIC = 0x1950A86A20F9469CFC6C
SYS_INFO = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}
STORAGE_NAMES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage"}


class Asm:
    """A pickle written opcode by opcode under one protocol (0: text opcodes; ≥ 2: PROTO header)."""

    def __init__(self, protocol: int):
        self.p = protocol
        self.out = bytearray(b"\x80" + bytes([protocol]) if protocol >= 2 else b"")

    def raw(self, b: bytes) -> Asm:
        self.out += b
        return self

    def str(self, s: str) -> Asm:
        if self.p == 0:
            return self.raw(b"V" + s.encode("raw_unicode_escape") + b"\n")
        b = s.encode()
        return self.raw(b"X" + struct.pack("<I", len(b)) + b)

    def int(self, n: int) -> Asm:
        if self.p == 0:
            return self.raw(b"I%d\n" % n)
        if -(2**31) <= n < 2**31:
            return self.raw(b"J" + struct.pack("<i", n))
        if self.p >= 2:  # LONG1: little-endian two's complement, as pickle.encode_long
            b = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
            return self.raw(b"\x8a" + bytes([len(b)]) + b)
        return self.raw(b"L%dL\n" % n)

    def bool(self, v: bool) -> Asm:
        return self.raw((b"\x88" if v else b"\x89") if self.p >= 2 else (b"I01\n" if v else b"I00\n"))

    def none(self) -> Asm:
        return self.raw(b"N")

    def mark(self) -> Asm:
        return self.raw(b"(")

    def tuple(self, items=()) -> Asm:
        self.mark()
        for item in items:
            self.value(item)
        return self.raw(b"t")

    def dict(self, items: dict) -> Asm:
        self.raw(b"(d" if self.p == 0 else b"}")
        for k, v in items.items():
            self.value(k).value(v).raw(b"s")
        return self

    def list(self, items) -> Asm:
        self.raw(b"(l" if self.p == 0 else b"]")
        for item in items:
            self.value(item).raw(b"a")
        return self

    def value(self, v) -> Asm:
        if isinstance(v, bool):
            return self.bool(v)
        if isinstance(v, int):
            return self.int(v)
        if isinstance(v, str):
            return self.str(v)
        if v is None:
            return self.none()
        if isinstance(v, tuple):
            return self.tuple(v)
        if isinstance(v, dict):
            return self.dict(v)
        if isinstance(v, list):
            return self.list(v)
        if callable(v):  # a piece of assembly
            v(self)
            return self
        raise TypeError(v)

    def glob(self, module: str, name: str, stack: bool = False) -> Asm:
        if stack:
            return self.str(module).str(name).raw(b"\x93")
        return self.raw(b"c" + module.encode() + b"\n" + name.encode() + b"\n")

    def call(self, module: str, name: str, args=(), stack: bool = False) -> Asm:
        return self.glob(module, name, stack).tuple(args).raw(b"R")

    def stop(self) -> bytes:
        return bytes(self.out + b".")


def pickled(value, protocol: int = 2) -> bytes:
    return Asm(protocol).value(value).stop()


# --- valid state dicts, written as torch.save writes them ------------------------------------------------------

def example_state() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"conv.weight": rng.normal(size=(4, 3, 3, 3)).astype(np.float32),
            "conv.bias": rng.normal(size=(4,)).astype(np.float32),
            "bn.num_batches_tracked": np.array(7, dtype=np.int64)}


def tensor_asm(dtype: np.dtype, key: str, numel: int, offset: int, size: tuple, stride: tuple, *,
               legacy: bool, protocol: int = 2):
    """The assembly of one ``_rebuild_tensor_v2(persistent storage, offset, size, stride, False, OrderedDict())``."""
    def emit(a: Asm):
        a.glob("torch._utils", "_rebuild_tensor_v2").mark()
        pid = ("storage", lambda b: b.glob("torch", STORAGE_NAMES[np.dtype(dtype)]), key, "cpu", numel)
        a.tuple(pid + ((None,) if legacy else ())).raw(b"Q")  # BINPERSID
        a.value(offset).value(size).value(stride).bool(False)
        a.call("collections", "OrderedDict").raw(b"t").raw(b"R")
    return emit


def state_pickle(state: dict[str, np.ndarray], *, legacy: bool, protocol: int = 2,
                 entries: dict | None = None) -> bytes:
    """The object pickle of ``state``: an OrderedDict with torch's ``_metadata`` BUILD, one storage per tensor."""
    a = Asm(protocol).call("collections", "OrderedDict")
    items = entries if entries is not None else {
        name: tensor_asm(arr.dtype, str(i), arr.size, 0, arr.shape, tuple(s // arr.itemsize for s in arr.strides),
                         legacy=legacy, protocol=protocol)
        for i, (name, arr) in enumerate(state.items())}
    a.mark()
    for name, emit in items.items():
        a.str(name)
        emit(a)
    a.raw(b"u").dict({"_metadata": lambda b: b.call("collections", "OrderedDict")}).raw(b"b")
    return a.stop()


def legacy_bytes(state: dict[str, np.ndarray], *, pickles: dict[int, bytes] | None = None,
                 storages: list[bytes] | None = None) -> bytes:
    """torch's legacy layout; ``pickles`` replaces any of the five pickles (0 magic … 4 keys)."""
    keys = [str(i) for i in range(len(state))]
    parts = [pickled(MAGIC), pickled(1001), pickled(SYS_INFO), state_pickle(state, legacy=True), pickled(keys)]
    for i, replacement in (pickles or {}).items():
        parts[i] = replacement
    if storages is None:
        storages = [struct.pack("<q", arr.size) + np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"))
                    .tobytes() for arr in state.values()]
    return b"".join(parts) + b"".join(storages)


def zip_bytes(state: dict[str, np.ndarray], *, data_pkl: bytes | None = None,
              extra: list[tuple[str, bytes]] | None = None, skip: set[str] = frozenset()) -> bytes:
    """torch's zip layout (``archive/data.pkl``, ``archive/data/<key>``, stored uncompressed)."""
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are written on purpose by some callers
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
            entries = [("archive/data.pkl", data_pkl if data_pkl is not None else state_pickle(state, legacy=False)),
                       ("archive/byteorder", b"little")]
            entries += [(f"archive/data/{i}", np.ascontiguousarray(arr).tobytes())
                        for i, arr in enumerate(state.values())]
            entries += [("archive/version", b"3\n")]
            for name, data in [e for e in entries if e[0] not in skip] + (extra or []):
                zf.writestr(name, data)
    return buf.getvalue()


# --- an independent decoder ---------------------------------------------------------------------------------------

class _RefUnpickler(pickle._Unpickler):  # the pure-Python unpickler: independent of the C one the reader uses
    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            class D(dict):
                def __setstate__(self, state):
                    pass
            return D
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return lambda storage, offset, size, stride, *rest: ("tensor", storage, offset, size, stride)
        if module == "torch" and name in ("FloatStorage", "LongStorage"):
            return {"FloatStorage": np.float32, "LongStorage": np.int64}[name]
        raise pickle.UnpicklingError(f"{module}.{name}")

    def persistent_load(self, pid):
        return pid[1], pid[2], pid[4]


def reference_decode(raw: bytes) -> dict[str, np.ndarray]:
    """The tensors of a legacy or zip file, decoded with explicit index arithmetic (trusted input only)."""
    buffers = {}
    if raw[:2] == b"PK":
        zf = zipfile.ZipFile(io.BytesIO(raw))
        obj = _RefUnpickler(io.BytesIO(zf.read("archive/data.pkl"))).load()
        read = lambda key, dtype, numel: np.frombuffer(zf.read(f"archive/data/{key}"), dtype)  # noqa: E731
    else:
        f = io.BytesIO(raw)
        for _ in range(3):
            _RefUnpickler(f).load()
        obj = _RefUnpickler(f).load()
        dtypes = {key: np.dtype(dtype) for _, (dtype, key, _), *_ in obj.values()}
        for key in _RefUnpickler(f).load():
            numel = struct.unpack("<q", f.read(8))[0]
            buffers[key] = f.read(numel * dtypes[key].itemsize)
        read = lambda key, dtype, numel: np.frombuffer(buffers[key], dtype)  # noqa: E731
    out = {}
    for name, (_, (dtype, key, numel), offset, size, stride) in obj.items():
        flat = read(key, dtype, numel)
        index = offset + sum(np.arange(n).reshape([-1 if d == k else 1 for d in range(len(size))]) * st
                             for k, (n, st) in enumerate(zip(size, stride))) if size else np.array(offset)
        out[name] = flat[index]
    return out


# --- the hostile corpus ------------------------------------------------------------------------------------------

TARGETS = ("system", "eval", "getattr")
INVOCATIONS = ("REDUCE", "INST", "OBJ", "NEWOBJ", "BUILD")
POSITIONS = ("legacy-magic", "legacy-protocol", "legacy-sysinfo", "legacy-object", "legacy-keys", "zip-data.pkl")


def _callable(a: Asm, target: str, stack: bool, sentinel: Path) -> tuple:
    """Push the target's callable; return the arguments that would make it touch ``sentinel``."""
    if target == "system":
        a.glob("os", "system", stack)
        return (f"touch {sentinel}",)
    if target == "eval":
        a.glob("builtins", "eval", stack)
        return (f"open({str(sentinel)!r}, 'w').close()",)
    a.glob("builtins", "getattr", stack)  # getattr(__import__('os'), 'system')
    a.tuple((lambda b: b.call("builtins", "__import__", ("os",), stack), "system")).raw(b"R")
    return (f"touch {sentinel}",)


def payload_pickle(protocol: int, invocation: str, target: str, stack: bool, sentinel: Path) -> bytes:
    """A pickle that, loaded by :mod:`pickle`, would create ``sentinel``."""
    a = Asm(protocol)
    if invocation == "REDUCE":
        args = _callable(a, target, stack, sentinel)
        a.tuple(args).raw(b"R")
    elif invocation == "OBJ":
        a.mark()
        args = _callable(a, target, stack, sentinel)
        for arg in args:
            a.value(arg)
        a.raw(b"o")
    elif invocation == "NEWOBJ":
        args = _callable(a, target, stack, sentinel)
        a.tuple(args).raw(b"\x81")
    elif invocation == "INST":  # INST names its class in the opcode itself
        module, name = {"system": ("os", "system"), "eval": ("builtins", "eval")}.get(target, ("os", "system"))
        args = (f"touch {sentinel}",) if name == "system" else (f"open({str(sentinel)!r}, 'w').close()",)
        a.mark()
        for arg in args:
            a.value(arg)
        a.raw(b"i" + module.encode() + b"\n" + name.encode() + b"\n")
    elif invocation == "BUILD":  # an allowed object whose BUILD state holds the call
        a.call("collections", "OrderedDict", stack=stack)
        a.raw(b"(d" if protocol == 0 else b"}").str("_metadata")
        args = _callable(a, target, stack, sentinel)
        a.tuple(args).raw(b"R").raw(b"s").raw(b"b")
    return a.stop()


def payload_file(position: str, payload: bytes) -> bytes:
    state = example_state()
    if position == "zip-data.pkl":
        return zip_bytes(state, data_pkl=payload)
    return legacy_bytes(state, pickles={POSITIONS.index(position): payload})


def payload_corpus(sentinel: Path) -> dict[str, bytes]:
    """Every payload × protocol × way in × position: {readable id: file bytes}."""
    corpus = {}
    for position in POSITIONS:
        for protocol in range(6):
            for invocation in INVOCATIONS:
                for stack in (False, True) if protocol >= 4 else (False,):
                    for target in TARGETS:
                        if invocation == "INST" and (stack or target == "getattr"):
                            continue
                        if invocation == "NEWOBJ" and protocol < 2:
                            continue
                        name = f"{position}-p{protocol}-{invocation}-{'STACK_GLOBAL' if stack else 'GLOBAL'}-{target}"
                        corpus[name] = payload_file(position, payload_pickle(protocol, invocation, target, stack,
                                                                             sentinel))
    return corpus


def _one_tensor(offset, size, stride, numel: int = 4, *, legacy: bool = False, pid=None, key: str = "0") -> bytes:
    """A one-tensor file whose tensor (or persistent id) is as given; the storage holds ``numel`` floats."""
    storage = np.arange(numel, dtype=np.float32)
    def emit(a: Asm):
        a.glob("torch._utils", "_rebuild_tensor_v2").mark()
        if pid is None:
            a.tuple(("storage", lambda b: b.glob("torch", "FloatStorage"), key, "cpu", numel)
                    + ((None,) if legacy else ())).raw(b"Q")
        else:
            a.value(pid).raw(b"Q")
        a.value(offset).value(size).value(stride).bool(False).call("collections", "OrderedDict").raw(b"t").raw(b"R")
    entries = {"w": emit}
    if legacy:
        return legacy_bytes({"w": storage}, pickles={3: state_pickle({}, legacy=True, entries=entries),
                                                      4: pickled([key])},
                            storages=[struct.pack("<q", numel) + storage.tobytes()])
    return zip_bytes({"w": storage}, data_pkl=state_pickle({}, legacy=False, entries=entries))


def _bomb(n_bytes: int) -> bytes:
    """A zip whose storage entry is ``n_bytes`` of deflated zeros (about 1000:1)."""
    data_pkl = state_pickle({}, legacy=False, entries={"w": tensor_asm(np.float32, "0", n_bytes // 4, 0,
                                                                        (n_bytes // 4,), (1,), legacy=False)})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        info = zipfile.ZipInfo("archive/data/0")
        info.compress_type = zipfile.ZIP_DEFLATED
        with zf.open(info, "w", force_zip64=True) as f:
            zeros = bytes(1 << 20)
            for _ in range(n_bytes >> 20):
                f.write(zeros)
    raw = buf.getvalue()
    assert len(raw) < n_bytes // 100  # really compressed
    return raw


def structural_corpus() -> dict[str, bytes]:
    """Bad strides, offsets, shapes, persistent ids, storages and zip entries: {readable id: file bytes}."""
    state = example_state()
    c = {}
    for legacy in (False, True):
        fmt = "legacy" if legacy else "zip"
        t = lambda *a, **k: _one_tensor(*a, legacy=legacy, **k)  # noqa: E731
        c[f"{fmt}-negative-stride"] = t(0, (4,), (-100000000,))
        c[f"{fmt}-negative-offset"] = t(-8, (4,), (1,))
        c[f"{fmt}-offset-past-storage"] = t(4, (1,), (1,))
        c[f"{fmt}-stride-past-storage"] = t(0, (2, 2), (3, 1))
        c[f"{fmt}-last-dimension-past-storage"] = t(1, (4,), (1,))
        c[f"{fmt}-zero-stride-36TiB"] = t(0, (100000, 100000, 1000), (0, 0, 0))
        c[f"{fmt}-huge-dimension"] = t(0, (1 << 40,), (0,))
        c[f"{fmt}-17-dimensions"] = t(0, (1,) * 17, (0,) * 17)
        c[f"{fmt}-size-stride-length-mismatch"] = t(0, (2, 2), (1,))
        c[f"{fmt}-float-size"] = t(0, (lambda a: a.raw(b"G" + struct.pack(">d", 4.0)),), (1,))
        c[f"{fmt}-bool-size"] = t(0, (True,), (1,))
        c[f"{fmt}-string-size"] = t(0, ("4",), (1,))
        c[f"{fmt}-size-not-a-tuple"] = t(0, [4], [1])
        c[f"{fmt}-huge-int-offset"] = t(10**30, (1,), (1,))
        bad_pids = {
            "string": "storage",
            "wrong-tag": ("module", lambda b: b.glob("torch", "FloatStorage"), "0", "cpu", 4),
            "short-tuple": ("storage", lambda b: b.glob("torch", "FloatStorage"), "0"),
            "type-not-a-storage": ("storage", 5, "0", "cpu", 4),
            "path-key": ("storage", lambda b: b.glob("torch", "FloatStorage"), "../../etc/passwd", "cpu", 4),
            "negative-numel": ("storage", lambda b: b.glob("torch", "FloatStorage"), "0", "cpu", -4),
            "huge-numel": ("storage", lambda b: b.glob("torch", "FloatStorage"), "0", "cpu", 1 << 62),
            "view-metadata": ("storage", lambda b: b.glob("torch", "FloatStorage"), "0", "cpu", 4, ("1", 0, 4)),
        }
        for name, pid in bad_pids.items():
            c[f"{fmt}-pid-{name}"] = t(0, (4,), (1,), pid=pid)
        # BUILD on a tensor after its checks passed, to swap its shape
        def rebuild_then_build(a: Asm, legacy=legacy):
            tensor_asm(np.float32, "0", 4, 0, (4,), (1,), legacy=legacy)(a)
            a.dict({"size": (1 << 30,), "stride": (0,)}).raw(b"b")
        entries = {"w": rebuild_then_build}
        pkl = state_pickle({}, legacy=legacy, entries=entries)
        storage = np.arange(4, dtype=np.float32)
        c[f"{fmt}-BUILD-on-tensor"] = (legacy_bytes({"w": storage}, pickles={3: pkl})
                                       if legacy else zip_bytes({"w": storage}, data_pkl=pkl))
        # the same storage declared twice with different sizes
        entries = {"a": tensor_asm(np.float32, "0", 4, 0, (4,), (1,), legacy=legacy),
                   "b": tensor_asm(np.float32, "0", 400, 0, (400,), (1,), legacy=legacy)}
        pkl = state_pickle({}, legacy=legacy, entries=entries)
        c[f"{fmt}-storage-declared-twice"] = (legacy_bytes({"w": storage}, pickles={3: pkl})
                                              if legacy else zip_bytes({"w": storage}, data_pkl=pkl))
        # a memo index the C unpickler would size a 32 GiB table from
        big_put = Asm(2).call("collections", "OrderedDict").raw(b"r" + struct.pack("<I", 0xFFFFFFF0)).stop()
        c[f"{fmt}-memo-index-4G"] = (legacy_bytes(state, pickles={3: big_put}) if legacy
                                     else zip_bytes(state, data_pkl=big_put))
        ext = Asm(2).raw(b"\x82\x01").stop()  # EXT1: the copyreg extension registry
        c[f"{fmt}-EXT1"] = legacy_bytes(state, pickles={3: ext}) if legacy else zip_bytes(state, data_pkl=ext)
    raw = legacy_bytes(state)
    c["legacy-truncated-storage"] = raw[:-3]
    c["legacy-trailing-bytes"] = raw + b"\x00" * 8
    c["legacy-storage-count-mismatch"] = legacy_bytes(state, storages=[
        struct.pack("<q", arr.size + 1) + arr.tobytes() for arr in state.values()])
    c["legacy-big-endian"] = legacy_bytes(state, pickles={2: pickled({**SYS_INFO, "little_endian": False})})
    c["legacy-keys-not-a-list"] = legacy_bytes(state, pickles={4: pickled("0")})
    c["legacy-binbytes-8-exabytes"] = legacy_bytes(state, pickles={3: Asm(4).raw(b"\x8e" + struct.pack(
        "<Q", 1 << 62)).stop()})
    c["zip-storage-missing"] = zip_bytes(state, skip={"archive/data/0"})
    c["zip-storage-short"] = zip_bytes(state, skip={"archive/data/1"}, extra=[("archive/data/1", b"\x00" * 4)])
    c["zip-compression-bomb-256MiB"] = _bomb(256 << 20)
    c["zip-duplicate-data.pkl"] = zip_bytes(state, extra=[("archive/data.pkl", pickled({}))])
    c["zip-duplicate-storage"] = zip_bytes(state, extra=[("archive/data/0", b"\x00" * 432)])
    c["zip-two-roots"] = zip_bytes(state, extra=[("other/data.pkl", pickled({}))])
    c["zip-entry-outside-root"] = zip_bytes(state, extra=[("elsewhere.txt", b"x")])
    for bad in ("archive/../data.pkl", "/archive/data/9", "archive\\data\\9", "C:/archive/data/9",
                "archive/data/../../../etc/passwd"):
        c[f"zip-path-like-{bad.replace('/', '_').replace(chr(92), '_').replace(':', '')}"] = zip_bytes(
            state, extra=[(bad, b"x")])
    c["zip-big-endian"] = zip_bytes(state, skip={"archive/byteorder"}, extra=[("archive/byteorder", b"big")])
    c["zip-no-data.pkl"] = zip_bytes(state, skip={"archive/data.pkl"})
    c["not-a-pickle"] = b"\x00not a pickle at all"
    c["empty"] = b""
    return c


def write_corpus(folder: Path, corpus: dict[str, bytes]) -> list[Path]:
    paths = []
    for name, raw in corpus.items():
        path = folder / f"{name}.pth"
        path.write_bytes(raw)
        paths.append(path)
    return paths


def is_payload(name: str) -> bool:
    """Whether a corpus file's name is one of :func:`payload_corpus`'s (a payload in pickle 0 … 5)."""
    return any(f"-p{p}-" in name for p in range(6))


def hostile_corpus(folder: Path) -> tuple[Path, Path, dict[str, bytes]]:
    """``(folder, sentinel, files)``: every payload (each would create ``sentinel``) and structural file, by name;
    the files are written under ``folder`` by :func:`write_corpus` as a test needs them."""
    sentinel = folder / "SENTINEL"
    return folder, sentinel, {**payload_corpus(sentinel), **structural_corpus()}
