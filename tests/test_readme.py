"""Every `tlama` command in README.md's bash blocks runs, in order, in one fresh directory: the README cannot rot.

Training commands get flags that shrink the model and the run to seconds, inserted right after `tlama fit` (or
after its `--config FILE`), so the README's own flags still win. Commands that are not `tlama` are either skipped
for a stated reason or make the test fail, so a new kind of command gets a decision here.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
import yaml

from tlama_core.cli import main
from tlama_core.data import builtin_corpus_path

REPO = Path(__file__).resolve().parents[1]

TINY_FIT = ["--model.config.d_model", "32", "--model.config.n_layers", "2", "--model.config.n_heads", "4",
            "--model.config.n_kv_heads", "2", "--data.batch_size", "2", "--data.seq_length", "32",
            "--trainer.total_batch_size", "128", "--trainer.steps", "2", "--trainer.validation_batches", "1",
            "--trainer.verbose", "false"]

SKIPPED = {
    # The suite runs inside an installed environment; .ci/run builds one from a clean clone the same way.
    "python3 -m venv": "creates a virtualenv",
    ". .venv/bin/activate": "activates that virtualenv",
    "pip install": "installs packages (network); this environment has them",
    # It runs this very test suite.
    "bash .ci/run": "runs the whole test suite",
    # The device check: without CUDA it only writes a 'skipped' JSON; tests/test_gpu_check.py runs it (--smoke).
    "python bench/gpu_check.py": "needs a CUDA GPU",
    # Cluster launchers: tests/test_sharding.py and tests/test_preemption.py start the same processes locally.
    "torchrun": "starts processes on several machines",
    "srun": "needs a SLURM cluster",
    "sbatch": "needs a SLURM cluster",
}


def readme_commands() -> list[list[str]]:
    """Each command of README.md's ```bash blocks as argv, `&&` chains split, in document order."""
    text = (REPO / "README.md").read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            argv: list[str] = []
            for token in shlex.split(line, comments=True) + ["&&"]:
                if token == "&&":
                    if argv:
                        commands.append(argv)
                    argv = []
                else:
                    argv.append(token)
    return commands


def shrunk(argv: list[str]) -> list[str]:
    """`tlama fit ...` with TINY_FIT inserted after `fit` or after its `--config FILE` (a recipe planned in time
    planned in TINY_FIT's steps instead)."""
    at = argv.index("--config") + 2 if "--config" in argv else 2
    config = yaml.safe_load((REPO / argv[at - 1]).read_text()) if "--config" in argv else {}
    timed = (config.get("trainer") or {}).get("max_time") is not None
    untimed = ["--trainer.max_time", "null", "--trainer.max_steps", "null"] if timed else []
    return argv[:at] + TINY_FIT + untimed + argv[at:]


def test_readme_commands_are_found():
    commands = [" ".join(c[:2]) for c in readme_commands()]
    assert "tlama fit" in commands and "tlama generate" in commands and "bash .ci/run" in commands


@pytest.mark.slow
def test_every_tlama_command_of_the_readme_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shutil.copytree(REPO / "configs", "configs")
    # The README's example corpus of your own: a slice of Tiny Shakespeare.
    Path("my_corpus.txt").write_text(builtin_corpus_path().read_text()[:200_000])
    ran = []
    for argv in readme_commands():
        line = shlex.join(argv)
        if argv[0] != "tlama":
            assert any(line.startswith(prefix) for prefix in SKIPPED), f"README command not covered: {line}"
            continue
        args = shrunk(argv)[1:] if argv[1] == "fit" else argv[1:]
        try:
            main(args)
        except SystemExit as exit_:  # --print_config exits 0; anything else is a broken README command
            assert exit_.code == 0, f"{line} exited with {exit_.code}: {capsys.readouterr().err[-2000:]}"
        out = capsys.readouterr().out
        if argv[1] == "generate":
            assert out.startswith(argv[argv.index("--prompt") + 1]), f"{line} printed {out[:200]!r}"
        ran.append(line)
    assert len(ran) >= 10
    assert Path("checkpoints/config.yaml").is_file() and Path("loss.png").is_file()
    assert Path("hf-model/config.json").is_file() and Path("tlama-model/model.safetensors").is_file()
    assert Path("runs/mine/checkpoints/config.yaml").is_file()


def test_the_readme_map_of_the_package_names_every_module_and_folder():
    text = (REPO / "README.md").read_text()
    table = text[text.index("### Where things live"):].split("\n\n")[2]
    package = REPO / "src" / "tlama_core"
    entries = [p for p in [*package.iterdir(), *(package / "training").iterdir()]
               if p.name not in ("__init__.py", "__pycache__", "moved.py", "assets")]
    named = {p: (f"`{p.relative_to(package)}", f"`{p.name}`", f"`{p.name}/`") for p in entries}
    missing = [str(p.relative_to(package)) for p, forms in named.items() if not any(f in table for f in forms)]
    assert not missing, f"README's 'Where things live' names no row for {missing}"
