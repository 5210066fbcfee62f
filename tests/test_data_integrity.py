"""Trusting what a loader reads: shard lengths against their sidecars, content hashes on request, and the
data fingerprint a resume can compare."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tlama_core.cli import main
from tlama_core.data import TlamaDataModule, builtin_corpus_path, builtin_tokenizer_path, create_dataloader
from tlama_core.data.integrity import verify
from tlama_core.data.prepare import prepare

TOK = builtin_tokenizer_path()
CORPUS = builtin_corpus_path().read_text(encoding="utf-8")


def meta_of(path) -> dict:
    return json.loads(path.with_name(path.name + ".json").read_text())


def shards(tmp_path, text: str = CORPUS[:60_000], name: str = "out"):
    """Two shards of `text` as two JSONL files of records (tmp_path / name.jsonl), in tmp_path / name."""
    data = tmp_path / f"{name}.jsonl"
    data.mkdir(exist_ok=True)
    docs = text.split("\n\n")
    for k in range(2):
        with open(data / f"part_{k}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"text": doc}) + "\n" for doc in docs[k::2])
    return [prepare(data, TOK, tmp_path / name, shard=i, num_shards=2, progress=False) for i in range(2)]


def test_the_sidecar_holds_the_blake2b_hash_of_the_shards_bytes(tmp_path):
    prepared = shards(tmp_path)
    cached = create_dataloader(tmp_path / "out.jsonl", TOK, 2, 8, cache_dir=tmp_path / "cache")
    for path in [*prepared, cached.dataset.tokens.files[0].path]:  # and a token cache entry
        digest = hashlib.blake2b(path.read_bytes(), digest_size=32).hexdigest()
        assert meta_of(path)["content_hash"] == f"blake2b-256:{digest}"


def test_a_shard_cut_to_an_even_size_is_an_error_naming_it_and_both_counts(tmp_path):
    path = shards(tmp_path)[0]
    n = meta_of(path)["num_tokens"]
    with open(path, "r+b") as f:
        f.truncate(n // 3 * 2)  # whole uint16 ids: only the sidecar can tell
    with pytest.raises(ValueError, match=rf"{path}: holds {n // 3:,} tokens \({n // 3 * 2:,} bytes\) but its sidecar "
                                         rf"00000\.bin\.json says num_tokens={n:,} \({2 * n:,} bytes\)"):
        create_dataloader(tmp_path / "out", None, 2, 8)


def test_verify_names_a_shard_whose_bytes_changed_after_it_was_written(tmp_path, capsys):
    first, second = shards(tmp_path)
    assert verify(tmp_path / "out") == ([first, second], [])
    main(["prepare", "--verify", str(tmp_path / "out")])
    assert "2 shard(s) match their sidecars' length and content hash" in capsys.readouterr().out
    ids = np.fromfile(second, dtype=np.uint16)
    ids[len(ids) // 2] ^= 1  # one id changed, the length kept: a bad copy
    ids.tofile(second)
    create_dataloader(tmp_path / "out", None, 2, 8)  # the length check alone cannot see it
    with pytest.raises(ValueError, match=rf"{second}: its content hash is blake2b-256:[0-9a-f]{{64}}, its sidecar "
                                         r"00001\.bin\.json says blake2b-256:"):
        verify(tmp_path / "out")
    with pytest.raises(SystemExit) as exit_:
        main(["prepare", "--verify", str(tmp_path / "out")])
    assert exit_.value.code == 2 and f"{second}: its content hash" in capsys.readouterr().err


def test_verify_checks_only_the_length_of_ids_without_a_hash(tmp_path, capsys):
    np.arange(1000, dtype=np.uint16).tofile(tmp_path / "train.bin")  # nanoGPT's format: no sidecar
    assert verify(tmp_path / "train.bin") == ([], [tmp_path / "train.bin"])
    main(["prepare", "--verify", str(tmp_path / "train.bin")])
    assert "1 have no content hash, only their length was checked" in capsys.readouterr().out


def test_prepare_without_verify_needs_data_tokenizer_and_out(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["prepare", "--data", str(tmp_path)])
    assert exit_.value.code == 2
    assert "--tokenizer, --out: required to prepare a shard (or pass --verify DIR" in capsys.readouterr().err


# ---- data fingerprints ----------------------------------------------------------------------------------------
def fingerprint(path, tmp_path, cache: str = "cache", **kwargs) -> str:
    return create_dataloader(path, TOK, 2, 8, cache_dir=tmp_path / cache, **kwargs).data_fingerprint


def test_other_text_of_the_same_size_changes_the_fingerprint(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(CORPUS[:20_000], encoding="utf-8")
    before = fingerprint(corpus, tmp_path)
    corpus.write_text(CORPUS[20_000:40_000], encoding="utf-8")  # ASCII: the same size in bytes
    assert corpus.stat().st_size == 20_000
    assert fingerprint(corpus, tmp_path) != before
    corpus.write_text(CORPUS[:20_000], encoding="utf-8")
    assert fingerprint(corpus, tmp_path) == before  # the same text again
    assert fingerprint(corpus, tmp_path, split="train") != fingerprint(corpus, tmp_path, split="val")
    dm = TlamaDataModule(train_path=str(corpus), cache_dir=str(tmp_path / "cache"), batch_size=2, seq_length=8)
    assert dm.data_fingerprint == dm.train_dataloader().data_fingerprint == fingerprint(corpus, tmp_path,
                                                                                           split="train")


def test_replaced_records_and_shards_change_the_fingerprint(tmp_path):
    records = shards(tmp_path)[0].parent.with_suffix(".jsonl")
    before, shards_before = fingerprint(records, tmp_path), fingerprint(tmp_path / "out", tmp_path)
    shards(tmp_path, CORPUS[60_000:120_000])  # the same shard names, other records
    assert fingerprint(records, tmp_path) != before
    assert fingerprint(tmp_path / "out", tmp_path) != shards_before
    shards(tmp_path)
    assert fingerprint(tmp_path / "out", tmp_path) == shards_before


def test_the_fingerprint_of_prepared_shards_comes_from_their_sidecars_not_their_bytes(tmp_path):
    """It reads no ids: a shard changed behind its sidecar's back keeps it (`verify` finds such a shard)."""
    second = shards(tmp_path)[1]
    before = fingerprint(tmp_path / "out", tmp_path)
    ids = np.fromfile(second, dtype=np.uint16)
    (ids ^ 1).tofile(second)
    assert fingerprint(tmp_path / "out", tmp_path) == before


def test_ids_without_a_sidecar_are_fingerprinted_by_size_and_their_first_and_last_bytes(tmp_path):
    ids = np.arange(100_000, dtype=np.uint16) % 1000
    np.save(tmp_path / "ids.npy", ids)
    before = fingerprint(tmp_path / "ids.npy", tmp_path)
    ids[5] += 1
    np.save(tmp_path / "ids.npy", ids)
    assert fingerprint(tmp_path / "ids.npy", tmp_path) != before
    ids[5] -= 1
    np.save(tmp_path / "copy.npy", ids)  # where the ids are does not matter
    assert fingerprint(tmp_path / "copy.npy", tmp_path) == before


def test_the_same_data_gives_the_same_fingerprint_in_another_process_and_cache(tmp_path):
    shards(tmp_path)
    (tmp_path / "corpus.txt").write_text(CORPUS[:20_000], encoding="utf-8")
    paths = [tmp_path / "corpus.txt", tmp_path / "out.jsonl", tmp_path / "out"]
    here = [fingerprint(p, tmp_path) for p in paths]
    code = ("import sys; from tlama_core.data import builtin_tokenizer_path, create_dataloader\n"
            "for p in sys.argv[2:]:\n"
            "    print(create_dataloader(p, builtin_tokenizer_path(), 2, 8, cache_dir=sys.argv[1]).data_fingerprint)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "other-cache"), *map(str, paths)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == here  # tokenized again into another cache: the same ids, the same fingerprint


def test_shards_of_an_earlier_prepare_or_a_missing_shard_are_refused(tmp_path):
    text = Path(builtin_corpus_path()).read_text()
    corpus = tmp_path / "in"
    corpus.mkdir()
    for i in range(2):
        (corpus / f"part{i}.txt").write_text(text[i * 40_000:(i + 1) * 40_000])
    out = tmp_path / "out"
    for shard in (0, 1):
        prepare(corpus, builtin_tokenizer_path(), out, shard=shard, num_shards=2, workers=1, progress=False)
    prepare(corpus, builtin_tokenizer_path(), out, workers=1, progress=False)  # 00000.bin again, as shard 0 of 1
    for check in (lambda: create_dataloader(out, None, 2, 16), lambda: verify(out)):
        with pytest.raises(ValueError, match="prepares into different numbers of shards.*remove the files"):
            check()
    (out / "00000.bin").unlink()
    (out / "00000.bin.json").unlink()
    prepare(corpus, builtin_tokenizer_path(), out, shard=0, num_shards=2, workers=1, progress=False)
    (out / "00001.bin").rename(tmp_path / "elsewhere.bin")
    with pytest.raises(ValueError, match="00001.bin.json describe ids that are not there"):
        create_dataloader(out, None, 2, 16)
    (out / "00001.bin.json").unlink()
    with pytest.raises(ValueError, match=r"shard\(s\) 1 of 2 are missing"):
        create_dataloader(out, None, 2, 16)
