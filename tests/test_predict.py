"""Streaming prediction: every photo its row, bounded memory, resumable, the same numbers as in-memory prediction."""

import csv
import threading

import numpy as np
import pytest
from PIL import Image

from experiments import predict, train
from tests.helpers import read_predictions
from training.data import prefetch


def _photos(root, n=7, size=12):
    rng = np.random.default_rng(1)
    for k, label in enumerate("ab"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            arr = np.clip(rng.normal(60 + 120 * k, 30, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(arr).save(root / label / f"{label}{i}.png")
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stream")
    root = _photos(tmp / "photos")
    train.main(["--data", str(root), "--preset", "lab-2020", "--image-size", "16", "--epochs", "1", "--out",
                str(tmp / "run"), "--cache-dir", str(tmp / "c"), "--no-progress"])
    return tmp / "run", root


def _predict(run, root, out, *extra):
    return predict.main(["--checkpoint", str(run), "--images", str(root), "--out", str(out), "--batch-size", "3",
                         "--no-progress", *extra])


def test_streamed_rows_equal_in_memory_prediction(trained, tmp_path):
    from training.data.images import Preprocess, load_unlabelled
    from training.loop.steps import make_eval_step, predict_proba
    from training.runs.saved import load_trained

    run, root = trained
    _predict(run, root, tmp_path / "p.csv")
    rows = read_predictions(tmp_path / "p.csv")
    model, params, config, names = load_trained(run)
    images = load_unlabelled(root, Preprocess(config.image_size, config.crop, config.rgb), cache_dir=tmp_path / "c")
    expected = predict_proba(make_eval_step(model), params, images.x, batch_size=5)
    by_path = {r["path"]: [r[f"p_{n}"] for n in names] for r in rows}
    assert sorted(by_path) == sorted(str(p.relative_to(root)) for p in map(__import__("pathlib").Path,
                                                                             images.paths))
    got = np.array([by_path[str(__import__("pathlib").Path(p).relative_to(root))] for p in images.paths])
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert [r["path"] for r in rows] == sorted(r["path"] for r in rows)  # in file order
    assert not list(tmp_path.glob("*.partial*"))


def test_a_crash_then_resume_gives_the_uninterrupted_csv(trained, tmp_path, monkeypatch, capsys):
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
    with pytest.raises(SystemExit):  # not without --resume
        _predict(run, root, tmp_path / "p.csv")
    assert "pass --resume" in capsys.readouterr().err
    result = _predict(run, root, tmp_path / "p.csv", "--resume")
    assert 0 < calls["n"] and result["rows"] == 14
    assert (tmp_path / "p.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()
    assert not partial.exists() and "from the interrupted run" in capsys.readouterr().out


def test_resume_with_another_checkpoint_or_folder_is_refused(trained, tmp_path, monkeypatch, capsys):
    import shutil

    run, root = trained
    monkeypatch.setattr(prefetch, "load_image", lambda p, pre: (_ for _ in ()).throw(RuntimeError("stop")))
    with pytest.raises(RuntimeError):
        _predict(run, root, tmp_path / "p.csv")
    monkeypatch.undo()
    other = tmp_path / "other"
    shutil.copytree(root, other)
    with pytest.raises(SystemExit):
        _predict(run, other, tmp_path / "p.csv", "--resume")
    assert "written with other settings: images:" in capsys.readouterr().err


def test_an_existing_csv_is_replaced_only_with_overwrite(trained, tmp_path, capsys):
    run, root = trained
    out = tmp_path / "p.csv"
    out.write_text("mine\n")
    with pytest.raises(SystemExit):
        _predict(run, root, out)
    assert "exists: pass --overwrite" in capsys.readouterr().err and out.read_text() == "mine\n"
    _predict(run, root, out, "--overwrite")
    with open(out, newline="") as f:
        assert len(list(csv.reader(f))) == 1 + 14


def test_bad_photos_stop_the_stream_or_are_counted(trained, tmp_path, capsys):
    import shutil

    run, root = trained
    images = tmp_path / "images"
    shutil.copytree(root, images)
    (images / "a" / "a3.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(SystemExit):
        _predict(run, images, tmp_path / "p.csv")
    assert "a3.png" in capsys.readouterr().err
    result = _predict(run, images, tmp_path / "q.csv", "--skip-bad")
    assert result["rows"] == 13 and len(result["skipped"]) == 1 and "a3.png" in result["skipped"][0][0]


def test_decoding_stays_a_bounded_number_of_chunks_ahead(tmp_path, monkeypatch):
    """However many files, at most (prefetch + 1) chunks are being decoded or waiting: memory is bounded."""
    from training.data.images import Preprocess

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
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
           "PYTHONPATH": str(repo)}
    code = ("import jax, sys; assert len(jax.local_devices()) == 4; from experiments import predict; "
            "predict.main(sys.argv[1:])")
    subprocess.run([sys.executable, "-c", code, "--checkpoint", str(run), "--images", str(root), "--out",  # noqa: S603 (argv is this interpreter and paths the caller made; no shell)
                    str(tmp_path / "four.csv"), "--batch-size", "3", "--no-progress"], env=env, cwd=repo, check=True,
                   capture_output=True)
    one, four = read_predictions(tmp_path / "one.csv"), read_predictions(tmp_path / "four.csv")
    assert [r["path"] for r in one] == [r["path"] for r in four]
    np.testing.assert_allclose([[v for k, v in r.items() if k.startswith("p_")] for r in four],
                               [[v for k, v in r.items() if k.startswith("p_")] for r in one], atol=1e-5)


def test_refer_marks_the_least_confident_fraction_and_the_summary_counts_them(trained, tmp_path, capsys):
    run, root = trained  # lab-2020: no calibration, no saved referral threshold: no refer column by default
    _predict(run, root, tmp_path / "plain.csv")
    assert "refer" not in read_predictions(tmp_path / "plain.csv")[0]
    result = _predict(run, root, tmp_path / "r.csv", "--refer", "0.25")
    rows = read_predictions(tmp_path / "r.csv")
    conf = sorted(r[f"p_{r['predicted']}"] for r in rows)
    referred = [r for r in rows if r["refer"] == 1]
    assert result["referred"] == len(referred) == 4 == int(np.ceil(0.25 * len(rows)))  # of 14
    assert max(r[f"p_{r['predicted']}"] for r in referred) <= conf[3]
    assert "4 of 14 referred to a person" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        predict.parser().parse_args(["--checkpoint", "x", "--images", "y", "--refer", "1.5"])


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
