"""Tokenizers: one small protocol (`Tokenizer`) for every kind a run can use; sentencepiece training.

`load_tokenizer(path)` opens a sentencepiece `.model`, a Hugging Face `tokenizer.json`, or a directory holding
either, and returns a `Tokenizer`: `encode(text) -> list[int]`, `encode_batch(texts)`, `decode(ids) -> str`,
`vocab_size`, `bos_id`, `eos_id` (None when the tokenizer has none). A bare name of a tokenizer the package
ships (`shakespeare-bpe-2048`) opens that file, so a config can name one without knowing where tlama-core is
installed. Everything that makes or reads tokens (the token cache, loaders, generation, export) goes through it,
so a new kind of tokenizer is one class here.

Special ids of the models trained here: unk=0, bos=1, eos=2, no pad piece (pad_id=-1; batches are dense windows
of the token stream, nothing is padded). The defaults keep text lossless, so `decode(encode(text)) == text`:
identity normalization, whitespace kept as written, no dummy space added at the start of a line, and "\n" as
one piece of its own (sentencepiece trains on lines without their newline, and our cache encodes line by line).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import sentencepiece as spm

from tlama_core.atomic import atomic_write
from tlama_core.data.training_text import training_lines, training_sources

UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, -1
TOKENIZER_FILES = ("tokenizer.model", "tokenizer.json")  # a directory's tokenizer, the first found
ASSETS = Path(__file__).resolve().parent / "assets"  # the built-in corpus and the tokenizers shipped for it

# Trainer options behind the lossless, deterministic defaults described above; any can be overridden.
DEFAULT_TRAINER_OPTIONS: dict[str, Any] = {
    "unk_id": UNK_ID, "bos_id": BOS_ID, "eos_id": EOS_ID, "pad_id": PAD_ID,
    "normalization_rule_name": "identity",
    "remove_extra_whitespaces": False,
    "add_dummy_prefix": False,
    "user_defined_symbols": ["\n"],
    "allow_whitespace_only_pieces": True,
    "split_digits": True,
    "byte_fallback": False,
    "input_sentence_size": 0,  # 0: train on every line (deterministic; set a cap for very large inputs)
    "shuffle_input_sentence": False,
    "num_threads": 1,
    "minloglevel": 2,
}


@runtime_checkable
class Tokenizer(Protocol):
    """What the library needs of a tokenizer; `load_tokenizer` returns one."""

    path: Path  # the file the tokenizer was read from: a run copies it beside its checkpoints
    vocab_size: int
    bos_id: int | None
    eos_id: int | None

    def encode(self, text: str) -> list[int]:
        """Ids of `text` as the tokenizer library itself encodes it (no BOS/EOS added)."""
        ...

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """`encode` of each text, in one call into the library."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`."""
        ...


class SentencePieceTokenizer:
    """A sentencepiece `.model` behind the `Tokenizer` protocol; `processor` is sentencepiece's own object."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            self.processor = spm.SentencePieceProcessor(model_file=str(self.path))
        except (RuntimeError, OSError) as e:  # sentencepiece's "could not parse ModelProto" names no file
            raise ValueError(f"tokenizer_path={str(self.path)!r}: not a readable sentencepiece model ({e}); pass a "
                             "sentencepiece .model file (e.g. builtin_tokenizer_path()).") from e
        if self.processor.get_piece_size() == 0:
            raise ValueError(f"tokenizer_path={str(self.path)!r}: the sentencepiece model has no pieces.")
        self.vocab_size: int = self.processor.get_piece_size()
        self.bos_id = optional_id(self.processor.bos_id())
        self.eos_id = optional_id(self.processor.eos_id())

    def encode(self, text: str) -> list[int]:
        return self.processor.encode(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.processor.encode(texts, num_threads=1)  # one thread: the cache runs one process per core

    def decode(self, ids: Sequence[int]) -> str:
        return self.processor.decode(list(ids))

    def __repr__(self) -> str:
        return f"SentencePieceTokenizer({str(self.path)!r}, vocab_size={self.vocab_size})"


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """Open the tokenizer at `path`: a sentencepiece `.model`, a Hugging Face `tokenizer.json`, or a directory
    holding `tokenizer.model` or `tokenizer.json` (the first when both are there).

    A missing path is a FileNotFoundError and a file that is not a tokenizer a ValueError, each naming the path.
    """
    path = tokenizer_file(path)
    if path.is_dir():
        path = next((path / n for n in TOKENIZER_FILES if (path / n).is_file()), path)
    if not path.is_file():
        raise FileNotFoundError(
            f"tokenizer_path={str(path)!r}: no such file; pass a sentencepiece .model file or a Hugging Face "
            "tokenizer.json (train one with tlama_core.data.train_tokenizer), or the name of one the package "
            f"ships: {', '.join(shipped_tokenizers())}."
        )
    if path.suffix == ".json":
        from tlama_core.data.hf_tokenizer import HFTokenizer  # imports `tokenizers`, an optional extra

        return HFTokenizer(path)
    return SentencePieceTokenizer(path)


def shipped_tokenizers() -> list[str]:
    """The names of the tokenizers shipped with the package (sentencepiece BPE models of the built-in corpus)."""
    return sorted(p.stem for p in ASSETS.glob("*.model"))


def tokenizer_file(path: str | os.PathLike) -> Path:
    """`path` itself, or the file of the shipped tokenizer it names: a bare name, not a file here, that
    `shipped_tokenizers()` lists (a file of that name in the working directory is taken first)."""
    path = Path(path)
    if not path.exists() and path.name == str(path) and path.name in shipped_tokenizers():
        return ASSETS / f"{path.name}.model"
    return path


def optional_id(special_id: int) -> int | None:
    """A sentencepiece special id, or None where the model has none (sentencepiece says -1)."""
    return special_id if special_id >= 0 else None


def tokenizer_output_path(model_prefix_or_output_path: str | os.PathLike) -> Path:
    """`out.model` stays as is; a prefix `out` becomes `out.model` (sentencepiece's own convention)."""
    path = Path(model_prefix_or_output_path)
    return path if path.suffix == ".model" else path.with_name(path.name + ".model")


def train_tokenizer(
    input_files: Any,
    model_prefix_or_output_path: str | os.PathLike,
    vocab_size: int,
    character_coverage: float = 1.0,
    model_type: str = "bpe",
    *,
    text_field: str = "text",
    split: str | None = None,
    **trainer_options: Any,
) -> Path:
    """Train a sentencepiece model on the text of `input_files` and write it atomically.

    `input_files` is one source or a list of them, each any kind training reads (text files, `.jsonl`,
    `.jsonl.gz`, `.parquet`, a directory or glob of them, a `datasets` directory or Dataset; records' text in
    `text_field`); `split` ("train" or "val") keeps one part of each, as training splits it. Text is given to
    sentencepiece line by line. `trainer_options` are passed to `sentencepiece.SentencePieceTrainer.train` over
    DEFAULT_TRAINER_OPTIONS (e.g. `input_sentence_size=2_000_000` to sample very large inputs). Returns the path
    of the `.model` file.
    """
    sources = training_sources("train_tokenizer", input_files, text_field, split)
    return train_tokenizer_from_lines(training_lines(sources, keep_ends=False), model_prefix_or_output_path,
                                      vocab_size, character_coverage, model_type, **trainer_options)


def train_tokenizer_from_lines(
    lines: Iterable[str],
    model_prefix_or_output_path: str | os.PathLike,
    vocab_size: int,
    character_coverage: float = 1.0,
    model_type: str = "bpe",
    **trainer_options: Any,
) -> Path:
    """`train_tokenizer` on lines of text held by the caller (e.g. one split of a corpus)."""
    if not isinstance(vocab_size, int) or vocab_size <= len(DEFAULT_TRAINER_OPTIONS["user_defined_symbols"]) + 3:
        raise ValueError(f"train_tokenizer: vocab_size={vocab_size!r} must be an integer > 4.")
    out = tokenizer_output_path(model_prefix_or_output_path)
    model = io.BytesIO()
    options = {**DEFAULT_TRAINER_OPTIONS, **trainer_options}
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
            character_coverage=character_coverage, model_type=model_type, **options,
        )
    except RuntimeError as e:  # e.g. "Vocabulary size is too high": say which call and what to change
        raise ValueError(f"train_tokenizer(vocab_size={vocab_size}, model_type={model_type!r}) failed: {e}") from e
    atomic_write(out, lambda f: f.write(model.getvalue()))
    return out

