"""Labels: the scenarios' grouping of the three ratings, grouping files, too few photos to stratify."""

import json

import numpy as np
import pytest

from training.data.labels import SCENARIOS, Grouping, load_grouping, stratified_split


# --- labels and splits ---
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_scenarios_group_the_three_ratings(name):
    labels = ["Probable", "Possible", "Improbable", "Improbable"]
    index, excluded = SCENARIOS[name].resolve(labels)
    expected = {
        "Pr_Im": ([0, -1, 1, 1], {"Possible": 1}),
        "PrPo_Im": ([0, 0, 1, 1], {}),
        "Pr_PoIm": ([0, 1, 1, 1], {}),
        "Pr_Po_Im": ([0, 1, 2, 2], {}),
    }[name]
    assert index.tolist() == expected[0] and excluded == expected[1]


def test_unknown_label_is_named():
    with pytest.raises(ValueError, match=r"label\(s\) \['Dead'\] are not in grouping 'Pr_Po_Im'"):
        SCENARIOS["Pr_Po_Im"].resolve(["Probable", "Dead"])


@pytest.mark.parametrize("suffix", [".toml", ".json"])
def test_grouping_file_with_wildcard(tmp_path, suffix):
    path = tmp_path / f"g{suffix}"
    if suffix == ".toml":
        path.write_text('name = "tree_vs_not"\n[classes]\ntree = ["*"]\nnot_a_tree = ["not_a_tree"]\n')
    else:
        path.write_text(json.dumps({"name": "tree_vs_not", "classes": {"tree": ["*"], "not_a_tree": ["not_a_tree"]}}))
    g = load_grouping(path)
    index, _ = g.resolve(["oak", "not_a_tree", "palm"])
    assert g.class_names == ["tree", "not_a_tree"] and index.tolist() == [0, 1, 0]


def test_grouping_naming_a_missing_label_fails():
    g = Grouping("g", {"a": ("oak",), "b": ("elm",)})
    with pytest.raises(ValueError, match=r"class\(es\) \['b'\] have no images \(labels \[\['elm'\]\]"):
        g.resolve(["oak", "oak"])



def test_too_few_images_to_stratify_is_explained():
    with pytest.raises(ValueError, match="too few images to stratify into 2 parts"):
        stratified_split(np.array([0, 0, 1]), class_names=["a", "b"])

