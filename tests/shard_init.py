"""Materialise a meta-device Transformer shard by shard on 2 CPU processes, sharded by FSDP2 (2 x 1) and by tensor
parallelism (1 x 2), and compare the gathered weights with `Transformer(config)` built on one process from the same
seed: `python shard_init.py OUT [PORT]`.

Each process writes OUT/init_{DP}x{TP}_rank{R}.json: the names of the weights that differ (none expected), whether every
parameter was sharded (a DTensor), the bytes of its local shards, of the full model, and the global generator's
next draw after materialising (it must continue as after building the model on the CPU).
"""

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor

from tlama_core.models import TlamaConfig, Transformer
from tlama_core.training.sharding import materialize, shard_model

CONFIG = TlamaConfig(vocab_size=96, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=16)


def run(rank: int, out: Path, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    for dp, tp in ((2, 1), (1, 2)):
        check(rank, out, dp, tp)
    dist.destroy_process_group()


def check(rank: int, out: Path, dp: int, tp: int) -> None:
    torch.manual_seed(7)
    reference = Transformer(CONFIG)
    reference_next = torch.rand(()).item()
    torch.manual_seed(7)
    with torch.device("meta"):
        model = Transformer(CONFIG)
    mesh = init_device_mesh("cpu", (dp, tp), mesh_dim_names=("data_parallel", "tensor_parallel"))
    shard_model(model, mesh, mixed_precision=False)
    materialize(model, torch.device("cpu"))
    next_draw = torch.rand(()).item()
    full = {name: p.full_tensor() if isinstance(p, DTensor) else p for name, p in model.named_parameters()}
    expected = dict(reference.named_parameters())
    report = {
        "differ": sorted(n for n, t in full.items() if not torch.equal(t.detach(), expected[n].detach())),
        "names_equal": sorted(full) == sorted(expected),
        "all_sharded": all(isinstance(p, DTensor) for p in model.parameters()),
        "local_bytes": sum(p.to_local().numel() * p.element_size() for p in model.parameters()),
        "full_bytes": sum(p.numel() * p.element_size() for p in reference.parameters()),
        "rope_equal": torch.equal(model.rope, reference.rope),
        "next_draw_equal": next_draw == reference_next,
    }
    (out / f"init_{dp}x{tp}_rank{rank}.json").write_text(json.dumps(report))


if __name__ == "__main__":
    mp.spawn(run, args=(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 29561), nprocs=2)
