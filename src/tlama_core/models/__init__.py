"""The Llama model: `TlamaConfig` (its shape), `Transformer` (the network), generation, and weights on disk.

Imports point one way: config, then transformer (with generation), then the weight formats (safetensors,
training checkpoints, Hugging Face) and `load_model`, which reads any of them.
"""

from tlama_core.models.config import RopeScaling, TlamaConfig
from tlama_core.models.hf import from_hf, to_hf
from tlama_core.models.loading import find_weights, load_model
from tlama_core.models.transformer import Transformer, check_weights
from tlama_core.models.weights import save_safetensors

__all__ = ["RopeScaling", "TlamaConfig", "Transformer", "check_weights", "find_weights", "from_hf", "load_model",
           "save_safetensors", "to_hf"]
