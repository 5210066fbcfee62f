"""Tokenizers trained on the sources training reads (JSONL, .jsonl.gz, Parquet, datasets, directories, globs):
the records' text, never their JSON; the same tokenizer as the library trains on that text as a .txt file."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import sentencepiece as spm

from tlama_core.cli import main
from tlama_core.data import builtin_corpus_path, load_tokenizer, train_tokenizer
from tlama_core.data.hf_tokenizer import ENDOFTEXT, train_hf_bpe
from tlama_core.data.tokenizer import DEFAULT_TRAINER_OPTIONS

JSON_SYNTAX = ('{"', '":', '"text"', '\\n')


@pytest.fixture
def records() -> list[str]:
    """Paragraphs of Tiny Shakespeare (~30,000 characters): lines of text, none blank."""
    text = builtin_corpus_path().read_text(encoding="utf-8")[:30_000]
    return [p for p in text.split("\n\n") if p.strip()]


@pytest.fixture
def jsonl(records, tmp_path) -> Path:
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"id": i, "text": r}) + "\n" for i, r in enumerate(records)))
    return path


@pytest.fixture
def txt(records, tmp_path) -> Path:
    """The records' text as one text file: every line of every record, in order."""
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(records) + "\n", encoding="utf-8")
    return path


def sentencepiece_on(txt: Path, out: Path, vocab_size: int) -> Path:
    """sentencepiece's own trainer reading the text file itself, with the options train_tokenizer documents."""
    spm.SentencePieceTrainer.train(input=str(txt), model_prefix=str(out), vocab_size=vocab_size,
                                   character_coverage=1.0, model_type="bpe", **DEFAULT_TRAINER_OPTIONS)
    return out.with_name(out.name + ".model")


def tokenizers_on(txt: Path, out: Path, vocab_size: int) -> Path:
    """`tokenizers`' own trainer reading the text file itself, set up as train_hf_bpe documents it."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train([str(txt)], trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[ENDOFTEXT],
                                              initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                              show_progress=False))
    tok.save(str(out))
    return out


def pieces(path: Path) -> list[str]:
    tok = load_tokenizer(path)
    return [tok.decode([i]) for i in range(tok.vocab_size)]


@pytest.mark.parametrize("kind", ["sentencepiece", "hf-bpe"])
def test_a_tokenizer_trained_on_records_equals_the_library_trained_on_their_text(kind, records, jsonl, txt,
                                                                                 tmp_path):
    if kind == "sentencepiece":
        ours, reference = train_tokenizer(jsonl, tmp_path / "ours", 400), sentencepiece_on(txt, tmp_path / "ref", 400)
    else:
        ours, reference = train_hf_bpe(jsonl, tmp_path / "ours.json", 400), tokenizers_on(txt, tmp_path / "r.json",
                                                                                          400)
    vocabulary = pieces(ours)
    assert not [p for p in vocabulary if any(s in p for s in JSON_SYNTAX)]
    assert vocabulary == pieces(reference)
    ours, reference = load_tokenizer(ours), load_tokenizer(reference)
    assert ours.encode_batch(records) == reference.encode_batch(records)


def test_raw_json_read_as_text_would_have_taught_json(jsonl, tmp_path):
    """What `tokenizer train --input corpus.jsonl` learned before it read records (the test above's contrast)."""
    as_text = tmp_path / "corpus-as-text.txt"
    as_text.write_bytes(jsonl.read_bytes())
    assert any(any(s in p for s in JSON_SYNTAX) for p in pieces(train_tokenizer(as_text, tmp_path / "t", 400)))


def write_other_forms(records: list[str], jsonl: Path, root: Path) -> dict[str, Path | str]:
    import datasets

    forms: dict[str, Path | str] = {}
    gz = root / "gz" / "corpus.jsonl.gz"
    gz.parent.mkdir()
    gz.write_bytes(gzip.compress(jsonl.read_bytes()))
    forms["jsonl.gz"] = gz
    dataset = datasets.Dataset.from_dict({"text": records, "id": list(range(len(records)))})
    dataset.to_parquet(str(root / "corpus.parquet"))
    forms["parquet"] = root / "corpus.parquet"
    dataset.save_to_disk(str(root / "saved"))
    forms["datasets directory"] = root / "saved"
    parts = root / "parts"
    parts.mkdir()
    half = len(records) // 2
    for name, part in (("a.jsonl", records[:half]), ("b.jsonl", records[half:])):
        (parts / name).write_text("".join(json.dumps({"text": r}) + "\n" for r in part))
    forms["directory"], forms["glob"] = parts, str(parts / "*.jsonl")
    return forms


def test_every_record_source_trains_the_tokenizer_its_text_does(records, jsonl, tmp_path):
    expected = train_tokenizer(jsonl, tmp_path / "jsonl.model", 300).read_bytes()
    for name, source in write_other_forms(records, jsonl, tmp_path).items():
        assert train_tokenizer(source, tmp_path / f"{name}.model", 300).read_bytes() == expected, name


def test_cli_trains_on_a_text_field_and_a_split(records, tmp_path, capsys):
    path = tmp_path / "corpus.jsonl"
    path.write_text("".join(json.dumps({"content": r, "text": 7}) + "\n" for r in records))
    train_part = tmp_path / "train.txt"
    train_part.write_text("\n".join(records[: int(len(records) * 0.9)]) + "\n", encoding="utf-8")
    main(["tokenizer", "train", "--kind", "hf-bpe", "--input", str(path), "--text_field", "content", "--split",
          "train", "--vocab_size", "400", "--output", str(tmp_path / "bpe")])
    assert str(tmp_path / "bpe" / "tokenizer.json") in capsys.readouterr().out
    assert pieces(tmp_path / "bpe" / "tokenizer.json") == pieces(tokenizers_on(train_part, tmp_path / "r.json", 400))


def test_cli_names_a_missing_text_field_and_refuses_token_ids(jsonl, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["tokenizer", "train", "--input", str(jsonl), "--text_field", "body", "--vocab_size", "300",
              "--output", str(tmp_path / "t.model")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "corpus.jsonl" in err and "text_field='body'" in err
    ids = tmp_path / "ids.bin"
    ids.write_bytes(b"\x01\x00" * 100)
    with pytest.raises(SystemExit) as exit_:
        main(["tokenizer", "train", "--input", str(ids), "--vocab_size", "300", "--output", str(tmp_path / "t")])
    assert exit_.value.code == 2
    assert "holds token ids" in capsys.readouterr().err
    assert not list(tmp_path.glob("t*.model"))
