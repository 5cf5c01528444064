"""LightSAM against a float64 reference over several steps (accumulators included), checkpoints."""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import Tensor, nn

from mup2 import AdaGradNorm, LightSAM, Parametrization

from nets import mlp

STEPS, LR, EPS0, EPS, B1, B2 = 4, 0.05, 1e-3, 1e-8, 0.9, 0.999


@pytest.fixture(autouse=True)
def _float64() -> Iterator[None]:
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def batches() -> list[tuple[Tensor, Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        (torch.randn(16, 12, generator=g), torch.randint(0, 5, (16,), generator=g))
        for _ in range(STEPS)
    ]


def grads_at(model: nn.Module, x: Tensor, y: Tensor) -> list[Tensor]:
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    return [q.grad.detach().clone() for q in model.parameters()]  # type: ignore[union-attr]


def train(model: nn.Module, opt: LightSAM, data: list[tuple[Tensor, Tensor]]) -> None:
    """One ``opt.step(closure)`` per batch."""
    for x, y in data:

        def closure(x: Tensor = x, y: Tensor = y) -> Tensor:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)


def reference(
    variant: str, scaling: str, model: nn.Module, groups: list[dict[str, Any]], beta1: float
) -> list[Tensor]:
    """The math note's section 6 in plain loops; width factors written out from section 4."""
    meta = {id(q): g for g in groups for q in g["params"]}
    ps = list(model.parameters())
    info = []
    for q in ps:
        g = meta[id(q)]
        r = g["m_out"] / g["m_in"]
        if scaling == "naive":
            c = k = 1.0
        elif variant == "adagrad-norm":
            c = k = r
        else:
            c, k = 1.0 / g["m_in"], 1.0
        info.append((g["rho"], c, k, LR * g["lr_mult"], r))
    u_norm, v_norm = 0.0, 0.0
    u = [torch.full_like(q, EPS0**2 if variant == "adagrad" else 0.0) for q in ps]
    m_asc = [torch.zeros_like(q) for q in ps]
    acc = [torch.full_like(q, EPS0**2) for q in ps]
    m1 = [torch.zeros_like(q) for q in ps]
    m2 = [torch.zeros_like(q) for q in ps]
    for t, (x, y) in enumerate(batches(), start=1):
        s = grads_at(model, x, y)
        w = [q.detach().clone() for q in ps]
        if variant == "adagrad-norm":
            u_norm += sum(k * float((si * si).sum()) for si, (_, _, k, _, _) in zip(s, info))
            eps = [rho * c * si / math.sqrt(u_norm + EPS0**2) for si, (rho, c, *_) in zip(s, info)]
        elif variant == "adagrad":
            u = [ui + si * si for ui, si in zip(u, s)]
            eps = [rho * c * si / ui.sqrt() for si, ui, (rho, c, *_) in zip(s, u, info)]
        else:
            u = [B2 * ui + (1 - B2) * si * si for ui, si in zip(u, s)]
            m_asc = [beta1 * mi + (1 - beta1) * si for mi, si in zip(m_asc, s)]
            num = m_asc if beta1 else s
            bc1 = 1 - beta1**t if beta1 else 1.0
            eps = [
                rho * c * (ni / bc1) / (ui.sqrt() / math.sqrt(1 - B2**t) + EPS)
                for ni, ui, (rho, c, *_) in zip(num, u, info)
            ]
        with torch.no_grad():
            for q, wi, ei in zip(ps, w, eps):
                q.copy_(wi + ei)
        g = grads_at(model, x, y)
        with torch.no_grad():
            if variant == "adagrad-norm":
                v_norm += sum(r * float((gi * gi).sum()) for gi, (*_, r) in zip(g, info))
                new = [
                    wi - lr * gi / math.sqrt(v_norm + EPS0**2)
                    for wi, gi, (_, _, _, lr, _) in zip(w, g, info)
                ]
            elif variant == "adagrad":
                acc = [ai + gi * gi for ai, gi in zip(acc, g)]
                new = [wi - lr * gi / ai.sqrt() for wi, gi, ai, (*_, lr, _) in zip(w, g, acc, info)]
            else:
                m1 = [B1 * a + (1 - B1) * gi for a, gi in zip(m1, g)]
                m2 = [B2 * a + (1 - B2) * gi * gi for a, gi in zip(m2, g)]
                new = [
                    wi - lr * (a / (1 - B1**t)) / (b.sqrt() / math.sqrt(1 - B2**t) + EPS)
                    for wi, a, b, (*_, lr, _) in zip(w, m1, m2, info)
                ]
            for q, ni in zip(ps, new):
                q.copy_(ni)
    return [q.detach().clone() for q in ps]


def setup(variant: str) -> tuple[nn.Module, Parametrization]:
    model = mlp(24)
    scheme = "mup-sgd" if variant == "adagrad-norm" else "mup-adam"
    p = Parametrization.infer(model, mlp(8), scheme)
    p.init_(model, seed=0)
    return model, p


@pytest.mark.parametrize(
    ("variant", "beta1"), [("adagrad-norm", 0.0), ("adagrad", 0.0), ("adam", 0.0), ("adam", 0.5)]
)
@pytest.mark.parametrize("scaling", ["naive", "mup2"])
def test_matches_float64_reference(variant: str, scaling: str, beta1: float) -> None:
    model, p = setup(variant)
    twin = mlp(24)
    twin.load_state_dict(model.state_dict())
    groups = p.param_groups(model, lr=LR)
    for i, g in enumerate(groups):
        g["rho"] = 0.1 * (1 + i % 2)  # per-group radii
    opt = LightSAM(
        groups, variant, lr=LR, rho=0.1, scaling=scaling, eps0=EPS0, eps=EPS, ascent_beta1=beta1
    )  # type: ignore[arg-type]
    train(model, opt, batches())
    ref_groups = p.param_groups(twin, lr=LR)
    for g, g0 in zip(ref_groups, groups, strict=True):
        g["rho"] = g0["rho"]
    expected = reference(variant, scaling, twin, ref_groups, beta1)
    for got, want in zip(model.parameters(), expected, strict=True):
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-13)
    assert any("ascent_u" in st for st in opt.state.values())


@pytest.mark.parametrize("variant", ["adagrad-norm", "adagrad", "adam"])
def test_state_dict_round_trip(variant: str) -> None:
    model, p = setup(variant)
    opt = LightSAM(p.param_groups(model, lr=LR), variant, lr=LR)  # type: ignore[arg-type]
    train(model, opt, batches()[:2])
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    train(model, opt, batches()[2:])
    buf.seek(0)
    ckpt = torch.load(buf)
    model2, p2 = setup(variant)
    model2.load_state_dict(ckpt["model"])
    opt2 = LightSAM(p2.param_groups(model2, lr=LR), variant, lr=LR)  # type: ignore[arg-type]
    opt2.load_state_dict(ckpt["opt"])
    train(model2, opt2, batches()[2:])
    for a, b in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_errors_and_plain_params() -> None:
    model = mlp(8)
    with pytest.raises(ValueError, match="variant must be"):
        LightSAM(model.parameters(), "rmsprop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="ascent_beta1"):
        LightSAM(model.parameters(), ascent_beta1=1.0)
    with pytest.raises(ValueError, match="lr must be > 0"):
        AdaGradNorm(model.parameters(), lr=0.0)
    opt = LightSAM(model.parameters(), "adagrad-norm", lr=0.1)
    for q in model.parameters():
        q.grad = torch.zeros_like(q)
    opt.first_step()
    opt.second_step()
    assert all(torch.isfinite(q).all() for q in model.parameters())
