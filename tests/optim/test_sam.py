"""SAM behaviour: rho = 0 identity, checkpoints, storage, BatchNorm, zero grads, AMP, errors."""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from mup2 import SAM, Parametrization, attach_lr_multipliers, frozen_bn_stats
from mup2.optim.sam import owns_storage

from nets import ConvNet, mlp


def data(n: int = 16, d: int = 12, classes: int = 5, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, classes, (n,), generator=g)


def closure_for(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    x: Tensor,
    y: Tensor,
    calls: list[int] | None = None,
) -> Callable[[], Tensor]:
    def closure() -> Tensor:
        if calls is not None:
            calls.append(1)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        return loss

    return closure


def mup_model(width: int = 32, norm: bool = True) -> tuple[nn.Module, Parametrization]:
    model = mlp(width, norm=norm)
    p = Parametrization.infer(model, mlp(8, norm=norm), "mup-adam")
    p.init_(model, seed=0)
    return model, p


BASES: dict[str, tuple[type[torch.optim.Optimizer], dict[str, Any]]] = {
    "sgd": (torch.optim.SGD, {"momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}),
    "adamw": (torch.optim.AdamW, {"weight_decay": 1e-2}),
}


@pytest.mark.parametrize("base", list(BASES))
def test_rho_zero_is_exactly_the_base_optimizer(base: str) -> None:
    cls, kw = BASES[base]
    model, p = mup_model()
    twin = copy.deepcopy(model)
    sam = SAM(p.param_groups(model, lr=0.05), cls, rho=0.0, **kw)
    plain = attach_lr_multipliers(cls(p.param_groups(twin, lr=0.05), **kw))
    calls: list[int] = []
    for step in range(5):
        x, y = data(seed=step)
        loss = sam.step(closure_for(model, sam, x, y, calls))
        loss2 = plain.step(closure_for(twin, plain, x, y))
        assert loss is not None and loss2 is not None and torch.equal(loss, loss2)
    assert len(calls) == 5  # one pass per step: nothing to perturb
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("base", list(BASES))
@pytest.mark.parametrize("rule", ["sam", "asam"])
def test_state_dict_round_trip_resumes_bit_identically(base: str, rule: str) -> None:
    cls, kw = BASES[base]

    def make() -> tuple[nn.Module, SAM]:
        model, p = mup_model()
        return model, SAM(p.param_groups(model, lr=0.02), cls, rho=0.1, rule=rule, **kw)

    model, opt = make()
    for step in range(3):
        opt.step(closure_for(model, opt, *data(seed=step)))
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    sd = opt.state_dict()
    assert sd["base_optimizer"]["state"], "the base optimizer's state (momenta/moments) is saved"
    for step in range(3, 6):
        opt.step(closure_for(model, opt, *data(seed=step)))

    buf.seek(0)
    ckpt = torch.load(buf)
    model2, opt2 = make()
    model2.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    assert opt2.param_groups is opt2.base_optimizer.param_groups
    for step in range(3, 6):
        opt2.step(closure_for(model2, opt2, *data(seed=step)))
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_load_rejects_a_foreign_state_dict() -> None:
    model, p = mup_model()
    opt = SAM(p.param_groups(model, lr=0.1))
    with pytest.raises(ValueError, match="lacks 'base_optimizer'"):
        opt.load_state_dict(torch.optim.SGD(model.parameters(), lr=0.1).state_dict())


@pytest.mark.parametrize("restore", ["subtract", "copy"])
def test_parameter_storage_is_stable(restore: str) -> None:
    model, p = mup_model()
    opt = SAM(p.param_groups(model, lr=0.1), torch.optim.SGD, restore=restore, momentum=0.9)  # type: ignore[arg-type]
    ptrs = [q.data_ptr() for q in model.parameters()]
    opt.step(closure_for(model, opt, *data()))
    bufs = {id(k): v.data_ptr() for k, v in opt._buffers.items()}
    for step in range(1, 4):
        opt.step(closure_for(model, opt, *data(seed=step)))
    assert [q.data_ptr() for q in model.parameters()] == ptrs
    assert {id(k): v.data_ptr() for k, v in opt._buffers.items()} == bufs
    n_param = sum(q.numel() for q in model.parameters())
    assert sum(v.numel() for v in opt._buffers.values()) == n_param  # one parameter-sized buffer


@pytest.mark.parametrize("base", list(BASES))
@pytest.mark.parametrize("rule", ["sam", "asam"])
def test_swap_restore_equals_copy_and_alternates_two_storages(base: str, rule: str) -> None:
    cls, kw = BASES[base]
    runs = []
    for restore in ("copy", "swap"):
        model, p = mup_model()
        opt = SAM(p.param_groups(model, lr=0.05), cls, rho=0.1, rule=rule, restore=restore, **kw)  # type: ignore[arg-type]
        ptrs = [[q.data_ptr() for q in model.parameters()]]
        for step in range(4):
            opt.step(closure_for(model, opt, *data(seed=step)))
            ptrs.append([q.data_ptr() for q in model.parameters()])
        runs.append(([q.detach().clone() for q in model.parameters()], ptrs, opt))
    (copied, _, _), (swapped, ptrs, opt) = runs
    assert all(torch.equal(a, b) for a, b in zip(copied, swapped, strict=True))  # bit for bit
    bufs = {b.data_ptr() for b in opt._buffers.values()}  # in plan order, not the model's
    assert ptrs[0] == ptrs[2] == ptrs[4] and ptrs[1] == ptrs[3] and set(ptrs[1]) == bufs
    assert all(a != b for a, b in zip(ptrs[0], ptrs[1], strict=True))
    n_param = sum(q.numel() for q in copied)
    assert sum(v.numel() for v in opt._buffers.values()) == n_param  # one parameter-sized buffer


def test_swap_restore_copies_views_and_shared_storage() -> None:
    """Parameters that are views into one flat buffer (as flat-parameter wrappers make them) or
    share storage must keep it: the swap falls back to the copy there."""
    runs = []
    for restore in ("copy", "swap"):
        model, p = mup_model()
        flat = torch.cat([q.detach().reshape(-1) for q in model.parameters()])
        offset = 0
        for q in model.parameters():
            q.data = flat[offset : offset + q.numel()].view_as(q)
            offset += q.numel()
        opt = SAM(p.param_groups(model, lr=0.05), torch.optim.SGD, restore=restore)  # type: ignore[arg-type]
        for step in range(3):
            opt.step(closure_for(model, opt, *data(seed=step)))
        assert all(q.untyped_storage().data_ptr() == flat.data_ptr() for q in model.parameters())
        assert not opt.perturbation_plan().swappable
        runs.append(flat)
    assert torch.equal(runs[0], runs[1])
    a, b = torch.zeros(3, requires_grad=True), torch.zeros(3, requires_grad=True)
    assert owns_storage([a, b]) and not owns_storage([a, a]) and not owns_storage([a[1:]])
    b.data = a.data
    assert not owns_storage([a, b])  # two parameters on one storage


def test_swap_restore_under_torch_compile_matches_copy_without_recompiling() -> None:
    """A compiled model reads its parameters as graph inputs: moving storage recompiles nothing."""
    from torch._dynamo.utils import counters

    runs = []
    for restore in ("copy", "swap"):
        torch._dynamo.reset()
        counters.clear()
        model, p = mup_model()
        compiled = torch.compile(model, backend="aot_eager")  # forward and backward graphs
        opt = SAM(p.param_groups(model, lr=0.05), torch.optim.SGD, rho=0.1, restore=restore)  # type: ignore[arg-type]
        for step in range(4):
            opt.step(closure_for(compiled, opt, *data(seed=step)))  # type: ignore[arg-type]
        assert counters["stats"]["unique_graphs"] == 1
        runs.append([q.detach().clone() for q in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


def _bn_buffers(model: nn.Module) -> dict[str, Tensor]:
    return {
        k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k
    }


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchnorm_statistics_come_from_the_first_pass_only(momentum: float | None) -> None:
    torch.manual_seed(0)
    model = ConvNet(8)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = momentum
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 10, (6,))
    reference = copy.deepcopy(model)
    reference(x)  # one forward at the unperturbed weights
    expected = _bn_buffers(reference)
    opt = SAM(model.parameters(), lr=0.1, rho=0.5, scaling="naive", model=model)
    opt.step(closure_for(model, opt, x, y))
    got = _bn_buffers(model)
    assert got.keys() == expected.keys() and int(got["bn0.num_batches_tracked"]) == 1
    for k in expected:
        assert torch.equal(got[k], expected[k]), k


def test_batchnorm_helper_in_the_two_step_api() -> None:
    torch.manual_seed(0)
    model = ConvNet(8)
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 10, (6,))
    reference = copy.deepcopy(model)
    reference(x)
    opt = SAM(model.parameters(), lr=0.1, rho=0.5)
    nn.functional.cross_entropy(model(x), y).backward()
    opt.first_step(zero_grad=True)
    with frozen_bn_stats(model):
        nn.functional.cross_entropy(model(x), y).backward()
    opt.second_step(zero_grad=True)
    for k, v in _bn_buffers(reference).items():
        assert torch.equal(_bn_buffers(model)[k], v), k
    assert all(m.track_running_stats for m in model.modules() if isinstance(m, nn.BatchNorm2d))


@pytest.mark.parametrize("rule", ["sam", "asam", "asam-layerwise"])
def test_all_zero_gradients_give_no_nan_and_no_move(rule: str) -> None:
    model, p = mup_model()
    opt = SAM(p.param_groups(model, lr=0.1), rho=0.1, rule=rule)
    before = [q.detach().clone() for q in model.parameters()]
    for q in model.parameters():
        q.grad = torch.zeros_like(q)
    opt.first_step()
    for q, q0 in zip(model.parameters(), before, strict=True):
        assert torch.equal(q, q0)
    opt.second_step()
    assert all(torch.isfinite(q).all() for q in model.parameters())


def test_absent_gradients_are_skipped_and_only_perturbed_tensors_restored() -> None:
    model, p = mup_model()
    opt = SAM(p.param_groups(model, lr=0.0), rho=0.1)  # lr 0: only the perturbation moves w
    opt.second_step()  # no grads at all: no exception
    frozen = model[0].weight
    x, y = data()
    nn.functional.cross_entropy(model(x), y).backward()
    frozen.grad = None
    before = {id(q): q.detach().clone() for q in model.parameters()}
    opt.first_step()
    assert torch.equal(frozen, before[id(frozen)])
    assert not torch.equal(model[2].weight, before[id(model[2].weight)])
    with torch.no_grad():
        frozen.add_(1.0)  # a change the restore must not undo: frozen was not perturbed
    opt.second_step()
    assert torch.equal(frozen, before[id(frozen)] + 1.0)
    assert torch.allclose(model[2].weight, before[id(model[2].weight)], atol=1e-7, rtol=0)


def test_first_step_twice_is_an_error() -> None:
    model, p = mup_model()
    opt = SAM(p.param_groups(model, lr=0.1))
    nn.functional.cross_entropy(model(data()[0]), data()[1]).backward()
    opt.first_step()
    with pytest.raises(RuntimeError, match="without second_step"):
        opt.first_step()


def test_closure_loss_is_taken_at_the_unperturbed_point() -> None:
    model, p = mup_model()
    opt = SAM(p.param_groups(model, lr=0.0), rho=0.5)
    x, y = data()
    with torch.no_grad():
        expected = nn.functional.cross_entropy(model(x), y)
    calls: list[int] = []
    loss = opt.step(closure_for(model, opt, x, y, calls))
    assert loss is not None and torch.equal(loss.detach(), expected) and len(calls) == 2


def test_constructor_errors() -> None:
    model, p = mup_model(norm=False)
    with pytest.raises(ValueError, match="no param group has norm=True"):
        SAM(p.param_groups(model), rule="sam-on")
    with pytest.raises(ValueError, match="unknown SAM rule 'gsam'"):
        SAM(model.parameters(), rule="gsam")
    with pytest.raises(ValueError, match="unknown perturbation scaling 'layerwise'"):
        SAM(model.parameters(), scaling="layerwise")
    with pytest.raises(ValueError, match="defined only for rules 'sam' and 'sam-on'"):
        SAM(model.parameters(), rule="asam", scaling="mup2-coupled")
    with pytest.raises(ValueError, match="rho must be >= 0"):
        SAM(model.parameters(), rho=-0.1)
    with pytest.raises(ValueError, match=r"one of \['copy', 'swap', 'subtract'\], not 'move'"):
        SAM(model.parameters(), restore="move")  # type: ignore[arg-type]


def test_scheduler_on_sam_sees_base_lrs_and_does_not_warn() -> None:
    model, p = mup_model()
    opt = SAM(p.param_groups(model, lr=0.1), torch.optim.SGD, rho=0.05)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for step in range(3):
            x, y = data(seed=step)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.first_step(zero_grad=True)
            nn.functional.cross_entropy(model(x), y).backward()
            opt.second_step(zero_grad=True)
            sched.step()
    assert {g["lr"] for g in opt.param_groups} == {0.1 * 0.5**3}


@pytest.mark.parametrize("restore", ["copy", "swap"])
def test_bf16_parameters_are_restored_exactly(restore: str) -> None:
    model = mlp(16).to(torch.bfloat16)
    opt = SAM(model.parameters(), lr=0.1, restore=restore)  # type: ignore[arg-type]
    x, y = data()
    nn.functional.cross_entropy(model(x.bfloat16()), y).backward()
    before = [q.detach().clone() for q in model.parameters()]
    opt.first_step()
    opt.unperturb()
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before, strict=True))


def _amp_run(scaler: torch.amp.GradScaler | None, steps: int = 3) -> list[Tensor]:
    model, p = mup_model()
    opt = SAM(p.param_groups(model, lr=0.05), torch.optim.SGD, rho=0.1, restore="copy")
    for step in range(steps):
        x, y = data(seed=step)
        loss = nn.functional.cross_entropy(model(x), y)
        (scaler.scale(loss) if scaler else loss).backward()
        opt.first_step(zero_grad=True)  # scaled grads: the scale cancels in g/||g||
        loss = nn.functional.cross_entropy(model(x), y)
        (scaler.scale(loss) if scaler else loss).backward()
        opt.second_step(zero_grad=True, scaler=scaler)  # unscales once, skips non-finite steps
        if scaler:
            scaler.update()
    return [q.detach().clone() for q in model.parameters()]


def test_grad_scaler_recipe_matches_the_unscaled_run() -> None:
    scaled = _amp_run(torch.amp.GradScaler("cpu", init_scale=2.0**12))
    plain = _amp_run(None)
    for a, b in zip(scaled, plain, strict=True):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("restore", ["copy", "swap"])
def test_grad_scaler_overflow_in_the_first_pass_leaves_weights_intact(restore: str) -> None:
    model, p = mup_model()
    opt = SAM(p.param_groups(model, lr=0.05), torch.optim.SGD, rho=0.1, restore=restore)  # type: ignore[arg-type]
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    x, y = data()
    before = [q.detach().clone() for q in model.parameters()]
    scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
    model[0].weight.grad[0, 0] = float("inf")  # an overflowed scaled gradient
    opt.first_step(zero_grad=True)
    scaler.scale(nn.functional.cross_entropy(model(x), y)).backward()
    opt.second_step(zero_grad=True, scaler=scaler)
    scaler.update()
    assert scaler.get_scale() < 2.0**12  # the step was skipped and the scale backed off
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), before, strict=True))


def test_rule_scaling_and_eta_are_group_hyperparameters_saved_with_the_state() -> None:
    model, p = mup_model()
    groups = p.param_groups(model, lr=0.1)
    groups[0].update(rule="asam", eta=0.2)
    groups[1].update(scaling="global")
    opt = SAM(groups, torch.optim.SGD, rho=0.1, rule="sam", scaling="mup2", eta=0.01)
    assert opt.defaults["rule"] == "sam" and opt.defaults["eta"] == 0.01
    assert [g["rule"] for g in opt.param_groups][:2] == ["asam", "sam"]
    assert opt.param_groups[0]["eta"] == 0.2 and opt.param_groups[1]["scaling"] == "global"
    x, y = data()
    opt.step(closure_for(model, opt, x, y))
    sd = io.BytesIO()
    torch.save(opt.state_dict(), sd)
    twin = copy.deepcopy(model)
    plain = SAM(p.param_groups(twin, lr=0.1), torch.optim.SGD, rho=0.1)  # every group: defaults
    sd.seek(0)
    plain.load_state_dict(torch.load(sd, weights_only=False))
    for key in ("rule", "scaling", "eta", "rho"):
        assert [g[key] for g in plain.param_groups] == [g[key] for g in opt.param_groups], key
    opt.step(closure_for(model, opt, x, y))
    plain.step(closure_for(twin, plain, x, y))
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)


def test_step_needs_a_closure_unless_first_step_came_first() -> None:
    model, p = mup_model()
    opt = SAM(p.param_groups(model, lr=0.1), torch.optim.SGD, rho=0.1)
    x, y = data()
    with pytest.raises(RuntimeError, match=r"SAM\.step\(\) needs a closure"):
        opt.step()
    twin = copy.deepcopy(model)
    ref = SAM(p.param_groups(twin, lr=0.1), torch.optim.SGD, rho=0.1)
    ref.step(closure_for(twin, ref, x, y))
    closure_for(model, opt, x, y)()
    opt.first_step(zero_grad=True)
    closure_for(model, opt, x, y)()
    assert opt.step() is None  # the second step: restore, then the base step
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(a, b)
    with pytest.raises(RuntimeError, match="needs a closure"):
        opt.step()  # the pending second step was taken


def test_rules_are_checked_when_the_optimizer_is_built() -> None:
    model, p = mup_model()
    with pytest.raises(
        ValueError, match=r"LightSAM's: use mup2.LightSAM\(params, variant='adam'\)"
    ):
        SAM(model.parameters(), rule="lightsam-adam")
    groups = p.param_groups(model, lr=0.1)
    groups[0]["scaling"] = "mup2-coupled"
    with pytest.raises(ValueError, match="defined only for rules 'sam' and 'sam-on'"):
        SAM(groups, rule="asam")
    with pytest.raises(ValueError, match=r"param group 1: LightSAM takes the rules \['lightsam"):
        mup2_lightsam(p.param_groups(model, lr=1e-3), rule="sam")
    with pytest.raises(ValueError, match="param group 1: rule 'lightsam-adagrad' in a LightSAM"):
        mup2_lightsam(p.param_groups(model, lr=1e-3), rule="lightsam-adagrad")
    opt = SAM(p.param_groups(model, lr=0.1), rho=0.1)
    n = len(opt.param_groups)
    with pytest.raises(ValueError, match="unknown SAM rule 'gsam'"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(3))], "rule": "gsam"})
    assert len(opt.param_groups) == n == len(opt.base_optimizer.param_groups)


def mup2_lightsam(groups: list[dict[str, Any]], rule: str) -> SAM:
    from mup2 import LightSAM

    groups[1]["rule"] = rule
    return LightSAM(groups, "adam", lr=1e-3, rho=0.01)
