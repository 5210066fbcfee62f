"""The Llama model: `TlamaConfig` (its shape) and `Transformer` (the network, with KV-cache generation)."""

from tlama_core.models.config import TlamaConfig
from tlama_core.models.transformer import Transformer

__all__ = ["TlamaConfig", "Transformer"]
