"""Small models and in-memory loaders for the Trainer tests (no files, no tokenizer)."""

from __future__ import annotations

import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from tlama_core.models import TlamaConfig, Transformer
from tlama_core.training import Trainer
from tlama_core.training.lightning.hooks import HOOKS

VOCAB = 64


class WindowLoader(DataLoader):
    """A DataLoader over fixed random windows that carries the attributes the Trainer reads."""

    def __init__(self, n_samples: int, batch_size: int, seq_length: int, seed: int = 0, vocab: int = VOCAB):
        g = torch.Generator().manual_seed(seed)
        data = torch.randint(0, vocab, (n_samples, seq_length + 1), generator=g)
        super().__init__(TensorDataset(data[:, :-1], data[:, 1:]), batch_size=batch_size, drop_last=True)
        self.seq_length = seq_length
        self.vocab_size = vocab


class SlowLoader(WindowLoader):
    """A WindowLoader that takes `delay` seconds to deliver each batch, like a loader starved of input."""

    def __init__(self, *args, delay: float, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.delay = delay

    def __iter__(self):
        for batch in super().__iter__():
            time.sleep(self.delay)
            yield batch


def tiny_model(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=VOCAB, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32)
    return Transformer(TlamaConfig(**{**cfg, **overrides}))


def make_trainer(tmp_path, model=None, loader=None, **kw) -> Trainer:
    """A Trainer of `tiny_model()` on 64 random windows (8 steps of 2 micro-batches), quiet, logging every step,
    with its files under `tmp_path`; `kw` overrides any parameter."""
    defaults = dict(total_batch_size=4 * 16 * 2, log_steps=1, validation_steps=100, checkpoint_steps=100,
                    checkpoints_dir=str(tmp_path / "ckpt"), logs_dir=str(tmp_path / "logs"), verbose=False)
    return Trainer(model or tiny_model(), loader or WindowLoader(64, 4, 16), **{**defaults, **kw})


class Recorder:
    """A spec callback that records every hook call as (hook, current_step, extra)."""


    def __init__(self) -> None:
        self.events: list[tuple] = []
        for name in HOOKS:
            setattr(self, name, self._make(name))

    def _make(self, name):
        def hook(trainer, *args):
            self.events.append((name, trainer.current_step, *args))
        return hook

    def names(self) -> list[str]:
        return [e[0] for e in self.events]


class ResumableLoader(WindowLoader):
    """WindowLoader with Lightning's loader-state protocol: resumes at the batch where it was saved."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.consumed = 0
        self._skip = 0

    def __iter__(self):
        skip, self._skip = self._skip, 0
        self.consumed = skip
        for i, batch in enumerate(super().__iter__()):
            if i >= skip:
                self.consumed += 1
                yield batch

    def state_dict(self) -> dict:
        return {"consumed": self.consumed}

    def load_state_dict(self, state: dict) -> None:
        # A state saved at the end of a pass resumes with the next pass, as torchdata's StatefulDataLoader does.
        self._skip = state["consumed"] % len(self)
