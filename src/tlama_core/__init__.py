"""tlama-core: pretrain Llama-style language models on PyTorch Lightning."""

__version__ = "0.1.0"
