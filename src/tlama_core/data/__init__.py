"""Data: tokenizers, text and records, the token cache, resumable token-window loaders and the built-in corpus.

    text / JSONL / Parquet / datasets ──tokenizer──▶ token cache, or `tlama prepare` shards ─┐
    pre-tokenized .bin / .npy shards ──────────────────────────────────────────────────────────┴─▶ TokenWindows
    ─▶ TokenDataLoader
"""

from tlama_core.data.corpus import builtin_corpus_path, builtin_tokenizer_path
from tlama_core.data.datamodule import TlamaDataModule
from tlama_core.data.loader import TokenDataLoader, create_dataloader
from tlama_core.data.tokenizer import load_tokenizer, train_tokenizer

__all__ = [
    "TlamaDataModule",
    "TokenDataLoader",
    "builtin_corpus_path",
    "builtin_tokenizer_path",
    "create_dataloader",
    "load_tokenizer",
    "train_tokenizer",
]
