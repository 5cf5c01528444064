"""Schemes as data, the report, overrides, idempotent init, param groups, schedulers, save/load."""

from __future__ import annotations

import io
import json
import math

import pytest
import torch
from torch import nn
from torch.optim import lr_scheduler

from mup2 import (
    MUP_ADAM,
    MUP_SGD,
    SP,
    Parametrization,
    Role,
    ShapeError,
    attach_lr_multipliers,
    get_scheme,
)

from nets import ConvNet, TinyTransformer, mlp

M = 8.0  # width multiplier used in the table tests


@pytest.mark.parametrize(
    ("role", "m_in", "m_out", "init", "sgd", "adam"),
    [  # the math note's section 2 table, written out
        (Role.INPUT, 1.0, M, 1.0, M, 1.0),
        (Role.HIDDEN, M, M, M**-0.5, 1.0, 1 / M),
        (Role.OUTPUT, M, 1.0, 1 / M, 1 / M, 1 / M),
        (Role.SCALAR, 1.0, 1.0, 1.0, 1.0, 1.0),
    ],
)
def test_mup_tables(
    role: Role, m_in: float, m_out: float, init: float, sgd: float, adam: float
) -> None:
    assert MUP_SGD.init_mult(role, m_in, m_out) == pytest.approx(init)
    assert MUP_ADAM.init_mult(role, m_in, m_out) == pytest.approx(init)
    assert MUP_SGD.lr_mult(role, m_in, m_out) == pytest.approx(sgd)
    assert MUP_ADAM.lr_mult(role, m_in, m_out) == pytest.approx(adam)
    assert SP.lr_mult(role, m_in, m_out) == 1.0
    assert SP.init_mult(role, m_in, m_out) is None


def test_unknown_scheme() -> None:
    with pytest.raises(ValueError, match="unknown scheme 'mu-p'"):
        get_scheme("mu-p")
    assert get_scheme("mup") is MUP_SGD


def test_report_lists_every_column() -> None:
    p = Parametrization.infer(mlp(64, norm=True), mlp(16, norm=True), "mup-sgd")
    text = p.report()
    header = text.splitlines()[1].split()
    assert header == [
        "name", "shape", "base", "role", "m_in", "m_out", "init", "init_rule", "lr", "wd", "rho",
        "norm",
    ]  # fmt: skip
    row = next(line for line in text.splitlines() if line.startswith("5.weight"))
    assert row.split() == [
        "5.weight", "5x64", "5x16", "output", "4", "1", "x0.25", "U(std", "0.0361)", "x0.25", "x1",
        "x0.25",
    ]  # fmt: skip
    md = p.report("sam-on", "mup2", markdown=True)
    assert "| 3.weight | 64 | 16 | input | 1 | 4 | x1 | =1 | x4 | x1 | x4 | yes |" in md
    assert "| 2.weight | 64x64 | 16x16 | hidden | 4 | 4 | x0.5 |" in md and "| x0 |" in md


def test_init_std_scales_with_width() -> None:
    """μP: input std constant, hidden std ∝ m^-1/2, output std ∝ 1/m (relative to base)."""
    stds: dict[int, dict[str, float]] = {}
    for w in (64, 256, 1024):
        model = mlp(w, d_in=64, classes=64)
        Parametrization.infer(model, mlp(64, d_in=64, classes=64), "mup-sgd").init_(model, seed=0)
        stds[w] = {n: p.std().item() for n, p in model.named_parameters() if p.ndim == 2}
    for name, exponent in (("0.weight", 0.0), ("2.weight", -0.5), ("4.weight", -1.0)):
        slope = math.log(stds[1024][name] / stds[64][name]) / math.log(16)
        assert slope == pytest.approx(exponent, abs=0.03), name


def test_init_at_base_width_matches_pytorch_default() -> None:
    """At m = 1, μP and SP both draw what nn.Linear/Conv2d/MHA would (same rule, same std)."""
    for make in (lambda: mlp(32, norm=True), lambda: ConvNet(16), lambda: TinyTransformer(32)):
        model = make()
        mup = Parametrization.infer(model, make(), "mup-sgd")
        sp = Parametrization.infer(model, make(), "sp")
        for name in mup.tensors:
            assert mup.tensors[name].init == sp.tensors[name].init, name
        assert {t.init.kind for t in mup.tensors.values()} <= {"uniform", "normal", "constant"} | (
            {"keep"} if isinstance(model, TinyTransformer) else set()
        )
    lin = nn.Linear(300, 200)
    p = Parametrization.infer(nn.Sequential(lin), nn.Sequential(nn.Linear(300, 200)), "mup-sgd")
    p.init_(nn.Sequential(lin), seed=1)
    assert lin.weight.abs().max().item() <= 1 / math.sqrt(300)
    assert lin.weight.std().item() == pytest.approx(1 / math.sqrt(900), rel=0.02)


def test_init_is_idempotent_and_independent_of_previous_values() -> None:
    model, base = TinyTransformer(32), TinyTransformer(8)
    p = Parametrization.infer(model, base, "mup-adam", overrides={"pos": {"init_std": 0.02}})
    assert p.tensors["pos"].init.describe() == "N(std 0.02)"
    p.init_(model, seed=3)
    once = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for q in model.parameters():
            q.mul_(-7.0).add_(1.0)
    p.init_(model, seed=3)
    p.init_(model, seed=3)
    for k, v in model.state_dict().items():
        assert torch.equal(v, once[k]), k


def test_overrides_by_pattern() -> None:
    model, base = mlp(64), mlp(16)
    p = Parametrization.infer(
        model,
        base,
        "mup-sgd",
        overrides={"4.weight": {"init_mult": 0.0}, "*.bias": {"wd_mult": 0.0}, "2.weight": "input"},
    )
    assert p.tensors["2.weight"].shape.role is Role.INPUT
    assert p.tensors["2.weight"].shape.source == "override"
    assert (p.tensors["2.weight"].shape.m_in, p.tensors["2.weight"].shape.m_out) == (1.0, 4.0)
    assert p.tensors["2.weight"].lr_mult == 4.0
    assert all(t.wd_mult == 0.0 for n, t in p.tensors.items() if n.endswith("bias"))
    p.init_(model, seed=0)
    assert torch.count_nonzero(model[4].weight) == 0
    assert "input*" in p.report()


def test_model_shipped_overrides_and_user_precedence() -> None:
    class Zeroed(nn.Sequential):
        mup2_overrides = {"2.weight": {"init_mult": 0.0, "lr_mult": 3.0}}  # noqa: RUF012

    def make(w: int) -> Zeroed:
        return Zeroed(*mlp(w))

    p = Parametrization.infer(make(64), make(16), overrides={"2.weight": {"lr_mult": 5.0}})
    assert p.tensors["2.weight"].init_mult == 0.0
    assert p.tensors["2.weight"].lr_mult == 5.0


def test_override_errors() -> None:
    with pytest.raises(ShapeError, match=r"pattern 'haed\.\*' matches no parameter"):
        Parametrization.infer(mlp(64), mlp(16), overrides={"haed.*": "output"})
    with pytest.raises(ValueError, match=r"unknown override keys \['lr'\]"):
        Parametrization.infer(mlp(64), mlp(16), overrides={"0.*": {"lr": 2.0}})
    with pytest.raises(
        ValueError,
        match=r"override '0\.\*': role 'sideways' is not a role; choose one of input, hidden, "
        "output, scalar",
    ):
        Parametrization.infer(mlp(64), mlp(16), overrides={"0.*": "sideways"})


def test_param_groups_hold_base_lr_and_multipliers() -> None:
    model = mlp(64, norm=True)
    p = Parametrization.infer(model, mlp(16, norm=True), "mup-adam")
    groups = p.param_groups(model, lr=1e-3, weight_decay=0.1)
    by_name = {n: g for g in groups for n in g["names"]}
    assert by_name["2.weight"]["lr"] == 1e-3 and by_name["2.weight"]["lr_mult"] == 0.25
    assert by_name["0.weight"]["lr_mult"] == 1.0
    assert by_name["3.weight"]["norm"] and not by_name["0.weight"]["norm"]
    assert all(g["weight_decay"] == 0.1 for g in groups)
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    indep = Parametrization.infer(model, mlp(16, norm=True), "mup-adam", wd_policy="independent")
    g2 = {n: g for g in indep.param_groups(model, lr=1e-3, weight_decay=0.1) for n in g["names"]}
    assert g2["2.weight"]["weight_decay"] == pytest.approx(0.4)  # lr * lr_mult * wd == lr * 0.1


def test_decay_follows_policy_in_adamw() -> None:
    """lr-scaled: AdamW decays hidden weights by lr*lr_mult*wd; independent: by lr*wd."""
    for policy, expected in (("lr-scaled", 1e-2 * 0.25 * 0.5), ("independent", 1e-2 * 0.5)):
        model = mlp(64)
        p = Parametrization.infer(model, mlp(16), "mup-adam", wd_policy=policy)  # type: ignore[arg-type]
        opt = attach_lr_multipliers(
            torch.optim.AdamW(p.param_groups(model, lr=1e-2, weight_decay=0.5))
        )
        w = model[2].weight
        before = w.detach().clone()
        for q in model.parameters():
            q.grad = torch.zeros_like(q)
        opt.step()
        assert torch.allclose(w.detach(), before * (1 - expected), rtol=0, atol=1e-7), policy


SCHEDULERS = {
    "step": lambda o: lr_scheduler.StepLR(o, step_size=2, gamma=0.5),
    "cosine": lambda o: lr_scheduler.CosineAnnealingLR(o, T_max=5),
    "lambda": lambda o: lr_scheduler.LambdaLR(o, lambda s: 1.0 / (1 + s)),
    "warmup+cosine": lambda o: lr_scheduler.SequentialLR(
        o,
        [lr_scheduler.LinearLR(o, 0.1, total_iters=2), lr_scheduler.CosineAnnealingLR(o, 4)],
        milestones=[2],
    ),
    "onecycle (absolute)": lambda o: lr_scheduler.OneCycleLR(
        o, max_lr=0.2, total_steps=10, cycle_momentum=False
    ),
    "cyclic (absolute)": lambda o: lr_scheduler.CyclicLR(
        o, base_lr=0.01, max_lr=0.1, step_size_up=2, cycle_momentum=False
    ),
}


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_lr_multipliers_survive_schedulers(name: str) -> None:
    """The update of every tensor is -scheduled_lr * lr_mult * grad, whatever the scheduler."""
    model = mlp(64)
    p = Parametrization.infer(model, mlp(16), "mup-sgd")
    opt = attach_lr_multipliers(torch.optim.SGD(p.param_groups(model, lr=0.1)))
    sched = SCHEDULERS[name](opt)
    for _ in range(4):
        lrs = [g["lr"] for g in opt.param_groups]
        before = [[q.detach().clone() for q in g["params"]] for g in opt.param_groups]
        for q in model.parameters():
            q.grad = torch.ones_like(q)
        opt.step()
        for g, lr, old in zip(opt.param_groups, lrs, before, strict=True):
            for q, q0 in zip(g["params"], old, strict=True):
                assert torch.allclose(q0 - q.detach(), torch.full_like(q, lr * g["lr_mult"]))
        sched.step()
    assert {g["lr_mult"] for g in opt.param_groups} == {4.0, 1.0, 0.25}


def test_spec_serializes_and_survives_save_load() -> None:
    model = TinyTransformer(32)
    p = Parametrization.infer(model, TinyTransformer(8), "mup-adam", overrides={"pos": "input"})
    again = Parametrization.from_dict(json.loads(json.dumps(p.to_dict())))
    assert again == p
    opt = attach_lr_multipliers(torch.optim.AdamW(p.param_groups(model, lr=1e-3)))
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "spec": p.to_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf)
    fresh = TinyTransformer(32)
    fresh.load_state_dict(ckpt["model"])
    spec = Parametrization.from_dict(ckpt["spec"])
    opt2 = attach_lr_multipliers(torch.optim.AdamW(spec.param_groups(fresh, lr=5.0)))
    opt2.load_state_dict(ckpt["opt"])
    assert [g["lr_mult"] for g in opt2.param_groups] == [g["lr_mult"] for g in opt.param_groups]
    assert [g["lr"] for g in opt2.param_groups] == [1e-3] * len(opt2.param_groups)


def test_param_groups_check_the_model() -> None:
    p = Parametrization.infer(mlp(64), mlp(16))
    with pytest.raises(ShapeError, match=r"0\.weight: model shape \[32, 12\] but .* \[64, 12\]"):
        p.param_groups(mlp(32))


def test_weight_scale_follows_the_init_std() -> None:
    """The per-group ``weight_scale`` (the ASAM offset's μP² multiplier) is the init std ratio."""
    for scheme, expected in (
        ("mup-sgd", {"0.weight": 1.0, "2.weight": 0.5, "4.weight": 0.25, "2.bias": 1.0}),
        ("sp", {"0.weight": 1.0, "2.weight": 0.5, "4.weight": 0.5, "2.bias": 0.5}),
    ):
        model = mlp(64)
        groups = Parametrization.infer(model, mlp(16), scheme).param_groups(model)
        got = {n: g["weight_scale"] for g in groups for n in g["names"]}
        assert {n: got[n] for n in expected} == pytest.approx(expected), scheme
