"""Tokenizers across Hugging Face model directories: a run's tokenizer written into one, so that
`AutoTokenizer.from_pretrained(dir)` loads it and encodes as we do (`encode(text, add_special_tokens=False)` gives
our ids), for either kind; and a Hugging Face directory's tokenizer carried into our weights directory."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tlama_core.atomic import atomic_write
from tlama_core.data.tokenizer import TOKENIZER_FILES, SentencePieceTokenizer, load_tokenizer


def write_hf_tokenizer(tokenizer_path: str | os.PathLike, out_dir: str | os.PathLike,
                       max_length: int) -> tuple[int | None, int | None]:
    """Write the tokenizer at `tokenizer_path` into `out_dir` with a `tokenizer_config.json`; return (bos, eos).

    The class is `PreTrainedTokenizerFast` for both kinds. From a sentencepiece `.model` (copied as
    `tokenizer.model`) transformers 5 builds its pipeline from the model itself, normalizer included, where
    `LlamaTokenizer` would impose Llama's (no normalization, a dummy prefix) and disagree with sentencepiece on
    models not trained like Llama's. A `tokenizer.json` is copied as it is. No BOS/EOS is added by default.
    """
    tokenizer = load_tokenizer(tokenizer_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast"}
    if isinstance(tokenizer, SentencePieceTokenizer):
        sp = tokenizer.processor
        special = {"bos_token": sp.bos_id(), "eos_token": sp.eos_id(), "unk_token": sp.unk_id(),
                   "pad_token": sp.pad_id()}
        config.update({name: sp.id_to_piece(i) for name, i in special.items() if i >= 0})  # -1: none
        config["split_special_tokens"] = True  # "<s>" in the text is text, as sentencepiece encodes it
        name = "tokenizer.model"
    else:
        beside = tokenizer.path.with_name("tokenizer_config.json")
        if beside.is_file():  # the original's own settings (chat template, special tokens) stay
            config = {**json.loads(beside.read_text(encoding="utf-8")), "tokenizer_class": "PreTrainedTokenizerFast"}
        for key, token_id in (("bos_token", tokenizer.bos_id), ("eos_token", tokenizer.eos_id)):
            if token_id is not None:
                config[key] = tokenizer.tokenizer.id_to_token(token_id)
        name = "tokenizer.json"
    config.update({"add_bos_token": False, "add_eos_token": False, "model_max_length": max_length})
    atomic_write(out_dir / name, lambda f: f.write(tokenizer.path.read_bytes()))
    atomic_write(out_dir / "tokenizer_config.json", lambda f: f.write(json.dumps(config, indent=2).encode()))
    return tokenizer.bos_id, tokenizer.eos_id


def carry_tokenizer(model_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path | None:
    """Copy the tokenizer of the Hugging Face directory `model_dir` (`tokenizer.model`, `tokenizer.json`, and the
    `tokenizer_config.json` that names a tokenizer.json's BOS and EOS) into `out_dir`, byte for byte, where
    `load_tokenizer(out_dir)` and every command reading those weights find it. Those names that `model_dir` lacks
    are removed from `out_dir`: left from another model, they would be read as this one's. Returns the tokenizer
    that will be read (the first of TOKENIZER_FILES), or None when `model_dir` holds none."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    for name in (*TOKENIZER_FILES, "tokenizer_config.json"):
        source, target = model_dir / name, out_dir / name
        if source.is_file():
            data = source.read_bytes()
            atomic_write(target, lambda f, data=data: f.write(data))
        else:
            target.unlink(missing_ok=True)
    return next((out_dir / n for n in TOKENIZER_FILES if (out_dir / n).is_file()), None)
