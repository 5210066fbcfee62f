"""Records as documents: JSONL, .jsonl.gz, Parquet, datasets objects and save_to_disk directories."""

from __future__ import annotations

import gzip
import json
import warnings

import numpy as np
import pytest

from tlama_core.data import TlamaDataModule, builtin_corpus_path, builtin_tokenizer_path, create_dataloader
from tlama_core.data import cache as cache_module
from tlama_core.data import text as text_module
from tlama_core.data.sources import resolve_source

datasets = pytest.importorskip("datasets")
pq = pytest.importorskip("pyarrow.parquet")
pa = pytest.importorskip("pyarrow")

TOK = builtin_tokenizer_path()
LINES = builtin_corpus_path().read_text(encoding="utf-8")[:30_000].split("\n\n")
DOCS = [p + "\n" for p in LINES if p]  # Shakespeare's speeches, one document each


def all_ids(loader) -> list[int]:
    return loader.dataset.tokens.read(0, loader.num_tokens).tolist()


def write_jsonl(path, docs, field="text", opener=open):
    with opener(path, "wt", encoding="utf-8") as f:
        for i, doc in enumerate(docs):
            f.write(json.dumps({"id": i, field: doc}) + "\n")
    return path


def write_parquet(path, docs, field="text", row_group_size=7):
    pq.write_table(pa.table({"id": list(range(len(docs))), field: docs}), path, row_group_size=row_group_size)
    return path


def load(path, tmp_path, **kwargs):
    return create_dataloader(path, TOK, 2, 8, shuffle=False, cache_dir=tmp_path / "cache", **kwargs)


def test_each_jsonl_record_is_one_document_separated_by_eos(tmp_path, reference_ids):
    loader = load(write_jsonl(tmp_path / "c.jsonl", DOCS), tmp_path)
    assert all_ids(loader) == reference_ids(DOCS)
    assert loader.text_chars == sum(map(len, DOCS))


@pytest.mark.parametrize("kind", ["jsonl.gz", "parquet", "dataset", "save_to_disk"])
def test_every_record_format_gives_the_jsonl_ids(tmp_path, kind, reference_ids):
    if kind == "jsonl.gz":
        path = write_jsonl(tmp_path / "c.jsonl.gz", DOCS, opener=gzip.open)
    elif kind == "parquet":
        path = write_parquet(tmp_path / "c.parquet", DOCS)
        assert pq.ParquetFile(path).metadata.num_row_groups > 3
    else:
        path = datasets.Dataset.from_dict({"text": DOCS})
        if kind == "save_to_disk":
            path.save_to_disk(tmp_path / "saved")
            path = str(tmp_path / "saved")
    loader = load(path, tmp_path)
    assert all_ids(loader) == reference_ids(DOCS) and loader.text_chars == sum(map(len, DOCS))


def test_text_field_names_the_field(tmp_path, reference_ids):
    path = write_jsonl(tmp_path / "c.jsonl", DOCS[:20], field="content")
    assert all_ids(load(path, tmp_path, text_field="content")) == reference_ids(DOCS[:20])
    parquet = write_parquet(tmp_path / "c.parquet", DOCS[:20], field="content")
    assert all_ids(load(parquet, tmp_path, text_field="content")) == reference_ids(DOCS[:20])


def test_directory_of_split_named_shards_selects_the_split(tmp_path, reference_ids):
    (tmp_path / "fw").mkdir()
    write_jsonl(tmp_path / "fw" / "shard_train_000.jsonl", DOCS[:30])
    write_parquet(tmp_path / "fw" / "shard_train_001.parquet", DOCS[30:60])
    write_jsonl(tmp_path / "fw" / "shard_val_000.jsonl", DOCS[60:])
    assert all_ids(load(tmp_path / "fw", tmp_path, split="train")) == reference_ids(DOCS[:60])
    assert all_ids(load(str(tmp_path / "fw" / "*_val_*"), tmp_path)) == reference_ids(DOCS[60:])


def test_unnamed_records_split_90_10_by_record(tmp_path, reference_ids):
    path = write_jsonl(tmp_path / "c.jsonl", DOCS)
    cut = int(len(DOCS) * 0.9)
    assert all_ids(load(path, tmp_path, split="train")) == reference_ids(DOCS[:cut])
    assert all_ids(load(path, tmp_path, split="val")) == reference_ids(DOCS[cut:])


def test_parallel_build_of_records_equals_serial(tmp_path, monkeypatch):
    path = write_jsonl(tmp_path / "c.jsonl", DOCS)
    serial = all_ids(load(path, tmp_path))
    monkeypatch.setattr(text_module, "PIECE_BYTES", 700)  # many units of whole lines
    monkeypatch.setattr(cache_module, "PARALLEL_MIN_BYTES", 0)
    entry = cache_module.cached_tokens(resolve_source(path), TOK, tmp_path / "parallel", processes=2)
    assert np.fromfile(entry.path, dtype=entry.dtype).tolist() == serial


def test_a_datasets_texts_are_hashed_once_per_fingerprint(monkeypatch):
    from tlama_core.data import documents

    walked = []
    monkeypatch.setattr(documents, "_hash_texts", lambda d, field: walked.append(d._fingerprint) or bytes(32))
    data = datasets.Dataset.from_dict({"text": DOCS[:20]})
    documents.dataset_digest(data, "text")
    documents.dataset_digest(data, "text")  # the val loader's call: no second walk
    documents.dataset_digest(data.select(range(5)), "text")  # another selection: another fingerprint
    assert len(walked) == 2 and walked[0] == data._fingerprint


def test_cache_is_keyed_by_text_field(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text("".join(json.dumps({"a": d, "b": d.upper()}) + "\n" for d in DOCS[:20]))
    a, b = load(path, tmp_path, text_field="a"), load(path, tmp_path, text_field="b")
    assert all_ids(a) != all_ids(b) and a.dataset.tokens.files[0].path != b.dataset.tokens.files[0].path


def test_empty_records_are_skipped_and_counted_in_one_warning(tmp_path, reference_ids):
    path = write_jsonl(tmp_path / "c.jsonl", [DOCS[0], "", DOCS[1], "", DOCS[2]] + DOCS[3:20])
    with pytest.warns(UserWarning, match="skipped 2 empty record") as caught:
        loader = load(path, tmp_path)
    assert len([w for w in caught if "empty record" in str(w.message)]) == 1
    assert all_ids(loader) == reference_ids(DOCS[:20])


@pytest.mark.parametrize("block", [64, 1 << 20])
def test_jsonl_lines_longer_than_a_read_block_are_read_whole(tmp_path, block, monkeypatch):
    """JSONL is read a block at a time, a longer line in one read of its own: every record, blank line, line
    number and a last line without its "\n" come out as `json.loads` of each line says."""
    from tlama_core.data import documents

    monkeypatch.setattr(documents, "LINE_BLOCK", block)
    records = [{"text": DOCS[0] * 3}, {"text": "short"}, None, {"text": DOCS[1]}, None, None, {"text": "x" * 200},
               {"text": "caf\u00e9 " * 40}, {"text": "last, without its line end"}]
    lines = ["   " if r is None else json.dumps(r, ensure_ascii=False) for r in records]
    path = tmp_path / "c.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")
    (unit,) = documents.plan((path,), None, None, 1 << 20, 0.9)
    assert list(documents.read(unit, "text")) == ["" if r is None else r["text"] for r in records]
    path.write_text("\n".join(lines[:-1]) + "\n" + json.dumps({"title": "no text"}) + "\n", encoding="utf-8")
    (unit,) = documents.plan((path,), None, None, 1 << 20, 0.9)
    with pytest.raises(ValueError, match=r"c\.jsonl, line 9: no field text_field='text'"):
        list(documents.read(unit, "text"))


def test_record_without_the_field_names_file_line_and_fields(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", DOCS[:5], field="content")
    with pytest.raises(ValueError, match=r"c\.jsonl, line 1: no field text_field='text'.*\['content', 'id'\]"):
        load(path, tmp_path)
    parquet = write_parquet(tmp_path / "c.parquet", DOCS[:5], field="body")
    with pytest.raises(ValueError, match=r"c\.parquet, row 0: no column text_field='text'.*\['id', 'body'\]"):
        load(parquet, tmp_path)
    with pytest.raises(ValueError, match=r"no column text_field='text'.*\['body'\]"):
        load(datasets.Dataset.from_dict({"body": DOCS[:5]}), tmp_path)


def test_a_later_record_without_the_field_is_named_at_its_line(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", DOCS[:5])
    with open(path, "a") as f:
        f.write(json.dumps({"title": "x"}) + "\n")
    with pytest.raises(ValueError, match=r"c\.jsonl, line 6: no field text_field='text'.*\['title'\]"):
        load(path, tmp_path)


def test_malformed_json_line_is_named(tmp_path):
    path = write_jsonl(tmp_path / "c.jsonl", DOCS[:5])
    with open(path, "a") as f:
        f.write('{"text": "unterminated\n')
    with pytest.raises(ValueError, match=r"c\.jsonl, line 6: not a JSON object"):
        load(path, tmp_path)


def test_text_that_is_not_a_string_names_its_type(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"text": 12}) + "\n")
    with pytest.raises(ValueError, match=r"line 1: 'text' is a int"):
        load(path, tmp_path)
    parquet = tmp_path / "n.parquet"
    pq.write_table(pa.table({"text": [1, 2]}), parquet)
    with pytest.raises(ValueError, match=r"column 'text' holds int64, not strings"):
        load(parquet, tmp_path)


@pytest.mark.parametrize("name", ["corpus.csv", "corpus.json", "corpus"])
def test_file_of_an_unknown_kind_is_named_with_the_kinds_accepted(tmp_path, name):
    (tmp_path / name).write_text("text\nhello\n")
    with pytest.raises(ValueError, match=rf"{name}'?: not a kind of file read here.*\.jsonl.*\.parquet"):
        load(tmp_path / name, tmp_path)


def test_datamodule_and_yaml_keyword_text_field(tmp_path, reference_ids):
    path = write_jsonl(tmp_path / "c.jsonl", DOCS, field="content")
    dm = TlamaDataModule(str(path), tokenizer_path=str(TOK), batch_size=2, seq_length=8, text_field="content",
                         cache_dir=str(tmp_path / "cache"), shuffle=False)
    cut = int(len(DOCS) * 0.9)
    assert all_ids(dm.train_dataloader()) == reference_ids(DOCS[:cut])
    assert dm.hparams["text_field"] == "content" and dm.train_dataloader().tokenizer_path == TOK


@pytest.mark.parametrize("as_path", [str, lambda p: p], ids=["str", "Path"])
def test_datamodule_takes_a_dataset_dict_split_by_name(tmp_path, reference_ids, as_path):
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": DOCS[:50]}),
                               "validation": datasets.Dataset.from_dict({"text": DOCS[50:]})})
    dd.save_to_disk(tmp_path / "dd")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dm = TlamaDataModule(as_path(tmp_path / "dd"), tokenizer_path=str(TOK), batch_size=2, seq_length=8,
                             cache_dir=str(tmp_path / "cache"), shuffle=False)
        assert all_ids(dm.train_dataloader()) == reference_ids(DOCS[:50])
        assert all_ids(dm.val_dataloader()) == reference_ids(DOCS[50:])
        assert dm.hparams["train_path"] == str(tmp_path / "dd")


def test_resume_on_records_reads_what_an_uninterrupted_loader_reads(tmp_path):
    path = write_parquet(tmp_path / "c.parquet", DOCS)
    reference = create_dataloader(path, TOK, 2, 8, seed=3, cache_dir=tmp_path / "cache")
    batches = [x.tolist() for x, _ in reference]
    first = create_dataloader(path, TOK, 2, 8, seed=3, cache_dir=tmp_path / "cache")
    it = iter(first)
    for _ in range(5):
        next(it)
    state = first.state_dict()
    resumed = create_dataloader(path, TOK, 2, 8, seed=3, cache_dir=tmp_path / "cache")
    resumed.load_state_dict(state)
    assert [x.tolist() for x, _ in resumed] == batches[5:]
