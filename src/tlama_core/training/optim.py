"""The optimizers a run can use: AdamW, or Muon for the blocks' weight matrices with AdamW for the rest."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from tlama_core.training.lightning.precision import has_fast_bf16


def _strategy_name(strategy: Any) -> str:
    return strategy if isinstance(strategy, str) else type(strategy).__name__


def shards_parameters(strategy: Any) -> bool:
    """FSDP-like strategies (and DeepSpeed) wrap and shard the parameters at setup: an optimizer must be built
    after that, and Muon, which orthogonalises whole matrices, cannot work on the shards."""
    return any(kind in _strategy_name(strategy).lower() for kind in ("fsdp", "modelparallel", "deepspeed"))


def check_muon_strategy(strategy: Any) -> None:
    """Refuse Muon under a strategy that shards the parameters, naming it."""
    if shards_parameters(strategy):
        raise ValueError(f"muon=True with strategy={_strategy_name(strategy)!r}: Muon orthogonalises whole weight "
                         f"matrices and this strategy shards them. Use AdamW (muon=False; in tlama fit: "
                         f"--model.muon false) or a DDP strategy.")


def build_optimizer(model: torch.nn.Module, learning_rate: float, weight_decay: float,
                    device_type: str = "cpu", muon: bool = False) -> torch.optim.Optimizer:
    """AdamW with weight decay on the 2-D weight matrices only (norms and biases decay 0), fused on CUDA.

    With `muon`, the 2-D weights of `model.layers` (attention and feed-forward matrices) move to Muon: see
    `MuonAdamW`. Embeddings, the output layer and norms stay with AdamW, as Muon's authors prescribe. Muon
    orthogonalises in bf16 where the device computes it fast (as torch's Muon does), in fp32 elsewhere.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    hidden: list[torch.nn.Parameter] = []
    if muon:
        if not isinstance(getattr(model, "layers", None), torch.nn.Module):
            raise ValueError(f"build_optimizer: muon=True needs a model with `layers` (a Transformer); got "
                             f"{type(model).__name__}. Pass muon=False for AdamW on every parameter.")
        hidden = [p for p in model.layers.parameters() if p.requires_grad and p.dim() == 2]
    in_muon = {id(p) for p in hidden}
    groups = [
        {"params": [p for p in params if p.dim() >= 2 and id(p) not in in_muon], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    adamw = torch.optim.AdamW([g for g in groups if g["params"]], lr=learning_rate, betas=(0.9, 0.95), eps=1e-8,
                              fused=device_type == "cuda" or None)
    if not hidden:
        return adamw
    ns_dtype = torch.bfloat16 if has_fast_bf16(device_type) else torch.float32
    return MuonAdamW(Muon(hidden, lr=learning_rate, weight_decay=weight_decay, adjust_lr_fn="match_rms_adamw",
                          ns_dtype=ns_dtype), adamw)


def orthogonalise(update: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """Muon's quintic Newton-Schulz iteration (torch's `_zeropower_via_newtonschulz`) computed in `dtype`."""
    a, b, c = coefficients
    x = update.to(dtype)
    wide = x.size(0) > x.size(1)
    if wide:
        x = x.T
    x = x / x.norm().clamp(min=eps)
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if wide else x


class Muon(torch.optim.Muon):
    """torch's Muon with the orthogonalisation in `ns_dtype`: torch's casts every update to bf16, which a CPU
    without bf16 matrix units (AMX, AVX512-BF16) emulates about 30x slower than fp32 (bench/muon_cpu.py)."""

    def __init__(self, params: Any, *, ns_dtype: torch.dtype = torch.bfloat16, **kwargs: Any) -> None:
        super().__init__(params, **kwargs)
        self.ns_dtype = ns_dtype

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "ns_dtype": self.ns_dtype}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Unpickling brings ns_dtype; torch's load_state_dict also calls this, without it, on a built optimizer.
        if "ns_dtype" in state:
            self.ns_dtype = state.pop("ns_dtype")
        super().__setstate__(state)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        if self.ns_dtype == torch.bfloat16:
            return super().step(closure)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:  # not setdefault: that would allocate a zero tensor every step
                    state["momentum_buffer"] = torch.zeros_like(p.grad)
                buffer = state["momentum_buffer"]
                buffer.lerp_(p.grad, 1 - momentum)
                update = p.grad.lerp(buffer, momentum) if group["nesterov"] else buffer
                update = orthogonalise(update, group["ns_coefficients"], group["ns_steps"], group["eps"],
                                       self.ns_dtype)
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update.to(p.dtype), alpha=-_adjusted_lr(lr, group["adjust_lr_fn"], p.shape))
        return loss


def _adjusted_lr(lr: float, adjust_lr_fn: str | None, shape: torch.Size) -> float:
    """torch's Muon learning-rate scaling by the matrix's shape (`original` or `match_rms_adamw`)."""
    rows, cols = shape[:2]
    if adjust_lr_fn == "match_rms_adamw":
        return lr * 0.2 * math.sqrt(max(rows, cols))
    return lr * math.sqrt(max(1, rows / cols))


def keyed_by_name(state_dict: dict[str, Any]) -> bool:
    """Whether an optimizer state dict names its parameters (torch.distributed.checkpoint's form, which sharded runs
    save) rather than numbering them (torch's `Optimizer.state_dict`)."""
    groups = state_dict.get("param_groups") or [{}]
    return any(isinstance(p, str) for g in groups for p in g.get("params", []))


def by_name(state_dict: dict[str, Any], module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """`optimizer.state_dict()` (numbered) with each parameter named as `module.named_parameters()` names it: the
    form sharded runs save, so that one checkpoint resumes on any number of processes, sharded or not (Lightning
    numbers parameters in module order when it names them, which is not the order of our optimizer's groups)."""
    name_of = {id(p): name.replace("_orig_mod.", "") for name, p in module.named_parameters()}
    names = [name_of[id(p)] for g in optimizer.param_groups for p in g["params"]]
    return {"state": {names[i]: value for i, value in state_dict["state"].items()},
            "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in state_dict["param_groups"]]}


def by_index(state_dict: dict[str, Any], module: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """A state dict keyed by parameter names (as `module.named_parameters()` names them) in the numbered form
    `optimizer.load_state_dict` takes, numbered in the order of `optimizer`'s groups."""
    name_of = {id(p): name.replace("_orig_mod.", "") for name, p in module.named_parameters()}
    order = {name_of[id(p)]: i for i, p in enumerate(p for g in optimizer.param_groups for p in g["params"])}
    unknown = sorted(set(state_dict["state"]) - set(order))
    if unknown:
        raise ValueError(f"the checkpoint's optimizer state names parameters this model lacks: {unknown[:5]}.")
    return {"state": {order[name]: value for name, value in state_dict["state"].items()},
            "param_groups": [{**g, "params": [order[name] for name in g["params"]]}
                             for g in state_dict["param_groups"]]}


class MuonAdamW(torch.optim.Optimizer):
    """torch's Muon and AdamW stepped as one optimizer, so Lightning's automatic optimisation can drive both.

    Lightning takes one optimizer per module unless the module optimises by hand, and torch ships no combined
    one; this class is only the join. `param_groups` are both optimizers' own group dicts, so the step -> lr
    schedule sets every rate; Muon's `match_rms_adamw` scaling makes one learning rate and one weight decay
    right for both. `state_dict` nests the two optimizers' own state dicts.
    """

    def __init__(self, muon: torch.optim.Muon, adamw: torch.optim.AdamW) -> None:
        self.muon, self.adamw = muon, adamw
        super().__init__([p for g in muon.param_groups + adamw.param_groups for p in g["params"]], {})
        self._share_groups_and_state()

    def _share_groups_and_state(self) -> None:
        # The two optimizers' own group dicts (a scheduler's lr must reach them); their load_state_dict
        # replaces the dicts, so this runs again after loading.
        self.param_groups = [*self.muon.param_groups, *self.adamw.param_groups]
        self.state = _JoinedState(self.muon, self.adamw)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.muon.step()
        self.adamw.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.muon.zero_grad(set_to_none)
        self.adamw.zero_grad(set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"muon": self.muon.state_dict(), "adamw": self.adamw.state_dict()}

    @staticmethod
    def saved_this(state_dict: dict[str, Any]) -> bool:
        """Whether an optimizer state dict is a MuonAdamW's (rather than a plain AdamW's)."""
        return set(state_dict) == {"muon", "adamw"}

    def __getstate__(self) -> dict[str, Any]:
        # torch's Optimizer pickles defaults, state and param_groups only: the two optimizers are the state here
        # (a spawned DDP process or a deep copy of the module gets them whole).
        return {"muon": self.muon, "adamw": self.adamw}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["muon"], state["adamw"])

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not self.saved_this(state_dict):
            raise ValueError(f"MuonAdamW.load_state_dict: expected the keys 'muon' and 'adamw', got "
                             f"{sorted(state_dict)}: this optimizer state was saved by another optimizer "
                             f"(was the run started with a different `muon` setting?).")
        self.muon.load_state_dict(state_dict["muon"])
        self.adamw.load_state_dict(state_dict["adamw"])
        self._share_groups_and_state()


class _JoinedState(Mapping[torch.Tensor, Any]):
    """Each parameter's state, read from the optimizer that owns it.

    Not a ChainMap: torch keeps state in defaultdicts, and a ChainMap lookup would create an empty entry in the
    first optimizer for every parameter of the second.
    """

    def __init__(self, *optimizers: torch.optim.Optimizer) -> None:
        self.optimizers = optimizers

    def __getitem__(self, param: torch.Tensor) -> Any:
        for optimizer in self.optimizers:
            if param in optimizer.state:
                return optimizer.state[param]
        raise KeyError(param)

    def __iter__(self) -> Iterator[torch.Tensor]:
        return (param for optimizer in self.optimizers for param in optimizer.state)

    def __len__(self) -> int:
        return sum(len(optimizer.state) for optimizer in self.optimizers)
