"""A Hugging Face `tokenizer.json` behind the `Tokenizer` protocol, read by the `tokenizers` library; and
training one: a byte-level BPE (GPT-2 style) with `train_hf_bpe`.

Its ids are `tokenizers`' own: `Tokenizer.from_file(path).encode(text, add_special_tokens=False).ids`. A
tokenizer.json does not say which tokens are BOS and EOS; a `tokenizer_config.json` beside it (every Hugging Face
model directory has one) does, else the usual names of special tokens are looked up.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tlama_core.atomic import atomic_write
from tlama_core.data.training_text import training_lines, training_sources

BOS_NAMES = ("<s>", "<|begin_of_text|>", "<|startoftext|>", "<bos>")
EOS_NAMES = ("</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>", "<|im_end|>")
ENDOFTEXT = "<|endoftext|>"  # GPT-2's document separator: the EOS of the tokenizers trained here


def import_tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError as e:
        raise ImportError("reading a tokenizer.json needs the 'tokenizers' library: "
                          "pip install 'tlama-core[data]'") from e
    return tokenizers


class HFTokenizer:
    """A `tokenizer.json` file; `tokenizer` is the `tokenizers.Tokenizer` itself."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        tokenizers = import_tokenizers()
        try:
            self.tokenizer = tokenizers.Tokenizer.from_file(str(self.path))
        except Exception as e:  # tokenizers raises a bare Exception for JSON that is not a tokenizer
            raise ValueError(f"tokenizer_path={str(self.path)!r}: not a readable Hugging Face tokenizer.json ({e}); "
                             "pass a tokenizer.json or a sentencepiece .model file.") from e
        self.vocab_size: int = self.tokenizer.get_vocab_size(with_added_tokens=True)
        if self.vocab_size == 0:
            raise ValueError(f"tokenizer_path={str(self.path)!r}: the tokenizer has an empty vocabulary.")
        config = _config_beside(self.path)
        self.bos_id = self._special(config.get("bos_token"), BOS_NAMES)
        self.eos_id = self._special(config.get("eos_token"), EOS_NAMES)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch_fast(texts, add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def _special(self, configured: Any, names: tuple[str, ...]) -> int | None:
        if isinstance(configured, dict):  # {"content": "</s>", ...} in older configs
            configured = configured.get("content")
        for name in ((configured,) if isinstance(configured, str) else names):
            token_id = self.tokenizer.token_to_id(name)
            if token_id is not None:
                return token_id
        return None

    def __repr__(self) -> str:
        return f"HFTokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"


def _config_beside(path: Path) -> dict[str, Any]:
    config = path.with_name("tokenizer_config.json")
    try:
        return json.loads(config.read_text(encoding="utf-8")) if config.is_file() else {}
    except ValueError:
        return {}


def hf_output_path(output: str | os.PathLike) -> Path:
    """`out.json` stays as is; anything else is a directory that will hold `tokenizer.json`."""
    path = Path(output)
    return path if path.suffix == ".json" else path / "tokenizer.json"


def train_hf_bpe(input_files: Any, output: str | os.PathLike, vocab_size: int, *, text_field: str = "text",
                 split: str | None = None) -> Path:
    """Train a byte-level BPE `tokenizer.json` (GPT-2 style: any byte is representable, so text round-trips
    exactly; `<|endoftext|>` is id 0 and the EOS) on the text of `input_files` (any sources `train_tokenizer`
    reads, line by line with their line ends), and write it atomically. Returns its path."""
    tokenizers = import_tokenizers()
    sources = training_sources("train_hf_bpe", input_files, text_field, split)
    alphabet = tokenizers.pre_tokenizers.ByteLevel.alphabet()
    if not isinstance(vocab_size, int) or vocab_size <= len(alphabet) + 1:
        raise ValueError(f"train_hf_bpe: vocab_size={vocab_size!r} must be an integer > {len(alphabet) + 1} (the "
                         f"{len(alphabet)} bytes and {ENDOFTEXT}).")
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[ENDOFTEXT],
                                             initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(training_lines(sources, keep_ends=True), trainer)
    out = hf_output_path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda f: f.write(tok.to_str(pretty=True).encode()))
    return out

