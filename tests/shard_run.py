"""A tiny training run under a multi-process strategy, for the sharding tests:
`python shard_run.py OUT STRATEGY DEVICES [--steps N] [--resume] [--plain] [--stepping N] [--meta] [--bf16] [--ac]
[--poison N]`.

STRATEGY: ddp, fsdp2 (FSDP2 over every process), 2x1 or 2x2 (ModelParallelStrategy objects: 2 data-parallel x 1 or
2 tensor-parallel).
Lightning's launcher re-runs this script once per extra process, as it would a user's train.py. The run validates
every 4 steps and checkpoints every 4; each process writes what its `all_ranks` hook saw at every step end to
OUT/steps_rank{R}.json (at every validation's end to OUT/val_rank{R}.json) and, at the end, the checksum of its
full weights to OUT/weights_rank{R}.txt.
--plain trains a TlamaLightningModule on a plain lightning.Trainer instead of the facade (losses to
OUT/plain_rank{R}.json); --stepping N drives N steps with `train_step()`; --meta builds the model on the meta
device (the facade then shards it and each process draws only its shards); --bf16 trains in bf16 autocast (else
fp32, whatever the CPU); --ac recomputes each block in the backward pass (activation_checkpointing); --poison N
writes a NaN into rank 1's shard of one weight at the end of step N and records on every process the error the run
stops with (OUT/error_rank{R}.txt).
"""

import argparse
import json
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.strategies import ModelParallelStrategy
from torch.distributed.tensor import DTensor

from tlama_core.data import builtin_tokenizer_path, create_dataloader
from tlama_core.models import TlamaConfig, Transformer
from tlama_core.training import TlamaLightningModule, Trainer

CONFIG = TlamaConfig(vocab_size=1024, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32)
CLIP = 0.6  # below most steps' gradient norm (0.55-0.83 here): the clipping of the sharded gradients is compared too


class StepRecorder:
    all_ranks = True

    def __init__(self, out: Path) -> None:
        self.out, self.rows, self.val = out, [], []

    def on_step_end(self, trainer, metrics):
        self.rows.append({k: metrics[k] for k in ("step", "train_loss", "grad_norm", "lr")})

    def on_validate_end(self, trainer, metrics):
        self.val.append(metrics["val_loss"])

    def on_train_end(self, trainer):
        rank = trainer._trainer.global_rank
        (self.out / f"steps_rank{rank}.json").write_text(json.dumps(self.rows))
        (self.out / f"val_rank{rank}.json").write_text(json.dumps(self.val))


class Poison:
    """At the end of step `step`, a NaN in global rank 1's local shard of one weight (only that process sees it)."""

    all_ranks = True

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer, metrics):
        if trainer.current_step == self.step and trainer._trainer.global_rank == 1:
            with torch.no_grad():
                trainer.model.layers[0].attention.wq.weight.to_local()[0, 0] = float("nan")


def strategy(kind: str):
    if kind == "2x2":
        return ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=2)
    if kind == "2x1":
        return ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1)
    return kind


def full_checksum(model: torch.nn.Module) -> float:
    """The sum of every full weight (gathered from the shards: a collective on every process)."""
    total = 0.0
    for p in model.parameters():
        t = p.full_tensor() if isinstance(p, DTensor) else p
        total += float(t.double().sum())
    return total


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("strategy")
    parser.add_argument("devices", type=int)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--plain", action="store_true")
    parser.add_argument("--stepping", type=int, default=0)
    parser.add_argument("--meta", action="store_true")
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--poison", type=int, default=0)
    parser.add_argument("--ac", action="store_true")
    args = parser.parse_args()
    corpus = args.out / "corpus.txt"
    loaders = [create_dataloader(corpus, builtin_tokenizer_path(), batch_size=2, seq_length=32, split=split,
                                 shuffle=split == "train", cache_dir=args.out / "cache") for split in ("train", "val")]
    torch.manual_seed(0)  # the same initial weights in every run
    if args.meta:
        with torch.device("meta"):
            model = Transformer(CONFIG)
    else:
        model = Transformer(CONFIG)
    if args.plain:
        module = TlamaLightningModule(model=model, learning_rate=3e-3, weight_decay=0.1)
        trainer = L.Trainer(accelerator="cpu", devices=args.devices, strategy=strategy(args.strategy),
                            max_steps=args.steps, accumulate_grad_batches=2, gradient_clip_val=CLIP, logger=False,
                            enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False,
                            use_distributed_sampler=False, limit_val_batches=0)
        losses = []

        class Losses(L.Callback):
            def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
                if (batch_idx + 1) % 2 == 0:
                    losses.append(float(trainer.strategy.reduce(pl_module.last_step.loss, reduce_op="mean")))

        trainer.callbacks.append(Losses())
        trainer.fit(module, train_dataloaders=loaders[0])
        (args.out / f"plain_rank{trainer.global_rank}.json").write_text(json.dumps(losses))
        (args.out / f"weights_rank{trainer.global_rank}.txt").write_text(repr(full_checksum(module.model)))
        return
    callbacks = [StepRecorder(args.out), *([Poison(args.poison)] if args.poison else [])]
    trainer = Trainer(model, loaders[0], val_data_loader=loaders[1], total_batch_size=2 * 32 * 4, steps=args.steps,
                      log_steps=1, checkpoint_steps=4, validation_steps=4, validation_batches=2,
                      learning_rate=3e-3, gradient_clip_val=CLIP, checkpoints_dir=str(args.out / "ckpt"),
                      logs_dir=str(args.out / "logs"), seed=3, verbose=False, accelerator="cpu", devices=args.devices,
                      use_mixed_precision=args.bf16, strategy=strategy(args.strategy), callbacks=callbacks,
                      activation_checkpointing=args.ac)
    rank = trainer._trainer.global_rank
    if args.stepping:
        rows = [trainer.train_step() for _ in range(args.stepping)]
        (args.out / f"stepping_rank{rank}.json").write_text(json.dumps(rows))
    elif args.poison:
        try:
            trainer.train()
        except FloatingPointError as err:
            (args.out / f"error_rank{rank}.txt").write_text(str(err))
        return
    else:
        trainer.train(ckpt_path="last" if args.resume else None)
    (args.out / f"weights_rank{rank}.txt").write_text(repr(full_checksum(trainer.model)))


if __name__ == "__main__":
    main()
