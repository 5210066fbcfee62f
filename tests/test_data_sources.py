"""Every form a data_path can take: text files, directories and globs of them, .bin ids, .npy shards, splits."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tlama_core.data import builtin_tokenizer_path, create_dataloader

TOK = builtin_tokenizer_path()


def all_ids(loader) -> list[int]:
    return loader.dataset.tokens.read(0, loader.num_tokens).tolist()


def test_bin_of_uint16_ids_needs_no_tokenizer(tmp_path):
    ids = np.random.default_rng(0).integers(0, 50257, 500, dtype=np.uint16)
    ids.tofile(tmp_path / "train.bin")
    loader = create_dataloader(tmp_path / "train.bin", None, 2, 10, shuffle=False)
    assert all_ids(loader) == ids.tolist()
    assert loader.vocab_size == int(ids.max()) + 1 and loader.text_chars is None and loader.eos_id is None
    x, y = next(iter(loader))
    assert x[0].tolist() == ids[:10].tolist() and y[1].tolist() == ids[11:21].tolist()


@pytest.mark.parametrize("how", ["sidecar", "name"])
def test_bin_of_uint32_ids(tmp_path, how):
    ids = np.arange(100_000, 100_500, dtype=np.uint32)
    path = tmp_path / ("ids.bin" if how == "sidecar" else "ids.uint32.bin")
    ids.tofile(path)
    if how == "sidecar":
        (tmp_path / "ids.bin.json").write_text(json.dumps({"dtype": "uint32"}))
    loader = create_dataloader(path, None, 2, 10, shuffle=False)
    assert all_ids(loader) == ids.tolist() and loader.vocab_size == 100_500
    assert next(iter(loader))[0].max().item() >= 65536


def test_bin_whose_size_does_not_fit_its_dtype_is_an_error(tmp_path):
    (tmp_path / "odd.uint32.bin").write_bytes(b"\x01" * 402)
    with pytest.raises(ValueError, match="not a whole number of uint32 ids"):
        create_dataloader(tmp_path / "odd.uint32.bin", None, 2, 10)


def write_shards(directory, sizes, prefix="edufineweb"):
    """build-nanogpt layout: the first shard is val, the rest train; shard k holds ids k*1000 + 0..size-1."""
    directory.mkdir()
    for k, size in enumerate(sizes):
        split = "val" if k == 0 else "train"
        np.save(directory / f"{prefix}_{split}_{k:06d}.npy", (k * 1000 + np.arange(size)).astype(np.uint16))


def test_npy_shards_are_picked_by_split_and_read_as_one_stream(tmp_path):
    write_shards(tmp_path / "fw", [300, 400, 500])
    train = create_dataloader(tmp_path / "fw", None, 2, 16, shuffle=False, split="train")
    val = create_dataloader(tmp_path / "fw", None, 2, 16, shuffle=False, split="val")
    assert all_ids(train) == list(range(1000, 1400)) + list(range(2000, 2500))
    assert all_ids(val) == list(range(300))
    crossing = train.dataset.window(24)  # ids 384..400 of the stream: the end of shard 1, the start of shard 2
    assert crossing.tolist() == list(range(1384, 1400)) + [2000]


def test_npy_shards_with_split_names_need_a_split(tmp_path):
    write_shards(tmp_path / "fw", [300, 400])
    with pytest.raises(ValueError, match="split='train' or split='val'"):
        create_dataloader(tmp_path / "fw", None, 2, 16)


def test_glob_of_one_split_needs_no_split(tmp_path):
    write_shards(tmp_path / "fw", [300, 400, 500])
    train = create_dataloader(str(tmp_path / "fw" / "*_train_*.npy"), None, 2, 16, shuffle=False)
    assert all_ids(train) == list(range(1000, 1400)) + list(range(2000, 2500))


def test_split_of_unnamed_ids_is_90_10_by_tokens(tmp_path):
    np.arange(1000, dtype=np.uint16).tofile(tmp_path / "ids.bin")
    train = create_dataloader(tmp_path / "ids.bin", None, 2, 16, split="train")
    val = create_dataloader(tmp_path / "ids.bin", None, 2, 16, split="val")
    assert all_ids(train) == list(range(900)) and all_ids(val) == list(range(900, 1000))


def test_split_must_be_train_or_val(tmp_path):
    np.arange(1000, dtype=np.uint16).tofile(tmp_path / "ids.bin")
    with pytest.raises(ValueError, match="split='test'"):
        create_dataloader(tmp_path / "ids.bin", None, 2, 16, split="test")


def test_directory_of_text_files_is_documents_separated_by_eos(tmp_path, reference_ids, data_sp):
    docs = ["First Citizen:\nBefore we proceed any further, hear me speak.\n" * 3,
            "All:\nSpeak, speak.\n" * 5,
            "MENENIUS:\nWhy, masters, my good friends, mine honest neighbours" * 2]  # no final newline
    (tmp_path / "docs").mkdir()
    for i, doc in enumerate(docs):
        (tmp_path / "docs" / f"{i:02d}.txt").write_text(doc, encoding="utf-8")
    loader = create_dataloader(tmp_path / "docs", TOK, 2, 8, cache_dir=tmp_path / "cache")
    assert all_ids(loader) == reference_ids(docs)
    assert all_ids(loader).count(data_sp.eos_id()) == 2
    assert loader.text_chars == sum(map(len, docs))
    by_glob = create_dataloader(str(tmp_path / "docs" / "*.txt"), TOK, 2, 8, cache_dir=tmp_path / "cache")
    assert all_ids(by_glob) == all_ids(loader)


def test_empty_files_in_a_directory_are_skipped_with_a_warning(tmp_path, reference_ids):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.txt").write_text("Speak, speak.\n" * 20)
    (tmp_path / "docs" / "b.txt").touch()
    with pytest.warns(UserWarning, match="b.txt"):
        loader = create_dataloader(tmp_path / "docs", TOK, 2, 8, cache_dir=tmp_path / "cache")
    assert all_ids(loader) == reference_ids(["Speak, speak.\n" * 20])


def test_glob_that_matches_nothing_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing-\*\.txt"):
        create_dataloader(str(tmp_path / "nothing-*.txt"), TOK, 2, 8)


def test_directory_without_data_is_named(tmp_path):
    (tmp_path / "notes.md").write_text("hello")
    with pytest.raises(FileNotFoundError, match=r"holds no data files.*\.jsonl"):
        create_dataloader(tmp_path, TOK, 2, 8)


def test_text_split_is_nanogpt_90_10_by_characters(data_text, tmp_path, reference_ids):
    text = data_text.read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    train = create_dataloader(data_text, TOK, 2, 8, cache_dir=tmp_path / "c", split="train")
    val = create_dataloader(data_text, TOK, 2, 8, cache_dir=tmp_path / "c", split="val")
    assert (train.text_chars, val.text_chars) == (cut, len(text) - cut)
    assert all_ids(train) == reference_ids([text[:cut]]) and all_ids(val) == reference_ids([text[cut:]])


def test_text_split_across_documents_keeps_separators_between_whole_documents(tmp_path, reference_ids, data_sp):
    (tmp_path / "docs").mkdir()
    docs = [f"Document {i} says hello to the world.\n" * 10 for i in range(5)]
    for i, doc in enumerate(docs):
        (tmp_path / "docs" / f"{i}.txt").write_text(doc, encoding="utf-8")
    chars = sum(map(len, docs))
    cut = int(chars * 0.9)  # inside the last document
    val = create_dataloader(tmp_path / "docs", TOK, 2, 8, cache_dir=tmp_path / "c", split="val")
    train = create_dataloader(tmp_path / "docs", TOK, 2, 8, cache_dir=tmp_path / "c", split="train")
    joined = "".join(docs)
    assert all_ids(val) == reference_ids([joined[cut:]])  # part of one document: no separator
    assert all_ids(train) == reference_ids(docs[:4] + [docs[4][: cut - 4 * len(docs[0])]])
    assert train.text_chars + val.text_chars == chars
