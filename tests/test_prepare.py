"""`tlama prepare`: shards that read as one stream, equal to one machine's run and to the token cache, id for id."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tlama_core.cli import main
from tlama_core.data import builtin_corpus_path, builtin_tokenizer_path, create_dataloader
from tlama_core.data import text as text_module
from tlama_core.data.prepare import prepare

pq = pytest.importorskip("pyarrow.parquet")
pa = pytest.importorskip("pyarrow")

TOK = builtin_tokenizer_path()
CORPUS = builtin_corpus_path().read_text(encoding="utf-8")[:60_000]
DOCS = [p + "\n" for p in CORPUS.split("\n\n") if p]


def ids_of(path) -> list[int]:
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    return np.fromfile(path, dtype=meta["dtype"]).tolist()


def jsonl_dir(root, parts=4):
    root.mkdir()
    for k in range(parts):
        with open(root / f"part_{k}.jsonl", "w") as f:
            for doc in DOCS[k::parts]:
                f.write(json.dumps({"text": doc}) + "\n")
    return root


def parquet_file(root):
    pq.write_table(pa.table({"text": DOCS}), root, row_group_size=10)
    return root


def text_dir(root):
    root.mkdir()
    for k in range(2):
        (root / f"{k}.txt").write_text(CORPUS[k * 30_000:(k + 1) * 30_000], encoding="utf-8")
    return root


INPUTS = {"jsonl-files": jsonl_dir, "parquet-row-groups": parquet_file, "text-pieces": text_dir}


@pytest.mark.parametrize("kind", INPUTS)
def test_shards_together_equal_one_machine_and_the_cache(tmp_path, kind, monkeypatch):
    monkeypatch.setattr(text_module, "PIECE_BYTES", 4096)  # text: several pieces per file, split among shards
    data = INPUTS[kind](tmp_path / ("data.parquet" if kind.startswith("parquet") else "data"))
    whole = ids_of(prepare(data, TOK, tmp_path / "one", progress=False))
    shards = [prepare(data, TOK, tmp_path / "many", shard=i, num_shards=5 if kind != "jsonl-files" else 3,
                      workers=1, progress=False) for i in range(5 if kind != "jsonl-files" else 3)]
    assert sum((ids_of(p) for p in shards), []) == whole
    cached = create_dataloader(data, TOK, 2, 8, shuffle=False, cache_dir=tmp_path / "cache")
    assert cached.dataset.tokens.read(0, cached.num_tokens).tolist() == whole
    loader = create_dataloader(tmp_path / "many", None, 2, 8, shuffle=False)  # the shards, read as one stream
    assert loader.dataset.tokens.read(0, loader.num_tokens).tolist() == whole
    assert (loader.text_chars, loader.vocab_size, loader.eos_id) == (cached.text_chars, 1024, 2)


def test_parallel_workers_write_the_same_ids(tmp_path, monkeypatch):
    monkeypatch.setattr(text_module, "PIECE_BYTES", 4096)
    data = text_dir(tmp_path / "data")
    one = prepare(data, TOK, tmp_path / "a", workers=1, progress=False)
    two = prepare(data, TOK, tmp_path / "b", workers=2, progress=False)
    assert ids_of(one) == ids_of(two)


def test_split_names_the_shards_and_selects_the_input(tmp_path):
    data = jsonl_dir(tmp_path / "data")
    (data / "part_3.jsonl").rename(data / "part_val.jsonl")
    for k in range(3):
        (data / f"part_{k}.jsonl").rename(data / f"part_train_{k}.jsonl")
    train = prepare(data, TOK, tmp_path / "out", split="train", progress=False)
    val = prepare(data, TOK, tmp_path / "out", split="val", progress=False)
    assert (train.name, val.name) == ("train_00000.bin", "val_00000.bin")
    loader = create_dataloader(tmp_path / "out", None, 2, 8, shuffle=False, split="val")
    assert loader.dataset.tokens.read(0, loader.num_tokens).tolist() == ids_of(val)


def test_a_killed_shard_reruns_cleanly(tmp_path):
    data = jsonl_dir(tmp_path / "data")
    first = prepare(data, TOK, tmp_path / "out", shard=1, num_shards=2, progress=False)
    good = ids_of(first)
    (tmp_path / "out" / "00001.bin.tmp").write_bytes(b"half written by a killed run")
    first.write_bytes(first.read_bytes()[:10])  # and a sidecar that no longer matches
    again = prepare(data, TOK, tmp_path / "out", shard=1, num_shards=2, progress=False)
    assert ids_of(again) == good
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["00001.bin", "00001.bin.json"]


def test_cli_prepare_writes_a_shard_and_refuses_a_shard_out_of_range(tmp_path, capsys):
    data = jsonl_dir(tmp_path / "data")
    main(["prepare", "--data", str(data), "--tokenizer", str(TOK), "--out", str(tmp_path / "out"),
          "--shard", "0", "--num_shards", "2", "--workers", "1"])
    assert "00000.bin" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["prepare", "--data", str(data), "--tokenizer", str(TOK), "--out", str(tmp_path / "out"),
              "--shard", "2", "--num_shards", "2"])
    assert exit_.value.code == 2 and "shard=2" in capsys.readouterr().err


def test_token_ids_are_not_prepared_again(tmp_path):
    np.arange(100, dtype=np.uint16).tofile(tmp_path / "ids.bin")
    with pytest.raises(ValueError, match="already holds token ids"):
        prepare(tmp_path / "ids.bin", TOK, tmp_path / "out")
