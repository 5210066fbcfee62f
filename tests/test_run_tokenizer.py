"""A run's tokenizer travels with it: copied beside the checkpoints, recorded in each, found by generate/convert."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from tlama_core.checkpoints import CheckpointError
from tlama_core.cli.convert import convert_to_hf
from tlama_core.cli.generate import generate, resolve_tokenizer
from tlama_core.data import builtin_corpus_path, create_dataloader, load_tokenizer
from tlama_core.models import TlamaConfig, Transformer, generation, load_model
from tlama_core.models.loading import CHECKPOINT, Weights
from tlama_core.training import Trainer
from tlama_core.training.files.tokenizer import TOKENIZER_KEY, keep_tokenizer

tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers  # noqa: E402

CORPUS = builtin_corpus_path().read_text(encoding="utf-8")[:30_000]
TEXTS = ["ROMEO: But soft, what light\n  through yonder window breaks?", "a  b\n\nc <|endoftext|> d", "x = 12345;"]


def own_tokenizer(directory, template=False):
    """A user's own byte-level BPE tokenizer.json (GPT-2 style), with a tokenizer_config.json naming its EOS."""
    directory.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([CORPUS], trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if template:  # a post-processor that adds special tokens, as Llama 3's does
        tok.post_processor = processors.TemplateProcessing(single="<|endoftext|> $A",
                                                           special_tokens=[("<|endoftext|>", 0)])
    tok.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    return directory / "tokenizer.json"


@pytest.fixture
def python_run(tmp_path):
    """A 2-step run from Python on the user's tokenizer, whose original is deleted afterwards."""
    tokenizer = own_tokenizer(tmp_path / "mine")
    (tmp_path / "corpus.txt").write_text(CORPUS, encoding="utf-8")
    loader = create_dataloader(tmp_path / "corpus.txt", tokenizer, 2, 16, cache_dir=tmp_path / "cache")
    torch.manual_seed(0)
    model = Transformer(TlamaConfig(vocab_size=400, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16))
    Trainer(model, loader, total_batch_size=64, steps=2, checkpoint_steps=2, validation_steps=2, verbose=False,
            checkpoints_dir=str(tmp_path / "ckpt"), logs_dir=str(tmp_path / "logs")).train()
    original = tokenizer.read_bytes()
    shutil.rmtree(tmp_path / "mine")
    return tmp_path / "ckpt", original


def test_trainer_copies_the_tokenizer_once_and_records_it_in_checkpoints(python_run):
    ckpt_dir, original = python_run
    (copy_dir,) = ckpt_dir.glob("tokenizer-*")
    assert (copy_dir / "tokenizer.json").read_bytes() == original
    assert json.loads((copy_dir / "tokenizer_config.json").read_text())["eos_token"] == "<|endoftext|>"
    checkpoint = torch.load(ckpt_dir / "step=00000002.ckpt", weights_only=True)
    assert checkpoint[TOKENIZER_KEY]["dir"] == copy_dir.name
    assert resolve_tokenizer(Weights(CHECKPOINT, ckpt_dir / "step=00000002.ckpt")) == copy_dir / "tokenizer.json"


def test_generate_samples_with_the_run_tokenizer(python_run):
    ckpt_dir, _ = python_run
    text = generate(ckpt_dir, "ROMEO:", max_new_tokens=5, temperature=0)
    tok = load_tokenizer(next(ckpt_dir.glob("tokenizer-*")))  # the run's copy: the original is gone
    model = load_model(ckpt_dir / "step=00000002.ckpt")
    ids = generation.generate(model, torch.tensor([tok.encode("ROMEO:")]), 5, temperature=0, vocab_limit=tok.vocab_size)
    assert text == tok.decode(ids[0].tolist())


def test_convert_writes_the_run_tokenizer_that_transformers_loads(python_run, tmp_path):
    ckpt_dir, _ = python_run
    out, _ = convert_to_hf(ckpt_dir, tmp_path / "hf")
    hf = transformers.AutoTokenizer.from_pretrained(out)
    ours = load_tokenizer(next(ckpt_dir.glob("tokenizer-*")))
    for text in TEXTS:
        assert hf(text, add_special_tokens=False).input_ids == ours.encode(text), text
    assert hf.eos_token_id == ours.eos_id == json.loads((out / "config.json").read_text())["eos_token_id"]


def test_tokenizer_json_with_a_template_exports_ids_equal_to_ours(tmp_path):
    from tlama_core.data.hf_export import write_hf_tokenizer

    path = own_tokenizer(tmp_path / "t", template=True)
    write_hf_tokenizer(path, tmp_path / "hf", 64)
    hf = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    for text in TEXTS:
        assert hf(text, add_special_tokens=False).input_ids == load_tokenizer(path).encode(text)


def test_the_same_tokenizer_is_copied_once(tmp_path):
    path = own_tokenizer(tmp_path / "t")
    (tmp_path / "ckpt" / ".tokenizer-killed.tmp").mkdir(parents=True)  # a copy cut short by a kill
    first = keep_tokenizer(path, tmp_path / "ckpt")
    copy = tmp_path / "ckpt" / first["dir"] / "tokenizer.json"
    stamp = copy.stat().st_mtime_ns
    assert keep_tokenizer(path, tmp_path / "ckpt") == first and copy.stat().st_mtime_ns == stamp
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [first["dir"]]  # no temporary left


def test_a_recorded_tokenizer_that_is_gone_is_an_error_not_a_guess(python_run):
    ckpt_dir, _ = python_run
    shutil.rmtree(next(ckpt_dir.glob("tokenizer-*")))
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        resolve_tokenizer(Weights(CHECKPOINT, ckpt_dir / "step=00000002.ckpt"))


def test_a_refused_resume_copies_no_tokenizer(python_run, tmp_path):
    """Resuming with another tokenizer (and another step shape) is refused: the run's directory keeps only the
    tokenizer its checkpoints were trained with."""
    ckpt_dir, _ = python_run
    before = sorted(p.name for p in ckpt_dir.iterdir())
    other = own_tokenizer(tmp_path / "other", template=True)  # other bytes, the same vocabulary size
    loader = create_dataloader(tmp_path / "corpus.txt", other, 2, 16, cache_dir=tmp_path / "cache")
    model = Transformer(TlamaConfig(vocab_size=400, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16))
    trainer = Trainer(model, loader, total_batch_size=128, steps=4, verbose=False, checkpoints_dir=str(ckpt_dir),
                      logs_dir=str(tmp_path / "logs"))
    with pytest.raises(CheckpointError, match="trained with the tokenizer .* the weights learnt other ids"):
        trainer.train(ckpt_path="last")
    assert sorted(p.name for p in ckpt_dir.iterdir()) == before
