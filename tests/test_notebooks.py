"""Every notebook runs from top to bottom (at a size of seconds: TLAMA_NOTEBOOK_SMOKE=1) and is committed clean."""

from __future__ import annotations

import os
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


def test_in_a_notebook_a_run_prints_a_line_at_each_tenth_of_its_steps_with_the_logged_loss(tmp_path, monkeypatch,
                                                                                          capfd):
    from trainer_utils import WindowLoader, make_trainer

    from tlama_core.training.lightning import progress
    from tlama_core.training.records.metrics import read_rows

    assert not progress.in_notebook()  # pytest is no Jupyter kernel
    monkeypatch.setattr(progress, "in_notebook", lambda: True)
    trainer = make_trainer(tmp_path, epochs=3, validation_steps=6, verbose=True,
                           val_data_loader=WindowLoader(8, 4, 16, seed=1))  # 24 steps: a line every 3
    trainer.train()
    out, err = capfd.readouterr()
    lines = [line for line in out.splitlines() if line.startswith("step ")]
    rows = {int(r["step"]): r for r in read_rows(trainer.log_file)}
    assert [int(line.split()[1].split("/")[0]) for line in lines] == list(range(3, 25, 3))
    for line in lines:
        step, fields = int(line.split()[1].split("/")[0]), dict(f.split("=") for f in line.split()[2:])
        assert line.split()[1].endswith("/24")
        assert float(fields["loss"]) == pytest.approx(float(rows[step]["train_loss"]), rel=1e-3)
        last_val = max((s for s, r in rows.items() if r["val_loss"] and s <= step), default=None)
        assert ("val_loss" in fields) == (last_val is not None)  # a validating step's line follows its validation
        if last_val is not None:
            assert float(fields["val_loss"]) == pytest.approx(float(rows[last_val]["val_loss"]), rel=1e-3)
    assert "Epoch 0" not in out + err  # no text bar


def test_a_run_stopped_before_its_planned_last_step_still_ends_on_a_line_in_a_notebook(capsys):
    from types import SimpleNamespace

    from tlama_core.training.lightning.progress import NotebookProgress

    cadence = SimpleNamespace(progress={"loss": 2.5}, pending_step=None)
    module = SimpleNamespace(plan=SimpleNamespace(max_steps=100), last_val=None,
                             accumulation=SimpleNamespace(ends_step=lambda batch_idx: True))
    bar = NotebookProgress(cadence)
    for step in range(1, 8):  # a time budget ends the run at step 7 of the 100 planned: no tenth reached
        trainer = SimpleNamespace(global_step=step, max_steps=100)
        bar.on_train_batch_end(trainer, module, None, None, step - 1)
    assert capsys.readouterr().out == ""
    bar.on_train_end(trainer, module)
    bar.on_train_end(trainer, module)  # once
    assert capsys.readouterr().out.splitlines() == ["step 7/100  loss=2.5"]


@pytest.mark.slow
def test_a_verbose_run_in_a_jupyter_kernel_fills_at_most_20_outputs(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).parent) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cell = ("from pathlib import Path\n"
            "from trainer_utils import WindowLoader, make_trainer\n"
            "make_trainer(Path('.'), epochs=5, validation_steps=4, verbose=True,\n"
            "             val_data_loader=WindowLoader(8, 4, 16, seed=1)).train()\n")  # 40 steps
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)])
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = notebook.cells[0].outputs
    lines = [line for line in printed(notebook).splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == [f"{s}/40" for s in range(4, 41, 4)]
    assert len(outputs) <= 20, [o.get("text", "")[:80] for o in outputs]
    assert "Epoch 0" not in printed(notebook)
