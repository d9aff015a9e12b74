"""Every reader of a user-supplied or previously written file: registered, then given hostile and fuzzed files.

- The registry (:data:`REGISTRY`) names every function that opens or parses a file. An AST scan of the project
  finds each call that reads a file (``open`` for reading, ``read_text``/``read_bytes``, ``json``/``tomllib``/
  ``np.load``, ``csv.reader``, ``Image.open``, zip members, unpicklers, orbax ``restore``) or uses one of the
  checked readers of ``common.files``; the function holding it must be registered, so a new reader
  that is not fails :func:`test_every_reader_is_registered`.
- Each reader key of ``tests/read_files.py`` gets structural hostile files (a FIFO, a folder, a device, an empty,
  binary, non-UTF-8, oversized or 5,000-deep file, and its format's own traps), each read in a forked child under
  an address-space and time limit: the outcome must be one :class:`FileFormatError` line naming the file (or,
  for a cache entry, ``None``: computed again; for a missing file, ``FileNotFoundError``), or a correct result.
- Each text format gets a Hypothesis fuzz (a few dozen examples, in this process): one FileFormatError or a
  result, never another exception.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.files import FileFormatError
from tests.helpers import saved_run_record

REPO = Path(__file__).resolve().parents[2]

# ---- the registry ----------------------------------------------------------------------------------------------
# "file::function" → how it is tested: a reader key of tests/read_files.py (hostile and fuzzed files here),
# "helper" (a checked reader of common.files, reached through the readers that call it), another test,
# or why it is not a file reader.
REGISTRY: dict[str, str] = {
    # checked readers: every reader below goes through them
    "common/files.py::read_bytes_checked": "helper",
    "common/files.py::read_text_checked": "helper",
    "common/files.py::parse_document": "helper",
    "common/files.py::json_loads_strict": "helper: parses text parse_document and _parse_bytes read",
    "common/files.py::read_csv_checked": "helper",
    "common/files.py::read_npy_member": "helper",
    "common/files.py::read_npz_checked": "npz",
    "common/files.py::_zip_directory_bytes": "npz (its end record, of a file stat'ed as regular first)",
    "common/files.py::read_json": "json",
    "common/files.py::load_cached_npy": "helper (feature_cache, image_cache)",
    "common/files.py::sha256_of": "helper: hashes a file its callers stat as regular first",
    # readers of the user's files and of files the project wrote earlier
    "training/runs/saved.py::read_saved_run": "saved_run",
    "training/runs/saved.py::_parse_bytes": "saved_run",
    "training/runs/saved.py::load_trained": ("saved_run; orbax: "
                                             "tests/experiments/test_cli.py::test_a_damaged_checkpoint_*"),
    "training/runs/folder.py::read_run": "run_record",
    "training/runs/results.py::read_result_row": "result_row",
    "training/data/labels.py::load_grouping": "grouping",
    "training/data/discovery.py::_read_manifest": "manifest",
    "training/runs/agreement.py::read_rows": "ratings",
    "training/data/arrays.py::load_mnist_npz": "mnist",
    "training/transfer/features.py::_load_cached": "feature_cache",
    "training/data/cache.py::ImageCache.get": "image_cache",
    "models/pretrained.py::read_cached_backbone": "weights_cache",
    "models/pretrained.py::load_backbone": "weights_cache; the weights: tests/common/test_security.py",
    "training/data/decoding.py::load_image": "photos: tests/common/test_security.py::test_mutated_photos_*",
    "training/data/loading.py::_digest_or_error": "photos: stat as a regular file before hashing",
    "models/torch_weights.py::load_state_dict": "weights: tests/common/test_security.py (hostile corpus, forked)",
    "models/torch_weights.py::_load_zip": "weights: tests/common/test_security.py",
    "models/torch_weights.py::_read_entry": "weights: tests/common/test_security.py",
    "models/torch_weights.py::_load_pickle": "weights: tests/common/test_security.py",
    "training/loop/checkpoints.py::Checkpoints.restore": ("orbax: "
                                                          "tests/experiments/test_cli.py::test_a_damaged_checkpoint_*"),
    "training/loop/checkpoints.py::Checkpoints.meta": ("orbax: "
                                                       "tests/experiments/test_cli.py::test_a_damaged_checkpoint_*"),
    "training/loop/fit.py::fit": "orbax, resuming its own run: tests/training/loop/test_fit.py::test_resume_*",
    "training/loop/fit.py::_resumed": "orbax, resuming its own run: tests/training/loop/test_fit.py::test_resume_*",
    "training/evaluation/review.py::_csv_rows": ("review's CSVs: "
                                                 "tests/training/evaluation/test_review.py (hostile CSV cases, FIFO)"),
    "training/evaluation/review.py::make_thumbnail": ("photos: tests/training/evaluation/test_review.py "
                                                      "(missing and broken photos)"),
    # predict's partial and shard files (helper io-writer's; tests/training/inference/test_predict.py)
    "training/inference/stream.py::_json_object": ("partial record and shard reports: "
                                                   "tests/training/inference/test_predict.py"),
    "training/inference/stream.py::RowChecker.rows": ("partial and shard rows: "
                                                      "tests/training/inference/test_predict.py (hostile, fuzz)"),
    # predict's own finished CSV, read back to add the refer column
    # (helper calibration's; tests/training/inference/test_predict.py)
    "training/inference/refer.py::_confidences": ("predict's finished CSV: "
                                                  "tests/training/inference/test_predict.py (hostile)"),
    "training/inference/refer.py::add_refer_column": "the same file copied row by row once _confidences checked it",
    # not file readers
    "common/files.py::umask": "not a user file: the process's /proc/self/status",
    "training/runs/folder.py::_plain": "not a file: json.loads(json.dumps(value)) normalises a value",
    "training/runs/folder.py::RunFolder.writing": "not a file: calls the method RunFolder.open",
}

CHECKED_READERS = {"parse_document", "read_csv_checked", "read_npz_checked", "read_npy_member", "read_text_checked",
                   "read_bytes_checked", "load_cached_npy", "read_json", "sha256_of", "regular_file",
                   "json_loads_strict"}


def _reads_a_file(call: ast.Call) -> bool:
    f = call.func
    name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""
    if name in CHECKED_READERS or name.endswith("Unpickler") or name in ("ZipFile", "fromfile", "memmap"):
        return True
    if isinstance(f, ast.Name) and f.id == "open" or isinstance(f, ast.Attribute) and f.attr == "open" \
            and ast.unparse(f.value) != "os":
        mode = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords if k.arg == "mode"), None)
        m = mode.value if isinstance(mode, ast.Constant) and isinstance(mode.value, str) else "r"
        return "r" in m or not any(c in m for c in "wax")  # (a writer's open is the output writer's)
    if isinstance(f, ast.Attribute):
        base = ast.unparse(f.value)
        return (f.attr in ("read_text", "read_bytes", "restore")
                or f.attr in ("load", "loads") and base in ("json", "tomllib", "np", "numpy", "pickle")
                or f.attr in ("reader", "DictReader") and base == "csv")
    return False


def reading_functions() -> dict[str, list[int]]:
    """``file::function`` → lines, for every call in the project that reads a file."""
    found: dict[str, list[int]] = {}
    for package in ("common", "training", "models", "experiments", "manual_backprop"):
        for path in sorted((REPO / package).rglob("*.py")):
            def visit(node, scope):
                for child in ast.iter_child_nodes(node):
                    if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                        visit(child, [*scope, child.name])
                        continue
                    if isinstance(child, ast.Call) and _reads_a_file(child):
                        key = f"{path.relative_to(REPO).as_posix()}::{'.'.join(scope) or '<module>'}"
                        found.setdefault(key, []).append(child.lineno)
                    visit(child, scope)
            visit(ast.parse(path.read_text(encoding="utf-8")), [])
    return found


def test_every_reader_is_registered():
    found = reading_functions()
    unregistered = {k: v for k, v in found.items() if k not in REGISTRY}
    assert not unregistered, (f"functions that read files but are not in tests/common/test_readers.py's REGISTRY (add "
                              f"them with their hostile and fuzz tests): {unregistered}")
    stale = sorted(set(REGISTRY) - set(found))
    assert not stale, f"registered readers that no longer read a file (remove or rename them): {stale}"


def test_the_registry_scan_can_fail(tmp_path):
    """The scan sees a new reader: a call of each kind inside an unregistered function is found."""
    src = ("import json, numpy as np\nfrom PIL import Image\n"
           "def a(p):\n    return open(p).read()\n"
           "def b(p):\n    return json.loads(p.read_text())\n"
           "def c(p):\n    return np.load(p)\n"
           "def d(p):\n    return Image.open(p)\n"
           "def e(p):\n    return parse_document(p, 'x')\n"
           "def w(p):\n    return open(p, 'w')\n")
    calls = [n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Call) and _reads_a_file(n)]
    assert sorted({c.lineno for c in calls}) == [4, 6, 8, 10, 12]


def test_every_registered_reader_has_hostile_and_fuzzed_files():
    tested = {v.split(";")[0].split(" ")[0] for v in REGISTRY.values()} & set(READER_KINDS)
    assert tested == set(READER_KINDS)  # every reader key is a registered function's, and has hostile files
    fuzzed_through = {"mnist": "npz", "weights_cache": "npz", "image_cache": "feature_cache", "json": "run_record"}
    assert {fuzzed_through.get(k, k) for k in READER_KINDS} <= set(FUZZED)


# ---- hostile files, read in a forked child ----------------------------------------------------------------------
# reader key → kind: "text" (JSON/TOML/CSV: FileFormatError), "binary" (.npz: FileFormatError), "cache" (None)
READER_KINDS = {"saved_run": "text", "run_record": "text", "grouping": "text", "manifest": "text",
                "ratings": "text", "result_row": "text", "json": "text", "npz": "binary", "mnist": "binary",
                "feature_cache": "cache", "image_cache": "cache", "weights_cache": "cache"}
FILE_NAMES = {"grouping": "g.toml", "manifest": "m.csv", "ratings": "r.csv", "npz": "a.npz", "mnist": "m.npz",
              "feature_cache": "f.npy", "image_cache": "i.npy", "weights_cache": "w.npz"}


def _good_saved_run() -> dict:
    return saved_run_record(normalization={"mean": [0.5], "std": [0.25]},
                            operating_point={"class": "tree", "class_index": 1, "threshold": 0.4, "target_recall": 0.9})


def _deep(n: int) -> str:
    return "[" * n + "]" * n


def _npy(header: dict, data: bytes) -> bytes:
    from numpy.lib import format as npy_format

    buf = io.BytesIO()
    npy_format.write_array_header_1_0(buf, header)
    return buf.getvalue() + data


def _npz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _npz_big_directory() -> bytes:
    """An .npz whose central directory is 6 MB (100 entries with 60 KB comments): zipfile builds every entry's
    ZipInfo before anything can count them, ~7 bytes of memory a byte, so its size is checked first."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i in range(100):
            info = zipfile.ZipInfo(f"{i}.npy")
            info.comment = b"c" * 60_000
            z.writestr(info, b"")
    return buf.getvalue()


def _npy_of(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


F4 = {"descr": "<f4", "fortran_order": False}
HUGE = _npy({**F4, "shape": (1 << 40,)}, b"\0" * 64)  # a header that claims 4 TiB
PICKLED = _npy({"descr": "|O", "fortran_order": False, "shape": (1,)}, b"\x80\x04\x95cos\nsystem\n(S'touch pwned'\ntR.")
NEGATIVE = _npy({**F4, "shape": (2, -5)}, b"\0" * 64)

COMMON: dict[str, object] = {  # content, or a marker the builder makes
    "fifo": "FIFO", "folder": "FOLDER", "device": "DEVICE", "oversized": "SPARSE",
    "empty": b"", "garbage": bytes(range(256)) * 3, "not-utf8": b'{"a": "\xff\xfe"}\n',
}
SPECIFIC: dict[str, dict] = {  # reader → case → content (saved_run: an edit of a good one)
    "saved_run": {
        "op-without-class": lambda s: s["operating_point"].pop("class"),
        "op-a-list": lambda s: s.update(operating_point=[1, 0.5]),
        "op-wrong-class": lambda s: s["operating_point"].update({"class": "oak"}),
        "op-bool-index": lambda s: s["operating_point"].update(class_index=True),
        "too-many-classes": lambda s: s.update(class_names=[f"c{i}" for i in range(10_001)]),
        "unknown-key": lambda s: s.update(calibration={"t": 1}),
        "normalization-lengths": lambda s: s.update(normalization={"mean": [0.0, 1.0], "std": [1.0]}),
        "config-missing": lambda s: s.pop("config"),
        "config-bad-type": lambda s: s["config"].update(image_size=[32]),
        "class-names-a-string": lambda s: s.update(class_names="tree"),
        "threshold-1e400": lambda s: s["operating_point"].update(threshold="INF"),
        "normalization-tiny-std": lambda s: s.update(normalization={"mean": [0.5], "std": [1e-300]}),  # NaN out
        "normalization-huge-mean": lambda s: s.update(normalization={"mean": [1e308], "std": [1.0]}),
        "duplicate-key": lambda s: s.update(DUPKEY=["oak", "pine"]),  # class_names twice: the last one was used
        "threshold-400-digits": lambda s: s["operating_point"].update(threshold="BIG"),  # was an OverflowError
        "lr-400-digits": lambda s: s["config"].update(learning_rate="BIG"),
        "batch-of-192TiB": lambda s: s["config"].update(batch_size=1 << 20, image_size=4096),  # was a MemoryError
    },
    "json": {"deep-5000": _deep(5000).encode(), "nan": b"[NaN]", "truncated": b'{"a": [1, 2'},
    "run_record": {"deep-5000": _deep(5000).encode(), "a-list": b"[]", "bad-status": b'{"status": "x"}',
                   "config-a-string": b'{"status": "running", "config": "x"}'},
    "grouping": {
        "unknown-key": b'list = 1\n[classes]\na = ["1"]\nb = ["2"]\n',
        "json-top-level-list": b"[]",  # (a TOML document is always a table)
        "json-classes-a-list": b'{"classes": [["a", ["1"]], ["b", ["2"]]]}',
        "exclude-not-a-list": b'exclude = "x"\n[classes]\na = ["1"]\nb = ["2"]\n',
        "deep-5000": b"a = " + _deep(5000).encode() + b"\n",
        "one-class": b'[classes]\na = ["1"]\n',
        "label-not-a-string": b'[classes]\na = [1]\nb = ["2"]\n',
        "labels-not-a-list": b'[classes]\na = "1"\nb = ["2"]\n',
        "name-a-table": b'[name]\nx = 1\n[classes]\na = ["1"]\nb = ["2"]\n',
        "bad-toml": b"[classes\n",
        "empty-class-name": b'[classes]\n"" = ["1"]\nb = ["2"]\n',
        "label-in-two-classes": b'[classes]\na = ["1"]\nb = ["1", "2"]\n',  # was: 1's photos all in b, a empty
        "label-in-a-class-and-excluded": b'exclude = ["1"]\n[classes]\na = ["1"]\nb = ["2"]\n',
        "json-duplicate-key": b'{"classes": {"a": ["1"], "b": ["2"], "a": ["3"]}}',
    },
    "manifest": {
        "extra-field": b"path,label\nx.jpg,a,b\n",
        "field-over-128KiB": b"path,label\n" + b"x" * (129 << 10) + b",a\n",
        "no-label-column": b"path,rating\nx.jpg,a\n",
        "duplicate-column": b"path,label,label\nx.jpg,a,b\n",
        "no-rows": b"path,label\n",
        "empty-label": b"path,label\nx.jpg,\n",
    },
    "ratings": {
        "extra-field": b"path,rater\nx.jpg,Probable,oops\n",
        "field-over-128KiB": b"path,rater\nx.jpg," + b"P" * (129 << 10) + b"\n",
        "no-path-column": b"file,rater\nx.jpg,Probable\n",
        "no-rows": b"path,rater\n",
    },
    "result_row": {"a-list": b"[]", "not-json": b"row", "other-key": b'{"_key": "other"}',
                   "nested-value": b'{"_key": "k", "Acc.": {"a": [1]}}', "deep-5000": _deep(5000).encode(),
                   "long-string": b'{"_key": "k", "x": "' + b"y" * 20_000 + b'"}',
                   "int-of-400-digits": b'{"_key": "k", "x": 1' + b"0" * 400 + b"}"},  # was an OverflowError
    "npz": {"member-claims-4TiB": _npz({"a.npy": HUGE}), "pickled-member": _npz({"a.npy": PICKLED}),
            "negative-dimension": _npz({"a.npy": NEGATIVE}), "not-npy": _npz({"a.txt": b"x"}),
            "truncated-member": _npz({"a.npy": _npy_of(np.ones(100, np.float32))[:-40]}),
            "directory-of-6MB": _npz_big_directory()},
    "mnist": {"member-claims-4TiB": _npz({"x_train.npy": HUGE}), "pickled-member": _npz({"x_train.npy": PICKLED}),
              "missing-arrays": _npz({"x_train.npy": _npy_of(np.zeros((2, 28, 28), np.uint8))})},
    "feature_cache": {"wrong-width": _npy_of(np.ones((2, 9), np.float32)),
                      "all-nan": _npy_of(np.full((2, 8), np.nan, np.float32)),
                      "float64": _npy_of(np.ones((2, 8))), "claims-4TiB": HUGE, "pickled": PICKLED,
                      "negative-dimension": NEGATIVE},
    "image_cache": {"nan": _npy_of(np.full((8, 8, 3), np.nan, np.float32)),
                    "out-of-range": _npy_of(np.full((8, 8, 3), 2.0, np.float32)),
                    "wrong-shape": _npy_of(np.ones((8, 8, 1), np.float32)), "claims-4TiB": HUGE},
    "weights_cache": {"member-claims-4TiB": _npz({"stem/kernel.npy": HUGE}),
                      "pickled-member": _npz({"stem/kernel.npy": PICKLED})},  # (shapes: test_security.py)
}
VALID = {"json": b'{"a": [1, 2.5, "x", null]}', "run_record": b'{"status": "complete", "config": {}, "data": {}}',
         "grouping": b'name = "g"\nexclude = ["x"]\n[classes]\na = ["1", "*"]\nb = ["2"]\n',
         "manifest": b"\xef\xbb\xbfpath,label,note\r\nx.jpg,a,\r\nx.jpg,b,\"q,\"\"uoted\"\r\n",
         "ratings": b"path,rater\nx.jpg,Probable\n", "result_row": b'{"_key": "k", "Acc.": "50.0", "folds": 5}',
         "npz": _npz({"a.npy": _npy_of(np.arange(6, dtype=np.int64).reshape(2, 3))}),
         "feature_cache": _npy_of(np.ones((2, 8), np.float32)),
         "image_cache": _npy_of(np.full((8, 8, 3), 0.5, np.float32))}
EXPECTED_OK = {"json": "dict", "run_record": "dict", "grouping": "Grouping", "manifest": "list", "ratings": "list",
               "result_row": "ResultRow", "npz": "dict", "feature_cache": "array (2, 8) float32",
               "image_cache": "array (8, 8, 3) float32", "saved_run": "SavedRun"}


def _write(reader: str, name: str, where: Path, content) -> tuple[Path, Path]:
    """``(the path given to the reader, the file that holds the content)``."""
    where.mkdir(parents=True)
    if reader == "saved_run":
        arg, target = where, where / "checkpoints" / "config.json"
        target.parent.mkdir()
    elif reader == "run_record":
        arg, target = where, where / "run.json"
    else:
        file = "g.json" if reader == "grouping" and name.startswith("json-") else FILE_NAMES.get(reader, "f.json")
        arg = target = where / file
    if content == "FIFO":
        os.mkfifo(target)
    elif content == "FOLDER":
        target.mkdir()
    elif content == "DEVICE":
        target.symlink_to("/dev/zero")
    elif content == "SPARSE":
        with open(target, "wb") as f:
            f.truncate(65 << 20)  # sparse: nothing written
    elif content is not None:
        target.write_bytes(content)
    if reader == "manifest":
        (where / "x.jpg").write_bytes(b"not read")
    return arg, target


def _cases() -> list[tuple[str, str, object]]:
    cases = []
    for reader, kind in READER_KINDS.items():
        for name, content in COMMON.items():
            if reader == "manifest" and content == "FOLDER":
                continue  # --data given a folder reads it as class folders: tests/training/data/test_images.py
            cases.append((reader, name, content))
        cases.append((reader, "missing", None))
        for name, content in SPECIFIC.get(reader, {}).items():
            if reader == "saved_run":
                saved = _good_saved_run()
                content(saved)
                content = json.dumps(saved).replace('"INF"', "1e400").replace('"DUPKEY"', '"class_names"')
                content = content.replace('"BIG"', "1" + "0" * 400).encode()
            cases.append((reader, name, content))
        if reader in VALID:
            cases.append((reader, "valid", VALID[reader]))
    cases.append(("saved_run", "valid", json.dumps(_good_saved_run()).encode()))
    return cases


@pytest.fixture(scope="module")
def hostile_results(tmp_path_factory):
    folder = tmp_path_factory.mktemp("readers")
    lines, made = [], {}
    for i, (reader, name, content) in enumerate(_cases()):
        arg, target = _write(reader, name, folder / f"{i}-{reader}-{name}", content)
        made[(reader, name)] = (arg, target)
        lines.append(json.dumps({"id": f"{reader}/{name}", "reader": reader, "path": str(arg)}))
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "read_files.py")], input="\n".join(lines) + "\n",  # noqa: S603 (this interpreter, the test's own script; no shell)
                          capture_output=True, text=True, timeout=600, cwd=folder)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {tuple(r["id"].split("/", 1)): r for r in map(json.loads, proc.stdout.splitlines())}
    assert len(results) == len(lines)
    assert not (folder / "pwned").exists()
    return results, made


@pytest.mark.parametrize("reader", list(READER_KINDS))
def test_hostile_files_give_one_line_naming_the_file_or_are_computed_again(hostile_results, reader):
    results, made = hostile_results
    mine = {name: r for (rd, name), r in results.items() if rd == reader}
    assert len(mine) >= 8
    bad = {}
    for name, r in mine.items():
        arg, target = made[(reader, name)]
        if name == "valid":
            ok = r["outcome"] == "ok" and r["detail"] == EXPECTED_OK[reader]
        elif name == "missing":
            ok = (r["outcome"] == "ok" and r["detail"] == "dict" if reader == "run_record"
                  else r["outcome"] == "ok" and r["detail"] == "None" if READER_KINDS[reader] == "cache"
                  else r["outcome"] == "FileNotFoundError")
        elif READER_KINDS[reader] == "cache":
            ok = r["outcome"] == "ok" and r["detail"] == "None"  # dropped: the caller computes it again
        else:
            ok = (r["outcome"] == "FileFormatError" and "\n" not in r["detail"]
                  and r["detail"].startswith(str(target)))
        if not ok:
            bad[name] = (r["outcome"], r["detail"][:300])
    assert not bad, bad


# ---- fuzzed files, in this process --------------------------------------------------------------------------------
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats(allow_nan=False) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12)
FUZZ = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None)


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def _replace_at(doc, path: tuple, value):
    """``doc`` with the value at ``path`` (keys/indices; a missing last key is added) replaced by ``value``."""
    doc = json.loads(json.dumps(doc))
    if not path:
        return value
    node = doc
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return doc


def _paths(doc, prefix=()) -> list[tuple]:
    out = [prefix]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:3]):
            out += _paths(v, (*prefix, i))
    return out


def _read_or_format_error(read, path: Path, *also: type[BaseException]):
    try:
        return read(path)
    except FileFormatError as exc:
        assert "\n" not in str(exc) and str(exc).startswith(str(path.parent)), exc
        return exc
    except also:
        return None


def _fuzz_json_reader(fuzz_dir: Path, reader: str, good: dict, data) -> None:
    from training.runs.folder import read_run
    from training.runs.results import read_result_row
    from training.runs.saved import read_saved_run

    where = Path(tempfile.mkdtemp(dir=fuzz_dir))
    choice = data.draw(st.sampled_from(_paths(good)), label="where")
    doc = _replace_at(good, choice, data.draw(JSON_VALUES, label="value"))
    text = json.dumps(doc)
    if data.draw(st.booleans(), label="cut"):
        text = text[:data.draw(st.integers(0, len(text)), label="at")]
    if reader == "saved_run":
        (where / "checkpoints").mkdir()
        (where / "checkpoints" / "config.json").write_text(text)
        _read_or_format_error(lambda p: read_saved_run(p.parent), where / "checkpoints")
    elif reader == "run_record":
        (where / "run.json").write_text(text)
        _read_or_format_error(lambda p: read_run(p.parent), where / "run.json")
    else:
        (where / "k.json").write_text(text)
        _read_or_format_error(lambda p: read_result_row(p, "k"), where / "k.json")


@FUZZ
@given(st.data())
def test_fuzzed_saved_runs_give_a_run_or_one_line(fuzz_dir, data):
    _fuzz_json_reader(fuzz_dir, "saved_run", _good_saved_run(), data)


@FUZZ
@given(st.data())
def test_fuzzed_run_records_give_a_record_or_one_line(fuzz_dir, data):
    good = {"status": "running", "config": {"model": "model1"}, "data": {"n": 1}}
    _fuzz_json_reader(fuzz_dir, "run_record", good, data)


@FUZZ
@given(st.data())
def test_fuzzed_result_rows_give_a_row_or_one_line(fuzz_dir, data):
    good = {"_key": "k", "Acc.": "50.0", "folds": 5, "settings": {"augment": None}}
    _fuzz_json_reader(fuzz_dir, "result_row", good, data)


TOML_TEXT = st.text(alphabet='[]{}=,."\'\n #abc*-0123456789', max_size=120)


@FUZZ
@given(st.one_of(TOML_TEXT.map(lambda t: ('[classes]\na = ["1"]\nb = ["2"]\n' + t, ".toml")),
                 TOML_TEXT.map(lambda t: (t, ".toml")), JSON_VALUES.map(lambda v: (json.dumps(v), ".json"))))
def test_fuzzed_groupings_give_a_grouping_or_one_line(fuzz_dir, doc):
    from training.data.labels import Grouping, load_grouping

    text, suffix = doc
    path = Path(tempfile.mkdtemp(dir=fuzz_dir)) / f"g{suffix}"
    path.write_text(text)
    result = _read_or_format_error(load_grouping, path)
    assert isinstance(result, Grouping | FileFormatError)


CSV_TEXT = st.lists(st.sampled_from(list('ab,"\r\n\x00é ') + ["x.jpg"]), max_size=30).map("".join)


@FUZZ
@given(CSV_TEXT, st.sampled_from(["manifest", "ratings"]))
def test_fuzzed_csv_files_give_rows_or_one_line(fuzz_dir, body, reader):
    from training.data.discovery import _read_manifest
    from training.runs.agreement import read_rows

    where = Path(tempfile.mkdtemp(dir=fuzz_dir))
    (where / "x.jpg").write_bytes(b"x")
    path = where / "f.csv"
    path.write_text(("path,label\n" if reader == "manifest" else "path,rater\n") + body, newline="")
    read = _read_manifest if reader == "manifest" else read_rows
    result = _read_or_format_error(read, path, FileNotFoundError)  # (a manifest row naming no file)
    if isinstance(result, list):
        with open(path, newline="", encoding="utf-8") as f:  # the rows are csv's, field for field
            rows = [r for r in csv.reader(f) if r][1:]
        assert len(result) == len(rows)


def _mutated(good: bytes, patch: bytes, at: int, cut: bool) -> bytes:
    """A valid file cut short at ``at`` (``cut``), or with ``patch`` written over it there."""
    at %= len(good)
    return good[:at] if cut else good[:at] + patch + good[at + len(patch):]


def _mutated_file(fuzz_dir: Path, kind: str, name: str, patch: bytes, at: int, cut: bool) -> Path:
    """``VALID[kind]`` mutated (:func:`_mutated`), written as ``name`` in a folder of its own."""
    path = Path(tempfile.mkdtemp(dir=fuzz_dir)) / name
    path.write_bytes(_mutated(VALID[kind], patch, at, cut))
    return path


@FUZZ
@given(st.binary(max_size=8), st.integers(0, 10_000), st.booleans())
def test_fuzzed_npz_files_give_the_arrays_or_one_line(fuzz_dir, patch, at, cut):
    from common.files import read_npz_checked

    path = _mutated_file(fuzz_dir, "npz", "a.npz", patch, at, cut)
    result = _read_or_format_error(lambda p: read_npz_checked(p, "an .npz", max_bytes=1 << 20), path)
    if isinstance(result, dict):
        assert all(v.nbytes <= 1 << 20 for v in result.values())


@FUZZ
@given(st.binary(max_size=8), st.integers(0, 1_000), st.booleans())
def test_fuzzed_feature_cache_entries_are_used_whole_or_computed_again(fuzz_dir, patch, at, cut):
    from training.transfer.features import _load_cached

    path = _mutated_file(fuzz_dir, "feature_cache", "f.npy", patch, at, cut)
    entry = _load_cached(path, (2, 8))
    assert entry is None or entry.shape == (2, 8) and entry.dtype == np.float32 and np.isfinite(entry).all()


FUZZED = ["saved_run", "run_record", "result_row", "grouping", "manifest", "ratings", "npz", "feature_cache"]


def test_a_manifest_error_names_the_line_it_is_on(tmp_path):
    # rows were numbered 2, 3, … whatever blank lines and quoted newlines came before: line 3 here, not 7
    from training.data.discovery import _read_manifest

    (tmp_path / "a.jpg").write_bytes(b"not read")
    manifest = tmp_path / "m.csv"
    manifest.write_text('path,label\n\n"a.jpg",\n\n"x\ny.jpg",b\n\nmissing.jpg,b\n', encoding="utf-8")
    with pytest.raises(FileFormatError, match="line 3: empty path or label"):
        _read_manifest(manifest)
    manifest.write_text('path,label\n\n"a.jpg",a\n\n"x\ny.jpg",b\n\nmissing.jpg,b\n', encoding="utf-8")
    with pytest.raises(FileNotFoundError, match="line 5: file not found"):
        _read_manifest(manifest)


def test_a_resumed_runs_differences_are_quoted_short():
    # a tampered run.json's values were quoted whole: one 'error:' line of megabytes
    from training.runs.folder import run_differences

    old = {"config": {"image_size": "x" * 1_000_000, **{f"k{i}\n": i for i in range(100)}}}
    diffs = run_differences(old, {"config": {"image_size": 32}})
    assert diffs[0] == "image_size: '" + "x" * 78 + "… → 32" and max(map(len, diffs)) < 200


def test_an_npz_with_a_huge_zip_directory_is_refused_before_it_is_parsed(tmp_path):
    from common.files import read_npz_checked

    path = tmp_path / "a.npz"
    path.write_bytes(_npz_big_directory())
    with pytest.raises(FileFormatError, match="a zip directory of 6"):
        read_npz_checked(path, "an .npz", max_bytes=1 << 20)
