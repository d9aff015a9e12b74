"""The learners' notebook runs top to bottom: every cell executes and its own checks against jax.grad hold."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "backprop_by_hand.ipynb"


@pytest.mark.slow
@pytest.mark.parametrize("path", [NOTEBOOK], ids=["backprop_by_hand"])
def test_notebook_executes_and_its_checks_hold(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:  # start from a clean slate: the stored outputs prove nothing
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count for c in code)
    errors = [o for c in code for o in c.outputs if o.get("output_type") == "error"]
    assert not errors, errors
    text = "".join(o.get("text", "") for c in code for o in c.outputs if o.get("output_type") == "stream")
    for expected in ("δ^3 (by hand)", "closed form", "log-log slope", "stride 2: output", "MBConv bn2/var"):
        assert expected in text
