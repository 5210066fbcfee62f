"""What the Trainer costs over a hand-written PyTorch loop: training tokens/s of both on the same model and batches.

Both do the same work per optimizer step: `ACCUM` micro-batches of forward + backward (loss / ACCUM), gradient
clipping to norm 1.0, AdamW with `build_optimizer`'s parameter groups, zeroing the gradients, in the precision
the Trainer picks (bf16 autocast on a CPU with bf16 units, as Lightning does it; else fp32). The Trainer runs
quiet (verbose=False), logs a row every 10 steps, never validates and checkpoints only at its last step. Start-up
is excluded from both: the clock runs from the start of step WARMUP + 1 to the end of the last optimizer step
(for the Trainer through its documented hooks, so its final checkpoint and teardown are not counted). Runs
alternate in one process; medians are compared. Target: ours / hand loop >= 0.97, with or without a logger
(`--logger tensorboard`: the Trainer also sends each row to that Lightning logger; the hand loop logs nothing).

    python bench/trainer_overhead.py [--rounds 3] [--steps 20] [--logger tensorboard]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from tlama_core.models import TlamaConfig, Transformer
from tlama_core.training import Trainer, build_optimizer, has_fast_bf16

CONFIG = TlamaConfig(vocab_size=4096, d_model=256, n_layers=4, n_heads=8, max_seq_len=128)
BATCH, SEQ, ACCUM = 4, 64, 4  # small enough for 3 alternating rounds in ~3 minutes on 2 shared CPU cores
LR, WEIGHT_DECAY = 6e-4, 0.1
WARMUP = 2  # optimizer steps left out of the timing in both loops
BF16 = has_fast_bf16("cpu")  # what the Trainer's default use_mixed_precision=True picks on this CPU


class _Loader(DataLoader):
    """Fixed random windows, with the attributes the Trainer reads."""

    def __init__(self, steps: int) -> None:
        g = torch.Generator().manual_seed(0)
        data = torch.randint(0, CONFIG.vocab_size, (steps * ACCUM * BATCH, SEQ + 1), generator=g)
        super().__init__(TensorDataset(data[:, :-1], data[:, 1:]), batch_size=BATCH, drop_last=True)
        self.seq_length, self.vocab_size = SEQ, CONFIG.vocab_size


def fresh_model() -> Transformer:
    torch.manual_seed(0)
    return Transformer(CONFIG)


class _Clock:
    """Spec callback: starts at step WARMUP + 1, stops when the last optimizer step is done."""

    def __init__(self, steps: int) -> None:
        self.steps, self.start, self.stop = steps, None, None

    def on_step_start(self, trainer) -> None:
        if trainer.current_step == WARMUP:
            self.start = time.perf_counter()

    def on_optimizer_step_end(self, trainer) -> None:
        if trainer.current_step == self.steps:
            self.stop = time.perf_counter()


def ours(loader: _Loader, steps: int, logger: str | None) -> float:
    """Seconds of the timed steps under `Trainer.train()`."""
    clock = _Clock(steps)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(fresh_model(), loader, total_batch_size=BATCH * SEQ * ACCUM, steps=steps,
                          learning_rate=LR, weight_decay=WEIGHT_DECAY, log_steps=10, validation_steps=10**6,
                          checkpoint_steps=10**6, gradient_clip_val=1.0, verbose=False, callbacks=[clock],
                          checkpoints_dir=f"{tmp}/ckpt", logs_dir=f"{tmp}/logs", logger=logger)
        assert trainer.grad_accum_steps == ACCUM and (trainer.precision == "bf16-mixed") == BF16
        if trainer.train()["interrupted"] or clock.stop is None:
            raise SystemExit("trainer_overhead: the Trainer run was interrupted; no timing.")
    return clock.stop - clock.start


def hand_loop(loader: _Loader, steps: int) -> float:
    """Seconds of the timed steps under a plain PyTorch loop doing the same work."""
    model = fresh_model()
    model.train()
    optimizer = build_optimizer(model, LR, WEIGHT_DECAY)
    batches = iter(loader)
    start = None
    for step in range(steps):
        if step == WARMUP:
            start = time.perf_counter()
        for _ in range(ACCUM):
            x, y = next(batches)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=BF16):
                _, loss = model(x, targets=y)
            (loss / ACCUM).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--logger", default=None, help="a Trainer logger name (tensorboard, csv, mlflow) to attach")
    args = parser.parse_args()
    loader = _Loader(args.steps)
    tokens = (args.steps - WARMUP) * ACCUM * BATCH * SEQ
    hand_loop(loader, WARMUP + 1)  # warm-up of the kernels and the allocator, for whichever runs first
    times = []
    for r in range(args.rounds):
        times.append((ours(loader, args.steps, args.logger), hand_loop(loader, args.steps)))
        t_ours, t_hand = times[-1]
        print(f"round {r + 1}: Trainer {tokens / t_ours:,.0f} tok/s, hand loop {tokens / t_hand:,.0f} tok/s")
    t_ours = statistics.median(t for t, _ in times)
    t_hand = statistics.median(t for _, t in times)
    print(f"{Transformer(CONFIG).num_params() / 1e6:.1f}M parameters, {BATCH} x {SEQ} x {ACCUM} accumulation, "
          f"{args.steps - WARMUP} timed steps, {torch.get_num_threads()} threads, {'bf16' if BF16 else 'fp32'}, "
          f"logger: {args.logger}")
    print(f"Trainer.train(): {tokens / t_ours:,.0f} tok/s; hand loop: {tokens / t_hand:,.0f} tok/s")
    print(f"ours / hand loop = {t_hand / t_ours:.3f} (target >= 0.97); median of {args.rounds} alternating rounds")


if __name__ == "__main__":
    main()
