"""What FSDP2 saves per process: a ~50M-parameter model on 1, 2 and 4 CPU processes (gloo).

For each number of processes N, every process builds the model as a sharded run does (on the meta device, sharded
with `fully_shard` per block and at the root, then materialised shard by shard), takes one AdamW step, and reports
the bytes it holds of parameters + gradients + optimizer state, and how far its RSS rose above where it stood while
the model was built (Linux's VmHWM, reset before construction). The reference is one process that builds the model
on the CPU (`Transformer(config)`) and steps it unsharded.
Goals: state bytes per process <= 1.15 / N of the reference's; the construction peak stays below the full fp32
model's bytes (no process ever holds the whole model).

    python bench/sharding_memory.py [--processes 1 2 4]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor

from tlama_core.models import TlamaConfig, Transformer
from tlama_core.training.optim import build_optimizer
from tlama_core.training.sharding import materialize, shard_model

CONFIG = TlamaConfig(vocab_size=32000, d_model=512, n_layers=8, n_heads=8, n_kv_heads=4, max_seq_len=64)


def rss(field: str) -> int:
    """VmRSS (now) or VmHWM (peak since the last `reset_peak`) of this process, in bytes (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def reset_peak() -> int:
    """Restart the peak-RSS count here (imports' transient peaks must not hide construction's); return RSS now."""
    Path("/proc/self/clear_refs").write_text("5")
    return rss("VmRSS")


def local_bytes(tensors) -> int:
    total = 0
    for t in tensors:
        t = t.to_local() if isinstance(t, DTensor) else t
        total += t.numel() * t.element_size()
    return total


def state_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    params = list(model.parameters())
    states = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor) and v.dim()]
    return local_bytes(params) + local_bytes(p.grad for p in params if p.grad is not None) + local_bytes(states)


def one_step(model: torch.nn.Module) -> torch.optim.Optimizer:
    optimizer = build_optimizer(model, 1e-4, 0.1)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, CONFIG.vocab_size, (1, CONFIG.max_seq_len + 1), generator=g)
    _, loss = model(tokens[:, :-1], targets=tokens[:, 1:])
    loss.backward()
    optimizer.step()
    return optimizer


def reference() -> dict[str, float]:
    before = reset_peak()
    torch.manual_seed(0)
    model = Transformer(CONFIG)
    built = rss("VmHWM") - before
    optimizer = one_step(model)
    return {"state": state_bytes(model, optimizer), "construction": built,
            "model": sum(p.numel() * p.element_size() for p in model.parameters())}


def sharded(rank: int, world: int, out: str, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world, 1), mesh_dim_names=("data_parallel", "tensor_parallel"))
    before = reset_peak()
    torch.manual_seed(0)
    with torch.device("meta"):
        model = Transformer(CONFIG)
    shard_model(model, mesh, mixed_precision=False)
    materialize(model, torch.device("cpu"))
    built = rss("VmHWM") - before
    optimizer = one_step(model)
    report = {"state": state_bytes(model, optimizer), "construction": built}
    Path(out, f"rank{rank}.json").write_text(json.dumps(report))
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2, 4])
    args = parser.parse_args()
    ref = reference()
    mib = 2**20
    print(f"model: {ref['model'] / 4e6:.1f}M parameters, {ref['model'] / mib:.0f} MiB in fp32; "
          f"load {os.getloadavg()[0]:.1f}")
    print(f"{'processes':>9} {'state MiB/process':>18} {'x one process':>14} {'goal <=':>8} "
          f"{'construction peak MiB':>22} {'x fp32 model':>13}")
    print(f"{'1 (CPU)':>9} {ref['state'] / mib:18.0f} {1.0:14.3f} {'':>8} {ref['construction'] / mib:22.0f} "
          f"{ref['construction'] / ref['model']:13.2f}")
    for n in args.processes:
        with tempfile.TemporaryDirectory() as out:
            mp.spawn(sharded, args=(n, out, 29600 + n), nprocs=n)
            ranks = [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(n)]
        state = max(r["state"] for r in ranks)
        built = max(r["construction"] for r in ranks)
        print(f"{n:>9} {state / mib:18.0f} {state / ref['state']:14.3f} {1.15 / n:8.3f} {built / mib:22.0f} "
              f"{built / ref['model']:13.2f}")


if __name__ == "__main__":
    main()
