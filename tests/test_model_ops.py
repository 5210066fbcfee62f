"""The hand-written backward passes compute what autograd computes for the textbook formulas."""

import pytest
import torch
import torch.nn.functional as F

from tlama_core.models.ops import cross_entropy, rms_norm, swiglu


def value_and_grads(fn, *inputs: torch.Tensor) -> list[torch.Tensor]:
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    out = fn(*leaves)
    out.backward(torch.randn_like(out, generator=torch.Generator().manual_seed(1)))
    return [out] + [t.grad for t in leaves if t.requires_grad]


def test_rms_norm_matches_the_textbook_formula_and_its_gradients():
    x, weight = torch.randn(3, 5, 32), torch.randn(32)

    def textbook(x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * weight

    for ours, reference in zip(value_and_grads(lambda x, w: rms_norm(x, w, 1e-5), x, weight),
                               value_and_grads(textbook, x, weight), strict=True):
        torch.testing.assert_close(ours, reference)


def test_rms_norm_without_autograd_gives_the_same_values():
    x, weight = torch.randn(2, 7, 16), torch.randn(16)
    with torch.no_grad():
        plain = rms_norm(x, weight, 1e-6)
    torch.testing.assert_close(plain, rms_norm(x, weight.requires_grad_(), 1e-6).detach())


def test_rms_norm_keeps_bfloat16_inputs_in_bfloat16():
    x = torch.randn(4, 8, dtype=torch.bfloat16, requires_grad=True)
    weight = torch.ones(8, requires_grad=True)
    out = rms_norm(x, weight, 1e-5)
    out.sum().backward()
    assert (out.dtype, x.grad.dtype, weight.grad.dtype) == (torch.bfloat16, torch.bfloat16, torch.float32)


def test_swiglu_matches_the_textbook_formula_and_its_gradients():
    gate, up = torch.randn(3, 5, 24, dtype=torch.float64), torch.randn(3, 5, 24, dtype=torch.float64)
    for ours, reference in zip(value_and_grads(swiglu, gate, up),
                               value_and_grads(lambda g, u: F.silu(g) * u, gate, up), strict=True):
        torch.testing.assert_close(ours, reference)
    torch.autograd.gradcheck(swiglu, (gate[:1, :2].requires_grad_(), up[:1, :2].requires_grad_()))


def test_swiglu_in_bfloat16_stays_bfloat16_and_close_to_fp32():
    gate, up = torch.randn(64, 48), torch.randn(64, 48)
    ours = value_and_grads(swiglu, gate.bfloat16(), up.bfloat16())
    reference = value_and_grads(lambda g, u: F.silu(g) * u, gate, up)
    assert {t.dtype for t in ours} == {torch.bfloat16}
    for a, b in zip(ours, reference, strict=True):
        torch.testing.assert_close(a.float(), b, atol=0.05, rtol=0.02)


def test_swiglu_keeps_two_activations_for_backward_where_autograd_keeps_three():
    def saved_elements(fn) -> int:
        gate, up = torch.randn(8, 16, requires_grad=True), torch.randn(8, 16, requires_grad=True)
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            fn(gate, up)
        return sum(sizes)

    assert saved_elements(swiglu) == 2 * 8 * 16
    assert saved_elements(lambda g, u: F.silu(g) * u) == 3 * 8 * 16


def test_swiglu_without_autograd_gives_the_same_values():
    gate, up = torch.randn(4, 16), torch.randn(4, 16)
    with torch.no_grad():
        plain = swiglu(gate, up)
    torch.testing.assert_close(plain, swiglu(gate.requires_grad_(), up).detach(), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cross_entropy_matches_torch_with_ignored_targets(dtype):
    logits = torch.randn(40, 30).to(dtype)
    targets = torch.randint(0, 30, (40,))
    targets[::7] = -100
    ours = value_and_grads(lambda z: cross_entropy(z, targets), logits)
    reference = value_and_grads(lambda z: F.cross_entropy(z.float(), targets), logits)
    torch.testing.assert_close(ours[0], reference[0])
    torch.testing.assert_close(ours[1].float(), reference[1].float())
    assert ours[1].dtype == dtype


def test_cross_entropy_refuses_a_second_backward_rather_than_answering_wrongly():
    logits = torch.randn(4, 6, requires_grad=True)
    loss = cross_entropy(logits, torch.tensor([0, 1, 2, 3]))
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
