"""The one output writer (common.files): the user's umask, never through a link, never outside the output,
FIFOs and devices refused before anything opens, names from data made safe, one CSV formula rule."""

import csv
import os
import stat
from pathlib import Path

import pytest

from common.files import (
    UnsafeOutputError,
    atomic_open,
    csv_cell,
    csv_value,
    inside,
    output_dir,
    safe_name,
    save_npy_atomic,
    write_json_atomic,
)
from common.tables import pyplot, save_figure, write_table
from tests.helpers import unwritable_folder


@pytest.fixture
def umask():
    """Set the process's umask for one test, then restore it."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002], ids=["umask-022", "umask-077", "umask-002"])
def test_every_writer_gives_the_mode_open_would(tmp_path, umask, mask):
    import numpy as np

    umask(mask)
    with open(tmp_path / "by_open", "w"):
        pass
    write_json_atomic(tmp_path / "a.json", {"x": 1})
    save_npy_atomic(tmp_path / "a.npy", np.zeros(2))
    write_table([{"a": 1}], output_dir(tmp_path / "tables"), "t", title="t")
    fig, ax = pyplot().subplots(figsize=(1, 1))
    save_figure(fig, tmp_path / "f.png", dpi=20)
    written = [tmp_path / "a.json", tmp_path / "a.npy", tmp_path / "tables" / "t.csv", tmp_path / "tables" / "t.md",
               tmp_path / "f.png"]
    assert {p.name: _mode(p) for p in written} == {p.name: 0o666 & ~mask for p in written}
    assert _mode(tmp_path / "by_open") == 0o666 & ~mask
    assert not [p for p in tmp_path.rglob(".*.tmp")]


@pytest.mark.parametrize("kind", ["symlink", "dangling-symlink", "fifo", "folder"])
def test_a_link_fifo_or_folder_at_the_destination_is_refused_and_nothing_outside_is_touched(tmp_path, kind):
    victim = tmp_path / "victim.csv"
    victim.write_text("theirs\n")
    out = output_dir(tmp_path / "out")
    dest = out / "t.csv"
    if kind == "symlink":
        dest.symlink_to(victim)
    elif kind == "dangling-symlink":
        dest.symlink_to(tmp_path / "elsewhere.csv")
    elif kind == "fifo":
        os.mkfifo(dest)
    else:
        dest.mkdir()
    with pytest.raises(UnsafeOutputError, match="t.csv: is a") as err:
        with atomic_open(dest) as f:
            f.write("mine\n")
    assert "\n" not in str(err.value)
    assert victim.read_text() == "theirs\n" and not (tmp_path / "elsewhere.csv").exists()
    assert os.path.lexists(dest) and sorted(p.name for p in out.iterdir()) == ["t.csv"]  # no temporary left


def test_an_output_folder_that_is_a_link_or_a_file_is_refused(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "file").write_text("")
    for name in ("link", "file"):
        with pytest.raises(UnsafeOutputError, match=name):
            output_dir(tmp_path / name)


@pytest.mark.parametrize("name", ["/../../victim", "..", "a/b", "a\\b", ".hidden", "", "x\x00y", "é\nrater"])
def test_names_from_data_stay_one_plain_name_inside_the_folder(tmp_path, name):
    safe = safe_name(name)
    assert safe and "/" not in safe and "\\" not in safe and not safe.startswith(".") and safe.isprintable()
    assert inside(tmp_path, safe).parent == tmp_path
    if name in ("", "..") or set(name) & set("/\\\x00"):
        with pytest.raises(UnsafeOutputError):
            inside(tmp_path, name)


@pytest.mark.parametrize("text", ["=HYPERLINK(\"x\")", "+1", "-2+3", "@SUM(A1)", "\tx", "\rx", "'quoted", "''",
                                  "plain.jpg", "", "a=b", "-"])
def test_csv_cells_that_a_spreadsheet_would_run_are_escaped_and_read_back_exactly(text):
    cell = csv_cell(text)
    assert csv_value(cell) == text
    assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
    assert csv_cell(-1.5) == -1.5 and csv_cell(3) == 3  # numbers stay numbers


def test_tables_escape_formulas_in_their_csv(tmp_path):
    write_table([{"name": "=cmd|' /C calc'!A0", "n": -1}], tmp_path, "t", title="t")
    with open(tmp_path / "t.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows == [["name", "n"], ["'=cmd|' /C calc'!A0", "-1"]]


def _agreement_inputs(tmp_path, rater="rater1"):
    preds = tmp_path / "p.csv"
    preds.write_text("path,predicted\n'=a.jpg,Probable\nb.jpg,Improbable\n'-c.jpg,Possible\n")  # as predict writes
    ratings = tmp_path / "r.csv"
    with open(ratings, "w", newline="") as f:
        csv.writer(f).writerows([["path", rater], ["=a.jpg", "Probable"], ["b.jpg", "Improbable"],
                                 ["-c.jpg", "Possible"]])
    return preds, ratings


def test_agreement_reads_back_escaped_names_and_keeps_a_hostile_rater_column_inside_out(tmp_path):
    from training.runs.agreement import compare_ratings

    preds, ratings = _agreement_inputs(tmp_path, rater="/../../victim")
    out = tmp_path / "deep" / "er" / "out"
    rows = compare_ratings(preds, ratings, out).rows
    assert rows[0].agreement == 1.0  # the escaped '=a.jpg matched the rating's =a.jpg
    written = {p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()}
    assert written - {"p.csv", "r.csv"} == {f"deep/er/out/{n}" for n in (
        "agreement.md", "agreement.csv", "confusion_model_vs__.._.._victim.md",
        "confusion_model_vs__.._.._victim.csv")}


def test_names_from_data_fit_a_file_name_in_bytes_whatever_their_script(tmp_path):
    """Two raters named in 90 Chinese characters each (270 bytes of UTF-8): their confusion table's name, built
    from both, is still a name the file system takes (≤ 255 bytes), where it once stopped agreement with
    'File name too long'."""
    from training.runs.agreement import compare_ratings

    assert len(safe_name("树" * 90, limit=60).encode()) <= 60 and safe_name("a" * 90, limit=60) == "a" * 60
    preds, _ = _agreement_inputs(tmp_path)
    ratings = tmp_path / "r2.csv"
    with open(ratings, "w", newline="") as f:
        csv.writer(f).writerows([["path", "树" * 90, "林" * 90], ["=a.jpg", "Probable", "Possible"],
                                 ["b.jpg", "Improbable", "Improbable"], ["-c.jpg", "Possible", "Possible"]])
    report = compare_ratings(preds, ratings, tmp_path / "out")
    assert len(report.confusion_tables) == 3
    assert all(len(Path(t).name.encode()) <= 255 and Path(t).is_file() for t in report.confusion_tables)


_AGREEMENT_REFUSES = {"symlink": UnsafeOutputError, "fifo": FileExistsError, "unwritable": PermissionError,
                      "out-is-a-file": UnsafeOutputError}


@pytest.mark.parametrize("kind", list(_AGREEMENT_REFUSES))
def test_agreement_refuses_a_link_fifo_or_unwritable_output_in_one_line(tmp_path, kind):
    """A user's error (the command prints it as one ``error:`` line: tests/experiments/test_cli.py), one line."""
    from training.runs.agreement import compare_ratings

    preds, ratings = _agreement_inputs(tmp_path)
    out = output_dir(tmp_path / "out")
    victim = tmp_path / "victim"
    victim.write_text("theirs")
    if kind == "symlink":
        (out / "agreement.csv").symlink_to(victim)
    elif kind == "fifo":
        os.mkfifo(out / "agreement.md")
    elif kind == "out-is-a-file":
        out = victim
    else:
        out = unwritable_folder(tmp_path)  # for root (as CI runs), a folder root cannot write in either
    try:
        with pytest.raises(_AGREEMENT_REFUSES[kind]) as err:
            compare_ratings(preds, ratings, out)
    finally:
        for folder in tmp_path.iterdir():
            if folder.is_dir() and not folder.is_symlink():
                folder.chmod(0o700)
    assert "\n" not in str(err.value), err.value
    assert victim.read_text() == "theirs"


_EXPORT_REFUSES = {"symlink": UnsafeOutputError, "dangling-symlink": UnsafeOutputError, "fifo": UnsafeOutputError,
                   "folder-is-a-file": NotADirectoryError}


@pytest.mark.parametrize("kind", list(_EXPORT_REFUSES))
def test_export_refuses_a_link_or_fifo_at_out_before_any_work(tmp_path, kind):
    """Refused before the (missing) run is read, as a user's error naming the output, in one line."""
    from training.runs.export import ExportOptions, export_onnx

    out = tmp_path / "model.onnx"
    if kind == "folder-is-a-file":
        (tmp_path / "file").write_text("")
        out = tmp_path / "file" / "model.onnx"
    elif kind == "fifo":
        os.mkfifo(out)
    else:
        out.symlink_to(tmp_path / ("victim" if kind == "symlink" else "nowhere"))
        (tmp_path / "victim").write_text("theirs") if kind == "symlink" else None
    with pytest.raises(_EXPORT_REFUSES[kind], match="model.onnx") as err:
        export_onnx(tmp_path / "no-run", out, ExportOptions(overwrite=True))
    assert "\n" not in str(err.value) and "no-run" not in str(err.value)
    assert not (tmp_path / "nowhere").exists()


def test_a_run_replaced_with_overwrite_keeps_the_folder_mode_the_umask_gives(tmp_path, umask):
    from training.runs.folder import RunFolder

    target = output_dir(tmp_path / "run")
    (target / "old.txt").write_text("old")
    with RunFolder(target, overwrite=True).writing({"config": {}, "data": {}}) as work:
        write_json_atomic(work / "new.json", {})
    assert sorted(p.name for p in target.iterdir()) == ["new.json", "run.json"]
    assert _mode(target) == 0o755 and _mode(target / "new.json") == 0o644  # mkdtemp alone gives 0700
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(UnsafeOutputError, match="link"):
        RunFolder(tmp_path / "link", resume=True).check()
