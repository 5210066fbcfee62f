"""The Llama model: `TlamaConfig` (its shape), `Transformer` (the network), `generate` (decoding beside it), and
weights on disk.

Imports point one way: config, then the transformer, then generation and the weight formats (safetensors with the
weight checks, training checkpoints, Hugging Face) and `load_model`, which reads any of them.
"""

from tlama_core.models.config import RopeScaling, TlamaConfig
from tlama_core.models.generation import generate
from tlama_core.models.hf import from_hf, to_hf
from tlama_core.models.loading import find_weights, load_model
from tlama_core.models.transformer import Transformer
from tlama_core.models.weights import check_weights, save_safetensors

__all__ = ["RopeScaling", "TlamaConfig", "Transformer", "check_weights", "find_weights", "from_hf", "generate",
           "load_model", "save_safetensors", "to_hf"]
