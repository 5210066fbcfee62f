"""Every notebook runs from top to bottom (at a size of seconds: TLAMA_NOTEBOOK_SMOKE=1) and is committed clean."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert [p.name for p in NOTEBOOKS] == ["01_quickstart.ipynb", "02_callbacks.ipynb", "03_yaml_and_cli.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    code = [c for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), (
        f"{path.name} holds outputs: clear them before committing (Jupyter: Edit > Clear Outputs of All Cells).")


def printed(notebook: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("TLAMA_NOTEBOOK_SMOKE", "1")  # the kernel inherits it (and the test token cache dir)
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()  # a failing cell raises
    crowded = {i: len(c.outputs) for i, c in enumerate(notebook.cells) if c.cell_type == "code" and len(c.outputs) > 20}
    assert not crowded, f"cells with more than 20 outputs (a progress bar's redraws?): {crowded}"
    out = printed(notebook)
    if path.stem == "01_quickstart":
        assert "the trained weights, reloaded: True" in out
        assert (tmp_path / "logs" / "train_log.csv").is_file()
    elif path.stem == "02_callbacks":
        assert "stopped early at step 6" in out and (tmp_path / "checkpoints" / "early" / "best.ckpt").is_file()
    elif path.stem == "03_yaml_and_cli":
        assert (tmp_path / "checkpoints" / "config.yaml").is_file() and (tmp_path / "loss.png").is_file()
        assert "step=00000012.ckpt" in {p.name for p in (tmp_path / "checkpoints").iterdir()}  # resumed to 3 epochs
