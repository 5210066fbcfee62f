"""The Llama model: `TlamaConfig` (its shape), `Transformer` (the network, with KV-cache generation) and its
weights on disk: safetensors (`save_safetensors`) and Hugging Face Llama directories (`to_hf`, `from_hf`)."""

from tlama_core.models.config import TlamaConfig
from tlama_core.models.hf import from_hf, to_hf
from tlama_core.models.transformer import Transformer
from tlama_core.models.weights import save_safetensors

__all__ = ["TlamaConfig", "Transformer", "from_hf", "save_safetensors", "to_hf"]
