"""The package layout: training/ is subpackages by role whose imports run one way, with no cycles.

``common/`` (files, tables, timing, the run folder's layout) is project-wide and imports nothing of the
project: every package may use it, ``models`` included, which imports nothing else above it. In training/,
from the bottom up:
``data`` → ``evaluation`` → ``loop`` → ``transfer`` → ``inference`` → ``runs`` (a whole run, predicting
with a saved one included: ``runs`` may use ``inference``, never the reverse).
``models`` may use ``common`` only; ``manual_backprop`` (the hand-written rules) may use ``models.common``,
the models' shared input and padding helpers.
Lazy imports inside functions count too, and no module of the project (``training``, ``models``,
``manual_backprop``, ``experiments``, ``benchmarks``) reaches itself again through its imports.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "training", "models", "manual_backprop", "experiments", "benchmarks")
LAYERS = {"data": 1, "evaluation": 2, "loop": 3, "transfer": 4, "inference": 5, "runs": 6}


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


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Module → the project modules it imports (at the top, inside functions or under TYPE_CHECKING).
    ``from a.b import c`` names the module ``a.b.c`` where that is a module, else ``a.b``."""
    paths = {module_name(p): p for package in PACKAGES for p in modules(package)}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the package this module is in
                    up = here.split(".")[: len(here.split(".")) - (node.level - 1)]
                    base = ".".join(up + ([base] if base else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in paths else base for a in node.names]
            else:
                continue
            edges |= {t for t in targets if t in paths and t != name}
        graph[name] = edges
    return graph


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def test_the_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"f"}, "f": {"e"}, "g": set()}
    assert sorted(import_cycles(graph)) == [["a", "b", "c"], ["e", "f"]]


def test_no_import_cycles_among_the_project_modules():
    graph = import_graph()
    assert {"training.runs.folds", "training.runs.gradients", "benchmarks.model1_train"} <= set(graph)
    assert "training.runs.gradients" in graph["experiments.compare_gradients"]  # a lazy import is an edge too
    cycles = import_cycles(graph)
    assert cycles == [], "import cycles: " + "; ".join(" ↔ ".join(c) for c in cycles)


@pytest.mark.parametrize("path", [p for p in modules("training") if p.name != "__init__.py"],
                         ids=lambda p: str(p.relative_to(REPO)))
def test_the_readme_names_every_room_of_the_library(path):
    """The README's Layout (and its table of commands' library calls) names each module of training/, by file
    name or dotted path, so a newcomer finds every room."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    dotted = ".".join(path.relative_to(REPO / "training").with_suffix("").parts)
    assert path.name in readme or dotted in readme, f"README does not name training/{dotted.replace('.', '/')}.py"
