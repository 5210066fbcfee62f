"""What loading weights costs: `load_model` (shapes checked and the model built on the meta device, the file's
tensors assigned) against the way it was done before: build the model on the CPU (its random initialisation
included), then copy the file's tensors into it with `load_state_dict`.

Both read the same safetensors directory of a ~100M-parameter model; the two take turns at going first and the
medians over the rounds are compared. The meta-device way skips an initialisation and a copy of every weight.
Target: previous way / load_model >= 1.

    python bench/load_speed.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from tlama_core.models import TlamaConfig, Transformer, load_model, save_safetensors
from tlama_core.models.weights import CONFIG_FILE, WEIGHTS_FILE, read_json, read_safetensors

CONFIG = TlamaConfig(vocab_size=32000, d_model=768, n_layers=12, n_heads=12, max_seq_len=1024)


def previous_way(directory: Path) -> Transformer:
    model = Transformer(TlamaConfig.from_dict(read_json(directory / CONFIG_FILE)))
    model.load_state_dict(read_safetensors(directory / WEIGHTS_FILE))
    return model.eval()


def seconds(fn, directory: Path) -> float:
    start = time.perf_counter()
    fn(directory)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        save_safetensors(Transformer(CONFIG), directory)
        ours, before = [], []
        for r in range(args.rounds):
            order = [(load_model, ours), (previous_way, before)]
            for fn, times in order if r % 2 == 0 else order[::-1]:
                times.append(seconds(fn, directory))
        a, b = statistics.median(ours), statistics.median(before)
        print(f"{Transformer(CONFIG).num_params() / 1e6:.0f}M parameters: load_model {a * 1e3:.0f} ms, "
              f"previous way {b * 1e3:.0f} ms (medians of {args.rounds}); previous / load_model = {b / a:.2f}")


if __name__ == "__main__":
    main()
