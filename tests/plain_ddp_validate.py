"""Validation of TlamaLightningModule under DDP on a plain lightning.Trainer, for the plain-Lightning tests:
`python plain_ddp_validate.py OUT CORPUS` (2 CPU processes; Lightning's launcher re-runs this script for the second,
as it would a user's). Each process writes OUT/rank{R}.json: what `validate()` returned and the callback metrics."""

import json
import sys
from pathlib import Path

import lightning as L
from trainer_utils import tiny_model

from tlama_core.data import TlamaDataModule
from tlama_core.training import TlamaLightningModule


def main() -> None:
    out, corpus = Path(sys.argv[1]), sys.argv[2]
    dm = TlamaDataModule(corpus, batch_size=2, seq_length=16, cache_dir=str(out / "cache"))
    module = TlamaLightningModule(model=tiny_model(vocab_size=dm.vocab_size))
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    (validated,) = trainer.validate(module, datamodule=dm, verbose=False)
    callback_metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps({"validated": validated,
                                                                     "callback_metrics": callback_metrics}))


if __name__ == "__main__":
    main()
