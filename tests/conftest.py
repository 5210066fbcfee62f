"""Shared fixtures. Keep each one small and say who uses it."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import sentencepiece as spm

from tlama_core.data import builtin_corpus_path, builtin_tokenizer_path


@pytest.fixture(autouse=True, scope="session")
def _token_cache_outside_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """No test writes a token cache into the user's home: $TLAMA_CACHE_DIR points at a session temp dir."""
    old = os.environ.get("TLAMA_CACHE_DIR")
    os.environ["TLAMA_CACHE_DIR"] = str(tmp_path_factory.mktemp("token-cache"))
    yield
    if old is None:
        os.environ.pop("TLAMA_CACHE_DIR", None)
    else:
        os.environ["TLAMA_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def data_sp() -> spm.SentencePieceProcessor:
    """The built-in Shakespeare BPE tokenizer, as sentencepiece itself loads it: the reference (data tests)."""
    return spm.SentencePieceProcessor(model_file=str(builtin_tokenizer_path()))


@pytest.fixture
def data_text(tmp_path: Path) -> Path:
    """A small text file: the first 20,000 characters of Tiny Shakespeare (data tests)."""
    path = tmp_path / "corpus.txt"
    path.write_text(builtin_corpus_path().read_text(encoding="utf-8")[:20_000], encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def reference_ids(data_sp: spm.SentencePieceProcessor) -> Callable[..., list[int]]:
    """What the token cache must hold for `docs`: each whole document as the tokenizer library encodes it, EOS
    between documents. `sp` is a sentencepiece processor or anything with `encode` and `eos_id` (attribute)."""

    def ids(docs: list[str], sp: spm.SentencePieceProcessor = data_sp) -> list[int]:
        eos = sp.eos_id() if callable(sp.eos_id) else sp.eos_id
        out: list[int] = []
        for i, doc in enumerate(docs):
            if i > 0:
                out.append(eos)
            out.extend(sp.encode(doc))
        return out

    return ids


@pytest.fixture(autouse=True)
def _no_process_group_left() -> Iterator[None]:
    """A strategy that starts torch.distributed in the test process (DDP or FSDP2 on one device) leaves its group
    running and MASTER_ADDR/MASTER_PORT in the environment, which multi-process runs launched later would inherit
    (a port still bound): both are undone after each test."""
    import torch.distributed as dist

    keys = ("MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK")
    before = {k: os.environ.get(k) for k in keys}
    yield
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
