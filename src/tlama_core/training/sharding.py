"""Sharding a Transformer over processes on Lightning's ModelParallelStrategy: FSDP2 and tensor parallel.

`ModelParallelStrategy` builds a device mesh (data_parallel x tensor_parallel) and leaves the parallelism to the
module's `configure_model`, which calls `shard_model`. The composition is torchtitan's: tensor parallel
(Llama's plan, norms sequence-parallel), then FSDP2 per block and at the root on the data-parallel mesh.
Activation checkpointing and compiling act per block inside it (`Transformer.hidden_states`, `compile_blocks`).
A model built on the meta device is materialised shard by shard (`materialize`).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from lightning.pytorch.strategies import ModelParallelStrategy, Strategy, StrategyRegistry
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

from tlama_core.models.config import TlamaConfig
from tlama_core.models.transformer import Transformer, init_parameter, rope_table
from tlama_core.training import lightning_internals

FSDP2 = "fsdp2"


class FSDP2Strategy(ModelParallelStrategy):
    """`strategy="fsdp2"`: ModelParallelStrategy with every process on the data-parallel (FSDP2) dimension and no
    tensor parallelism, whatever the number of nodes and devices (ModelParallelStrategy's own "auto" sizes make
    the devices of a node tensor-parallel)."""

    def setup_environment(self) -> None:
        lightning_internals.set_model_parallel_sizes(self, self.num_nodes * self.num_processes, 1)
        super().setup_environment()


if FSDP2 not in StrategyRegistry:
    StrategyRegistry.register(FSDP2, FSDP2Strategy, description="FSDP2 (fully_shard) over every process")


def is_model_parallel(strategy: Any) -> bool:
    """Whether the strategy leaves the parallelism to the module's configure_model (ModelParallelStrategy)."""
    return isinstance(strategy, ModelParallelStrategy) or strategy == FSDP2


def data_parallel(strategy: Strategy, global_rank: int, world_size: int) -> tuple[int, int]:
    """(rank, size) among the processes that read distinct batches: every process, except that the processes
    of one tensor-parallel group read the same batches. Valid before the processes start (Lightning's mesh puts
    rank r at data-parallel index r // tensor_parallel_size). Sizes that do not multiply to the number of processes
    are a ValueError naming both, now rather than when the processes have started."""
    if not isinstance(strategy, ModelParallelStrategy) or isinstance(strategy, FSDP2Strategy):
        return global_rank, world_size
    dp, tp = lightning_internals.model_parallel_sizes(strategy, world_size)
    if dp * tp != world_size:
        raise ValueError(f"Trainer: strategy={type(strategy).__name__}(data_parallel_size={dp}, tensor_parallel_size="
                         f"{tp}) needs {dp * tp} processes, and devices x num_nodes gives {world_size}; make the "
                         "product of the two sizes the number of processes.")
    return global_rank // tp, dp


def shard_loaders(rank: int, size: int, *loaders: Any) -> None:
    """Make each loader that can shard itself (`TokenDataLoader.shard`) read data-parallel process `rank`'s share
    of `size`, now, before the processes start: its length is then this process's, which the step plan counts.
    (Other loaders are the user's to shard: Lightning's distributed sampler is off, as it would shard ours twice.)"""
    for loader in loaders:
        if callable(getattr(loader, "shard", None)):
            loader.shard(rank, size)


def is_sharded(model: torch.nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in model.parameters())


def shard_model(model: Transformer, mesh: Any, *, mixed_precision: bool, compile: bool = False) -> None:
    """Apply tensor parallelism on `mesh["tensor_parallel"]` (when larger than 1), compile each block (`compile`),
    then FSDP2 per block and at the root on `mesh["data_parallel"]`; `mixed_precision`: bf16 parameters in compute,
    fp32 gradient reductions. (Activation checkpointing wraps each block where the model calls it.)"""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    tp_mesh, dp_mesh = mesh["tensor_parallel"], mesh["data_parallel"]
    if tp_mesh.size() > 1:
        tensor_parallel(model, tp_mesh)
    if compile:
        compile_blocks(model)
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if mixed_precision else (
        MixedPrecisionPolicy())
    for block in model.layers:
        fully_shard(block, mesh=dp_mesh, mp_policy=policy)
    fully_shard(model, mesh=dp_mesh, mp_policy=policy)
    # The root returns its logits cut to the vocabulary (a view) where the output layer is padded; FSDP2 warns at
    # every forward that an in-place op on such a view would skip its hooks. Nothing writes to the logits in place.
    warnings.filterwarnings("ignore", message="FSDP2-wrapped module .* returned a view tensor")


def tensor_parallel(model: Transformer, tp_mesh: Any) -> None:
    """Llama's tensor-parallel plan (torchtitan's): attention q/k/v and feed-forward w1/w3 column-wise, attention
    output and w2 row-wise, the embedding row-wise and the output layer column-wise, norms sequence-parallel
    (activations between blocks sharded along the sequence). Each process then holds n_heads/tp query and
    n_kv_heads/tp key/value heads, whole, so grouped-query attention and the rotary table apply per shard."""
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        PrepareModuleInput,
        RowwiseParallel,
        SequenceParallel,
        parallelize_module,
    )

    check_tensor_parallel(model.config, tp_mesh.size())
    parallelize_module(model, tp_mesh, {
        "tok_embeddings": RowwiseParallel(input_layouts=Replicate(), output_layouts=Shard(1)),
        "norm": SequenceParallel(),
        "output": ColwiseParallel(input_layouts=Shard(1), output_layouts=Replicate()),
    })
    for block in model.layers:
        parallelize_module(block, tp_mesh, {
            "attention_norm": SequenceParallel(),
            "attention": PrepareModuleInput(input_layouts=(Shard(1), None, None),
                                            desired_input_layouts=(Replicate(), None, None)),
            "attention.wq": ColwiseParallel(), "attention.wk": ColwiseParallel(), "attention.wv": ColwiseParallel(),
            "attention.wo": RowwiseParallel(output_layouts=Shard(1)),
            "ffn_norm": SequenceParallel(),
            "feed_forward": PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),)),
            "feed_forward.w1": ColwiseParallel(), "feed_forward.w3": ColwiseParallel(),
            "feed_forward.w2": RowwiseParallel(output_layouts=Shard(1)),
        })


def share_data(strategy: Strategy, global_rank: int, world_size: int, config: TlamaConfig, *loaders: Any) -> int:
    """Give each loader this process's share of the data (`shard_loaders`), checking that the model splits over a
    tensor-parallel group; return the number of processes that read distinct batches."""
    reader, readers = data_parallel(strategy, global_rank, world_size)
    if readers != world_size:
        check_tensor_parallel(config, world_size // readers)
    if world_size > 1:
        shard_loaders(reader, readers, *loaders)
    return readers


def check_tensor_parallel(config: TlamaConfig, tp: int) -> None:
    """A model `tensor_parallel_size=tp` can split: whole heads per process, and untied embeddings."""
    problems = [f"{name}={value}" for name, value in (("n_heads", config.n_heads), ("n_kv_heads", config.n_kv_heads))
                if value % tp]
    if problems:
        raise ValueError(f"tensor_parallel_size={tp}: {' and '.join(problems)} must be multiples of it (each process "
                         "holds whole attention heads); choose a tensor_parallel_size that divides both.")
    if config.tie_embeddings:
        raise ValueError(f"tensor_parallel_size={tp} with tie_embeddings=True: tensor parallelism distributes the "
                         "embedding and the output layer as parameters of their own, which would untie them; "
                         "train untied (tie_embeddings=False) or with tensor_parallel_size=1 (FSDP2 alone).")


def compile_blocks(model: Transformer) -> None:
    """torch.compile each block in place (under FSDP2 a whole-model graph would break at every block's hooks)."""
    for block in model.layers:
        if getattr(block, "_compiled_call_impl", None) is None:
            block.compile()


def has_meta(model: torch.nn.Module) -> bool:
    return any(t.is_meta for t in (*model.parameters(), *model.buffers()))


def local_shard(full: torch.Tensor, mesh: Any, placements: tuple) -> torch.Tensor:
    """This process's part of `full` under `placements`: a view where each mesh dimension shards a tensor dimension
    of its own (as torch.chunk cuts it, DTensor's rule), else a copy by `distribute_tensor` (nested shards)."""
    sharded = [p.dim for p in placements if type(p) is Shard]
    if len(sharded) != len(set(sharded)) or not all(type(p) in (Shard, Replicate) for p in placements):
        return distribute_tensor(full, mesh, placements, src_data_rank=None).to_local()
    for size, index, placement in zip(mesh.shape, mesh.get_coordinate(), placements, strict=True):
        if isinstance(placement, Shard):
            chunks = full.chunk(size, dim=placement.dim)
            full = chunks[index] if index < len(chunks) else full.narrow(placement.dim, 0, 0)
    return full


def materialize(model: Transformer, device: torch.device) -> None:
    """Give a meta-device model (sharded or not) its memory on `device` and its initial weights.

    Each weight is drawn whole on the CPU from the random state the model recorded when it was built, as
    `Transformer(config)` draws it, and each process keeps only its shard: the same weights as a model built on
    one process, one parameter's memory at a time (never the whole model)."""
    model.to_empty(device=device)
    if not is_sharded(model):
        model.tie_weights()
    torch.set_rng_state(model.init_rng_state)
    with torch.no_grad():
        for name, p in model.named_parameters():
            full = torch.empty(p.shape, dtype=p.dtype)
            init_parameter(model.config, name, full)
            if isinstance(p, DTensor):
                p.to_local().copy_(local_shard(full, p.device_mesh, p.placements))
            else:
                p.copy_(full)
    model.rope = rope_table(model.config).to(device)
