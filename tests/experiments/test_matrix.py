"""Every command with every model the project trains: a tiny run of each, then predict, explain, agreement.

Each model kind is trained once (session-scoped fixture) on 16 photos at a small size through
``experiments.train``, as a user would call it; the other commands then run on that run folder.
A command that does not support a model must refuse with one line (none does today).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

# (id, experiments.train flags)
KINDS = {
    "model1": ["--preset", "lab-2020", "--image-size", "16"],
    "resnet50": ["--preset", "lab-2020", "--model", "resnet50", "--image-size", "32"],
    "googlenet": ["--preset", "lab-2020", "--model", "googlenet", "--image-size", "32"],
    # (with one augmented view of each photo for the head's training: the flag, end to end)
    # (and Platt scaling, whose shift the decisions and the referral leave out)
    "efficientnet_lite0-head": ["--model", "efficientnet_lite0", "--image-size", "32", "--head-views", "1",
                                "--calibration", "platt"],
    # top is trained on the hand-written backward (manual_backprop.efficientnet), as a user may ask, with
    # fine-tuning's own recipe (it starts from the frozen-feature head: 2 photos a class for its inner CV; the
    # frozen blocks' maps of each photo and 8 views are cached, and the top trains on them)
    "efficientnet_lite0-top": ["--model", "efficientnet_lite0", "--finetune", "top", "--image-size", "32",
                               "--epochs", "1", "--lr", "1e-4", "--grad", "manual"],
}


@pytest.fixture(scope="session")
def photos(tmp_path_factory):
    from tests.helpers import make_photos

    return make_photos(tmp_path_factory.mktemp("matrix") / "photos", ("Probable", "Improbable"), n=8, size=(36, 40),
                       seed=0, shades=(50, 200), name="{label:.3}{i}.png")


# (pytest-xdist runs a module's tests on one worker: each kind is trained once)
BY_KIND = [pytest.param(k, id=k, marks=[pytest.mark.slow] if k in ("resnet50", "googlenet") else []) for k in KINDS]


@pytest.fixture(scope="session")
def runs(photos, tmp_path_factory):
    """``run(kind)`` → (run folder, predictions CSV): a tiny run of one model kind trained through the command
    line, then ``experiments.predict`` on it; each kind once per process (session scope: a worker that runs
    other modules' tests in between keeps it), whatever order its tests run in."""
    from experiments import predict, train

    done: dict[str, tuple[Path, Path]] = {}

    def run(kind: str) -> tuple[Path, Path]:
        if kind not in done:
            out = tmp_path_factory.mktemp(kind) / "run"
            train.main(["--data", str(photos), "--out", str(out), "--epochs", "1", "--batch-size", "4",
                        "--val-fraction", "0.5", "--cache-dir", str(out.parent / "cache"), "--no-progress",
                        *KINDS[kind]])
            history = []
            if (out / "history.csv").is_file():
                with open(out / "history.csv", encoding="utf-8") as f:
                    history = list(csv.DictReader(f))
            assert (out / "summary.json").is_file()
            assert all(np.isfinite(float(v)) for row in history for k, v in row.items() if "loss" in k)
            csv_path = out.parent / "p.csv"
            predict.main(["--checkpoint", str(out), "--images", str(photos), "--out", str(csv_path), "--no-progress",
                          "--engine", "jax"])
            done[kind] = out, csv_path
        return done[kind]

    return run


@pytest.mark.parametrize("kind", BY_KIND)
def test_predict_writes_one_row_per_photo(kind, runs):
    from tests.helpers import read_predictions

    run, csv_path = runs(kind)
    if kind.endswith("-top"):  # started from the frozen-feature head: its feature standardization is saved
        saved = json.loads((run / "checkpoints" / "config.json").read_text())
        assert len(saved["normalization"]["mean"]) == 1280 and saved["config"]["top_views"] == 8
    if kind.endswith("-head"):
        assert json.loads((run / "checkpoints" / "config.json").read_text())["config"]["head_views"] == 1
    rows = read_predictions(csv_path)
    assert len(rows) == 16 and {r["predicted"] for r in rows} <= {"Probable", "Improbable"}
    for r in rows:
        p = [v for k, v in r.items() if k.startswith("p_")]
        assert len(p) == 2 and abs(sum(p) - 1) < 1e-5


@pytest.mark.parametrize("kind", BY_KIND)
def test_explain_writes_grad_cam_for_every_photo(kind, runs, photos, tmp_path):
    from training.data.decoding import Preprocess, load_image
    from training.evaluation.explain import jitted
    from training.runs.explain import ExplainOptions, explain_photos
    from training.runs.saved import load_trained

    run, _ = runs(kind)
    rows = explain_photos(run, [str(photos)], tmp_path / "x", ExplainOptions(methods=("grad_cam",))).rows
    assert len(rows) == 16 and all(Path(r.png).stat().st_size > 0 for r in rows)
    model, params, config, _ = load_trained(run)  # the map itself, on the model's last feature map
    x = load_image(next(photos.rglob("*.png")), Preprocess(config.image_size, config.crop, config.rgb))
    cam = np.asarray(jitted(model, "grad_cam")(params, x, 1))  # explain's own compiled map
    assert cam.shape == (config.image_size,) * 2 and np.isfinite(cam).all() and 0 <= cam.min() <= cam.max() <= 1


@pytest.mark.parametrize("kind", BY_KIND)
def test_agreement_with_a_rater(kind, runs, photos, tmp_path):
    from experiments import agreement

    _, csv_path = runs(kind)
    with open(tmp_path / "r.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "rater1"])
        for p in sorted(photos.rglob("*.png")):
            w.writerow([p.name, p.parent.name])
    rows = agreement.main(["--predictions", str(csv_path), "--ratings", str(tmp_path / "r.csv"),
                           "--order", "Improbable", "Probable", "--out", str(tmp_path / "a")])
    assert rows and (tmp_path / "a" / "agreement.md").is_file()


ONNX_CHECK = """
import json, sys
import numpy as np
import onnxruntime as ort
session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
meta = session.get_modelmeta().custom_metadata_map
x = np.load(sys.argv[2])
assert x.shape[1:] == (int(meta["image_size"]), int(meta["image_size"]), int(meta["channels"])), x.shape
np.save(sys.argv[3], session.run(["probabilities"], {"image": x})[0])
print(json.dumps(json.loads(meta["class_names"])))
ours = sorted(m for m in sys.modules if m.split(".")[0] in ("training", "models", "manual_backprop", "experiments"))
assert not ours, ours
"""


@pytest.mark.parametrize("kind", BY_KIND)
def test_export_gives_predicts_probabilities_in_onnxruntime_or_refuses(kind, runs, photos, tmp_path, capsys):
    """``experiments.export`` writes the whole classifier as ONNX: ONNX Runtime, in a fresh interpreter that imports
    nothing of this project, gives the probabilities ``experiments.predict --engine jax`` wrote, to 1e-4, and so
    does ``predict --engine onnxruntime``. ResNet-50 and GoogLeNet are refused with one line by both."""
    import subprocess
    import sys

    from experiments import export, predict
    from tests.helpers import read_predictions
    from training.data.decoding import Preprocess, load_image
    from training.loop.config import TrainConfig
    from training.runs.saved import run_config

    run, csv_path = runs(kind)
    out = tmp_path / "model.onnx"
    ort_csv = tmp_path / "ort.csv"
    predict_ort = ["--checkpoint", str(run), "--images", str(photos), "--out", str(ort_csv), "--no-progress",
                   "--engine", "onnxruntime"]
    if kind in ("resnet50", "googlenet"):
        with pytest.raises(SystemExit) as exc:
            export.main(["--checkpoint", str(run), "--out", str(out)])
        err = capsys.readouterr().err
        assert exc.value.code == 1 and err.count("\n") == 1 and "no ONNX export for" in err and not out.exists()
        with pytest.raises(SystemExit) as exc:
            predict.main(predict_ort)
        err = capsys.readouterr().err
        assert exc.value.code == 1 and err.count("\n") == 1 and "has no ONNX form" in err and not ort_csv.exists()
        return
    predict.main(predict_ort)  # predict's ONNX Runtime engine: the same rows as its JAX engine
    by_ort, by_jax = read_predictions(ort_csv), read_predictions(csv_path)
    assert [r["path"] for r in by_ort] == [r["path"] for r in by_jax]
    np.testing.assert_allclose([[v for k, v in r.items() if k.startswith("p_")] for r in by_ort],
                               [[v for k, v in r.items() if k.startswith("p_")] for r in by_jax], atol=1e-4)
    export.main(["--checkpoint", str(run), "--out", str(out)])
    config = TrainConfig.from_json(run_config(run)[1]["config"])
    files = sorted(photos.rglob("*.png"))
    np.save(tmp_path / "x.npy", np.stack([load_image(f, Preprocess(config.image_size, config.crop, config.rgb))
                                          for f in files]))
    done = subprocess.run([sys.executable, "-I", "-c", ONNX_CHECK, str(out), str(tmp_path / "x.npy"),  # noqa: S603
                           str(tmp_path / "p.npy")], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    names = json.loads(done.stdout)
    probs = np.load(tmp_path / "p.npy")
    expected = {r["path"]: [r[f"p_{n}"] for n in names] for r in read_predictions(csv_path)}
    np.testing.assert_allclose(probs, [expected[f.relative_to(photos).as_posix()] for f in files], atol=1e-4)
    with pytest.raises(SystemExit):  # an existing file is kept unless --overwrite
        export.main(["--checkpoint", str(run), "--out", str(out)])
    assert "exists" in capsys.readouterr().err


def test_calibration_is_saved_and_predict_and_referral_use_it(runs, photos):
    """The frozen head's run saves its Platt scaling (fitted on inner out-of-fold predictions) and a referral
    threshold; predict's probabilities are the raw softmax calibrated by it (export's equal predict's:
    test_export_gives_predicts_probabilities_in_onnxruntime_or_refuses), and the refer column marks the photos whose
    decision's probability is below the threshold."""
    from tests.helpers import read_predictions
    from training.data.decoding import Preprocess, load_image
    from training.evaluation.calibration import apply, referral_confidence
    from training.evaluation.decision import decide
    from training.inference.engine import probs_function
    from training.runs.saved import load_trained, run_config, saved_calibration

    run, csv_path = runs("efficientnet_lite0-head")
    saved = run_config(run)[1]
    cal = saved_calibration(saved)
    assert cal.method == "platt" and cal.scale[0] != 1
    assert json.loads((run / "checkpoints" / "config.json").read_text())["calibration"]["fitted_on"] == 8
    model, params, config, names = load_trained(run)
    files = sorted(photos.rglob("*.png"))
    x = np.stack([load_image(f, Preprocess(config.image_size, config.crop, config.rgb)) for f in files])
    raw_fn, raw_params, _ = probs_function(model, params, config, "jax")
    raw = np.asarray(raw_fn(raw_params, x))
    rows = {r["path"]: r for r in read_predictions(csv_path)}
    got = np.array([[rows[f.relative_to(photos).as_posix()][f"p_{n}"] for n in names] for f in files])
    np.testing.assert_allclose(got, apply(cal, raw), atol=1e-5)
    assert np.abs(got - raw).max() > 1e-3  # the calibration changed them
    threshold = saved["referral"]["threshold"]
    pred = np.array([names.index(rows[f.relative_to(photos).as_posix()]["predicted"]) for f in files])
    np.testing.assert_array_equal(pred, decide(got, None, cal.shift))  # the decision leaves the shift out
    np.testing.assert_array_equal(pred, raw.argmax(axis=1))  # so Platt keeps the head's decisions
    refer = [rows[f.relative_to(photos).as_posix()]["refer"] for f in files]
    np.testing.assert_array_equal(refer, referral_confidence(got, pred, cal.shift) < threshold)
