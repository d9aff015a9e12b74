"""Every command is thin: it parses flags, builds the typed options, calls the library once and prints.

Read from the source (no command runs): a command imports at most 3 library modules, every one of them inside
``run()`` (or for type hints only), so a bad flag is refused before any heavy import (tests/experiments/test_cli.py
measures that); and no command runs another through its argv.
"""

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TOOLKIT = {"__init__.py", "cli.py", "names.py"}  # the flag toolkit and the choices, not commands
COMMANDS = sorted(p.stem for p in (REPO / "experiments").glob("*.py") if p.name not in TOOLKIT)
LIBRARY = ("training", "models", "manual_backprop", "common")


def _imports(node: ast.AST) -> set[str]:
    return {n.module for n in ast.walk(node) if isinstance(n, ast.ImportFrom) and n.module}


@pytest.mark.parametrize("command", COMMANDS)
def test_a_command_is_one_library_call(command):
    tree = ast.parse((REPO / "experiments" / f"{command}.py").read_text(encoding="utf-8"))
    library = {m for m in _imports(tree) if m.split(".")[0] in LIBRARY}
    assert 1 <= len(library) <= 3, library
    run = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "run")
    typing_only = {m for node in tree.body if isinstance(node, ast.If) for m in _imports(node)}
    assert library <= _imports(run) | typing_only, library - _imports(run) - typing_only
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and n.func.attr == "main" and isinstance(n.func.value, ast.Name) and n.func.value.id != "p"]
    assert not calls, f"{command} runs another command through its argv"


def test_every_command_is_checked():
    assert len(COMMANDS) >= 14 and {"train", "predict", "explain", "export", "main"} <= set(COMMANDS)
