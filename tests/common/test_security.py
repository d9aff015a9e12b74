"""Hostile files: a weights file runs no code, crashes nothing and allocates what its bytes justify.

The corpus (tests/hostile_weights.py) is generated here, byte by byte. Each file is opened in a
forked child with an address-space limit (tests/open_weights.py), so a crash or a runaway
allocation fails its test rather than pytest. The same files given to the user's command,
``experiments.train --weights``, are tested in tests/experiments/test_hostile_files.py.
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.torch_weights import WeightsFileError, load_state_dict
from tests.helpers import saved_run_record
from tests.hostile_weights import (
    POSITIONS,
    example_state,
    is_payload,
    legacy_bytes,
    reference_decode,
    state_pickle,
    write_corpus,
    zip_bytes,
)

REPO = Path(__file__).resolve().parents[2]


def open_each_in_a_child(paths: list[Path]) -> dict[str, dict]:
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "open_weights.py"), *map(str, paths)],  # noqa: S603 (argv is this interpreter and paths the caller made; no shell)
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = {Path(r["file"]).stem: r for r in map(json.loads, proc.stdout.splitlines())}
    assert len(results) == len(paths)
    return results


@pytest.mark.parametrize("position", [*POSITIONS, "structural"])
def test_every_hostile_file_gives_one_weights_file_error_and_runs_nothing(corpus, position):
    folder, sentinel, files = corpus
    subset = {k: v for k, v in files.items()
              if (k.startswith(f"{position}-p") if position != "structural" else not is_payload(k))}
    assert len(subset) >= (50 if position == "structural" else 100)
    results = open_each_in_a_child(write_corpus(folder, subset))
    bad = {name: (r["outcome"], r["detail"]) for name, r in results.items() if r["outcome"] != "WeightsFileError"}
    assert not bad, bad
    for name, r in results.items():
        assert r["detail"].startswith(str(folder / name)), r  # names the file
        assert "\n" not in r["detail"]
    assert not sentinel.exists()  # no payload ran


def test_payloads_are_refused_for_what_they_are(corpus):
    """The payloads are refused by name or opcode: not by luck of a parse error."""
    folder, _, files = corpus
    some = {k: v for k, v in files.items() if k.startswith("legacy-magic-p") or k.startswith("zip-data.pkl-p")}
    for name, r in open_each_in_a_child(write_corpus(folder, some)).items():
        assert ("refused to load os.system" in r["detail"] or "refused to load builtins." in r["detail"]
                or "refused pickle opcode" in r["detail"]), (name, r["detail"])


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
def test_valid_files_read_equal_to_an_independent_decoder(tmp_path, fmt):
    state = example_state()
    raw = legacy_bytes(state) if fmt == "legacy" else zip_bytes(state)
    (tmp_path / "w.pth").write_bytes(raw)
    got, ref = load_state_dict(tmp_path / "w.pth"), reference_decode(raw)
    for name, want in state.items():
        assert got[name].dtype == want.dtype and got[name].shape == want.shape
        assert np.array_equal(got[name], want) and np.array_equal(ref[name], want)


def test_strided_and_shared_views_are_read_like_torch(tmp_path):
    """A transposed view, an offset view and two tensors sharing one storage (tied weights)."""
    from tests.hostile_weights import tensor_asm

    base = np.arange(12, dtype=np.float32)
    entries = {"t": tensor_asm(np.float32, "0", 12, 0, (4, 3), (1, 4), legacy=False),
               "tail": tensor_asm(np.float32, "0", 12, 5, (2, 3), (3, 1), legacy=False),
               "tied": tensor_asm(np.float32, "0", 12, 0, (12,), (1,), legacy=False)}
    raw = zip_bytes({"w": base}, data_pkl=state_pickle({}, legacy=False, entries=entries))
    (tmp_path / "w.pth").write_bytes(raw)
    got = load_state_dict(tmp_path / "w.pth")
    assert np.array_equal(got["t"], base.reshape(3, 4).T)
    assert np.array_equal(got["tail"], base[5:11].reshape(2, 3))
    assert np.array_equal(got["tied"], base)
    assert all(np.array_equal(got[k], v) for k, v in reference_decode(raw).items())


def test_files_written_here_load_in_torch_and_torch_files_load_here(tmp_path):
    torch = pytest.importorskip("torch", reason="torch is not installed (pip install -e '.[bench]')")
    state = example_state()
    for fmt, raw in [("legacy", legacy_bytes(state)), ("zip", zip_bytes(state))]:
        (tmp_path / f"{fmt}.pth").write_bytes(raw)
        theirs = torch.load(tmp_path / f"{fmt}.pth", weights_only=True)
        assert all(np.array_equal(theirs[k].numpy(), v) for k, v in state.items()), fmt
        torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp_path / f"torch-{fmt}.pth",
                   _use_new_zipfile_serialization=fmt == "zip")
        ours = load_state_dict(tmp_path / f"torch-{fmt}.pth")
        assert all(np.array_equal(ours[k], v) for k, v in state.items()), fmt


# --- mutation: correct tensors or WeightsFileError, in bounded memory --------------------------------------------

_STATE = example_state()
_LEGACY = legacy_bytes(_STATE)
_PKL = state_pickle(_STATE, legacy=False)
_ZIP = zip_bytes(_STATE)


def _rezip(data_pkl: bytes) -> bytes:
    return zip_bytes(_STATE, data_pkl=data_pkl)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(target=st.sampled_from(["legacy", "zip-data.pkl", "zip-bytes"]),
       edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=4),
       cut=st.one_of(st.none(), st.floats(0, 1)))
def test_mutated_weights_files_give_the_tensors_or_one_error(tmp_path_factory, target, edits, cut):
    raw = bytearray({"legacy": _LEGACY, "zip-data.pkl": _PKL, "zip-bytes": _ZIP}[target])
    for where, byte in edits:
        raw[int(where * len(raw))] = byte
    if cut is not None:
        raw = raw[: int(cut * len(raw))]
    raw = _rezip(bytes(raw)) if target == "zip-data.pkl" else bytes(raw)
    path = tmp_path_factory.getbasetemp() / "mutated.pth"
    path.write_bytes(raw)
    tracemalloc.start()
    try:
        got = load_state_dict(path)
    except WeightsFileError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
        got = None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak <= 16 << 20, f"{peak} bytes traced for a {len(raw)}-byte file"
    if got is not None:  # what the file says, decoded independently
        want = reference_decode(raw)
        assert set(got) == set(want)
        for k in want:
            assert got[k].shape == want[k].shape and got[k].tobytes() == want[k].astype(got[k].dtype).tobytes()


def test_weights_for_a_model_trained_from_scratch_are_refused(tmp_path):
    from models.pretrained import check_weights_file

    (tmp_path / "w.pth").write_bytes(legacy_bytes(example_state()))
    with pytest.raises(ValueError, match="model1 is trained from scratch"):
        check_weights_file("model1", tmp_path / "w.pth")


def test_zip_directory_sizes_are_checked_before_reading(tmp_path, monkeypatch):
    """The bomb is refused from the central directory: no entry is decompressed."""
    from tests.hostile_weights import _bomb

    raw = _bomb(256 << 20)
    (tmp_path / "bomb.pth").write_bytes(raw)
    opened = []
    real_open = zipfile.ZipFile.open
    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, name, *a, **k: opened.append(name) or real_open(
        self, name, *a, **k))
    with pytest.raises(WeightsFileError, match="compression bomb"):
        load_state_dict(tmp_path / "bomb.pth")
    assert opened == [] and len(raw) < 1 << 20
    assert zipfile.ZipFile(io.BytesIO(raw)).getinfo("archive/data/0").file_size == 256 << 20


# --- photos -------------------------------------------------------------------------------------------------------

def _photo_bytes(fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    arr = np.random.default_rng(0).integers(0, 256, (20, 28, 3), dtype=np.uint8)
    Image.fromarray(arr).save(buf, fmt)
    return buf.getvalue()


_PHOTOS = {fmt: _photo_bytes(fmt) for fmt in ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP")}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fmt=st.sampled_from(sorted(_PHOTOS)),
       edits=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=6),
       cut=st.one_of(st.none(), st.floats(0, 1)))
def test_mutated_photos_give_an_image_or_one_bad_image_error(tmp_path_factory, fmt, edits, cut):
    import warnings

    from training.data.decoding import BadImageError, Preprocess, load_image

    raw = bytearray(_PHOTOS[fmt])
    for where, byte in edits:
        raw[int(where * len(raw))] = byte
    if cut is not None:
        raw = raw[: int(cut * len(raw))]
    path = tmp_path_factory.getbasetemp() / f"mutated.{fmt.lower()}"
    path.write_bytes(bytes(raw))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns about some damaged headers; the outcome is what counts
            arr = load_image(path, Preprocess(16, "center", True))
    except BadImageError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
    else:
        assert arr.shape == (16, 16, 3) and arr.dtype == np.float32 and np.isfinite(arr).all()
        assert 0 <= arr.min() and arr.max() <= 1


# --- run folders from someone else --------------------------------------------------------------------------------

_good_saved_run = saved_run_record


HOSTILE_CONFIGS = {
    "unknown-model": lambda s: s["config"].update(model="os.system"),
    "unknown-field": lambda s: s["config"].update(__reduce__="os.system"),
    "code-in-crop": lambda s: s["config"].update(crop="__import__('os').system('id')"),
    "negative-size": lambda s: s["config"].update(image_size=-3),
    "huge-size": lambda s: s["config"].update(image_size=10**9),
    "nan-rate": lambda s: s["config"].update(learning_rate=float("nan")),
    "string-epochs": lambda s: s["config"].update(epochs="4"),
    "bool-as-int": lambda s: s["config"].update(batch_size=True),
    "augment-unknown-field": lambda s: s["config"].update(augment={"__class__": "os.system"}),
    "augment-negative-pad": lambda s: s["config"].update(augment={"crop_pad": -8}),
    "augment-not-an-object": lambda s: s["config"].update(augment="random"),
    "config-not-an-object": lambda s: s.update(config=["model1"]),
    "one-class": lambda s: s.update(class_names=["tree"]),
    "duplicate-classes": lambda s: s.update(class_names=["tree", "tree"]),
    "class-not-a-string": lambda s: s.update(class_names=["tree", {"$": 1}]),
    "threshold-out-of-range": lambda s: s["operating_point"].update(threshold=7),
    "class-index-out-of-range": lambda s: s["operating_point"].update(class_index=5),
    "normalization-zero-std": lambda s: s.update(normalization={"mean": [0.0], "std": [0.0]}),
    "calibration-scale-not-numbers": lambda s: s.update(calibration={"method": "platt", "scale": ["1", 1],
                                                                     "shift": [0, 0]}),
    "referral-threshold-out-of-range": lambda s: s.update(referral={"threshold": 2}),
}


@pytest.mark.parametrize("case", list(HOSTILE_CONFIGS))
def test_a_hostile_run_config_is_refused_naming_the_file_and_field(tmp_path, case):
    from training.runs.saved import load_trained, run_config

    saved = _good_saved_run()
    (tmp_path / "checkpoints").mkdir()
    run_config_path = tmp_path / "checkpoints" / "config.json"
    run_config_path.write_text(json.dumps(saved))
    run_config(tmp_path)  # the unmodified one is accepted
    HOSTILE_CONFIGS[case](saved)
    run_config_path.write_text(json.dumps(saved))
    for read in (run_config, load_trained):
        with pytest.raises(ValueError, match=r"config\.json: ") as info:
            read(tmp_path)
        assert str(run_config_path) in str(info.value)


def test_the_coordinator_listens_only_on_the_address_given(monkeypatch):
    import jax

    from training.loop import distributed

    seen = {}
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: seen.update(kw))
    monkeypatch.setattr(jax.config, "update", lambda *a: None)
    distributed.join(distributed.Job("127.0.0.1:12355", 2, 0))
    assert seen["coordinator_bind_address"] == "127.0.0.1:12355"


def _npy(path: Path, header: dict, data: bytes) -> Path:
    from numpy.lib import format as npy_format

    with open(path, "wb") as f:
        npy_format.write_array_header_1_0(f, header)
        f.write(data)
    return path


@pytest.mark.parametrize("case", ["absurd-shape", "pickled-object", "negative-dimension", "truncated", "garbage"])
def test_hostile_cache_entries_are_computed_again_never_read(tmp_path, case):
    """A cache entry (features, block maps, decoded photos) is a file on the user's disk: one that claims a
    petabyte, holds a pickle, a negative dimension, too few bytes or no header at all is dropped (the caller
    computes it again): no allocation of what the header claims, no code run, no crash."""
    import os

    from training.data.cache import ImageCache
    from training.data.decoding import Preprocess
    from training.transfer.features import _load_cached

    f4 = {"descr": "<f4", "fortran_order": False}
    path = {
        "absurd-shape": lambda p: _npy(p, {**f4, "shape": (2, 10**6, 10**6, 192)}, b"\0" * 64),
        "pickled-object": lambda p: _npy(p, {"descr": "|O", "fortran_order": False, "shape": (1,)},
                                         b"\x80\x04\x95" + b"cos\nsystem\n(S'touch pwned'\ntR."),
        "negative-dimension": lambda p: _npy(p, {**f4, "shape": (2, -5, 8, 192)}, b"\0" * 64),
        "truncated": lambda p: _npy(p, {**f4, "shape": (2, 8, 8, 192)}, b"\0" * 100),
        "garbage": lambda p: (p.write_bytes(os.urandom(300)), p)[1],
    }[case](tmp_path / "entry.npy")
    tracemalloc.start()
    try:
        assert _load_cached(path, (2, 8, 8, 192)) is None
        assert _load_cached(path, None) is None  # the features' check: (2, D) float32
        pre = Preprocess(8, "center", True)
        cache = ImageCache(tmp_path / "images")
        cache.path("ab", pre).parent.mkdir(parents=True)
        cache.path("ab", pre).write_bytes(path.read_bytes())
        assert cache.get("ab", pre) is None
        assert tracemalloc.get_traced_memory()[1] < 64 << 20
    finally:
        tracemalloc.stop()
    assert not (tmp_path / "pwned").exists() and not Path("pwned").exists()
    good = np.ones((2, 8, 8, 192), np.float32)
    np.save(tmp_path / "good.npy", good)
    np.testing.assert_array_equal(_load_cached(tmp_path / "good.npy", (2, 8, 8, 192)), good)
