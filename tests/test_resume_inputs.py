"""A resume reads what its checkpoint's run read: other training data or another tokenizer is refused, naming what
changed and how to go on deliberately; text, records and prepared shards alike."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tlama_core.checkpoints import CheckpointError
from tlama_core.data import builtin_corpus_path, builtin_tokenizer_path, create_dataloader, train_tokenizer
from tlama_core.data.prepare import prepare
from tlama_core.models import TlamaConfig, Transformer
from tlama_core.training import Trainer

SHAKESPEARE = Path(builtin_corpus_path()).read_text()


def write_text(path: Path, start: int) -> Path:
    path.write_text(SHAKESPEARE[start:start + 30_000])
    return path


def write_records(path: Path, start: int) -> Path:
    text = SHAKESPEARE[start:start + 30_000]
    path.write_text("".join(json.dumps({"text": text[i:i + 3000]}) + "\n" for i in range(0, len(text), 3000)))
    return path


def write_shards(path: Path, start: int) -> Path:
    source = write_text(path.with_suffix(".txt"), start)
    prepare(source, builtin_tokenizer_path(), path, workers=1, progress=False)
    return path


def run(tmp_path: Path, data: Path, steps: int, tokenizer: Path | None = None, val: Path | None = None,
        **kwargs) -> Trainer:
    def loader(path: Path):
        return create_dataloader(path, tokenizer or builtin_tokenizer_path(), batch_size=2, seq_length=32,
                                 cache_dir=tmp_path / "cache")
    model = Transformer(TlamaConfig(vocab_size=1024, d_model=32, n_layers=1, n_heads=4, max_seq_len=32))
    return Trainer(model, loader(data), val_data_loader=loader(val) if val else None, total_batch_size=128,
                   steps=steps, checkpoint_steps=2, validation_steps=2, log_steps=1,
                   use_mixed_precision=False, checkpoints_dir=str(tmp_path / "ckpt"), logs_dir=str(tmp_path / "logs"),
                   verbose=False, **kwargs)


@pytest.mark.parametrize("write", [write_text, write_records, write_shards], ids=["text", "records", "shards"])
def test_a_resume_on_other_data_of_the_same_size_is_refused_unless_allowed(tmp_path, write):
    name = {"write_text": "corpus.txt", "write_records": "corpus.jsonl", "write_shards": "shards"}[write.__name__]
    data = write(tmp_path / name, 0)
    run(tmp_path, data, 2).train()
    write(tmp_path / name, 100_000)  # other text, the same size, the same name
    with pytest.raises(CheckpointError, match="trained on other data than this run reads.*allow_data_change=True"):
        run(tmp_path, data, 4).train(ckpt_path="last")
    result = run(tmp_path, data, 4, allow_data_change=True).train(ckpt_path="last")
    assert result["steps_completed"] == 4


def test_a_resume_validating_on_other_data_is_refused_unless_allowed(tmp_path):
    """Other validation text would make the resumed run's val_loss, and the best.ckpt it picks, measure other
    text than the checkpoint's: refused like other training data; the same validation text passes."""
    data, val = write_text(tmp_path / "corpus.txt", 0), write_text(tmp_path / "val.txt", 40_000)
    run(tmp_path, data, 2, val=val).train()
    assert run(tmp_path, data, 4, val=val).train(ckpt_path="last")["steps_completed"] == 4
    write_text(val, 140_000)  # other text, the same size, the same name
    with pytest.raises(CheckpointError, match="was validated on other data than this run validates on .*"
                                              "allow_data_change=True"):
        run(tmp_path, data, 6, val=val).train(ckpt_path="last")
    assert run(tmp_path, data, 6, val=val, allow_data_change=True).train(ckpt_path="last")["steps_completed"] == 6


def test_a_resume_with_the_same_data_rebuilt_elsewhere_is_accepted(tmp_path):
    data = write_text(tmp_path / "corpus.txt", 0)
    run(tmp_path, data, 2).train()
    moved = write_text(tmp_path / "copy.txt", 0)  # the same text under another name: the same ids
    assert run(tmp_path, moved, 4).train(ckpt_path="last")["steps_completed"] == 4


def test_a_resume_with_another_tokenizer_is_refused_naming_it(tmp_path):
    data = write_text(tmp_path / "corpus.txt", 0)
    run(tmp_path, data, 2).train()
    other = train_tokenizer(write_text(tmp_path / "other.txt", 200_000), tmp_path / "other.model", 1024)
    with pytest.raises(CheckpointError, match="tokenizer shakespeare-bpe-1024.model .* other.model .*init_from"):
        run(tmp_path, data, 4, tokenizer=Path(other)).train(ckpt_path="last")


@pytest.mark.slow
def test_tlama_fit_refuses_a_changed_corpus_on_resume_with_exit_2(tmp_path):
    data = write_text(tmp_path / "corpus.txt", 0)
    tlama = Path(sys.executable).with_name("tlama")
    flags = ["--data.train_path", str(data), "--data.batch_size", "2", "--data.seq_length", "32",
             "--data.cache_dir", str(tmp_path / "cache"), "--model.config.d_model", "32", "--model.config.n_layers",
             "1", "--model.config.n_heads", "4", "--model.config.n_kv_heads", "2", "--model.config.max_seq_len", "32",
             "--trainer.total_batch_size", "128", "--trainer.epochs", "1", "--trainer.verbose", "false"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    first = subprocess.run([str(tlama), "fit", *flags, "--trainer.steps", "2"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    write_text(data, 100_000)
    again = subprocess.run([str(tlama), "fit", *flags, "--trainer.steps", "4", "--ckpt_path", "last"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 2
    assert "trained on other data than this run reads" in again.stderr.strip().splitlines()[-1]
    assert "Traceback" not in again.stderr


def test_the_same_tokenizer_under_another_name_resumes(tmp_path):
    data = write_text(tmp_path / "corpus.txt", 0)
    run(tmp_path, data, 2).train()
    renamed = tmp_path / "renamed.model"
    renamed.write_bytes(Path(builtin_tokenizer_path()).read_bytes())
    assert run(tmp_path, data, 4, tokenizer=renamed).train(ckpt_path="last")["steps_completed"] == 4


def legacy_record(tmp_path: Path, tokenizer: Path) -> None:
    """Rewrite the run's last checkpoint's tokenizer record as checkpoints before 0.2 wrote it (sha256 hashes)."""
    import hashlib

    import torch

    path = tmp_path / "ckpt" / "step=00000002.ckpt"
    checkpoint = torch.load(path, weights_only=False)
    data = tokenizer.read_bytes()
    record = checkpoint["tokenizer"]
    record.pop("content_hash")
    record.update(sha256=hashlib.sha256(tokenizer.name.encode() + b"\0" + data).hexdigest(),
                  content_sha256=hashlib.sha256(data).hexdigest())
    torch.save(checkpoint, path)


def test_a_checkpoint_recording_the_tokenizer_by_sha256_resumes_with_it_and_refuses_another(tmp_path):
    data = write_text(tmp_path / "corpus.txt", 0)
    run(tmp_path, data, 2).train()
    assert run(tmp_path, data, 2)._tokenizer.annotations["tokenizer"]["content_hash"].startswith("blake2b-256:")
    legacy_record(tmp_path, Path(builtin_tokenizer_path()))
    other = train_tokenizer(write_text(tmp_path / "other.txt", 200_000), tmp_path / "other.model", 1024)
    with pytest.raises(CheckpointError, match="tokenizer shakespeare-bpe-1024.model .* other.model .*init_from"):
        run(tmp_path, data, 4, tokenizer=Path(other)).train(ckpt_path="last")
    assert run(tmp_path, data, 4).train(ckpt_path="last")["steps_completed"] == 4
