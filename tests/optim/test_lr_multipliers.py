"""``mup2.optim.lr_multipliers``: each group's ``lr_mult`` applied only during ``step``.

The values are dyadic (LR, multipliers, parameters and gradients are small multiples of powers of
two), so every product is exact and "moves by lr * lr_mult * grad" is checked with equality.
"""

from __future__ import annotations

import pytest
import torch

from mup2.optim.lr_multipliers import attach_lr_multipliers, multiplied_lrs

LR = 0.25
MULTS = [2.0, 0.5, 1.0, None]  # None: a group without lr_mult (x1)


def _dyadic(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(-64, 64, shape, generator=gen).double() / 64


def _sgd(momentum: float = 0.0) -> tuple[torch.optim.SGD, list[torch.nn.Parameter]]:
    params = [torch.nn.Parameter(_dyadic((3, 2), i)) for i in range(len(MULTS))]
    groups = [
        {"params": [p]} | ({} if m is None else {"lr_mult": m}) for p, m in zip(params, MULTS)
    ]
    return torch.optim.SGD(groups, lr=LR, momentum=momentum), params


def _lrs(opt: torch.optim.Optimizer) -> list[float]:
    return [g["lr"] for g in opt.param_groups]


def test_multiplied_lrs_inside_the_block_and_restored_after() -> None:
    opt, _ = _sgd()
    opt.param_groups[2]["lr"] = 0.1  # a group with its own (non-dyadic) base LR
    base = _lrs(opt)
    with multiplied_lrs(opt):
        assert _lrs(opt) == [LR * 2.0, LR * 0.5, 0.1, LR]
    assert _lrs(opt) == base
    assert all(type(lr) is float for lr in _lrs(opt))
    # an LR that does not survive a multiply-divide round trip is restored, not recomputed
    opt.param_groups[0]["lr"] = 0.1
    opt.param_groups[0]["lr_mult"] = 3.0
    with multiplied_lrs(opt):
        assert opt.param_groups[0]["lr"] == 0.1 * 3.0
    assert opt.param_groups[0]["lr"] == 0.1


def test_multiplied_lrs_restores_when_the_block_raises() -> None:
    opt, _ = _sgd()
    base = _lrs(opt)
    with pytest.raises(ValueError, match=r"^inside$"), multiplied_lrs(opt):
        assert _lrs(opt) != base
        raise ValueError("inside")
    assert _lrs(opt) == base


def test_attach_applies_each_multiplier_once_per_step() -> None:
    opt, params = _sgd()
    assert attach_lr_multipliers(opt) is opt
    assert attach_lr_multipliers(opt) is opt  # idempotent: the multiplier is not squared
    start = [p.detach().clone() for p in params]
    grads = [_dyadic((3, 2), 10 + i) for i in range(len(params))]
    for p, g in zip(params, grads):
        p.grad = g.clone()
    opt.step()
    for p, w, g, m in zip(params, start, grads, MULTS):
        assert torch.equal(p.detach(), w - LR * (1.0 if m is None else m) * g)
    assert _lrs(opt) == [LR] * len(MULTS)  # the base LRs, as schedulers see them


def test_attach_follows_a_scheduler_and_momentum() -> None:
    opt, params = _sgd(momentum=0.5)
    attach_lr_multipliers(opt)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 0.5**epoch)
    w = [p.detach().clone() for p in params]
    buf = [torch.zeros_like(p) for p in params]
    for step in range(3):
        lr = LR * 0.5**step
        assert _lrs(opt) == [lr] * len(MULTS)
        grads = [_dyadic((3, 2), 100 * step + i) for i in range(len(params))]
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
        sched.step()
        for i, (g, m) in enumerate(zip(grads, MULTS)):
            buf[i] = g if step == 0 else 0.5 * buf[i] + g
            w[i] = w[i] - lr * (1.0 if m is None else m) * buf[i]
            assert torch.equal(params[i].detach(), w[i])


def test_attach_works_through_grad_scaler_step() -> None:
    try:
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    except (RuntimeError, ValueError) as exc:  # pragma: no cover - depends on the torch build
        pytest.skip(f"torch.amp.GradScaler('cpu') is not supported here: {exc}")
    if not scaler.is_enabled():  # pragma: no cover
        pytest.skip("torch.amp.GradScaler('cpu') is disabled in this torch build")
    opt, params = _sgd()
    attach_lr_multipliers(opt)
    start = [p.detach().clone() for p in params]
    targets = [_dyadic((3, 2), 20 + i) for i in range(len(params))]
    # loss = sum_i <p_i, t_i>: gradient t_i, scaled by 2**10 and unscaled exactly
    loss = sum((p * t).sum() for p, t in zip(params, targets))
    assert isinstance(loss, torch.Tensor)
    torch.autograd.backward(scaler.scale(loss))
    assert params[0].grad is not None
    assert torch.equal(params[0].grad, targets[0] * 2.0**10)
    scaler.step(opt)
    scaler.update()
    for p, w, t, m in zip(params, start, targets, MULTS):
        assert torch.equal(p.detach(), w - LR * (1.0 if m is None else m) * t)
    assert _lrs(opt) == [LR] * len(MULTS)


def test_a_step_that_raises_leaves_the_base_lrs() -> None:
    opt, _ = _sgd()
    attach_lr_multipliers(opt)

    def closure() -> float:
        raise RuntimeError("closure failed")

    with pytest.raises(RuntimeError, match=r"^closure failed$"):
        opt.step(closure)
    assert _lrs(opt) == [LR] * len(MULTS)
