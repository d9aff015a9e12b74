"""Label groupings (the lab's scenarios and user files) and leak-free stratified splits.

A :class:`Grouping` maps each class the model learns to the source labels it
gathers, and lists source labels deliberately left out. ``"*"`` in a class's list
means every source label not named anywhere else. A source label that the grouping
neither maps nor excludes raises ``ValueError`` naming it, so nothing is dropped
silently; excluded images are counted in the load report.

Splits are made on unique images (by content hash, after de-duplication) and before
any augmentation, stratified by class and seeded."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.files import FileFormatError, parse_document


def require_two_classes(labels, source) -> None:
    """``ValueError`` naming ``source`` when ``labels`` (an iterable of class names) holds fewer than two."""
    found = sorted(set(labels))
    if len(found) < 2:
        raise ValueError(f"{source}: only one class ({found[0] if found else 'none'!r}) has images: "
                         "a classifier needs at least two")


@dataclass(frozen=True)
class Grouping:
    """``classes``: model class → source labels (``"*"`` = all others); ``exclude``: labels left out."""

    name: str
    classes: dict[str, tuple[str, ...]]
    exclude: tuple[str, ...] = field(default=())

    @property
    def class_names(self) -> list[str]:
        return list(self.classes)

    def resolve(self, labels: Sequence[str]) -> tuple[np.ndarray, dict[str, int]]:
        """Class index per label (−1 for excluded) and the count excluded per source label."""
        named = {lab for labs in self.classes.values() for lab in labs if lab != "*"} | set(self.exclude)
        wildcard = [c for c, labs in self.classes.items() if "*" in labs]
        if len(wildcard) > 1:
            raise ValueError(f"grouping {self.name!r}: '*' may appear in one class only, got {wildcard}")
        mapping = {lab: i for i, labs in enumerate(self.classes.values()) for lab in labs if lab != "*"}
        present = set(labels)
        unknown = sorted(present - named)
        if unknown and not wildcard:
            raise ValueError(
                f"label(s) {unknown} are not in grouping {self.name!r} (classes {self.class_names}, "
                f"excluded {list(self.exclude)}): map or exclude them"
            )
        empty = [c for c, labs in self.classes.items() if "*" not in labs and not present & set(labs)]
        if empty:
            raise ValueError(
                f"grouping {self.name!r}: class(es) {empty} have no images (labels "
                f"{[list(self.classes[c]) for c in empty]} not found in the data; found {sorted(present)})"
            )
        for lab in unknown:
            mapping[lab] = self.class_names.index(wildcard[0])
        index = np.array([mapping.get(lab, -1) for lab in labels], dtype=np.int32)
        excluded = Counter(lab for lab in labels if lab in self.exclude)
        return index, dict(excluded)


SCENARIOS: dict[str, Grouping] = {
    "Pr_Im": Grouping("Pr_Im", {"Probable": ("Probable",), "Improbable": ("Improbable",)}, ("Possible",)),
    "PrPo_Im": Grouping("PrPo_Im", {"Probable+Possible": ("Probable", "Possible"), "Improbable": ("Improbable",)}),
    "Pr_PoIm": Grouping("Pr_PoIm", {"Probable": ("Probable",), "Possible+Improbable": ("Possible", "Improbable")}),
    "Pr_Po_Im": Grouping(
        "Pr_Po_Im", {"Probable": ("Probable",), "Possible": ("Possible",), "Improbable": ("Improbable",)}
    ),
}


def identity_grouping(labels: Sequence[str]) -> Grouping:
    """Every source label is its own class (sorted)."""
    return Grouping("labels", {lab: (lab,) for lab in sorted(set(labels))})


MAX_GROUPING_BYTES = 1 << 20
MAX_NAMES = 10_000


def load_grouping(path: str | Path) -> Grouping:
    """A grouping from a TOML (``.toml``) or JSON file, parsed once into a :class:`Grouping`::

        name = "tree_vs_not"      # optional: the file's stem
        exclude = []              # optional: source labels left out (and counted)
        [classes]                 # 2 or more classes, each one or more source labels ("*": all others)
        tree = ["*"]
        not_a_tree = ["not_a_tree"]

    A regular file of at most 1 MiB; names are non-empty strings of at most 200 characters, at most 10,000 of
    each. Anything else (other keys, other types, nesting) is one
    :class:`~common.files.FileFormatError` naming the file and the key.
    """
    path = Path(path)
    raw = parse_document(path, "a grouping (TOML or JSON)", max_bytes=MAX_GROUPING_BYTES, max_depth=3)
    if not isinstance(raw, dict):
        raise FileFormatError(path, "", f"a {type(raw).__name__}: a grouping is a table (name, exclude, classes)")
    unknown = sorted(str(k)[:40] for k in raw if k not in ("name", "classes", "exclude"))
    if unknown:
        raise FileFormatError(path, unknown[0], "unknown key: a grouping has name, exclude and classes")

    def names(value, key: str, *, at_least: int) -> tuple[str, ...]:
        if not (isinstance(value, list) and at_least <= len(value) <= MAX_NAMES
                and all(isinstance(s, str) and 0 < len(s) <= 200 for s in value)):
            raise FileFormatError(path, key, f"expected a list of {at_least} to {MAX_NAMES:,} non-empty label "
                                             f"names (at most 200 characters), got {str(value)[:60]}")
        return tuple(value)

    classes = raw.get("classes")
    if not isinstance(classes, dict) or not 2 <= len(classes) <= MAX_NAMES:
        raise FileFormatError(path, "classes", "must map at least two class names to lists of labels")
    for name in classes:
        if not 0 < len(name) <= 200:
            raise FileFormatError(path, "classes", f"class name {name[:40]!r}: expected 1 to 200 characters")
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not 0 < len(name) <= 200:
        raise FileFormatError(path, "name", "expected a non-empty string of at most 200 characters")
    grouping = Grouping(
        name,
        {k: names(v, f"classes.{k[:40]}", at_least=1) for k, v in classes.items()},
        names(raw.get("exclude", []), "exclude", at_least=0),
    )
    # each label goes to one place: named twice, its photos went silently to the last class (leaving the first
    # empty), or were trained on while counted as excluded
    seen: dict[str, str] = {}
    for where, labels in [*((f"classes.{k[:40]}", v) for k, v in grouping.classes.items()),
                          ("exclude", grouping.exclude)]:
        for label in labels:
            if label in seen:
                raise FileFormatError(path, where, f"the label {label[:40]!r} is also in {seen[label]}: "
                                                   "a label goes to one class, or is excluded")
            seen[label] = where
    return grouping


def get_grouping(scenario: str | None, grouping_file: str | Path | None, labels: Sequence[str]) -> Grouping:
    """The grouping a run asks for: a file, a named scenario, or the labels as they are."""
    if grouping_file is not None and scenario is not None:
        raise ValueError("give either a scenario or a grouping file, not both")
    if grouping_file is not None:
        return load_grouping(grouping_file)
    if scenario is not None:
        try:
            return SCENARIOS[scenario]
        except KeyError:
            raise ValueError(f"unknown scenario {scenario!r}; expected one of {sorted(SCENARIOS)}") from None
    return identity_grouping(labels)


def _check_stratifiable(y: np.ndarray, n_parts: int, class_names: Sequence[str] | None) -> None:
    counts = Counter(y.tolist())
    small = {(class_names[c] if class_names else c): n for c, n in counts.items() if n < n_parts}
    if small:
        raise ValueError(f"too few images to stratify into {n_parts} parts: {small} (need ≥ {n_parts} per class)")


def stratified_split(
    y: np.ndarray, *, val_fraction: float = 0.2, seed: int = 0, class_names: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Train and validation indices, stratified by class, reproducible from ``seed``."""
    from sklearn.model_selection import train_test_split

    y = np.asarray(y)
    _check_stratifiable(y, 2, class_names)
    idx = np.arange(len(y))
    n_val = max(int(round(val_fraction * len(y))), len(set(y.tolist())))
    train, val = train_test_split(idx, test_size=n_val, stratify=y, random_state=seed)
    return np.sort(train), np.sort(val)


def stratified_folds(
    y: np.ndarray, k: int, *, seed: int = 0, class_names: Sequence[str] | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """``k`` (train, validation) index pairs of a seeded stratified k-fold."""
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(y)
    _check_stratifiable(y, k, class_names)
    folds = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(np.sort(tr), np.sort(va)) for tr, va in folds.split(np.zeros(len(y)), y)]
