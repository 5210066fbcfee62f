"""A model too large for memory, to build or to train: one error giving its size and the ways round it, never the
allocator's traceback."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from trainer_utils import make_trainer

from tlama_core.training import TlamaLightningModule


def limit_address_space(gib: float):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (int(gib * 2**30), int(gib * 2**30)))
    return apply


def test_a_model_too_large_to_build_is_one_line_of_the_cli_with_its_size(tmp_path):
    tlama = Path(sys.executable).with_name("tlama")
    done = subprocess.run([str(tlama), "fit", "--model.config.name", "tinyllama-1.1b", "--trainer.steps", "1",
                           "--trainer.checkpoints_dir", str(tmp_path / "c"), "--trainer.logs_dir", str(tmp_path / "l")],
                          capture_output=True, text=True, timeout=300, preexec_fn=limit_address_space(3),
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert "cannot hold this model: 1.10B parameters are 4.1 GiB in fp32" in last and "fsdp2" in last
    assert "Traceback" not in done.stderr and "DefaultCPUAllocator" not in done.stderr


def test_a_model_that_builds_but_cannot_train_is_a_memory_error_at_its_step(tmp_path, monkeypatch):
    def allocator_fails(self, batch, batch_idx):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you "
                           "tried to allocate 1610612736 bytes. Error code 12 (Cannot allocate memory)")

    monkeypatch.setattr(TlamaLightningModule, "training_step", allocator_fails)
    with pytest.raises(MemoryError, match=r"out of memory at step 1 on the cpu: .*parameters take .*fsdp2"):
        make_trainer(tmp_path).train()
