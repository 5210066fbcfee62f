"""GPU throughput and MFU of a GPT-2-small-sized Llama through the Trainer, with and without torch.compile.

Runs only where CUDA is present (this project's CI machines have none: it then says it was skipped). Prints
tokens/s and MFU of one device against its dense bf16 peak, as the CSV log reports them, and the compiled /
eager tokens/s ratio measured in the same run.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

from tlama_core.models import TlamaConfig, Transformer
from tlama_core.training import Trainer


class RandomWindows(DataLoader):
    """Random token windows of a fixed shape: throughput does not depend on the text."""

    def __init__(self, batches: int, batch_size: int, seq_length: int, vocab: int) -> None:
        data = torch.randint(0, vocab, (batches * batch_size, seq_length + 1))
        super().__init__(TensorDataset(data[:, :-1], data[:, 1:]), batch_size=batch_size, drop_last=True)
        self.seq_length, self.vocab_size = seq_length, vocab


def measure(compile_model: bool, steps: int, batch_size: int, seq_length: int,
            config: TlamaConfig | None = None) -> dict[str, float]:
    """Train `steps` steps of 4 micro-batches on one device; the second half's rates and the run's seconds."""
    config = config or TlamaConfig(vocab_size=50257, d_model=768, n_layers=12, n_heads=12, max_seq_len=seq_length)
    loader = RandomWindows(steps * 4, batch_size, seq_length, config.vocab_size)
    with tempfile.TemporaryDirectory() as d:
        trainer = Trainer(Transformer(config), loader, total_batch_size=4 * batch_size * seq_length, steps=steps,
                          log_steps=max(1, steps // 2), checkpoint_steps=10**9, checkpoints_dir=d, logs_dir=d,
                          verbose=False, compile=compile_model, devices=1)
        seconds = trainer.train()["total_training_time"]
        with open(Path(d) / "train_log.csv", newline="") as f:
            last = list(csv.DictReader(f))[-1]  # the second window: compilation and warm-up excluded
    return {"tokens_per_sec_per_device": float(last["tokens_per_sec_per_device"]),
            "mfu": float(last["mfu"]) if last["mfu"] else float("nan"), "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--seq_length", type=int, default=1024)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_throughput: skipped, no CUDA device on this machine.")
        return
    rates = []
    for compile_model in (False, True):
        r = measure(compile_model, args.steps, args.batch_size, args.seq_length)
        rates.append(r["tokens_per_sec_per_device"])
        print(f"compile={compile_model}: {r['tokens_per_sec_per_device']:,.0f} tokens/s per device, "
              f"MFU {r['mfu']:.1%} ({torch.cuda.get_device_name()})")
    print(f"compiled / eager tokens/s: {rates[1] / rates[0]:.2f}")


if __name__ == "__main__":
    main()
