"""build_optimizer and MuonAdamW: who optimises which parameter, and that the join steps and resumes like its parts."""

import copy
from functools import partial

import pytest
import torch
import trainer_utils

from tlama_core.models import Transformer
from tlama_core.training import MuonAdamW, build_optimizer, has_fast_bf16
from tlama_core.training.optim import Muon
from tlama_core.training.scheduler import StepFunctionLR

tiny_model = partial(trainer_utils.tiny_model, max_seq_len=16, multiple_of=16)


def train_steps(model: Transformer, optimizer: torch.optim.Optimizer, steps: int, seed: int = 1) -> list[float]:
    generator = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        tokens = torch.randint(0, 64, (4, 17), generator=generator)
        _, loss = model(tokens[:, :-1], targets=tokens[:, 1:])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def test_adamw_is_fused_for_cuda_runs_only():
    # Only the flag can be checked here: the fused kernel itself needs a GPU this machine does not have.
    assert build_optimizer(tiny_model(), 1e-3, 0.1, "cuda").defaults["fused"] is True
    assert not build_optimizer(tiny_model(), 1e-3, 0.1, "cpu").defaults["fused"]
    assert build_optimizer(tiny_model(), 1e-3, 0.1, "cuda", muon=True).adamw.defaults["fused"] is True


def test_muon_takes_the_block_matrices_and_adamw_the_rest():
    model = tiny_model()
    optimizer = build_optimizer(model, 1e-3, 0.5, muon=True)
    assert isinstance(optimizer, MuonAdamW)
    muon = {id(p) for g in optimizer.muon.param_groups for p in g["params"]}
    adamw = {id(p): g["weight_decay"] for g in optimizer.adamw.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        if name.startswith("layers.") and p.dim() == 2:
            assert id(p) in muon and id(p) not in adamw, name
        else:
            assert id(p) in adamw and id(p) not in muon, name
            assert adamw[id(p)] == (0.5 if p.dim() == 2 else 0.0), name
    assert optimizer.muon.param_groups[0]["weight_decay"] == 0.5
    assert optimizer.muon.param_groups[0]["adjust_lr_fn"] == "match_rms_adamw"


def test_a_step_is_the_two_torch_optimizers_stepped_by_hand():
    joined, by_hand = tiny_model(), tiny_model()
    optimizer = build_optimizer(joined, 2e-3, 0.1, muon=True)
    hidden = [p for p in by_hand.layers.parameters() if p.dim() == 2]
    muon = Muon(hidden, lr=2e-3, weight_decay=0.1, adjust_lr_fn="match_rms_adamw", ns_dtype=optimizer.muon.ns_dtype)
    rest = [p for n, p in by_hand.named_parameters() if not (n.startswith("layers.") and p.dim() == 2)]
    adamw = torch.optim.AdamW([{"params": [p for p in rest if p.dim() == 2], "weight_decay": 0.1},
                               {"params": [p for p in rest if p.dim() < 2], "weight_decay": 0.0}],
                              lr=2e-3, betas=(0.9, 0.95), eps=1e-8)

    class Both:
        def step(self):
            muon.step()
            adamw.step()

        def zero_grad(self):
            muon.zero_grad()
            adamw.zero_grad()

    assert train_steps(joined, optimizer, 3) == train_steps(by_hand, Both(), 3)
    for (name, a), b in zip(joined.named_parameters(), by_hand.parameters(), strict=True):
        assert torch.equal(a, b), name


def test_the_schedule_sets_every_group_and_muon_scales_its_own_update():
    model = tiny_model()
    optimizer = build_optimizer(model, 1.0, 0.0, muon=True)
    StepFunctionLR(optimizer, lambda step: 0.01 * (step + 1))
    assert {g["lr"] for g in optimizer.muon.param_groups + optimizer.adamw.param_groups} == {0.01}
    w1 = model.layers[0].feed_forward.w1.weight  # (ffn_hidden, d_model) = (96, 32)
    before = w1.detach().clone()
    train_steps(model, optimizer, 1)
    update_rms = (w1.detach() - before).pow(2).mean().sqrt().item()
    # match_rms_adamw: an orthogonalised update of RMS 1/sqrt(max dim), scaled by 0.2 * sqrt(max dim) * lr
    assert update_rms == pytest.approx(0.2 * 0.01, rel=0.15)


def test_state_dict_resumes_exactly_under_a_schedule():
    def run(model, optimizer, steps, seed):
        scheduler = StepFunctionLR(optimizer, lambda step: 1e-3 * (step + 1))  # a new rate every step
        losses = []
        for i in range(steps):
            losses += train_steps(model, optimizer, 1, seed=seed + i)
            scheduler.step()
        return losses

    straight = tiny_model()
    straight_opt = build_optimizer(straight, 3e-3, 0.1, muon=True)
    run(straight, straight_opt, 2, seed=1)
    resumed = copy.deepcopy(straight)
    state = copy.deepcopy(straight_opt.state_dict())
    resumed_opt = build_optimizer(resumed, 3e-3, 0.1, muon=True)
    resumed_opt.load_state_dict(state)
    assert run(straight, straight_opt, 4, seed=7) == run(resumed, resumed_opt, 4, seed=7)
    assert resumed_opt.muon.param_groups[0]["lr"] == resumed_opt.param_groups[0]["lr"] == 5e-3


def test_adamw_state_in_a_muon_run_is_refused_with_the_reason():
    model = tiny_model()
    adamw_state = build_optimizer(model, 1e-3, 0.1).state_dict()
    with pytest.raises(ValueError, match="different `muon` setting"):
        build_optimizer(model, 1e-3, 0.1, muon=True).load_state_dict(adamw_state)


def test_muon_needs_a_transformer():
    with pytest.raises(ValueError, match="muon=True needs a model with `layers`"):
        build_optimizer(torch.nn.Linear(4, 4), 1e-3, 0.1, muon=True)


def test_muon_with_fsdp_is_refused_before_anything_starts():
    from trainer_utils import ResumableLoader
    from trainer_utils import tiny_model as trainer_model

    from tlama_core.training import TlamaLightningModule, Trainer

    module = TlamaLightningModule(model=trainer_model(), muon=True)
    with pytest.raises(ValueError, match="muon=True with strategy='fsdp'"):
        Trainer(module, ResumableLoader(8, 4, 16), strategy="fsdp", verbose=False)


def test_state_reads_each_parameter_from_its_own_optimizer_without_adding_entries():
    model = tiny_model()
    optimizer = build_optimizer(model, 1e-3, 0.1, muon=True)
    train_steps(model, optimizer, 1)
    params = list(model.parameters())
    assert len(optimizer.state) == len(params) and {id(p) for p in optimizer.state} == {id(p) for p in params}
    for p, state in optimizer.state.items():  # what Lightning does when it moves optimizer state to a device
        assert ("momentum_buffer" in state) == (p.dim() == 2 and any(p is q for q in model.layers.parameters()))
    assert len(optimizer.muon.state) + len(optimizer.adamw.state) == len(params)
    optimizer.state_dict()  # packs each optimizer's own parameters only


def test_pickled_or_copied_with_its_model_it_trains_on_identically():
    import pickle

    model = tiny_model()
    optimizer = build_optimizer(model, 2e-3, 0.1, muon=True)
    train_steps(model, optimizer, 2)
    copied_model, copied_opt = copy.deepcopy((model, optimizer))
    pickled_model, pickled_opt = pickle.loads(pickle.dumps((model, optimizer)))
    expected = train_steps(model, optimizer, 2, seed=5)
    assert train_steps(copied_model, copied_opt, 2, seed=5) == expected
    assert train_steps(pickled_model, pickled_opt, 2, seed=5) == expected


def test_muon_and_an_explicit_optimizer_are_refused_together():
    from tlama_core.training import TlamaLightningModule

    model = tiny_model()
    with pytest.raises(ValueError, match="pass either muon=True or optimizer"):
        TlamaLightningModule(model=model, muon=True, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))


def test_muon_orthogonalises_in_bf16_where_it_is_fast_and_in_fp32_elsewhere():
    cpu = build_optimizer(tiny_model(), 1e-3, 0.1, "cpu", muon=True).muon.ns_dtype
    assert cpu == (torch.bfloat16 if has_fast_bf16("cpu") else torch.float32)
    assert build_optimizer(tiny_model(), 1e-3, 0.1, "cuda", muon=True).muon.ns_dtype == torch.bfloat16


def _muon_by_hand(weight, grads, lr, weight_decay, momentum=0.95):
    """Muon's update written out in float64 (Keller Jordan's algorithm as torch documents it)."""
    weight, buffer = weight.double().clone(), torch.zeros_like(weight, dtype=torch.float64)
    for grad in grads:
        grad = grad.double()
        buffer = momentum * buffer + (1 - momentum) * grad
        x = (1 - momentum) * grad + momentum * buffer  # nesterov: grad.lerp(buffer, momentum)
        x = x.T if x.shape[0] > x.shape[1] else x
        x = x / x.norm()
        for _ in range(5):
            gram = x @ x.T
            x = 3.4445 * x + (-4.7750 * gram + 2.0315 * gram @ gram) @ x
        x = x.T if grad.shape[0] > grad.shape[1] else x
        weight = weight * (1 - lr * weight_decay) - lr * 0.2 * max(weight.shape) ** 0.5 * x
    return weight


@pytest.mark.parametrize("shape", [(48, 16), (16, 48)])
def test_muon_in_fp32_follows_the_algorithm_and_torchs_bf16_muon(shape):
    torch.manual_seed(0)
    start, grads = torch.randn(shape), [torch.randn(shape) for _ in range(3)]
    ours, torchs = torch.nn.Parameter(start.clone()), torch.nn.Parameter(start.clone())
    fp32 = Muon([ours], lr=0.01, weight_decay=0.1, adjust_lr_fn="match_rms_adamw", ns_dtype=torch.float32)
    bf16 = torch.optim.Muon([torchs], lr=0.01, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    for grad in grads:
        ours.grad, torchs.grad = grad.clone(), grad.clone()
        fp32.step()
        bf16.step()
    expected = _muon_by_hand(start, grads, 0.01, 0.1)
    assert torch.allclose(ours.double(), expected, rtol=0, atol=1e-5)
    assert not torch.allclose(torchs.double(), expected, rtol=0, atol=1e-5)  # bf16 rounding: the test can tell
    assert torch.allclose(ours, torchs, rtol=0, atol=2e-2 * 0.01 * 0.2 * max(shape) ** 0.5 * 3)


def test_muon_keeps_its_orthogonalisation_dtype_through_a_state_dict_and_a_pickle():
    model = tiny_model()
    optimizer = build_optimizer(model, 1e-3, 0.1, muon=True)
    optimizer.muon.ns_dtype = torch.float32
    train_steps(model, optimizer, 1)
    state = optimizer.state_dict()
    optimizer.load_state_dict(state)
    assert optimizer.muon.ns_dtype == torch.float32
    assert copy.deepcopy(optimizer).muon.ns_dtype == torch.float32
