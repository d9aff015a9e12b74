"""The package layout: training/ is subpackages by role whose imports run one way, with no cycles.

``common/`` (files, tables, timing, the run folder's layout) is project-wide and imports nothing of the
project: every package may use it, ``models`` included, which imports nothing else above it. In training/,
from the bottom up:
``data`` → ``evaluation`` → ``loop`` → ``transfer`` → ``runs`` and ``inference`` (siblings that
do not import each other). ``models`` may use ``common`` only; ``manual_backprop`` (the
hand-written rules) may use ``models.common``, the models' shared input and padding helpers.
Lazy imports inside functions count too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LAYERS = {"data": 1, "evaluation": 2, "loop": 3, "transfer": 4, "runs": 5, "inference": 5}


def project_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names]
    return [m for m in found if m.split(".")[0] in ("common", "training", "models", "manual_backprop", "experiments")]


def modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def test_training_is_subpackages_only():
    flat = [p.name for p in (REPO / "training").glob("*.py") if p.name != "__init__.py"]
    assert flat == [], f"modules directly under training/: {flat}"
    assert {p.name for p in (REPO / "training").iterdir() if p.is_dir() and p.name != "__pycache__"} == set(LAYERS)


@pytest.mark.parametrize("path", modules("training"), ids=lambda p: str(p.relative_to(REPO)))
def test_training_imports_run_one_way(path):
    mine = path.relative_to(REPO / "training").parts[0]
    for module in project_imports(path):
        parts = module.split(".")
        if parts[0] == "experiments":
            pytest.fail(f"{path.name} imports the command {module}")
        if parts[0] != "training" or len(parts) < 2:
            continue
        other = parts[1]
        ok = other == mine or LAYERS[other] < LAYERS[mine]
        assert ok, f"training/{mine} may not import training.{other} ({module} in {path.relative_to(REPO)})"


@pytest.mark.parametrize("package", ["models", "manual_backprop"])
def test_models_and_the_math_stand_below_training(package):
    for path in modules(package):
        for module in project_imports(path):
            parts = module.split(".")
            if package == "manual_backprop":  # the hand-written passes read the architectures they mirror
                assert parts[0] in ("manual_backprop", "models"), f"{path.relative_to(REPO)} imports {module}"
            else:
                assert parts[0] in ("models", "common"), \
                    f"{path.relative_to(REPO)} imports {module}"  # and never manual_backprop: no cycle


def test_common_is_a_leaf():
    for path in modules("common"):
        assert all(m.startswith("common") for m in project_imports(path)), path
