"""The teaching notebooks run end to end (tiny schedule) and are committed without outputs.

Each notebook is executed by nbclient in a ``python3`` kernel (the venv's python when pytest runs
from the venv) with ``SPARSE_BNN_NOTEBOOK_SMALL=1`` and ``JAX_PLATFORMS=cpu``; any cell error fails
the test. The quickstart reads Fashion-MNIST through ``$SPARSE_BNN_DATA`` from a generated
stand-in in the official IDX format (tests never download, and CI machines lack the Debian
package), so it runs on every machine.
"""
from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
NAMES = ("01_quickstart.ipynb", "02_priors.ipynb", "03_bmr.ipynb", "04_custom_model.ipynb")
CELL_TIMEOUT_S = 300


def write_fashion_mnist_stand_in(folder: Path, n_train: int = 2500, n_test: int = 1000) -> Path:
    """Fashion-MNIST's four IDX files (28x28 uint8, labels 0..9) with learnable generated images:
    one random template per class plus noise."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    templates = rng.integers(0, 200, (10, 28, 28))
    for split, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = np.clip(templates[labels] + rng.integers(0, 56, (n, 28, 28)), 0, 255).astype(np.uint8)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
            with gzip.open(folder / f"{split}-{kind}-ubyte.gz", "wb") as f:
                f.write(header + array.tobytes())
    return folder


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
    # the kernel inherits this process's environment
    monkeypatch.setenv("SPARSE_BNN_DATA", str(write_fashion_mnist_stand_in(tmp_path / "data" / "fashion-mnist")))
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
