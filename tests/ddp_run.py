"""A tiny training run for the DDP tests: `python ddp_run.py OUT DEVICES TOTAL_BATCH [STEPS] [--resume]
[--signal-skew] [--save-in-hook]`.

Lightning's DDP launcher re-runs this script once per extra process, exactly as it would a user's train.py.
Each rank writes the first token of every window it trained on to OUT/batches_rank{R}.txt. With
--signal-skew each process sends itself SIGTERM as its own step starts: rank 1 at step 3, rank 0 at step 4,
as when a cluster signals every task on its own. With --save-in-hook the master alone calls the documented
`_save_checkpoint()` from `on_step_end` at step 1 and writes what it returned to OUT/saved_rank0.txt. With
--best-in-hook the master alone calls `_save_checkpoint(val_loss=0.5, is_best=True)` at step 1, the run
validates every 2 steps, and each rank writes its `best_val_loss` to OUT/best_rank{R}.txt. With --kill-rank1, rank 1
kills itself (SIGKILL) as its step 3 starts.
"""

import os
import signal
import sys
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from tlama_core.data import builtin_tokenizer_path, create_dataloader
from tlama_core.models import TlamaConfig, Transformer
from tlama_core.training import Trainer


class RecordBatches(Callback):
    def __init__(self, out: Path) -> None:
        self.out = out

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        with open(self.out / f"batches_rank{trainer.global_rank}.txt", "a") as f:
            f.write(" ".join(map(str, batch[0][:, :4].flatten().tolist())) + "\n")


class SignalSkew(Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx % trainer.accumulate_grad_batches == 0 and trainer.global_step + 1 == 4 - trainer.global_rank:
            os.kill(os.getpid(), signal.SIGTERM)


class KillRank1(Callback):
    """Rank 1 dies (SIGKILL: no handler, no goodbye) as its step 3 starts, after the step-2 checkpoint."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_rank == 1 and trainer.global_step == 2 and batch_idx % trainer.accumulate_grad_batches == 0:
            os.kill(os.getpid(), signal.SIGKILL)


class BestInHook:
    def on_step_end(self, trainer, metrics):  # runs on the master only
        if trainer.current_step == 1:
            trainer._save_checkpoint(val_loss=0.5, is_best=True)


class SaveInHook:
    def on_step_end(self, trainer, metrics):  # runs on the master only
        if trainer.current_step == 1:
            path = trainer._save_checkpoint()
            (trainer.checkpoints_dir.parent / f"saved_rank{trainer._trainer.global_rank}.txt").write_text(str(path))


def main() -> None:
    out, devices, total = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    steps = int(sys.argv[4]) if len(sys.argv) > 4 and not sys.argv[4].startswith("--") else 6
    corpus = out / "corpus.txt"
    loader = create_dataloader(corpus, builtin_tokenizer_path(), batch_size=2, seq_length=32, shuffle=True,
                               cache_dir=out / "cache")
    torch.manual_seed(0)  # the same initial weights in every run (DDP then broadcasts rank 0's)
    model = Transformer(TlamaConfig(vocab_size=1024, d_model=32, n_layers=2, n_heads=4, max_seq_len=32))
    best = "--best-in-hook" in sys.argv
    val = create_dataloader(corpus, builtin_tokenizer_path(), batch_size=2, seq_length=32, split="val",
                            cache_dir=out / "cache") if best else None
    hooks = [SaveInHook()] if "--save-in-hook" in sys.argv else [BestInHook()] if best else None
    trainer = Trainer(model, loader, val_data_loader=val, total_batch_size=total, steps=steps, log_steps=1,
                      checkpoint_steps=2, validation_steps=2 if best else 100,
                      validation_batches=2 if best else None, checkpoints_dir=str(out / "ckpt"),
                      logs_dir=str(out / "logs"), seed=3, verbose=False, accelerator="cpu", devices=devices,
                      callbacks=hooks, strategy="ddp" if devices > 1 else "auto",
                      trainer_kwargs={"callbacks": [RecordBatches(out)] + (
                          [SignalSkew()] if "--signal-skew" in sys.argv else []) + (
                          [KillRank1()] if "--kill-rank1" in sys.argv else [])})
    result = trainer.train(ckpt_path="last" if "--resume" in sys.argv else None)
    with open(out / f"result_rank{trainer._trainer.global_rank}.txt", "w") as f:
        f.write(f"{result['steps_completed']} {result['interrupted']}\n")
    if best:
        (out / f"best_rank{trainer._trainer.global_rank}.txt").write_text(repr(trainer.best_val_loss))


if __name__ == "__main__":
    main()
