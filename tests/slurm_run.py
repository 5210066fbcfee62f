"""One task of a 2-task SLURM job, launched by hand with SLURM's environment (as srun would):
`python slurm_run.py OUT STEPS [--resume] [--preempt]`.

With --preempt each task sends itself SIGUSR1 (SLURM's warning before preemption) as its own step starts: rank 1
at step 3, rank 0 at step 4, as when the signal reaches the tasks a step apart. Each task writes its result to
OUT/result_rank{R}.json.
"""

import json
import os
import signal
import sys
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from tlama_core.data import builtin_tokenizer_path, create_dataloader
from tlama_core.models import TlamaConfig, Transformer
from tlama_core.training import Trainer


class Preempt(Callback):
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if batch_idx % trainer.accumulate_grad_batches == 0 and trainer.global_step + 1 == 4 - trainer.global_rank:
            os.kill(os.getpid(), signal.SIGUSR1)


def main() -> None:
    out, steps = Path(sys.argv[1]), int(sys.argv[2])
    loader = create_dataloader(out / "corpus.txt", builtin_tokenizer_path(), batch_size=2, seq_length=32,
                               cache_dir=out / "cache")
    torch.manual_seed(0)
    model = Transformer(TlamaConfig(vocab_size=1024, d_model=32, n_layers=2, n_heads=4, max_seq_len=32))
    trainer = Trainer(model, loader, total_batch_size=2 * 32 * 4, steps=steps, log_steps=1, checkpoint_steps=100,
                      checkpoints_dir=str(out / "ckpt"), logs_dir=str(out / "logs"), seed=3, verbose=False,
                      use_mixed_precision=False, accelerator="cpu", devices=2, strategy="ddp",
                      trainer_kwargs={"callbacks": [Preempt()] if "--preempt" in sys.argv else []})
    result = trainer.train(ckpt_path="last" if "--resume" in sys.argv else None)
    keys = ("steps_completed", "interrupted", "requeued")
    (out / f"result_rank{trainer._trainer.global_rank}.json").write_text(json.dumps({k: result[k] for k in keys}))


if __name__ == "__main__":
    main()
