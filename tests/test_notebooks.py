"""The teaching notebooks run end to end (tiny schedule) and are committed without outputs.

Each notebook is executed by nbclient in a ``python3`` kernel (the venv's python when pytest runs
from the venv) with ``SPARSE_BNN_NOTEBOOK_SMALL=1`` and ``JAX_PLATFORMS=cpu``; any cell error fails
the test.
"""
from __future__ import annotations

from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ("01_quickstart.ipynb", "02_priors.ipynb", "03_bmr.ipynb", "04_custom_model.ipynb")
CELL_TIMEOUT_S = 300


def fashion_mnist_is_local() -> bool:
    """Whether Fashion-MNIST can be found without the network (tests never download)."""
    from sparse_bnn.data import DataNotFoundError, find_idx_folder
    try:
        find_idx_folder("fashion-mnist", download=False)
    except DataNotFoundError:
        return False
    return True


@pytest.mark.parametrize("name", NAMES)
def test_committed_notebook_has_no_outputs(name):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code, f"{name} has no code cells"
    for index, cell in enumerate(code):
        assert cell.outputs == [], f"{name}: code cell {index} has outputs; strip them before committing"
        assert cell.execution_count is None, f"{name}: code cell {index} has an execution count"
    assert "SPARSE_BNN_NOTEBOOK_SMALL" in code[0].source, f"{name}: the first code cell must read the small switch"


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs(name, tmp_path, monkeypatch):
    if name == "01_quickstart.ipynb" and not fashion_mnist_is_local():
        pytest.skip("Fashion-MNIST is not on this machine (set SPARSE_BNN_DATA); tests never download")
    # the kernel inherits this process's environment
    monkeypatch.setenv("SPARSE_BNN_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError naming the failing cell
    errors = [output for cell in notebook.cells if cell.cell_type == "code"
              for output in cell.outputs if output.get("output_type") == "error"]
    assert not errors, errors
    executed = [cell.execution_count for cell in notebook.cells if cell.cell_type == "code"]
    assert all(count is not None for count in executed), "not every code cell ran"
