"""Hugging Face Llama in and out: parameter names, the rotary layout of q/k rows, config.json and the tokenizer.

Our rotary embeddings rotate channel pairs (0,1), (2,3), ... of each head (Meta's layout); Hugging Face's
rotate channel i with channel i + D/2. The two models compute the same function once the rows of every head
of wq and wk are reordered, which is all the conversion does besides renaming. Only `json`, `safetensors` and
`sentencepiece` are needed: `transformers` itself is not imported.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from tlama_core.models.config import RopeScaling, TlamaConfig
from tlama_core.models.transformer import Transformer
from tlama_core.models.weights import (
    CONFIG_FILE,
    SHARD_INDEX,
    WEIGHTS_FILE,
    model_from_state,
    read_json,
    read_safetensors,
    write_weights_dir,
)

# Our name inside `layers.N.` -> Hugging Face's inside `model.layers.N.`
LAYER_NAMES = {
    "attention_norm.weight": "input_layernorm.weight",
    "attention.wq.weight": "self_attn.q_proj.weight",
    "attention.wk.weight": "self_attn.k_proj.weight",
    "attention.wv.weight": "self_attn.v_proj.weight",
    "attention.wo.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "feed_forward.w1.weight": "mlp.gate_proj.weight",
    "feed_forward.w2.weight": "mlp.down_proj.weight",
    "feed_forward.w3.weight": "mlp.up_proj.weight",
}
TOP_NAMES = {"tok_embeddings.weight": "model.embed_tokens.weight", "norm.weight": "model.norm.weight",
             "output.weight": "lm_head.weight"}


def meta_to_hf_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Reorder the rows of each head of a q/k projection (heads*D, C) from pairs (0,1),(2,3).. to halves."""
    rows, cols = w.shape
    return w.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


def hf_to_meta_rows(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of `meta_to_hf_rows`: rows of each head from halves back to interleaved pairs."""
    rows, cols = w.shape
    return w.view(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def to_hf_state_dict(model: Transformer) -> dict[str, torch.Tensor]:
    """Our parameters under Hugging Face names: q/k rows permuted, padded vocabulary rows sliced off."""
    config = model.config
    out = {}
    for name, tensor in model.state_dict().items():
        if name == "output.weight" and config.tie_embeddings:
            continue  # tied: lm_head is embed_tokens
        if name.startswith("layers."):
            _, index, rest = name.split(".", 2)
            if rest == "attention.wq.weight":
                tensor = meta_to_hf_rows(tensor, config.n_heads)
            elif rest == "attention.wk.weight":
                tensor = meta_to_hf_rows(tensor, config.n_kv_heads)
            hf_name = f"model.layers.{index}.{LAYER_NAMES[rest]}"
        else:
            hf_name = TOP_NAMES[name]
            if name in ("tok_embeddings.weight", "output.weight"):
                tensor = tensor[:config.vocab_size]  # (V, C): padding rows are ours alone
        out[hf_name] = tensor.detach().contiguous()
    return out


def from_hf_state_dict(tensors: dict[str, torch.Tensor], config: TlamaConfig) -> dict[str, torch.Tensor]:
    """Hugging Face tensors under our names: q/k rows permuted back, vocabulary rows padded with zeros."""
    ours = {f"layers.{i}.{mine}": f"model.layers.{i}.{theirs}"
            for i in range(config.n_layers) for mine, theirs in LAYER_NAMES.items()}
    ours.update(TOP_NAMES)
    if config.tie_embeddings:
        del ours["output.weight"]
        head = tensors.get("lm_head.weight")
        if head is not None:  # some tied exports store the shared matrix twice; transformers ignores the copy
            if not torch.equal(head, tensors.get("model.embed_tokens.weight", head)):
                raise ValueError("tie_word_embeddings is true but lm_head.weight differs from embed_tokens.")
            tensors = {k: v for k, v in tensors.items() if k != "lm_head.weight"}
    missing = sorted(theirs for theirs in ours.values() if theirs not in tensors)
    # Old checkpoints carry the rotary frequencies as a buffer; we compute our own.
    unexpected = sorted(k for k in set(tensors) - set(ours.values()) if not k.endswith("rotary_emb.inv_freq"))
    if missing or unexpected:
        raise ValueError(f"Hugging Face weights do not match the config: missing {missing}, unexpected {unexpected}.")
    state = {}
    for mine, theirs in ours.items():
        tensor = tensors[theirs]
        if mine.endswith(("attention.wq.weight", "attention.wk.weight")):
            heads = config.n_heads if mine.endswith("wq.weight") else config.n_kv_heads
            shape = (heads * config.head_dim, config.d_model)
            if tuple(tensor.shape) != shape:  # checked here: the row permutation needs whole heads
                raise ValueError(f"{theirs} has shape {tuple(tensor.shape)}, config.json's is {shape}.")
            tensor = hf_to_meta_rows(tensor, heads)
        elif mine in ("tok_embeddings.weight", "output.weight"):
            if tensor.size(0) != config.vocab_size:
                raise ValueError(f"{theirs} has {tensor.size(0)} rows, config.json's vocab_size is "
                                 f"{config.vocab_size}.")
            padding = config.padded_vocab_size - tensor.size(0)
            tensor = torch.cat((tensor, tensor.new_zeros(padding, tensor.size(1))))  # (V_padded, C)
        state[mine] = tensor
    return state  # a tied model's output layer is the embedding: model_from_state ties it


def hf_config(config: TlamaConfig, dtype: torch.dtype, bos_id: int | None = None,
              eos_id: int | None = None) -> dict[str, Any]:
    """The config.json of a `LlamaForCausalLM` with our shape (readable by transformers 4.x and 5.x)."""
    dtype_name = str(dtype).removeprefix("torch.")
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": config.vocab_size,
        "hidden_size": config.d_model,
        "intermediate_size": config.ffn_hidden_dim,
        "num_hidden_layers": config.n_layers,
        "num_attention_heads": config.n_heads,
        "num_key_value_heads": config.n_kv_heads,
        "head_dim": config.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": config.max_seq_len,
        "rms_norm_eps": config.norm_eps,
        **rope_to_hf(config),
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": config.tie_embeddings,
        "initializer_range": config.weight_init_std,
        # Written even when unknown: a missing key would mean Llama's defaults 1 and 2.
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "pad_token_id": None,
        "torch_dtype": dtype_name,  # transformers 4.x
        "dtype": dtype_name,  # transformers 5.x
        "use_cache": True,
    }


def to_hf(model: Transformer, out_dir: str | os.PathLike, tokenizer_path: str | os.PathLike | None = None) -> Path:
    """Write `model` as a Hugging Face Llama directory that `AutoModelForCausalLM.from_pretrained` loads.

    With `tokenizer_path` (a sentencepiece .model or a tokenizer.json) the tokenizer is written too and its
    bos/eos ids go into config.json. Returns the directory.
    """
    out_dir = Path(out_dir)
    bos_id = eos_id = None
    if tokenizer_path is not None:
        from tlama_core.data.hf_export import write_hf_tokenizer  # data sits above models: imported when used

        bos_id, eos_id = write_hf_tokenizer(tokenizer_path, out_dir, model.config.max_seq_len)
    tensors = to_hf_state_dict(model)
    config = hf_config(model.config, model.tok_embeddings.weight.dtype, bos_id, eos_id)
    return write_weights_dir(out_dir, tensors, config)


def config_from_hf(hf: dict[str, Any], source: str = "config.json") -> TlamaConfig:
    """Our config for a Hugging Face Llama config.json dict; variants we do not implement are a ValueError."""
    if hf.get("model_type") != "llama":
        raise ValueError(f"{source}: model_type={hf.get('model_type')!r} is not supported (only 'llama').")
    required = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "max_position_embeddings")
    missing = [field for field in required if field not in hf]
    if missing:
        raise ValueError(f"{source}: no {missing}, which a Llama config.json states.")
    for field, supported in (("attention_bias", False), ("mlp_bias", False), ("hidden_act", "silu")):
        if hf.get(field, supported) != supported:
            raise ValueError(f"{source}: {field}={hf[field]!r} is not supported (only {supported!r}).")
    rope_theta, rope_scaling = rope_from_hf(hf, source)
    try:
        return TlamaConfig(
            vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
            n_heads=hf["num_attention_heads"], n_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            head_dim=hf.get("head_dim"), max_seq_len=hf["max_position_embeddings"],
            ffn_hidden_size=hf["intermediate_size"], norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=rope_theta,
            rope_scaling=rope_scaling, tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        )
    except (TypeError, ValueError) as e:
        raise ValueError(f"{source}: {e}") from e


def rope_from_hf(hf: dict[str, Any], source: str) -> tuple[float, RopeScaling | None]:
    """rope_theta and Llama 3.1 scaling from `rope_scaling` (published config.json files, transformers 4) and
    `rope_parameters` (what transformers 5 writes, rope_theta inside); other rope types are refused."""
    rope: dict[str, Any] = {}
    for field in ("rope_scaling", "rope_parameters"):
        value = hf.get(field)
        if value is None:
            continue
        kind = value.get("rope_type", value.get("type", "default")) if isinstance(value, dict) else None
        if kind not in ("default", "llama3") or value.get("partial_rotary_factor", 1.0) != 1.0:
            raise ValueError(f"{source}: {field}={value!r} is not supported (only rope_type 'default' or 'llama3', "
                             "rotating whole heads).")
        missing = [k for k in ("factor", "low_freq_factor", "high_freq_factor") if k not in value]
        if kind == "llama3" and missing:
            raise ValueError(f"{source}: {field}={value!r}: rope_type 'llama3' needs {missing} too.")
        rope.update(value)
    kind = rope.get("rope_type", rope.get("type", "default"))
    theta = float(rope.get("rope_theta", hf.get("rope_theta", 10000.0)))
    if kind == "default":
        return theta, None
    return theta, RopeScaling(factor=float(rope["factor"]), low_freq_factor=float(rope["low_freq_factor"]),
                              high_freq_factor=float(rope["high_freq_factor"]),
                              original_max_seq_len=rope.get("original_max_position_embeddings",
                                                            hf["max_position_embeddings"]))


def rope_to_hf(config: TlamaConfig) -> dict[str, Any]:
    """config.json's rotary keys: `rope_theta` and `rope_scaling` for transformers 4.x, `rope_parameters` for 5.x."""
    scaling = config.rope_scaling
    params: dict[str, Any] = {"rope_type": "default"}
    if scaling is not None:
        params = {"rope_type": "llama3", "factor": scaling.factor, "low_freq_factor": scaling.low_freq_factor,
                  "high_freq_factor": scaling.high_freq_factor,
                  "original_max_position_embeddings": scaling.original_max_seq_len}
    return {"rope_theta": config.rope_theta, "rope_scaling": params if scaling is not None else None,
            "rope_parameters": {**params, "rope_theta": config.rope_theta}}


def read_hf_tensors(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a Hugging Face directory: `model.safetensors`, or the shards its index lists."""
    index = directory / SHARD_INDEX
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise ValueError(f"{index}: no 'weight_map' object listing the shards.")
        shards = sorted(set(weight_map.values()))
    elif (directory / WEIGHTS_FILE).is_file():
        shards = [WEIGHTS_FILE]
    else:
        raise FileNotFoundError(f"{directory}: no {WEIGHTS_FILE} or {SHARD_INDEX} "
                                "(only safetensors weights are read; resave .bin checkpoints with safetensors).")
    tensors = {}
    for shard in shards:
        tensors.update(read_safetensors(directory / shard))
    return tensors


def from_hf(directory: str | os.PathLike) -> Transformer:
    """Load a Hugging Face Llama directory (safetensors, one file or sharded) as our Transformer, in eval mode."""
    directory = Path(directory)
    hf = read_json(directory / CONFIG_FILE)
    if "d_model" in hf:
        raise ValueError(f"{directory} holds tlama-core weights, not Hugging Face ones: load it with load_model.")
    config = config_from_hf(hf, source=str(directory / CONFIG_FILE))
    try:
        state = from_hf_state_dict(read_hf_tensors(directory), config)
    except ValueError as e:
        raise ValueError(f"{directory}: {e}") from e
    return model_from_state(config, state, str(directory), CONFIG_FILE)
