"""RMSNorm, SwiGLU and cross-entropy with hand-written backward passes: fewer full-size temporaries than autograd's.

Each computes exactly what its textbook form computes (tests compare them with autograd's), with fewer passes
over memory or fewer buffers. They are a small model's largest non-matmul costs, and on a CPU every new
full-size temporary also costs a round of page faults.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class RMSNormFunction(torch.autograd.Function):
    """y = x / sqrt(mean(x^2) + eps) * weight over the last dim, in fp32; the result has x's dtype."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        xf = x.float()
        mean_square = torch.linalg.vector_norm(xf, dim=-1, keepdim=True).square_().div_(x.size(-1))  # (..., 1)
        rstd = torch.rsqrt(mean_square.add_(eps))
        ctx.save_for_backward(x, rstd, weight)
        return (xf * rstd).mul_(weight).type_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        x, rstd, weight = ctx.saved_tensors
        normed = x.float() * rstd  # recomputed rather than stored: one activation less to keep
        grad = grad.float()
        grad_weight = (grad * normed).flatten(0, -2).sum(0)  # (C,)
        grad_normed = grad * weight
        # d/dx of x * rstd(x): rstd * (g - normed * mean(g * normed))
        mean_dot = torch.linalg.vecdot(grad_normed, normed, dim=-1).unsqueeze(-1).div_(x.size(-1))  # (..., 1)
        grad_x = torch.addcmul(grad_normed, normed, mean_dot, value=-1).mul_(rstd)
        return grad_x.type_as(x), grad_weight.type_as(weight), None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm of x (..., C) with a (C,) weight, normalised in fp32 (Meta's and Hugging Face's Llama do too)."""
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return RMSNormFunction.apply(x, weight, eps)
    # Nothing to differentiate (generation): PyTorch's kernel, without the autograd.Function's call overhead.
    return F.rms_norm(x.float(), (x.size(-1),), eps=eps).mul_(weight).type_as(x)


class SwiGLUFunction(torch.autograd.Function):
    """silu(gate) * up. Autograd keeps silu(gate) as a third activation and allocates three buffers in the
    backward pass; this keeps only gate and up, recomputes silu(gate), and allocates two."""

    @staticmethod
    def forward(ctx, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gate, up)
        return F.silu(gate).mul_(up)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate, up = ctx.saved_tensors
        grad_up = F.silu(gate).mul_(grad)
        grad_gate = grad * up
        torch.ops.aten.silu_backward.grad_input(grad_gate, gate, grad_input=grad_gate)  # * silu'(gate), in place
        return grad_gate, grad_up


def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """`F.silu(gate) * up` (SwiGLU's gating), keeping two activations for the backward pass instead of three.

    A third less feed-forward activation memory, at the step time of autograd's form."""
    if torch.is_grad_enabled() and (gate.requires_grad or up.requires_grad):
        return SwiGLUFunction.apply(gate, up)
    return F.silu(gate).mul_(up)


class CrossEntropyFunction(torch.autograd.Function):
    """Mean cross-entropy of logits (N, V) for targets (N,), computed in fp32; targets of -100 are skipped."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logp = torch.log_softmax(logits.float(), dim=-1)  # (N, V)
        kept = targets != -100
        index = targets.clamp(min=0)[:, None]  # (N, 1): skipped rows point anywhere, their weight is 0
        count = kept.sum()
        ctx.save_for_backward(logp, index, kept, count)
        ctx.logits_dtype = logits.dtype
        return -(logp.gather(1, index).squeeze(1) * kept).sum() / count

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        logp, index, kept, count = ctx.saved_tensors  # a second backward fails here: logp is changed below
        grad_logits = logp.exp_()  # softmax (N, V), in place of the log-probabilities
        grad_logits.scatter_add_(1, index, torch.full_like(index, -1, dtype=grad_logits.dtype))  # minus one-hot
        grad_logits.mul_((kept * (grad / count))[:, None])
        return grad_logits.to(ctx.logits_dtype), None


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """`F.cross_entropy(logits.float(), targets)` (mean, ignore_index=-100) whose backward reuses its buffer.

    F.cross_entropy allocates two more (N, V) buffers in its backward: a small model's largest tensors.
    """
    return CrossEntropyFunction.apply(logits, targets)
