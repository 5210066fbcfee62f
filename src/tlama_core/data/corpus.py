"""The built-in corpus (Tiny Shakespeare) and its sentencepiece BPE tokenizers, shipped in `assets/`.

The tokenizers (1024 pieces, the default, and 2048) are trained on the train split only (the first 90% of the
characters, as nanoGPT splits it), so validation text is never seen by them. Build another vocabulary size with
`python -c "from tlama_core.data.corpus import build_builtin_tokenizer as b; print(b(4096))"` (then set
BUILTIN_VOCAB_SIZE to match to make it the loaders' default).
"""

from __future__ import annotations

from pathlib import Path

from tlama_core.data.sources import TRAIN_FRACTION
from tlama_core.data.tokenizer import ASSETS, train_tokenizer_from_lines

BUILTIN_VOCAB_SIZE = 1024


def builtin_corpus_path() -> Path:
    """Tiny Shakespeare (1.1 MB of text), shipped with the package."""
    return ASSETS / "tinyshakespeare.txt"


def builtin_tokenizer_path(vocab_size: int = BUILTIN_VOCAB_SIZE) -> Path:
    """The shipped sentencepiece BPE model of the built-in corpus."""
    return ASSETS / f"shakespeare-bpe-{vocab_size}.model"


def build_builtin_tokenizer(vocab_size: int = BUILTIN_VOCAB_SIZE, output: Path | None = None) -> Path:
    """Train the built-in tokenizer on the corpus's train split (deterministic: same bytes on every run)."""
    text = builtin_corpus_path().read_text(encoding="utf-8")  # 1.1 MB: fine to hold
    train = text[: int(len(text) * TRAIN_FRACTION)]
    return train_tokenizer_from_lines(train.split("\n"), output or builtin_tokenizer_path(vocab_size), vocab_size)

