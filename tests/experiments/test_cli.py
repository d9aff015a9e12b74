"""The command-line tools under misuse: arguments checked first, one line per user error, nothing lost."""

import json
import os
import sys

import numpy as np
import pytest
from PIL import Image

from experiments import predict, train
from tests.helpers import make_photos, review_photos, write_csv
from tests.helpers import review_predictions_csv as predictions_csv
from training.evaluation.review import PAGE
from training.loop.config import get_config


@pytest.mark.parametrize(("flag", "value"), [("--epochs", "0"), ("--batch-size", "0"), ("--lr", "nan"),
                                             ("--lr", "-1"), ("--image-size", "0"), ("--folds", "0"),
                                             ("--val-fraction", "1.5"), ("--target-recall", "Probable"),
                                             ("--workers", "100000000")],
                         ids=["epochs-0", "batch-0", "lr-nan", "lr-negative", "size-0", "folds-0", "val-1.5",
                              "recall-no-equals", "workers-1e8"])
def test_bad_arguments_stop_before_any_work_with_one_line(flag, value, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        train.main(["--data", str(tmp_path / "missing"), flag, value, "--out", str(out)])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "error: argument " + flag in err[0] and value in err[0], err  # no usage block
    assert not out.exists()  # nothing was done


@pytest.mark.parametrize("flags, message", [
    (["--preset", "lab-2020", "--refit"], "refit trains again for the epoch chosen on an inner split"),
    (["--finetune", "all", "--top-views", "2"], "top_views=2 caches the frozen blocks below a fine-tuned top"),
    (["--preset", "lab-2020", "--calibration", "temperature"], "calibration and referral are fitted on inner"),
], ids=["refit-with-lab-2020", "top-views-with-all", "calibration-with-lab-2020"])
def test_flags_that_do_not_go_together_stop_before_any_work_with_one_line(flags, message, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        train.main(["--data", str(tmp_path / "missing"), *flags, "--out", str(out)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and ": error: " in last and message in last
    assert not out.exists()


def test_user_errors_print_one_line_without_traceback_and_debug_shows_it(tmp_path, capsys):
    missing = tmp_path / "nowhere"
    with pytest.raises(SystemExit) as info:
        train.main(["--data", str(missing), "--out", str(tmp_path / "r"), "--no-progress"])
    assert info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(missing) in err[0]
    with pytest.raises(FileNotFoundError):
        train.main(["--data", str(missing), "--out", str(tmp_path / "r"), "--no-progress", "--debug"])


def test_an_image_too_small_for_model1_is_named(tmp_path, capsys):
    root = make_photos(tmp_path / "photos")
    with pytest.raises(SystemExit):
        train.main(["--data", str(root), "--preset", "lab-2020", "--image-size", "8", "--out", str(tmp_path / "r"),
                    "--cache-dir", str(tmp_path / "c"), "--no-progress"])
    assert "image size 8 is too small for Model 1" in capsys.readouterr().err


def test_a_single_class_data_set_is_refused_before_any_work(tmp_path, capsys):
    root = make_photos(tmp_path / "photos", labels=("only",))
    with pytest.raises(SystemExit) as info:
        train.main(["--data", str(root), "--preset", "lab-2020", "--image-size", "8", "--out", str(tmp_path / "r"),
                    "--cache-dir", str(tmp_path / "c"), "--no-progress"])
    assert info.value.code == 2 and "one class ('only')" in capsys.readouterr().err
    assert not (tmp_path / "r").exists() and not (tmp_path / "c").exists()


@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
def test_spreadsheet_manifest_with_bom_is_read(newline, tmp_path):
    from training.data.discovery import discover

    make_photos(tmp_path / "photos", n=3)
    manifest = tmp_path / "ratings.csv"
    lines = ["path,label"] + [f"photos/{lab}/{lab}{i}.png,{lab}" for lab in "ab" for i in range(3)]
    manifest.write_bytes(("\ufeff" + newline.join(lines) + newline).encode("utf-8"))
    items = discover(manifest)
    assert len(items) == 6 and {label for _, label in items} == {"a", "b"}


def test_predict_rows_for_copies_atomic_csv_and_odd_names(tiny_run, tmp_path, capsys):
    run, root = tiny_run
    new = tmp_path / "new"
    (new / "siteA").mkdir(parents=True)
    (new / "siteB").mkdir()
    photo = (root / "a" / "a0.png").read_bytes()
    (new / "siteA" / "IMG_0001.png").write_bytes(photo)
    (new / "siteB" / "IMG_0001.png").write_bytes(photo)  # a byte-identical copy
    odd = os.fsencode(str(new / "siteB")) + b"/caf\xe9.png"  # not valid UTF-8
    if sys.platform.startswith("linux"):
        with open(odd, "wb") as f:
            f.write((root / "b" / "b0.png").read_bytes())
    out = tmp_path / "p.csv"
    predict.main(["--checkpoint", str(run), "--images", str(new), "--out", str(out), "--no-progress"])
    text = out.read_bytes()
    assert text.count(b"IMG_0001.png") == 2  # each copy has its row
    assert text.count(b"\n") == 1 + 2 + (1 if sys.platform.startswith("linux") else 0)
    before = out.read_bytes()
    with pytest.raises(SystemExit):  # a failing run leaves the earlier CSV as it was
        predict.main(["--checkpoint", str(run), "--images", str(tmp_path / "missing"), "--out", str(out),
                      "--overwrite"])
    assert out.read_bytes() == before
    assert "error: photo or folder not found" in capsys.readouterr().err


def test_predict_prints_how_many_photos_it_referred(tiny_run, tmp_path, capsys):
    """The closing line counts the photos --refer marked (tests/training/inference/test_predict.py checks which)."""
    run, root = tiny_run
    predict.main(["--checkpoint", str(run), "--images", str(root), "--out", str(tmp_path / "r.csv"), "--batch-size",
                  "3", "--no-progress", "--refer", "0.25"])
    assert "4 of 14 referred to a person" in capsys.readouterr().out


# ---- run folders: refused, resumed or replaced whole ----------------------------------------------------------

def _train_args(root, out, tmp_path, *extra):
    return ["--data", str(root), "--preset", "lab-2020", "--image-size", "16", "--epochs", "1", "--out", str(out),
            "--cache-dir", str(tmp_path / "c"), "--no-progress", *extra]


def _snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_folder_holding_a_run_is_refused_without_resume_and_nothing_is_written(tiny_run_copy, tmp_path, capsys):
    run, root = tiny_run_copy
    before = _snapshot(run)
    with pytest.raises(SystemExit) as info:
        train.main(_train_args(root, run, tmp_path, "--image-size", "20"))
    assert info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds a training run" in err[0] and "--resume" in err[0] and "--overwrite" in err[0]
    assert _snapshot(run) == before


def test_resume_with_changed_settings_names_the_fields_and_changes_nothing(tiny_run_copy, tmp_path, capsys):
    run, root = tiny_run_copy
    before = _snapshot(run)
    with pytest.raises(SystemExit):
        train.main(_train_args(root, run, tmp_path, "--image-size", "20", "--lr", "0.01", "--resume"))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "image_size: 16 → 20" in err[0] and "learning_rate: 0.001 → 0.01" in err[0]
    assert _snapshot(run) == before


def test_resume_with_other_data_is_refused(tiny_run_copy, tmp_path, capsys):
    run, root = tiny_run_copy
    (root / "a" / "a0.png").rename(root / "b" / "moved.png")  # one photo relabelled (in the test's own copy)
    with pytest.raises(SystemExit):
        train.main(_train_args(root, run, tmp_path, "--resume"))
    assert "data fingerprint" in capsys.readouterr().err


def test_overwrite_replaces_the_run_whole_and_a_failure_keeps_the_old_one(tiny_run_copy, tmp_path, monkeypatch,
                                                                          capsys):
    from experiments import predict
    from training.runs import folds

    run, root = tiny_run_copy
    (run / "notes-from-the-old-run.txt").write_text("old")
    before = _snapshot(run)

    def crash(*args, **kwargs):
        raise ValueError("simulated failure in the middle of training")

    monkeypatch.setattr(folds, "run_folds", crash)  # the command imports it when it runs
    with pytest.raises(SystemExit):
        train.main(_train_args(root, run, tmp_path, "--seed", "1", "--overwrite"))
    assert _snapshot(run) == before  # the old run, untouched
    assert not list(run.parent.glob(".run.new-*"))  # no staging folder left
    monkeypatch.undo()
    train.main(_train_args(root, run, tmp_path, "--seed", "1", "--overwrite"))
    assert not (run / "notes-from-the-old-run.txt").exists()
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "complete" and record["config"]["seed"] == 1
    predict.main(["--checkpoint", str(run), "--images", str(root), "--out", str(tmp_path / "p.csv"),
                  "--no-progress"])
    assert (tmp_path / "p.csv").read_text().count("\n") == 1 + 14


def test_a_non_empty_folder_without_a_run_is_refused(tmp_path, capsys):
    root = make_photos(tmp_path / "photos")
    out = tmp_path / "documents"
    out.mkdir()
    (out / "thesis.md").write_text("mine")
    with pytest.raises(SystemExit):
        train.main(_train_args(root, out, tmp_path))
    assert "is not empty and holds no training run" in capsys.readouterr().err
    assert (out / "thesis.md").read_text() == "mine" and len(list(out.iterdir())) == 1


# ---- photos found recursively; everything left out is counted -----------------------------------------------

@pytest.mark.skipif(not hasattr(os, "symlink") or sys.platform == "win32", reason="needs POSIX symbolic links")
def test_class_folders_are_read_recursively_and_every_left_out_entry_is_reported(tmp_path):
    from training.data.dataset import load_dataset
    from training.data.decoding import Preprocess

    root = make_photos(tmp_path / "photos", n=2)
    (root / "a" / "2021").mkdir()
    (root / "a" / "a0.png").rename(root / "a" / "2021" / "a0.png")  # Probable/2021/*.jpg
    (root / "a" / "x.jpg").mkdir()  # a folder named like a photo
    (root / "a" / "broken.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (root / "a" / "loop").symlink_to(root)  # back to the data root
    (root / "b" / "self.jpg").symlink_to(root / "b" / "self.jpg")  # a link to itself
    (root / "b" / "notes.txt").write_text("not a photo")
    (root / "stray.png").write_bytes((root / "b" / "b0.png").read_bytes())  # beside the class folders
    data = load_dataset(root, Preprocess(image_size=8, rgb=True), cache_dir=tmp_path / "c", progress=False)
    assert sorted(os.path.relpath(p, root) for p in data.paths) == ["a/2021/a0.png", "a/a1.png", "b/b0.png",
                                                                    "b/b1.png"]
    report = data.report.as_dict()
    reasons = {os.path.relpath(p, root): r for p, r in report["ignored"]}
    assert reasons["a/x.jpg"].startswith("a folder named like a photo")
    assert reasons["a/broken.jpg"] == "broken symbolic link"
    assert reasons["a/loop"].startswith("symbolic link loop") and reasons["b/self.jpg"] == "symbolic link loop"
    assert reasons["b/notes.txt"].startswith("not a photo") and reasons["stray.png"] == "not in a class folder"
    assert sum(report["ignored_counts"].values()) == len(report["ignored"]) == 6



@pytest.mark.skipif(not hasattr(os, "symlink") or sys.platform == "win32", reason="needs POSIX symbolic links")
def test_a_deep_tree_and_links_reaching_a_folder_many_ways_are_walked_once(tmp_path):
    # the walk recursed (1,200 folders deep: RecursionError) and followed every route of links (two links a
    # level, 24 levels: 2^24 visits, a hang)
    from training.data.discovery import walk_files

    deep = tmp_path / "deep"
    deep.mkdir()
    fds = [os.open(deep, os.O_RDONLY)]
    try:
        for _ in range(1_200):  # by relative steps: the whole path is longer than one call may name
            os.mkdir("d", dir_fd=fds[-1])
            fds.append(os.open("d", os.O_RDONLY, dir_fd=fds[-1]))
        os.close(os.open("x.jpg", os.O_CREAT | os.O_WRONLY, dir_fd=fds[-1]))
        ignored = []
        assert [p.name for p in walk_files(deep, ignored)] == ["x.jpg"] and not ignored
    finally:  # removed here, bottom up: shutil.rmtree (pytest's clean-up) recurses too
        if len(fds) == 1201:
            os.unlink("x.jpg", dir_fd=fds[-1])
        for child, parent in zip(fds[:0:-1], fds[-2::-1], strict=True):
            os.close(child)
            os.rmdir("d", dir_fd=parent)
        os.close(fds[0])
    dag = tmp_path / "dag"
    (dag / "L0").mkdir(parents=True)
    for i in range(24):
        (dag / f"L{i + 1}").mkdir(parents=True)
        for k in range(2):
            (dag / f"L{i}" / f"s{k}").symlink_to(dag / f"L{i + 1}", target_is_directory=True)
    (dag / "L24" / "x.jpg").write_bytes(b"x")
    ignored = []
    assert [p.name for p in walk_files(dag / "L0", ignored)] == ["x.jpg"]
    assert len(ignored) == 24 and all(r.startswith("a link to a folder already read") for _, r in ignored)

# ---- agreement: matched by path --------------------------------------------------------------------------------

def _write_csv(path, header, rows):
    path.write_text("\n".join([",".join(header), *[",".join(r) for r in rows]]) + "\n", encoding="utf-8")
    return path


def test_agreement_matches_photos_by_path_not_by_name(tmp_path):
    from experiments import agreement

    preds = _write_csv(tmp_path / "p.csv", ["path", "predicted"],
                       [["siteA/IMG_0001.jpg", "Probable"], ["siteB/IMG_0001.jpg", "Improbable"],
                        ["siteB/IMG_0002.jpg", "Possible"]])
    ratings = _write_csv(tmp_path / "r.csv", ["path", "rater1"],
                         [["siteA/IMG_0001.jpg", "Probable"], ["siteB/IMG_0001.jpg", "Improbable"],
                          ["IMG_0002.jpg", "Possible"]])  # a unique bare name is enough
    args = ["--predictions", str(preds), "--ratings", str(ratings), "--out", str(tmp_path / "o")]
    rows = agreement.main(args)
    assert rows[0]["agreement"] == 1.0 and rows[0]["cohen_kappa"] == 1.0
    before = (tmp_path / "o" / "agreement.md").read_bytes()
    with pytest.raises(SystemExit) as info:  # the earlier report is the user's: replaced only when asked
        agreement.main(args)
    assert info.value.code == 1 and (tmp_path / "o" / "agreement.md").read_bytes() == before
    assert agreement.main([*args, "--overwrite"])[0]["agreement"] == 1.0


def test_agreement_refuses_an_ambiguous_name_and_a_bad_map(tmp_path, capsys):
    from experiments import agreement

    preds = _write_csv(tmp_path / "p.csv", ["path", "predicted"],
                       [["siteA/IMG_0001.jpg", "Probable"], ["siteB/IMG_0001.jpg", "Improbable"]])
    ratings = _write_csv(tmp_path / "r.csv", ["path", "rater1"], [["IMG_0001.jpg", "Probable"]])
    with pytest.raises(SystemExit) as info:
        agreement.main(["--predictions", str(preds), "--ratings", str(ratings), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 1 and len(err) == 1
    assert "'IMG_0001.jpg' matches more than one" in err[0] and "siteA/IMG_0001.jpg" in err[0] \
        and "siteB/IMG_0001.jpg" in err[0]
    with pytest.raises(SystemExit) as info:
        agreement.main(["--predictions", str(preds), "--ratings", str(ratings), "--map", "Probable"])
    assert info.value.code == 2 and "argument --map: expected OLD=NEW" in capsys.readouterr().err



def test_agreement_rater_names_never_leave_the_output(tmp_path):
    # a rater column named '/../../victim' was a file name: agreement wrote victim.{md,csv} two folders up
    from experiments import agreement

    preds = _write_csv(tmp_path / "p.csv", ["path", "predicted"], [["a.jpg", "Probable"], ["b.jpg", "Improbable"]])
    ratings = _write_csv(tmp_path / "r.csv", ["path", "/../../victim", "..\\x"],
                         [["a.jpg", "Probable", "Probable"], ["b.jpg", "Improbable", "Possible"]])
    out = tmp_path / "o" / "sub"
    agreement.main(["--predictions", str(preds), "--ratings", str(ratings), "--out", str(out)])
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["sub"]
    v, x = "_.._.._victim", "_.._x"  # common.files.safe_name: one plain file-name part each
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{n}.{e}" for n in ("agreement", f"confusion_model_vs_{v}", f"confusion_model_vs_{x}", f"confusion_{v}_vs_{x}")
        for e in ("md", "csv"))

# ---- damaged checkpoints and every command's one-line errors --------------------------------------------------

def _truncate_biggest_array(run):
    biggest = max((p for p in (run / "checkpoints" / "best").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    with open(biggest, "r+b") as f:
        f.truncate(biggest.stat().st_size // 3)


@pytest.mark.parametrize("damage", ["garbage-config", "missing-step", "normalization-width"])
def test_a_damaged_checkpoint_is_named_in_one_line(damage, tiny_run_copy, tmp_path, capsys):
    import json
    import shutil

    from experiments import predict

    run, root = tiny_run_copy
    if damage == "garbage-config":
        (run / "checkpoints" / "config.json").write_text('{"config": ')
        named = "config.json"
    elif damage == "normalization-width":  # was NumPy's "operands could not be broadcast", naming nothing
        saved = json.loads((run / "checkpoints" / "config.json").read_text())
        saved["normalization"] = {"mean": [0.5] * 5, "std": [0.25] * 5}  # a grayscale model: one channel
        (run / "checkpoints" / "config.json").write_text(json.dumps(saved))
        named = "config.json: normalization: 5 values where the model has 1 input channels"
    else:
        shutil.rmtree(run / "checkpoints" / "best")
        named = "'best' checkpoint"
    with pytest.raises(SystemExit) as info:
        predict.main(["--checkpoint", str(run), "--images", str(root), "--out", str(tmp_path / "p.csv")])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 1 and len(err) == 1 and err[0].startswith("error: ") and named in err[0]
    assert not (tmp_path / "p.csv").exists()


def test_a_truncated_checkpoint_array_gives_one_line_and_nothing_after_it(tiny_run_copy, tmp_path):
    """As a user runs it, in its own process: orbax's reader threads also fail on the truncated file, and
    nothing of theirs may follow the one-line error (not even at interpreter exit)."""
    import subprocess

    run, root = tiny_run_copy
    _truncate_biggest_array(run)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-m", "experiments.predict", "--checkpoint", str(run), "--images",  # noqa: S603 (argv is this interpreter and paths the test made; no shell)
                           str(root), "--out", str(tmp_path / "p.csv"), "--no-progress"],
                          cwd=repo, capture_output=True, text=True, timeout=300)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc.stderr
    assert len(err) == 1 and err[0].startswith("error: ") and "checkpoints/best" in err[0], proc.stderr
    assert proc.stdout == "" and not (tmp_path / "p.csv").exists()


def test_reader_noise_is_dropped_from_the_start_of_a_read_and_nothing_else_is(monkeypatch):
    """TensorStore's threads may report "Event loop is closed" before a failed read reaches the caller
    (CI once printed one between the error line and exit): the filter is on for the whole read, and after a
    failure; any other thread's error, and noise outside a read before any failure, still get through."""
    import logging
    import threading
    from pathlib import Path

    from training.loop import checkpoints

    seen = []
    for owner, name in [(sys, "excepthook"), (sys, "unraisablehook"), (threading, "excepthook")]:
        monkeypatch.setattr(owner, name, getattr(owner, name))  # restored after the test
    monkeypatch.setattr(threading, "excepthook", lambda args: seen.append(type(args.exc_value).__name__))
    monkeypatch.setattr(logging.getLogger("asyncio"), "filters", [])
    monkeypatch.setattr(checkpoints, "_filter_installed", False)
    monkeypatch.setattr(checkpoints, "_failed", False)

    def in_thread(exc):
        def fail():
            raise exc
        t = threading.Thread(target=fail)
        t.start()
        t.join()

    in_thread(RuntimeError("Event loop is closed"))  # no read yet, no failure: passed on
    with pytest.raises(checkpoints.CheckpointError, match="ckpt/best/3: .*KeyError"):
        with checkpoints._naming(Path("ckpt/best/3")):
            in_thread(RuntimeError("Event loop is closed"))  # during the read, before the failure: dropped
            in_thread(ZeroDivisionError())  # not the reader's: passed on
            raise KeyError("array")
    in_thread(RuntimeError("Event loop is closed"))  # after a failure: dropped
    assert seen == ["RuntimeError", "ZeroDivisionError"]


COMMANDS = {
    "predict": ["--checkpoint", "{missing}", "--images", "{missing}"],
    "explain": ["--checkpoint", "{missing}", "--images", "{missing}"],
    "agreement": ["--predictions", "{missing}", "--ratings", "{missing}"],
    "review": ["--predictions", "{missing}", "--images", "{missing}"],
    "mnist_cnn": ["--data", "{missing}", "--epochs", "1"],
    "train_mlp": ["--data", "{missing}", "--epochs", "1"],
    "architectures": ["--data", "{missing}", "--epochs", "1", "--folds", "2"],
    "backbones": ["--data", "{missing}", "--folds", "2"],
    "results_table": ["--data", "{missing}", "--max-epochs", "1"],
    "train": ["--data", "{missing}"],
    "export": ["--checkpoint", "{missing}"],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_names_a_missing_file_in_one_line(command, tmp_path, capsys):
    import importlib

    module = importlib.import_module(f"experiments.{command}")
    missing = str(tmp_path / "no-such-file")
    argv = [a.format(missing=missing) for a in COMMANDS[command]] + ["--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as info:
        module.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 1 and len(err) == 1 and err[0].startswith("error: ") and missing in err[0]
    assert not (tmp_path / "out").exists()  # a failed command leaves no empty folder behind


@pytest.mark.parametrize(("command", "argv"), [
    ("train_mlp", ["--eta", "nan"]), ("train_mlp", ["--batch-size", "0"]),
    ("mnist_cnn", ["--data", "x", "--epochs", "0"]),
    ("compare_gradients", ["--batch-size", "-3"]), ("backprop_depth", ["--depths", "0"]),
    ("architectures", ["--data", "x", "--image-size", "4"]), ("results_table", ["--data", "x", "--image-size", "0"]),
    ("backbones", ["--data", "x", "--folds", "1"]),
    ("predict", ["--checkpoint", "x", "--images", "y", "--refer", "1.5"]),
], ids=["mlp-eta-nan", "mlp-batch-0", "mnist-epochs-0", "compare-batch-negative", "depth-0", "arch-size-4",
        "table-size-0", "backbones-folds-1", "predict-refer-1.5"])
def test_bad_arguments_of_every_command_exit_2_before_any_work(command, argv, tmp_path, capsys):
    import importlib

    module = importlib.import_module(f"experiments.{command}")
    with pytest.raises(SystemExit) as info:
        module.main([*argv, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and "error: argument " + argv[-2] in err[-1]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_sigkill_at_a_random_point_then_resume_gives_the_uninterrupted_losses(tmp_path):
    """Training is killed (SIGKILL: no cleanup runs) at a random moment, possibly inside a checkpoint write;
    ``--resume`` then finishes with exactly the losses of a run that was never interrupted."""
    import signal
    import subprocess
    import time

    root = make_photos(tmp_path / "photos", n=8)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": repo, "JAX_PLATFORMS": "cpu"}

    def command(out, *extra):
        return [sys.executable, "-m", "experiments.train", "--data", str(root), "--preset", "lab-2020",
                "--image-size", "16", "--epochs", "8", "--batch-size", "4", "--out", str(out),
                "--cache-dir", str(tmp_path / "c"), "--no-progress", *extra]

    start = time.perf_counter()
    subprocess.run(command(tmp_path / "whole"), env=env, cwd=repo, check=True, capture_output=True)  # noqa: S603 (argv is this interpreter and paths the caller made; no shell)
    duration = time.perf_counter() - start
    seed = int.from_bytes(os.urandom(4), "little")
    delay = np.random.default_rng(seed).uniform(0.3 * duration, duration)
    proc = subprocess.Popen(command(tmp_path / "killed"), env=env, cwd=repo, stdout=subprocess.DEVNULL,  # noqa: S603 (argv is this interpreter and paths the caller made; no shell)
                            stderr=subprocess.DEVNULL)
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run(command(tmp_path / "killed", "--resume"), env=env, cwd=repo, capture_output=True,  # noqa: S603 (argv is this interpreter and paths the caller made; no shell)
                             text=True)
    assert resumed.returncode == 0, f"kill after {delay:.2f} s (seed {seed}): {resumed.stderr[-2000:]}"
    whole = json.loads((tmp_path / "whole" / "history.json").read_text())
    again = json.loads((tmp_path / "killed" / "history.json").read_text())
    assert [h["epoch"] for h in again] == list(range(1, 9))
    np.testing.assert_allclose([h["train_loss"] for h in again], [h["train_loss"] for h in whole], rtol=1e-6,
                               err_msg=f"killed after {delay:.2f} s of {duration:.2f} s (seed {seed})")
    assert json.loads((tmp_path / "killed" / "run.json").read_text())["status"] == "complete"


# ---- every command the same way: photo files or folders, explain = predict, flags checked first -------------------

ALL_COMMANDS = ("agreement", "architectures", "backbones", "backprop_depth", "compare_gradients", "explain", "export",
                "main", "mnist_cnn", "predict", "results_table", "train", "train_mlp")


def test_predict_and_explain_take_a_photo_file_or_folders_and_agree(tiny_run, tmp_path, capsys):
    """One photo file gives one row named as given; a folder's photos are named relative to it; explain's
    probabilities, decisions and paths are predict's (the same function, on the same photos)."""
    from experiments import explain
    from tests.helpers import read_predictions

    run, root = tiny_run
    one = root / "a" / "a0.png"
    predict.main(["--checkpoint", str(run), "--images", str(one), "--out", str(tmp_path / "one.csv"),
                  "--no-progress"])
    assert [r["path"] for r in read_predictions(tmp_path / "one.csv")] == [one.as_posix()]
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(f"1 predictions written to {tmp_path}")

    extra = tmp_path / "extra.png"
    extra.write_bytes((root / "a" / "a1.png").read_bytes())
    images = ["--images", str(root / "b"), str(extra)]
    predict.main(["--checkpoint", str(run), *images, "--out", str(tmp_path / "mix.csv"), "--no-progress"])
    predicted = read_predictions(tmp_path / "mix.csv")
    assert [r["path"] for r in predicted] == [f"b{i}.png" for i in range(7)] + [extra.as_posix()]
    rows = explain.main(["--checkpoint", str(run), *images, "--out", str(tmp_path / "x"), "--no-progress",
                         "--methods", "grad_cam", "saliency"])
    assert [r["path"] for r in rows] == [r["path"] for r in predicted]
    assert [r["predicted"] for r in rows] == [r["predicted"] for r in predicted]
    probs = [k for k in predicted[0] if k.startswith("p_")]
    assert np.abs(np.array([[r[k] for k in probs] for r in rows])
                  - np.array([[r[k] for k in probs] for r in predicted])).max() <= 1e-6
    assert read_predictions(tmp_path / "x" / "explanations.csv")[0]["path"] == "b0.png"
    for r in rows:
        with Image.open(r["png"]) as png:
            assert png.size[0] > 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("8 photos explained") and str(tmp_path / "x" / "explanations.csv") in last


def test_two_photos_with_one_name_are_refused_and_a_file_given_twice_is_one_row(tmp_path):
    from training.data.discovery import photo_inputs

    make_photos(tmp_path / "site1", labels=("x",), n=1)
    make_photos(tmp_path / "site2", labels=("x",), n=1)
    (tmp_path / "site2" / "x" / "x0.png").write_bytes(b"other bytes")
    with pytest.raises(ValueError, match="'x0.png'.*common parent folder"):
        photo_inputs([tmp_path / "site1" / "x", tmp_path / "site2" / "x"])
    photo = tmp_path / "site1" / "x" / "x0.png"
    assert photo_inputs([photo, photo, tmp_path / "site1" / "x"]) == [(photo, photo.as_posix())]
    with pytest.raises(FileNotFoundError, match="photo or folder not found: .*nowhere"):
        photo_inputs([tmp_path / "nowhere"])


def test_a_bad_flag_is_reported_by_every_command_before_jax_is_imported(tmp_path):
    """Each command parses its arguments first: a bad flag costs no import of JAX, Flax, scikit-learn or the
    library (checked in a fresh interpreter, in the modules it loaded, not by a timing)."""
    import subprocess

    code = f"""
import contextlib, importlib, io, sys
for name in {ALL_COMMANDS!r}:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.suppress(SystemExit):
        importlib.import_module("experiments." + name).main(["--no-such-flag", "--no-progress"])
    assert "error:" in err.getvalue().strip().splitlines()[-1], (name, err.getvalue())
heavy = ("jax", "flax", "optax", "orbax", "sklearn", "matplotlib", "models", "training.loop", "training.runs",
         "training.data.decoding", "training.data.discovery", "training.data.loading", "manual_backprop")
print(sorted(m for m in heavy if m in sys.modules))
"""
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=60,  # noqa: S603
                          env={**os.environ, "PYTHONPATH": repo})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_the_parsers_offer_the_library_s_names_and_old_spellings_warn(capsys):
    import manual_backprop as mb
    from experiments import names, results_table
    from experiments.agreement import ORDER as CLI_ORDER
    from models.efficientnet_lite import VARIANTS
    from training.data.labels import SCENARIOS
    from training.evaluation.agreement import ORDER
    from training.evaluation.explain import METHODS
    from training.evaluation.review import THUMB_SIZE
    from training.loop.config import FINETUNE, MLP_PRESETS, MODELS, PRESETS
    from training.loop.devices import ENGINES
    from training.runs.results import CONFIGS

    assert names.ENGINES == ENGINES and names.SCENARIOS == tuple(SCENARIOS) and names.MODELS == MODELS
    assert names.PRESETS == tuple(k for k in PRESETS if k != "default") and names.FINETUNE == FINETUNE
    assert names.BACKBONES == tuple(VARIANTS) and names.TABLE_CONFIGS == tuple(CONFIGS)
    assert names.MLP_PRESETS == tuple(MLP_PRESETS) and names.EXPLAIN_METHODS == tuple(METHODS)
    assert names.ACTIVATIONS == tuple(sorted(mb.ACTIVATIONS)) and names.COSTS == tuple(sorted(mb.COSTS))
    assert CLI_ORDER == ORDER and names.THUMB_SIZE == THUMB_SIZE
    args = results_table.parser().parse_args(["--data", "d", "--scenarios", "Pr_Im", "Pr_Po_Im"])
    assert args.scenario == ["Pr_Im", "Pr_Po_Im"]
    assert "--scenarios is deprecated" in capsys.readouterr().err
    assert "pretrained" in results_table.parser().format_help()


def test_agreement_matching_a_deep_path_stays_linear():
    # every suffix of every predicted path was a dict key: one path of 40,000 components ('a/a/…', 80 KB, a legal
    # CSV cell) cost ~8e8 tuple slots (GBs) before the first rating was matched; here in a process limited to 3 GiB
    import subprocess

    code = ("import resource; resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))\n"
            "from training.evaluation.agreement import match_paths\n"
            "deep = 'a/' * 40_000 + 'x.jpg'\n"
            "got = match_paths(['x.jpg', 'a/x.jpg', 'b/y.jpg'], [deep, 'b/y.jpg'], 'r.csv', strict=False)\n"
            "assert got == [deep, deep, 'b/y.jpg'], got\n")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=120,  # noqa: S603 (this interpreter, the test's own code; no shell)
                          env={**os.environ, "PYTHONPATH": repo})
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_agreement_refuses_a_level_named_twice_and_says_na_for_an_undefined_kappa(tmp_path, capsys):
    # --order 'Improbable Possible Probable Possible' put Possible on level 3: level error 1.5 for 0.5, exit 0
    from experiments import agreement

    preds = _write_csv(tmp_path / "p.csv", ["path", "predicted"], [["a.jpg", "Probable"], ["b.jpg", "Possible"]])
    ratings = _write_csv(tmp_path / "r.csv", ["path", "r1"], [["a.jpg", "Probable"], ["b.jpg", "Improbable"]])
    args = ["--predictions", str(preds), "--ratings", str(ratings), "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as info:
        agreement.main([*args, "--order", "Improbable", "Possible", "Probable", "Possible"])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 1 and len(err) == 1 and "'Possible' twice" in err[0]
    one = _write_csv(tmp_path / "r1.csv", ["path", "r1"], [["b.jpg", "Possible"]])  # both sides one label
    rows = agreement.main([*args[:2], "--ratings", str(one), "--out", str(tmp_path / "o1")])
    assert rows[0]["cohen_kappa"] == "n/a" and capsys.readouterr().err == ""  # was nan, and sklearn's warning


def test_agreement_with_a_column_that_is_not_utf8_or_a_bad_label(tmp_path, capsys):
    # a rater column of bytes that are not UTF-8 was "error: 'utf-8' codec can't encode…" naming no file, after
    # the output folder was made; a label outside the order left an empty output folder
    from experiments import agreement

    preds = _write_csv(tmp_path / "p.csv", ["path", "predicted"], [["a.jpg", "Probable"], ["b.jpg", "Possible"]])
    ratings = tmp_path / "r.csv"
    ratings.write_bytes(b"path,r\xff1\na.jpg,Probable\nb.jpg,Possible\n")
    rows = agreement.main(["--predictions", str(preds), "--ratings", str(ratings), "--out", str(tmp_path / "o")])
    assert rows[0]["pair"] == "model vs r\ufffd1" and rows[0]["agreement"] == 1.0
    ratings.write_bytes(b"path,r1\na.jpg,Probable\nb.jpg,Dead\n")
    with pytest.raises(SystemExit) as info:
        agreement.main(["--predictions", str(preds), "--ratings", str(ratings), "--out", str(tmp_path / "o2")])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 1 and len(err) == 1 and str(ratings) in err[0] and "'Dead'" in err[0]
    assert not (tmp_path / "o2").exists()


# ---- review ----------------------------------------------------------------------------------------------------

@pytest.fixture
def photos(tmp_path):
    """Four tiny photos (tests/helpers.py ``review_photos``)."""
    return review_photos(tmp_path / "photos")


def test_the_command_prints_one_line_where_the_page_is_and_one_line_for_a_bad_file(tmp_path, photos, capsys):
    from experiments import review

    out = tmp_path / "r"
    review.main(["--predictions", str(predictions_csv(tmp_path)), "--images", str(photos), "--out", str(out)])
    assert f"review page written to {out / PAGE}" in capsys.readouterr().out
    bad = write_csv(tmp_path / "bad.csv", ["path", "predicted", "p_A"], [["a.jpg", "A", "nan"]])
    with pytest.raises(SystemExit) as info:
        review.main(["--predictions", str(bad), "--images", str(photos), "--out", str(tmp_path / "r2")])
    err = capsys.readouterr().err.strip()
    assert info.value.code == 1 and err.startswith("error:") and str(bad) in err and "p_A" in err
    assert "\n" not in err and not (tmp_path / "r2").exists()


def test_a_missing_photo_named_with_control_characters_is_printed_on_one_line(tmp_path, photos, capsys):
    # a path from the CSV was printed raw: a newline split the line, an ESC sequence reached the terminal
    from experiments import review

    name = "x\n\x1b]0;pwned\x07.jpg"
    csv_path = write_csv(tmp_path / "p.csv", ["path", "predicted", "p_A", "p_B"], [[name, "A", 1, 0]])
    review.main(["--predictions", str(csv_path), "--images", str(photos), "--out", str(tmp_path / "r")])
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and len(out.strip().splitlines()) == 2


# ---- train's flags and the library's configuration --------------------------------------------------------

@pytest.mark.parametrize("finetune", ["top", "all"])
def test_a_fine_tuned_preset_from_python_gets_the_recipe_the_command_gets(finetune):
    from experiments import train

    config = get_config("pretrained", finetune=finetune)
    assert config == train.config_from_args(train.parser().parse_args(["--finetune", finetune]))
    assert (config.learning_rate, config.head_init, config.top_views) == (3e-4, True, 8 if finetune == "top" else 0)
    assert get_config("pretrained", finetune=finetune, learning_rate=1e-3).learning_rate == 1e-3  # overrides win
    assert get_config("pretrained", finetune=finetune, recipe=False).learning_rate == 1e-2  # the preset alone


@pytest.mark.parametrize("flags, expected", [
    (["--finetune", "top"], {"learning_rate": 3e-4, "lr_schedule": "cosine", "warmup_epochs": 1, "head_init": True,
                             "top_views": 8, "grad": "manual"}),
    (["--finetune", "top", "--top-views", "0"], {"learning_rate": 3e-4, "top_views": 0}),
    (["--finetune", "all", "--lr", "1e-3", "--epochs", "3"], {"learning_rate": 1e-3, "epochs": 3, "head_init": True,
                                                            "top_views": 0, "grad": "manual"}),
    (["--finetune", "all", "--grad", "autodiff"], {"learning_rate": 3e-4, "grad": "autodiff"}),
    ([], {"learning_rate": 1e-2, "lr_schedule": None, "head_init": False, "augment": None, "top_views": 0,
          "grad": "autodiff"}),
    (["--finetune", "head"], {"learning_rate": 1e-2, "head_init": False, "grad": "autodiff"}),
    (["--preset", "lab-2020"], {"learning_rate": 1e-3, "head_init": False, "grad": "manual"}),
    (["--preset", "lab-2020", "--model", "resnet50", "--finetune", "all"], {"grad": "autodiff"}),
], ids=["top", "top-without-cached-maps", "all-with-flags", "all-autodiff", "no-flag", "head", "lab-2020",
        "resnet50-all"])
def test_finetune_gets_its_own_recipe_and_the_users_flags_win(flags, expected):
    from experiments import train

    config = train.config_from_args(train.parser().parse_args(flags))
    assert {k: getattr(config, k) for k in expected} == expected
