"""One loader for every kind of weights, and every bad file on every path that reads one named in the error."""

from __future__ import annotations

import json
import random
import resource
from pathlib import Path

import numpy as np
import pytest
import torch
from trainer_utils import WindowLoader, tiny_model

from tlama_core.checkpoints import CheckpointError
from tlama_core.cli import main
from tlama_core.evaluation import evaluate
from tlama_core.models import TlamaConfig, find_weights, load_model, save_safetensors, to_hf
from tlama_core.training import Trainer


def write_checkpoint(path: Path, model, **entries) -> Path:
    """A file shaped like the trainer's checkpoints: Lightning's dict with `model.` keys and the model config."""
    ckpt = {"state_dict": {"model." + k: v for k, v in model.state_dict().items()},
            "model_config": model.config.to_dict(), "global_step": 7, "optimizer_states": [], **entries}
    torch.save(ckpt, path)
    return path


def same_outputs(a, b) -> bool:
    tokens = torch.randint(0, a.config.vocab_size, (2, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return torch.equal(a(tokens)[0], b(tokens)[0])


def test_load_model_reads_every_kind_of_weights(tmp_path):
    model = tiny_model().eval()
    ckpt_dir = tmp_path / "checkpoints"
    ckpt_dir.mkdir()
    write_checkpoint(ckpt_dir / "step=00000002.ckpt", tiny_model(seed=1))
    newest = write_checkpoint(ckpt_dir / "step=00000010.ckpt", model)
    save_safetensors(model, tmp_path / "ours")
    to_hf(model, tmp_path / "hf")
    for path, kind, found in [(newest, "checkpoint", newest), (ckpt_dir, "checkpoint", newest),
                              (tmp_path / "ours", "safetensors", tmp_path / "ours"),
                              (tmp_path / "hf", "hugging face", tmp_path / "hf"),
                              (tmp_path / "hf" / "model.safetensors", "hugging face", tmp_path / "hf")]:
        weights = find_weights(path)
        assert (weights.kind, weights.path) == (kind, found)
        loaded = load_model(path)
        assert not loaded.training and loaded.config.d_model == model.config.d_model
        assert same_outputs(loaded, model), path


def test_tied_weights_load_tied(tmp_path):
    model = tiny_model(tie_embeddings=True).eval()
    save_safetensors(model, tmp_path / "ours")
    for path in (write_checkpoint(tmp_path / "tied.ckpt", model), tmp_path / "ours"):
        loaded = load_model(path)
        assert loaded.output.weight is loaded.tok_embeddings.weight
        assert same_outputs(loaded, model)


def test_a_path_without_weights_says_what_it_holds(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        load_model(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="it is empty"):
        load_model(tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "best.ckpt").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match=r"no step=\*.ckpt file .* it holds \['best.ckpt', 'notes.txt'\]"):
        load_model(tmp_path)


def bad_files(tmp_path: Path) -> dict[str, Path]:
    """One file of each kind that is not a checkpoint: garbage, text, a truncated zip, empty, JSON, a foreign
    torch dict, a checkpoint whose config is not a TlamaConfig, one whose weights do not fit its config."""
    good = write_checkpoint(tmp_path / "good.ckpt", tiny_model()).read_bytes()
    # garbage and text end in torch's unpickler as UnpicklingError and KeyError; these 64 random bytes as
    # "IndexError: pop from empty list", what train(ckpt_path=) used to raise, naming nothing.
    contents = {"garbage": random.Random(0).randbytes(4096), "text": b"hello world, not a checkpoint\n",
                "popped": random.Random(2).randbytes(64),
                "truncated": good[: len(good) // 2], "empty": b"", "json": json.dumps({"state_dict": {}}).encode()}
    files = {}
    for name, data in contents.items():
        files[name] = tmp_path / f"{name}.ckpt"
        files[name].write_bytes(data)
    files["foreign"] = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(2), "epoch": 3}, files["foreign"])
    files["config"] = write_checkpoint(tmp_path / "config.ckpt", tiny_model(), model_config={"layers": 2})
    files["misfit"] = write_checkpoint(tmp_path / "misfit.ckpt", tiny_model(),
                                       model_config={**tiny_model().config.to_dict(), "n_layers": 3}, loops={})
    return files


KINDS = ["garbage", "text", "popped", "truncated", "empty", "json", "foreign", "config", "misfit"]


@pytest.fixture(scope="module")
def bad(tmp_path_factory) -> dict[str, Path]:
    return bad_files(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize("kind", KINDS)
def test_load_model_names_a_bad_checkpoint(bad, kind):
    with pytest.raises(ValueError, match=rf"{kind}\.ckpt: "):
        load_model(bad[kind])


@pytest.mark.parametrize("kind", KINDS)
def test_resuming_from_a_bad_checkpoint_names_it(bad, kind, tmp_path):
    trainer = Trainer(tiny_model(), WindowLoader(16, 4, 16), total_batch_size=64, verbose=False,
                      checkpoints_dir=str(tmp_path / "ckpt"), logs_dir=str(tmp_path / "logs"))
    with pytest.raises(CheckpointError, match=rf"{kind}\.ckpt"):
        trainer.train(ckpt_path=str(bad[kind]))


def test_resuming_from_weights_that_do_not_fit_their_own_config_names_the_file(bad, tmp_path):
    trainer = Trainer(tiny_model(n_layers=3), WindowLoader(16, 4, 16), total_batch_size=64, verbose=False,
                      checkpoints_dir=str(tmp_path / "ckpt"), logs_dir=str(tmp_path / "logs"))
    with pytest.raises(CheckpointError, match=r"misfit\.ckpt: the weights do not fit its model_config \(missing"):
        trainer.train(ckpt_path=str(bad["misfit"]))


@pytest.mark.parametrize("command", [["generate", "--prompt", "x", "--checkpoint"],
                                     ["convert", "to-hf", "--out", "OUT", "--checkpoint"],
                                     ["evaluate", "--data", "DATA", "--model"]])
@pytest.mark.parametrize("kind", KINDS)
def test_cli_commands_exit_2_naming_a_bad_checkpoint(bad, kind, command, tmp_path, capsys):
    np.save(tmp_path / "ids.npy", np.arange(64, dtype=np.uint16))
    command = [{"OUT": str(tmp_path / "hf"), "DATA": str(tmp_path / "ids.npy")}.get(arg, arg) for arg in command]
    with pytest.raises(SystemExit) as exit_:
        main([*command, str(bad[kind])])
    assert exit_.value.code == 2
    assert f"{kind}.ckpt: " in capsys.readouterr().err


@pytest.mark.parametrize("kind", KINDS)
def test_evaluate_names_a_bad_checkpoint(bad, kind, tmp_path):
    np.save(tmp_path / "ids.npy", np.arange(64, dtype=np.uint16))
    with pytest.raises(ValueError, match=rf"{kind}\.ckpt: "):
        evaluate(bad[kind], tmp_path / "ids.npy")


@pytest.mark.parametrize("damage", ["config_garbage", "config_list", "weights_truncated", "weights_empty"])
@pytest.mark.parametrize("fmt", ["ours", "hf"])
def test_bad_files_in_a_weights_directory_are_named(tmp_path, damage, fmt):
    (save_safetensors if fmt == "ours" else to_hf)(tiny_model(), tmp_path)
    config, weights = tmp_path / "config.json", tmp_path / "model.safetensors"
    if damage == "config_garbage":
        config.write_bytes(random.Random(0).randbytes(300))
    elif damage == "config_list":
        config.write_text("[1, 2]")
    elif damage == "weights_truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        weights.write_bytes(b"")
    named = config if damage.startswith("config") else weights
    with pytest.raises(ValueError, match=rf"{named}: "):
        load_model(tmp_path)


def test_a_tiny_checkpoint_declaring_a_huge_model_allocates_nothing(tmp_path):
    """Issue 20.7: a 2 KB file whose model_config says d_model 8192, 64 layers, 128,000 ids (a 32 GB model)."""
    path = tmp_path / "huge.ckpt"
    torch.save({"state_dict": {"model.norm.weight": torch.ones(16)},
                "model_config": TlamaConfig(vocab_size=128000, d_model=8192, n_layers=64).to_dict()}, path)
    assert path.stat().st_size < 4096
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with pytest.raises(ValueError, match=r"huge\.ckpt: the weights do not fit its model_config \(missing"):
        load_model(path)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 500_000  # under 0.5 GB more
