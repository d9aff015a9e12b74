"""The results grid and the research commands as library calls: typed rows, resumption, thin commands."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from common.files import FileFormatError, write_json_atomic
from training.runs.results import COLUMNS, ResultRow, read_result_row

REPO = Path(__file__).resolve().parents[3]

SCORED = ResultRow(key="Pr_Im-16-lab-2020", classes="Probable vs Improbable", size=16, config="lab-2020",
                   n_images=12, positive_class="Probable", folds=1, precision="50.0", recall="100.0",
                   accuracy="50.0", balanced_accuracy="50.0", macro_f1="33.3", roc_auc="50.0",
                   majority_accuracy="50.0", majority_balanced_accuracy="50.0", majority_macro_f1="33.3",
                   quadratic_kappa="–", level_error="–", beats_majority="NO", train_seconds=1.5,
                   balanced_accuracy_ci95="50.0–50.0", calibration="none", ece="0.100 [0.000, 0.200] (1)",
                   brier="0.250 [0.200, 0.300]", log_loss="0.693 [0.600, 0.800]",
                   settings={"model": "model1", "augment": None, "image_size": 16})


def test_a_row_s_json_is_the_table_s_labels_in_order_and_reads_back_equal(tmp_path):
    path = tmp_path / "rows" / f"{SCORED.key}.json"
    write_json_atomic(path, SCORED.as_json())
    doc = json.loads(path.read_text())
    assert list(doc)[:7] == ["_key", "classes", "size", "config", "n images", "positive class", "folds"]
    assert list(doc)[-6:] == ["Bal. acc. 95% CI", "calibration", "ECE [95% CI] (bins)", "Brier [95% CI]",
                              "log-loss [95% CI]", "settings"]
    assert read_result_row(path, SCORED.key) == SCORED
    cells = SCORED.cells()
    assert tuple(cells) == COLUMNS and cells["Bal. acc."] == "50.0" and cells["n images"] == 12
    not_run = ResultRow(key="k", classes="a vs b", size=16, config="lab-2020", n_images=2, positive_class="a",
                        beats_majority="not run: too few images")
    assert list(not_run.as_json()) == ["_key", "classes", "size", "config", "n images", "positive class",
                                       "beats majority?"]
    assert not_run.cells()["Acc."] == "" and not_run.cells()["folds"] == ""  # blank where it does not apply


@pytest.mark.parametrize(("field", "value"), [("size", "16"), ("folds", 2.5), ("train s", "1.5"), ("Acc.", 50),
                                              ("n images", True), ("settings", "x")],
                         ids=["size-string", "folds-fraction", "seconds-string", "cell-number", "count-bool",
                              "settings-string"])
def test_a_row_of_the_wrong_types_is_one_line_naming_its_field(tmp_path, field, value):
    path = tmp_path / "k.json"
    path.write_text(json.dumps({**SCORED.as_json(), "_key": "k", field: value}))
    with pytest.raises(FileFormatError) as info:
        read_result_row(path, "k")
    assert "\n" not in str(info.value) and str(path) in str(info.value) and field in str(info.value)


def test_a_row_s_other_fields_are_left_out(tmp_path):
    path = tmp_path / "k.json"
    path.write_text(json.dumps({"_key": "k", "Acc.": "50.0", "an older column": 3}))
    assert read_result_row(path, "k") == ResultRow(key="k", accuracy="50.0")


def test_the_grid_resumes_from_its_rows_without_training(tmp_path):
    """Every row saved earlier: nothing is read or trained; the table is written from the rows read back, and the
    report's Markdown is the file's."""
    from training.runs.grid import GridOptions, results_grid

    out = tmp_path / "table"
    options = GridOptions(scenarios=("Pr_Im", "Pr_Po_Im"), image_sizes=(16,), configs=("lab-2020", "pretrained"))
    keys = ["Pr_Im-16-lab-2020", "Pr_Im-240-pretrained", "Pr_Po_Im-16-lab-2020", "Pr_Po_Im-240-pretrained"]
    for key in keys:
        write_json_atomic(out / "rows" / f"{key}.json", {**SCORED.as_json(), "_key": key})
    report = results_grid(tmp_path / "no-photos-needed", out, options)
    assert [r.key for r in report.rows] == keys and report.rows[1] == ResultRow(**{**vars(SCORED), "key": keys[1]})
    assert report.markdown == (out / "results.md").read_text()
    assert report.markdown.splitlines()[2] == "| " + " | ".join(COLUMNS) + " |"
    assert "| Probable vs Improbable | 16 | lab-2020 | Probable | 50.0 |" in report.markdown
    (out / "rows" / f"{keys[2]}.json").write_text(json.dumps({"_key": "another"}))
    with pytest.raises(FileFormatError, match="_key"):
        results_grid(tmp_path / "no-photos-needed", out, options)


@pytest.mark.parametrize("options", [{"configs": ("lab-2021",)}, {"scenarios": ("Pr",)}],
                         ids=["unknown-config", "unknown-scenario"])
def test_the_grid_refuses_unknown_names_before_any_work(tmp_path, options):
    from training.runs.grid import GridOptions, results_grid

    with pytest.raises(ValueError, match="unknown (configuration 'lab-2021'|scenario 'Pr')"):
        results_grid(tmp_path / "photos", tmp_path / "out", GridOptions(**options))
    assert not (tmp_path / "out").exists()


def test_the_mlp_settings_are_the_preset_s_with_the_options_over_them():
    from training.loop.config import MLP_PRESETS
    from training.loop.mlp import MlpOptions, mlp_settings

    assert mlp_settings(MlpOptions(preset="network2"), digits=False) == MLP_PRESETS["network2"]
    mine = mlp_settings(MlpOptions(hidden=(5, 4), eta=0.5), digits=True)
    assert mine == {**MLP_PRESETS["network"], "hidden": [5, 4], "eta": 0.5, "weight_scale": "fan_in"}
    assert mlp_settings(MlpOptions(weight_scale="unit"), digits=True)["weight_scale"] == "unit"
    with pytest.raises(ValueError, match="unknown MLP preset 'network3'"):
        mlp_settings(MlpOptions(preset="network3"), digits=False)


@pytest.mark.parametrize("options", [{"backbones": ("efficientnet_lite0", "efficientnet_lite0")}, {"folds": 1}],
                         ids=["backbone-twice", "one-fold"])
def test_the_backbone_comparison_refuses_before_any_work(tmp_path, options):
    from training.runs.backbones import BackboneOptions, compare_backbones
    from training.runs.experiment import DataSpec

    with pytest.raises(ValueError, match="named once|at least 2"):
        compare_backbones(DataSpec(str(tmp_path / "photos")), tmp_path / "out", BackboneOptions(**options))
    assert not (tmp_path / "out").exists()
