"""Hostile files given to the commands a user types: one ``error:`` line naming the file, exit 1, nothing run and
nothing written. The readers themselves are tested with the same files in tests/common/test_security.py (weights,
run folders) and tests/common/test_readers.py (every other reader)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import saved_run_record
from tests.hostile_weights import is_payload, write_corpus

REPO = Path(__file__).resolve().parents[2]
_good_saved_run = saved_run_record


# --- hostile weights through experiments.train --weights ------------------------------------------------------------

_DRIVER = """
import contextlib, io, json, sys
from experiments.train import main
for path in sys.argv[3:]:
    err = io.StringIO()
    code = 0
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            main(["--data", sys.argv[1], "--out", sys.argv[2] + "/" + path.rsplit("/", 1)[-1], "--weights", path,
                  "--no-progress", *(["--model", "resnet50", "--image-size", "32"] if sys.argv[2].endswith("resnet50")
                                     else [])])
        except SystemExit as exc:
            code = exc.code
    print(json.dumps({"file": path, "code": code, "stderr": err.getvalue()}), flush=True)
"""


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from tests.helpers import make_photos

    return make_photos(tmp_path_factory.mktemp("photos"), ("tree", "not_a_tree"), n=2, size=24, seed=0, shades=False,
                       name="{i}.png")


@pytest.mark.parametrize("model", ["efficientnet_lite0", "resnet50"])
def test_train_with_hostile_weights_prints_one_line_and_runs_nothing(corpus, photos, tmp_path, model):
    """A sample of the corpus through ``experiments.train --weights`` (in one child process per model)."""
    folder, sentinel, files = corpus
    chosen = [k for k in files if "-p2-" in k and "GLOBAL-system" in k] + [
        k for k in files if not is_payload(k) and any(w in k for w in ("stride", "bomb", "36TiB", "pid-", "memo"))]
    paths = write_corpus(folder, {k: files[k] for k in chosen})
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "JAX_PLATFORMS": "cpu"}
    out = tmp_path / model
    proc = subprocess.run([sys.executable, "-c", _DRIVER, str(photos), str(out), *map(str, paths)], cwd=REPO,  # noqa: S603 (argv is this interpreter and paths the caller made; no shell)
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == len(paths) >= 15
    for row in rows:
        lines = row["stderr"].strip().splitlines()
        assert row["code"] == 1 and len(lines) == 1 and lines[0].startswith("error: ") and row["file"] in lines[0], row
        assert not (out / Path(row["file"]).name).exists()  # nothing written for a refused run
    assert not sentinel.exists()


def test_the_issue_payload_through_the_command_line(tmp_path, photos):
    """The reported exploit: a legacy .pth whose first pickle reduces to os.system, given to experiments.train."""
    from tests.hostile_weights import payload_file, payload_pickle

    sentinel = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    evil.write_bytes(payload_file("legacy-magic", payload_pickle(2, "REDUCE", "system", False, sentinel)))
    proc = subprocess.run([sys.executable, "-m", "experiments.train", "--data", str(photos), "--weights", str(evil),  # noqa: S603 (argv is this interpreter and paths the caller made; no shell)
                           "--out", str(tmp_path / "run"), "--no-progress"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1 and not sentinel.exists()
    assert proc.stderr.strip().splitlines() == [f"error: {evil}: refused to load os.system: only tensors and dicts "
                                                "are allowed"] or "refused to load posix.system" in proc.stderr
    assert proc.stdout == ""  # refused before any photo was read


# --- a run folder from someone else, given to predict --------------------------------------------------------------

def test_predict_on_a_hostile_run_folder_prints_one_line(tmp_path, capsys):
    saved = _good_saved_run()
    saved["config"]["model"] = "__import__('os').system('touch pwned')"
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "config.json").write_text(json.dumps(saved))
    (tmp_path / "photos").mkdir()
    from experiments.predict import main

    with pytest.raises(SystemExit) as info:
        main(["--checkpoint", str(tmp_path / "run"), "--images", str(tmp_path / "photos"),
              "--out", str(tmp_path / "p.csv")])
    assert info.value.code == 1 and not (tmp_path / "pwned").exists() and not Path("pwned").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "config.json: config: unknown model" in err[0]


# ---- every command given a hostile file: one `error:` line naming it, exit 1, nothing else ----------------------

def _commands(tmp: Path) -> dict[str, tuple[str, list[str], Path]]:
    """name → (command module, argv, the hostile file it must name); every file is refused before any model is
    built, so this costs no compilation."""
    saved = _good_saved_run()
    saved["operating_point"].pop("class")  # predict and export hit a KeyError on this before
    (tmp / "run" / "checkpoints").mkdir(parents=True)
    config = tmp / "run" / "checkpoints" / "config.json"
    config.write_text(json.dumps(saved))
    from tests.helpers import make_photos

    make_photos(tmp / "photos", n=1, size=8, shades=((40, 90, 10), (40, 200, 10)), spread=0, name="x.png")
    manifest = tmp / "manifest.csv"
    manifest.write_text("path,label\nx.jpg,a,extra\n")
    grouping = tmp / "g.toml"
    grouping.write_text('exclude = "palm"\n[classes]\na = ["a"]\nb = ["b"]\n')
    ratings = tmp / "ratings.csv"
    ratings.write_text("path,rater\nx.jpg,Probable,Possible\n")
    predictions = tmp / "predictions.csv"
    predictions.write_text("path,predicted\nx.jpg,Probable\n")
    return {
        "predict": ("experiments.predict", ["--checkpoint", str(tmp / "run"), "--images", str(tmp / "photos"),
                                            "--out", str(tmp / "p.csv")], config),
        "export": ("experiments.export", ["--checkpoint", str(tmp / "run"), "--out", str(tmp / "m.onnx")], config),
        "train-manifest": ("experiments.train", ["--data", str(manifest), "--out", str(tmp / "t1")], manifest),
        "train-grouping": ("experiments.train", ["--data", str(tmp / "photos"), "--grouping", str(grouping),
                                                 "--out", str(tmp / "t2")], grouping),
        "agreement": ("experiments.agreement", ["--predictions", str(predictions), "--ratings", str(ratings),
                                                "--out", str(tmp / "agree")], ratings),
    }


@pytest.mark.parametrize("command", ["predict", "export", "train-manifest", "train-grouping", "agreement"])
def test_each_command_given_a_hostile_file_prints_one_line_naming_it(tmp_path, capsys, command):
    import importlib

    module, argv, bad = _commands(tmp_path)[command]
    if command == "export":
        pytest.importorskip("onnx")
    with pytest.raises(SystemExit) as info:
        importlib.import_module(module).main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 1 and len(err) == 1, err
    assert err[0].startswith(f"error: {bad}: "), err
