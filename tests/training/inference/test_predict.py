"""Streaming prediction: every photo its row, bounded memory, resumable, the same numbers as in-memory prediction."""

import csv
import os
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.files import FileFormatError, UnsafeOutputError
from tests.helpers import read_predictions, unwritable_folder
from training.data import prefetch
from training.data.decoding import BadImageError
from training.runs.predict import PredictOptions, predict_photos


@pytest.fixture
def trained(tiny_run):
    """The session's tiny Model 1 run (conftest.py): 14 photos, ``a0.png``–``a6.png`` and ``b0.png``–``b6.png``."""
    return tiny_run


def _predict(run, root, out, **options):
    """The library call ``experiments.predict --batch-size 3 --no-progress`` makes (``options``: the other flags)."""
    return predict_photos(run, [str(root)], out, PredictOptions(batch_size=3, progress=False, **options))


def test_streamed_rows_equal_in_memory_prediction(trained, tmp_path):
    from training.data.decoding import Preprocess, load_image
    from training.data.discovery import image_files
    from training.loop.steps import make_eval_step, predict_proba
    from training.runs.saved import load_trained

    run, root = trained
    _predict(run, root, tmp_path / "p.csv")
    rows = read_predictions(tmp_path / "p.csv")
    model, params, config, names = load_trained(run)
    paths = image_files(root)  # the reference: every photo decoded one by one, all in memory
    x = np.stack([load_image(p, Preprocess(config.image_size, config.crop, config.rgb)) for p in paths])
    expected = predict_proba(make_eval_step(model), params, x, batch_size=5)
    by_path = {r["path"]: [r[f"p_{n}"] for n in names] for r in rows}
    assert sorted(by_path) == sorted(str(p.relative_to(root)) for p in paths)
    got = np.array([by_path[str(p.relative_to(root))] for p in paths])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)  # in file order
    assert not list(tmp_path.glob("*.partial*"))


def test_a_crash_then_resume_gives_the_uninterrupted_csv(trained, tmp_path, monkeypatch):
    run, root = trained
    _predict(run, root, tmp_path / "whole.csv")
    calls, real = {"n": 0}, prefetch.load_image

    def crash_on_the_eighth(path, pre):
        calls["n"] += 1
        if calls["n"] == 8:
            raise RuntimeError("simulated crash (power cut)")
        return real(path, pre)

    monkeypatch.setattr(prefetch, "load_image", crash_on_the_eighth)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _predict(run, root, tmp_path / "p.csv")
    monkeypatch.setattr(prefetch, "load_image", real)
    partial = tmp_path / "p.csv.partial"
    assert partial.exists() and not (tmp_path / "p.csv").exists()
    with open(partial, "ab") as f:  # a chunk cut short by the crash, after the last complete one
        f.write(b"a/a5.png,b,0.3")
    with pytest.raises(FileExistsError, match="pass --resume"):  # not without resume
        _predict(run, root, tmp_path / "p.csv")
    report = _predict(run, root, tmp_path / "p.csv", resume=True)
    assert 0 < calls["n"] and report.rows == 14
    assert (tmp_path / "p.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()
    assert not partial.exists() and 0 < report.resumed < 14  # rows kept from the interrupted run


def test_resume_with_another_checkpoint_or_folder_is_refused(trained, tmp_path, monkeypatch):
    import shutil

    run, root = trained
    monkeypatch.setattr(prefetch, "load_image", lambda p, pre: (_ for _ in ()).throw(RuntimeError("stop")))
    with pytest.raises(RuntimeError):
        _predict(run, root, tmp_path / "p.csv")
    monkeypatch.undo()
    other = tmp_path / "other"
    shutil.copytree(root, other)
    with pytest.raises(ValueError, match="written with other settings: images:"):
        _predict(run, other, tmp_path / "p.csv", resume=True)


def test_an_existing_csv_is_replaced_only_with_overwrite(trained, tmp_path):
    run, root = trained
    out = tmp_path / "p.csv"
    out.write_text("mine\n")
    with pytest.raises(FileExistsError, match="exists: pass --overwrite"):
        _predict(run, root, out)
    assert out.read_text() == "mine\n"
    _predict(run, root, out, overwrite=True)
    with open(out, newline="") as f:
        assert len(list(csv.reader(f))) == 1 + 14


def test_bad_photos_stop_the_stream_or_are_counted(trained, tmp_path):
    import shutil

    run, root = trained
    images = tmp_path / "images"
    shutil.copytree(root, images)
    (images / "a" / "a3.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(BadImageError, match="a3.png"):
        _predict(run, images, tmp_path / "p.csv")
    report = _predict(run, images, tmp_path / "q.csv", skip_bad=True)
    assert report.rows == 13 and len(report.skipped) == 1 and "a3.png" in report.skipped[0][0]


def test_decoding_stays_a_bounded_number_of_chunks_ahead(tmp_path, monkeypatch):
    """However many files, at most (prefetch + 1) chunks are being decoded or waiting: memory is bounded."""
    from training.data.decoding import Preprocess

    files = [tmp_path / f"{i}.png" for i in range(40)]
    started, lock = [], threading.Lock()

    def fake_load(path, pre):
        with lock:
            started.append(int(path.stem))
        return np.zeros((8, 8, 1), np.float32)

    monkeypatch.setattr(prefetch, "load_image", fake_load)
    seen = []
    for chunk in prefetch.decode_chunks(files, Preprocess(image_size=8), chunk_size=4, workers=2, prefetch=2):
        consumed = len(seen)
        with lock:
            assert max(started) < consumed + 4 * 3  # this chunk and at most two ahead
        seen.extend(f for f, _ in chunk)
    assert seen == files


@pytest.mark.slow
def test_chunks_sharded_over_four_devices_give_the_same_csv(trained, tmp_path):
    """Each chunk is padded to a multiple of the local devices and sharded over them: 4 (simulated) CPU
    devices write the same rows as 1, up to float32 reduction order (probabilities within 1e-5)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    run, root = trained
    _predict(run, root, tmp_path / "one.csv")
    repo = Path(__file__).resolve().parents[3]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(repo)}
    code = ("import jax, sys; assert len(jax.local_devices()) == 4; "
            "from training.runs.predict import PredictOptions, predict_photos; "
            "predict_photos(sys.argv[1], [sys.argv[2]], sys.argv[3], PredictOptions(batch_size=3, progress=False))")
    subprocess.run([sys.executable, "-c", code, str(run), str(root), str(tmp_path / "four.csv")],  # noqa: S603 (argv is this interpreter and paths the caller made; no shell)
                   env=env, cwd=repo, check=True, capture_output=True)
    one, four = read_predictions(tmp_path / "one.csv"), read_predictions(tmp_path / "four.csv")
    assert [r["path"] for r in one] == [r["path"] for r in four]
    np.testing.assert_allclose([[v for k, v in r.items() if k.startswith("p_")] for r in four],
                               [[v for k, v in r.items() if k.startswith("p_")] for r in one], atol=1e-5)


def test_refer_marks_the_least_confident_fraction_and_the_report_counts_them(trained, tmp_path):
    run, root = trained  # lab-2020: no calibration, no saved referral threshold: no refer column by default
    _predict(run, root, tmp_path / "plain.csv")
    assert "refer" not in read_predictions(tmp_path / "plain.csv")[0]
    report = _predict(run, root, tmp_path / "r.csv", refer=0.25)
    rows = read_predictions(tmp_path / "r.csv")
    conf = sorted(r[f"p_{r['predicted']}"] for r in rows)
    referred = [r for r in rows if r["refer"] == 1]
    assert report.referred == len(referred) == 4 == int(np.ceil(0.25 * len(rows)))  # of 14
    assert report.referral_rows == 14  # (the command prints "4 of 14 referred to a person": tests/experiments)
    assert max(r[f"p_{r['predicted']}"] for r in referred) <= conf[3]


def test_calibration_inside_the_onnx_graph_equals_the_jax_one(trained):
    """The graph's Log/Mul/Add/Softmax after the probabilities compute ``apply`` (≤ 1e-6 of ONNX Runtime's own
    probabilities calibrated in NumPy) and predict's JAX path (≤ 1e-5)."""
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[deploy]')")
    from training.evaluation.calibration import Calibration, apply
    from training.inference.engine import onnxruntime_probs, probs_function
    from training.runs.saved import load_trained

    run, _ = trained
    model, params, config, _ = load_trained(run)
    cal = Calibration("vector", (0.6, 1.7), (0.3, -0.3))
    x = np.random.default_rng(0).random((5, config.image_size, config.image_size, 1), dtype=np.float32)
    kw = dict(image_size=config.image_size, channels=1, tta_flip=False)
    in_graph = onnxruntime_probs(model, params, calibration=cal, **kw)(None, x)
    np.testing.assert_allclose(in_graph, apply(cal, onnxruntime_probs(model, params, **kw)(None, x)), atol=1e-6)
    fn, fn_params, _ = probs_function(model, params, config, "jax", calibration=cal)
    np.testing.assert_allclose(in_graph, np.asarray(fn(fn_params, x)), atol=1e-5)


# --- resume and shards: verified, not trusted -------------------------------------------------------------------

_NAMES = ("a", "b")
_PLAN_PATHS = ("=x.png", "'q.png", "a/0.png", 'a/1 "b",c.png', "a/2.png", "b/-3.png", "b/4.png", "b/@5.png")
_SIG = {"checkpoint": "/run", "images": "/photos"}


def _plan(paths=_PLAN_PATHS):
    from training.inference.stream import Plan

    return Plan(tuple(paths), _NAMES)


def _partial(folder, n_rows=4, skipped=((_PLAN_PATHS[5], "bad photo"),)):
    """A partial output as predict leaves it: ``n_rows`` rows of the plan's files, one skipped file recorded."""
    from common.files import csv_row
    from training.inference.stream import PartialCSV, csv_header

    partial = PartialCSV(folder / "o.csv", csv_header(_NAMES), _SIG)
    partial.start()
    partial.append([csv_row([p, "b", 0.25, 0.75]) for p in _PLAN_PATHS[:n_rows]], [list(s) for s in skipped])
    return partial


def _resume(partial, plan=None):
    return partial.resume(plan or _plan())


def test_a_partial_output_gives_back_its_rows_names_unescaped(tmp_path):
    done, skipped = _resume(_partial(tmp_path))
    assert done == set(_PLAN_PATHS[:4]) and skipped == [(_PLAN_PATHS[5], "bad photo")]
    assert (tmp_path / "o.csv.partial").read_bytes().splitlines()[1].startswith(b"'=x.png,b,")  # escaped on disk


def _set_meta(partial, **fields):
    import json

    meta = json.loads(partial.meta.read_text())
    meta.update(fields)
    partial.meta.write_text(json.dumps(meta))


def _edit_rows(partial, edit):
    lines = partial.path.read_bytes().splitlines(keepends=True)
    edit(lines)
    data = b"".join(lines)
    partial.path.write_bytes(data)
    _set_meta(partial, complete_bytes=len(data))


_HOSTILE_PARTIALS = {
    "signature-missing": (lambda p: _set_meta(p, signature=None), "signature"),
    "signature-a-list": (lambda p: _set_meta(p, signature=["checkpoint"]), "signature"),
    "signature-value-a-dict": (lambda p: _set_meta(p, signature={"checkpoint": {}}), "signature.checkpoint"),
    "length-negative": (lambda p: _set_meta(p, complete_bytes=-1), "complete_bytes"),
    "length-a-string": (lambda p: _set_meta(p, complete_bytes="12"), "complete_bytes"),
    "length-true": (lambda p: _set_meta(p, complete_bytes=True), "complete_bytes"),
    "length-past-the-end": (lambda p: _set_meta(p, complete_bytes=1 << 40), "shorter than"),
    "skipped-a-string": (lambda p: _set_meta(p, skipped="a/0.png"), "skipped"),
    "skipped-not-pairs": (lambda p: _set_meta(p, skipped=[[1, 2]]), "skipped[0]"),
    "skipped-not-in-listing": (lambda p: _set_meta(p, skipped=[["../etc/passwd", "x"]]), "skipped[0]"),
    "unknown-field": (lambda p: _set_meta(p, extra=1), "extra"),
    "record-a-list": (lambda p: p.meta.write_text("[]"), "JSON object"),
    "record-not-json": (lambda p: p.meta.write_bytes(b"\xff{"), "not JSON"),
    "record-nested-deep": (lambda p: p.meta.write_text("[" * 100_000 + "]" * 100_000), "not JSON"),
    "row-not-in-listing": (lambda p: _edit_rows(p, lambda ls: ls.append(b"a/9.png,b,0.5,0.5\n")), "not a file of"),
    "row-twice": (lambda p: _edit_rows(p, lambda ls: ls.append(ls[2])), "twice"),
    "row-out-of-order": (lambda p: _edit_rows(p, lambda ls: ls.insert(4, ls.pop(2))), "out of order"),
    "row-also-skipped": (lambda p: _edit_rows(p, lambda ls: ls.append(b"b/-3.png,b,0.5,0.5\n")), "skipped"),
    "probability-nan": (lambda p: _edit_rows(p, lambda ls: ls.__setitem__(1, b"'=x.png,b,nan,0.5\n")), "probab"),
    "probabilities-sum-to-half": (lambda p: _edit_rows(p, lambda ls: ls.__setitem__(1, b"'=x.png,b,.25,.25\n")),
                                  "summing to 1"),
    "probability-negative": (lambda p: _edit_rows(p, lambda ls: ls.__setitem__(1, b"'=x.png,b,-1,2\n")), "probab"),
    "probability-missing": (lambda p: _edit_rows(p, lambda ls: ls.__setitem__(1, b"'=x.png,b,1\n")), "3 fields"),
    "probability-text": (lambda p: _edit_rows(p, lambda ls: ls.__setitem__(1, b"'=x.png,b,x,y\n")), "not numbers"),
    "label-not-a-class": (lambda p: _edit_rows(p, lambda ls: ls.__setitem__(1, b"'=x.png,c,0.5,0.5\n")), "classes"),
    "field-over-128-KiB": (lambda p: _edit_rows(p, lambda ls: ls.append(b"a" * (129 << 10) + b",b,0.5,0.5\n")),
                           "field larger"),
    "header-changed": (lambda p: _edit_rows(p, lambda ls: ls.__setitem__(0, b"path,predicted,p_a,p_c\n")), "header"),
}


@pytest.mark.parametrize("case", list(_HOSTILE_PARTIALS))
def test_a_hostile_partial_output_is_one_error_naming_the_file_and_field(tmp_path, case):

    partial = _partial(tmp_path)
    edit, expected = _HOSTILE_PARTIALS[case]
    edit(partial)
    with pytest.raises(FileFormatError) as err:
        _resume(partial)
    message = str(err.value)
    assert "o.csv.partial" in message and expected in message and "\n" not in message


@pytest.mark.parametrize("kind", ["fifo-record", "fifo-partial", "link-partial", "link-record"])
def test_a_fifo_or_link_in_place_of_a_partial_file_is_refused_without_opening_it(tmp_path, kind):
    partial = _partial(tmp_path)
    victim = tmp_path / "victim"
    victim.write_bytes(partial.path.read_bytes())
    target = partial.meta if kind.endswith("record") else partial.path
    target.unlink()
    if kind.startswith("fifo"):
        os.mkfifo(target)
    else:
        target.symlink_to(victim)
    with pytest.raises(ValueError, match=f"{target.name}: .*(a FIFO|a symbolic link); refusing"):
        _resume(partial)  # (a FIFO opened for reading would hang here)
    assert victim.read_bytes().count(b"\n") == 5


def _fuzz(data: bytes, edits, cut) -> bytes:
    raw = bytearray(data)
    for where, byte in edits:
        raw[int(where * len(raw))] = byte
    return bytes(raw[: int(cut * len(raw))] if cut is not None else raw)


_TEMPLATE: dict[str, bytes] = {}
_FUZZ_EDITS = st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), min_size=1, max_size=4)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(target=st.sampled_from(["record", "rows"]), edits=_FUZZ_EDITS, cut=st.one_of(st.none(), st.floats(0, 1)))
def test_a_mutated_partial_output_resumes_correctly_or_is_one_error(tmp_path_factory, target, edits, cut):
    """Any mutation of the record or of the rows: one FileFormatError (or the signature refusal), or a resume
    whose rows are the plan's files, in order, once each, with probabilities that sum to 1 (read independently)."""
    import tracemalloc

    from common.files import FileFormatError, csv_value
    from training.inference.stream import PartialCSV, csv_header

    if not _TEMPLATE:  # one valid partial output, copied for each example (its fsyncs are slow)
        made = _partial(tmp_path_factory.mktemp("template"))
        _TEMPLATE.update(rows=made.path.read_bytes(), record=made.meta.read_bytes())
    folder = tmp_path_factory.getbasetemp() / "fuzz"
    folder.mkdir(exist_ok=True)
    partial = PartialCSV(folder / "o.csv", csv_header(_NAMES), _SIG)
    for name, path in (("rows", partial.path), ("record", partial.meta)):
        path.write_bytes(_fuzz(_TEMPLATE[name], edits, cut) if name == target else _TEMPLATE[name])
    tracemalloc.start()
    try:
        done, skipped = _resume(partial)
    except FileFormatError as exc:
        assert "o.csv.partial" in str(exc) and "\n" not in str(exc)
        return
    except ValueError as exc:
        assert "written with other settings" in str(exc) and "\n" not in str(exc)
        return
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak <= 16 << 20
    with open(partial.path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        rows = list(csv.reader(f))[1:]
    names = [csv_value(r[0]) for r in rows]
    assert set(names) == done and len(names) == len(done)
    assert [_PLAN_PATHS.index(n) for n in names] == sorted(_PLAN_PATHS.index(n) for n in names)
    assert all(r[1] in _NAMES and abs(sum(map(float, r[2:])) - 1) <= 1e-3 for r in rows)
    assert all(s in _PLAN_PATHS and s not in done for s, _ in skipped)


def _shards(folder, bad=None):
    """Two complete shards of ``_PLAN_PATHS`` (4 files each, one skipped in the second), as the processes leave
    them; ``bad(lines)`` edits the second's rows."""
    from common.files import csv_row, write_json_atomic
    from training.inference.stream import _csv_bytes, csv_header

    out = folder / "o.csv"
    paths = [folder / f"o.csv.shard-{k}-of-2" for k in range(2)]
    for k, path in enumerate(paths):
        files = [p for p in _PLAN_PATHS[4 * k: 4 * k + 4] if p != "b/-3.png"]
        lines = _csv_bytes([csv_row(csv_header(_NAMES)), *[csv_row([p, "a", 0.5, 0.5]) for p in files]]
                           ).splitlines(keepends=True)
        if k == 1 and bad:
            bad(lines)
        path.write_bytes(b"".join(lines))
        write_json_atomic(path.with_name(path.name + ".json"), {"skipped": [["b/-3.png", "bad"]] if k else []})
    return out, paths, [_plan(_PLAN_PATHS[:4]), _plan(_PLAN_PATHS[4:])]


@pytest.mark.parametrize("bad", [None, "row-of-the-other-shard", "row-twice", "row-missing", "probability-nan",
                                 "report-not-json"])
def test_shards_are_joined_only_when_every_row_is_the_plans(tmp_path, bad):
    from common.files import FileFormatError, csv_value
    from training.inference.stream import csv_header, join_shards

    edits = {"row-of-the-other-shard": lambda ls: ls.append(b"a/0.png,a,0.5,0.5\n"),
             "row-twice": lambda ls: ls.append(ls[-1]), "row-missing": lambda ls: ls.pop(),
             "probability-nan": lambda ls: ls.__setitem__(1, b"a/2.png,a,nan,0.5\n")}
    out, paths, plans = _shards(tmp_path, edits.get(bad))
    if bad == "report-not-json":
        paths[1].with_name(paths[1].name + ".json").write_text("{")
    if bad is None:
        join_shards(out, paths, plans, csv_header(_NAMES))
        with open(out, newline="") as f:
            assert [csv_value(r[0]) for r in csv.reader(f)][1:] == [p for p in _PLAN_PATHS if p != "b/-3.png"]
        return
    with pytest.raises(FileFormatError, match="o.csv.shard-1-of-2"):
        join_shards(out, paths, plans, csv_header(_NAMES))
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_processes_that_were_given_different_plans_are_named():
    from training.inference.stream import Classifier, StreamOptions, plan_disagreement, plan_fingerprint

    classifier = Classifier(None, None, None, list(_NAMES), decide=None)

    def fingerprint(batch_size=2, paths=_PLAN_PATHS, resume=False):
        return plan_fingerprint(paths, classifier, _SIG, chunk=batch_size, count=2, overwrite=False,
                                options=StreamOptions(batch_size=batch_size, resume=resume))

    assert plan_disagreement(np.stack([fingerprint(), fingerprint()])) is None
    message = plan_disagreement(np.stack([fingerprint(), fingerprint(3), fingerprint(paths=_PLAN_PATHS[1:],
                                                                                     resume=True)]))
    assert message.count("\n") == 0 and "process 1's chunking differs" in message
    assert "process 2's file list, options differ" in message


def test_a_job_whose_processes_disagree_stops_before_any_work(trained, tmp_path, monkeypatch):
    """Process 0 of a 2-process job whose peer was given another --batch-size (the exchange faked): one line,
    nothing written. (tests/experiments/test_jobs.py runs real jobs; a real mismatched one says the same
    line.)"""
    from training.inference import stream

    run, root = trained
    monkeypatch.setattr(stream, "process_count", lambda: 2)
    monkeypatch.setattr(stream, "process_index", lambda: 0)
    from training.loop import distributed

    monkeypatch.setattr(distributed, "process_count", lambda: 2)  # (predict imports them when it runs)
    monkeypatch.setattr(distributed, "process_index", lambda: 0)
    monkeypatch.setattr(stream, "gather_rows", lambda mine: np.concatenate([mine, mine[:, ::-1]]))
    with pytest.raises(ValueError, match="process 1's file list, chunking, model, options differ") as err:
        _predict(run, root, tmp_path / "p.csv")
    assert "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


_REFUSED = {"link-at-out": UnsafeOutputError, "dangling-link-at-partial": UnsafeOutputError,
            "fifo-at-record-with-resume": UnsafeOutputError, "finished-out-with-resume": FileExistsError,
            "unwritable-folder": PermissionError, "folder-is-a-file": NotADirectoryError}


@pytest.mark.parametrize("kind", list(_REFUSED))
def test_predict_refuses_a_link_fifo_or_finished_output_in_one_line(trained, tmp_path, kind):
    """Each is a user's error (one ``error:`` line from the command: tests/experiments/test_cli.py), raised as such
    before anything is written, its message one line."""
    run, root = trained
    out = tmp_path / "p.csv"
    victim = tmp_path / "victim.csv"
    victim.write_text("theirs\n")
    extra = {}
    if kind == "unwritable-folder":
        out = unwritable_folder(tmp_path) / "p.csv"  # for root (as CI runs), a folder root cannot write in either
    elif kind == "folder-is-a-file":
        out = victim / "p.csv"
    elif kind == "link-at-out":
        out.symlink_to(victim)
        extra = {"overwrite": True}
    elif kind == "dangling-link-at-partial":
        (tmp_path / "p.csv.partial").symlink_to(tmp_path / "elsewhere")
        extra = {"overwrite": True}
    elif kind == "fifo-at-record-with-resume":
        os.mkfifo(tmp_path / "p.csv.partial.json")
        extra = {"resume": True}
    else:
        out.write_text("finished\n")
        extra = {"resume": True}
    with pytest.raises(_REFUSED[kind]) as err:
        _predict(run, root, out, **extra)
    assert "\n" not in str(err.value), err.value
    assert victim.read_text() == "theirs\n" and not (tmp_path / "elsewhere").exists()
    if kind == "finished-out-with-resume":
        assert "never replaces it" in str(err.value) and out.read_text() == "finished\n"


def test_a_partial_output_with_a_row_for_another_file_is_never_merged(trained, tmp_path, monkeypatch):
    run, root = trained
    real = prefetch.load_image
    monkeypatch.setattr(prefetch, "load_image", lambda p, pre: (_ for _ in ()).throw(RuntimeError("stop"))
                        if p.name == "b3.png" else real(p, pre))
    with pytest.raises(RuntimeError):
        _predict(run, root, tmp_path / "p.csv")
    monkeypatch.undo()
    partial = tmp_path / "p.csv.partial"
    data = partial.read_bytes()
    assert b"a/a1.png" in data
    partial.write_bytes(data.replace(b"a/a1.png", b"a/z1.png"))  # the same length: within the recorded bytes
    with pytest.raises(FileFormatError, match="p.csv.partial: line 3, path: 'a/z1.png' is not a file of this "
                                              "prediction"):
        _predict(run, root, tmp_path / "p.csv", resume=True)
    assert not (tmp_path / "p.csv").exists() and partial.exists()


def test_names_a_spreadsheet_would_run_are_escaped_in_the_csv(trained, tmp_path):
    import shutil

    run, root = trained
    images = tmp_path / "images"
    images.mkdir()
    names = ["=cmd.png", "+1.png", "-2.png", "@3.png", "'4.png", "ok.png"]
    for name in names:
        shutil.copy(root / "a" / "a0.png", images / name)
    _predict(run, images, tmp_path / "p.csv")
    with open(tmp_path / "p.csv", newline="") as f:
        first = [r[0] for r in csv.reader(f)][1:]
    assert sorted(first) == sorted(n if n == "ok.png" else "'" + n for n in names)


@pytest.mark.parametrize("text, field", [
    ("path,predicted,p_a\nx.png,a,1\n", "header"), ("path,predicted,p_a,p_b\nx.png,c,0.5,0.5\n", "line 2"),
    ("path,predicted,p_a,p_b\nx.png,a,nan,0.5\n", "line 2"), ("path,predicted,p_a,p_b\nx.png,a,0.5\n", "line 2"),
    ("path,predicted,p_a,p_b,refer\nx.png,a,0.5,0.5,0\n", "refer")],
    ids=["class-column-missing", "predicted-not-a-class", "probability-nan", "probability-missing", "refer-again"])
def test_a_hostile_prediction_csv_given_to_referral_is_one_error_and_left_as_it_was(tmp_path, text, field):
    from training.inference.refer import add_refer_column

    path = tmp_path / "p.csv"
    path.write_text(text)
    with pytest.raises(FileFormatError, match=f"p.csv: {field}"):
        add_refer_column(path, ["a", "b"], fraction=0.5)
    assert path.read_text() == text


def test_a_model_whose_probabilities_are_not_finite_is_refused_naming_the_photo(tmp_path):
    """Broken weights (NaN out of the network) stop predict with one line naming the first such photo; no row
    of it is written, and the finished CSV is not made."""
    from PIL import Image

    from training.data.decoding import Preprocess
    from training.inference.stream import Classifier, StreamOptions, predict_folder

    for name in ("a.png", "b.png"):
        Image.new("RGB", (10, 10), (40, 90, 160)).save(tmp_path / name)
    files = [tmp_path / "a.png", tmp_path / "b.png"]

    def probs_fn(_params, x):
        p = np.full((len(x), 2), 0.5, np.float32)
        p[1] = np.nan  # the second photo of the chunk
        return p

    classifier = Classifier(probs_fn, None, Preprocess(8, "center", True), ["x", "y"],
                            decide=lambda p: np.argmax(p, axis=1), on_device=False)
    out = tmp_path / "out" / "p.csv"
    out.parent.mkdir()
    with pytest.raises(FloatingPointError, match="'b.png' are not finite"):
        predict_folder(files, tmp_path, classifier, out, signature={},
                       options=StreamOptions(batch_size=2, workers=1, progress=False))
    assert not out.exists()
