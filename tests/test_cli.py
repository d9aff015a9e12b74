"""The command-line tools under misuse: arguments checked first, one line per user error, nothing lost."""

import os
import sys

import numpy as np
import pytest
from PIL import Image

from experiments import predict, train


def _photos(root, labels=("a", "b"), n=3, size=12):
    rng = np.random.default_rng(0)
    for k, label in enumerate(labels):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = np.clip(rng.normal(60 + 120 * k, 20, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / label / f"{label}{i}.png")
    return root


@pytest.mark.parametrize(("flag", "value"), [("--epochs", "0"), ("--batch-size", "0"), ("--lr", "nan"),
                                             ("--lr", "-1"), ("--image-size", "0"), ("--folds", "0"),
                                             ("--val-fraction", "1.5"), ("--target-recall", "Probable")],
                         ids=["epochs-0", "batch-0", "lr-nan", "lr-negative", "size-0", "folds-0", "val-1.5",
                              "recall-no-equals"])
def test_bad_arguments_stop_before_any_work_with_one_line(flag, value, tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as info:
        train.main(["--data", str(tmp_path / "missing"), flag, value, "--out", str(out)])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("train") is False and "error: argument " + flag in err[-1] and value in err[-1]
    assert not out.exists()  # nothing was done


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
    root = _photos(tmp_path / "photos")
    with pytest.raises(SystemExit):
        train.main(["--data", str(root), "--preset", "lab-2020", "--image-size", "8", "--out", str(tmp_path / "r"),
                    "--cache-dir", str(tmp_path / "c"), "--no-progress"])
    assert "image size 8 is too small for Model 1" in capsys.readouterr().err


def test_a_single_class_data_set_is_refused(tmp_path, capsys):
    root = _photos(tmp_path / "photos", labels=("only",))
    with pytest.raises(SystemExit):
        train.main(["--data", str(root), "--preset", "lab-2020", "--image-size", "8", "--out", str(tmp_path / "r"),
                    "--cache-dir", str(tmp_path / "c"), "--no-progress"])
    assert "only one class ('only')" in capsys.readouterr().err


@pytest.mark.parametrize("newline", ["\n", "\r\n"], ids=["lf", "crlf"])
def test_spreadsheet_manifest_with_bom_is_read(newline, tmp_path):
    from training.images import discover

    _photos(tmp_path / "photos")
    manifest = tmp_path / "ratings.csv"
    lines = ["path,label"] + [f"photos/{lab}/{lab}{i}.png,{lab}" for lab in "ab" for i in range(3)]
    manifest.write_bytes(("\ufeff" + newline.join(lines) + newline).encode("utf-8"))
    items = discover(manifest)
    assert len(items) == 6 and {label for _, label in items} == {"a", "b"}


def test_predict_rows_for_copies_atomic_csv_and_odd_names(tmp_path, capsys):
    root = _photos(tmp_path / "photos")
    run = tmp_path / "run"
    train.main(["--data", str(root), "--preset", "lab-2020", "--image-size", "16", "--epochs", "1", "--out", str(run),
                "--cache-dir", str(tmp_path / "c"), "--no-progress"])
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
    predict.main(["--checkpoint", str(run), "--images", str(new), "--out", str(out), "--cache-dir",
                  str(tmp_path / "c")])
    text = out.read_bytes()
    assert text.count(b"IMG_0001.png") == 2  # each copy has its row
    assert text.count(b"\n") == 1 + 2 + (1 if sys.platform.startswith("linux") else 0)
    before = out.read_bytes()
    with pytest.raises(SystemExit):  # a failing run leaves the earlier CSV as it was
        predict.main(["--checkpoint", str(run), "--images", str(tmp_path / "missing"), "--out", str(out)])
    assert out.read_bytes() == before
    assert "error: image folder not found" in capsys.readouterr().err
