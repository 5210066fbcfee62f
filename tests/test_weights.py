"""Weights on disk: safetensors round trips, and models rebuilt from training checkpoints."""

import json

import pytest
import torch
import trainer_utils
from safetensors.torch import load_file

from tlama_core.models import TlamaConfig, Transformer, load_model, save_safetensors


def tiny_model(tie: bool = False) -> Transformer:
    return trainer_utils.tiny_model(vocab_size=100, d_model=64, multiple_of=16, tie_embeddings=tie)


def write_checkpoint(path, model: Transformer, prefix: str = "model.", **entries) -> None:
    """A checkpoint shaped like the trainer's: Lightning's dict with prefixed keys and the model config."""
    ckpt = {"state_dict": {prefix + k: v for k, v in model.state_dict().items()},
            "model_config": model.config.to_dict(), "global_step": 7, "optimizer_states": [], **entries}
    torch.save({k: v for k, v in ckpt.items() if v is not None}, path)


@pytest.mark.parametrize("tie", [False, True])
def test_safetensors_round_trip_is_exact(tmp_path, tie):
    model = tiny_model(tie)
    save_safetensors(model, tmp_path)
    loaded = load_model(tmp_path)
    assert loaded.config == model.config and not loaded.training
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert (loaded.output.weight is loaded.tok_embeddings.weight) == tie
    assert json.loads((tmp_path / "config.json").read_text()) == model.config.to_dict()
    assert not list(tmp_path.glob("*.tmp"))


def test_tied_embeddings_are_stored_once(tmp_path):
    save_safetensors(tiny_model(tie=True), tmp_path)
    assert "output.weight" not in load_file(tmp_path / "model.safetensors")


def test_truncated_safetensors_file_is_an_error_naming_it(tmp_path):
    save_safetensors(tiny_model(), tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="model.safetensors: not a readable safetensors file"):
        load_model(tmp_path)


@pytest.mark.parametrize("prefix", ["model.", "model._orig_mod."])
def test_from_checkpoint_rebuilds_the_model_for_inference(tmp_path, prefix):
    model = tiny_model()
    write_checkpoint(tmp_path / "last.ckpt", model, prefix)
    loaded = load_model(tmp_path / "last.ckpt")
    assert loaded.config == model.config and not loaded.training
    tokens = torch.randint(0, 100, (2, 10))
    with torch.no_grad():
        assert torch.equal(loaded(tokens)[0], model.eval()(tokens)[0])


def test_checkpoint_without_model_config_is_an_error_naming_the_file(tmp_path):
    write_checkpoint(tmp_path / "old.ckpt", tiny_model(), model_config=None)
    with pytest.raises(ValueError, match=r"old\.ckpt: the checkpoint has no 'model_config'"):
        load_model(tmp_path / "old.ckpt")


@pytest.mark.parametrize(("content", "problem"), [
    (lambda good: good[: len(good) // 2], "not a readable training checkpoint"),  # truncated
    (lambda good: b"\x00garbage" * 100, "not a readable training checkpoint"),  # corrupt
    (lambda good: b"", "not a readable training checkpoint"),  # empty
])
def test_unreadable_checkpoint_is_an_error_naming_the_file(tmp_path, content, problem):
    write_checkpoint(tmp_path / "good.ckpt", tiny_model())
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(content((tmp_path / "good.ckpt").read_bytes()))
    with pytest.raises(ValueError, match=rf"bad\.ckpt: {problem}"):
        load_model(bad)


def test_checkpoint_with_arbitrary_objects_is_refused_unexecuted(tmp_path):
    torch.save({"state_dict": {}, "model_config": {}, "evil": Transformer}, tmp_path / "pickle.ckpt")
    with pytest.raises(ValueError, match=r"pickle\.ckpt: not a readable training checkpoint"):
        load_model(tmp_path / "pickle.ckpt")


@pytest.mark.parametrize(("saved", "problem"), [
    ([1, 2, 3], "no 'state_dict' entry"),
    ({"state_dict": {"encoder.weight": torch.zeros(2)}, "model_config": {}}, "no 'model.' entries"),
])
def test_foreign_torch_file_is_an_error_naming_it(tmp_path, saved, problem):
    torch.save(saved, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match=rf"foreign\.pt: .*{problem}"):
        load_model(tmp_path / "foreign.pt")


def test_checkpoint_whose_weights_do_not_fit_its_config_is_an_error_naming_it(tmp_path):
    model = tiny_model()
    write_checkpoint(tmp_path / "mixed.ckpt", model, model_config={**model.config.to_dict(), "d_model": 128})
    with pytest.raises(ValueError, match=r"mixed\.ckpt: the weights do not fit its model_config"):
        load_model(tmp_path / "mixed.ckpt")


def test_safetensors_that_do_not_fit_their_config_are_an_error_naming_the_directory(tmp_path):
    torch.manual_seed(0)
    save_safetensors(Transformer(TlamaConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, max_seq_len=16)),
                     tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "n_layers": 3}))
    with pytest.raises(ValueError, match=rf"{tmp_path}: the weights do not fit its config.json"):
        load_model(tmp_path)
