"""``mup2.optim.perturb``: the one perturbation formula on multi-tensor kernels, against::

    eps_W = rho2c_W * A_W**2 * g_W / sqrt(sum_V rho2s_V * ||A_V * g_V||**2)

computed here entry by entry in float64 (``A``: 1, ``|W| + eta`` or ``||W||_F + eta``), with
``eps_W = k_W * d_W`` the contract of :func:`perturbation_direction`.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from mup2.optim.perturb import (
    by_device_and_dtype,
    gaussian,
    norms,
    perturbation_direction,
    safe_divide,
)
from mup2.optim.rules import Factor

SHAPES = [(4, 3), (5,), (2, 3, 2), (6, 1)]
ETA = [0.01, 0.0, 0.2, 0.05]
RHO2C = [0.04, 0.01, 0.09, 0.25]
RHO2S = [0.02, 0.03, 0.5, 0.1]


def _tensors(dtype: torch.dtype, seed: int = 0) -> tuple[list[Tensor], list[Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES]
    grads = [torch.randn(s, generator=gen, dtype=dtype) for s in SHAPES]
    return params, grads


def _factor(f: Factor, w: Tensor, eta: float) -> Tensor:
    """``A`` of one tensor in float64, by hand."""
    wd = w.double()
    if f is Factor.ONE:
        return torch.ones_like(wd)
    if f is Factor.ELEMENTWISE:
        return wd.abs() + eta
    frob = math.sqrt(sum(float(x) ** 2 for x in wd.reshape(-1)))
    return torch.full_like(wd, frob + eta)


def _reference(factors: list[Factor], params: list[Tensor], grads: list[Tensor]) -> list[Tensor]:
    a = [_factor(f, w, e) for f, w, e in zip(factors, params, ETA)]
    g = [t.double() for t in grads]
    total = sum(
        s * sum(float(x) ** 2 for x in (ai * gi).reshape(-1)) for s, ai, gi in zip(RHO2S, a, g)
    )
    return [c * ai**2 * gi / math.sqrt(total) for c, ai, gi in zip(RHO2C, a, g)]


def _eps(
    factors: list[Factor],
    params: list[Tensor],
    grads: list[Tensor],
    dtype: torch.dtype,
    scratch: list[Tensor] | None = None,
) -> tuple[list[Tensor], Tensor, list[Tensor]]:
    rho2c = torch.tensor(RHO2C, dtype=dtype)
    rho2s = torch.tensor(RHO2S, dtype=dtype)
    d, k = perturbation_direction(factors, params, grads, rho2c, rho2s, ETA, scratch=scratch)
    assert k.shape == (len(params),) and k.dtype == dtype
    return d, k, [k[i] * d[i] for i in range(len(d))]


CASES = {
    "one": [Factor.ONE] * 4,
    "elementwise": [Factor.ELEMENTWISE] * 4,
    "layerwise": [Factor.LAYERWISE] * 4,
    "mixed": [Factor.LAYERWISE, Factor.ONE, Factor.ELEMENTWISE, Factor.ONE],
    "mixed2": [Factor.ELEMENTWISE, Factor.LAYERWISE, Factor.ELEMENTWISE, Factor.ONE],
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize(
    ("dtype", "rtol"), [(torch.float64, 1e-12), (torch.float32, 2e-5)], ids=["f64", "f32"]
)
def test_perturbation_follows_the_formula(case: str, dtype: torch.dtype, rtol: float) -> None:
    factors = CASES[case]
    params, grads = _tensors(dtype)
    p0, g0 = [p.clone() for p in params], [g.clone() for g in grads]
    d, _, eps = _eps(factors, params, grads, dtype)
    want = _reference(factors, params, grads)
    for e, w in zip(eps, want):
        assert e.dtype == dtype
        torch.testing.assert_close(e.double(), w, rtol=rtol, atol=0.0)
    # d is the gradient itself where A enters only k (callers must not modify it), else new
    for f, di, g in zip(factors, d, grads):
        assert (di is g) == (f is not Factor.ELEMENTWISE)
    assert all(torch.equal(a, b) for a, b in zip(params, p0))
    assert all(torch.equal(a, b) for a, b in zip(grads, g0))


def test_mixed_rules_share_one_norm() -> None:
    """The tensors of a mixed list are not normalized per rule: each sub-list alone gets a
    larger perturbation, and the joint one is the formula's."""
    factors = CASES["mixed"]
    params, grads = _tensors(torch.float64)
    _, _, joint = _eps(factors, params, grads, torch.float64)
    ones = [i for i, f in enumerate(factors) if f is Factor.ONE]
    rho2c = torch.tensor([RHO2C[i] for i in ones], dtype=torch.float64)
    rho2s = torch.tensor([RHO2S[i] for i in ones], dtype=torch.float64)
    d, k = perturbation_direction(
        [Factor.ONE] * len(ones),
        [params[i] for i in ones],
        [grads[i] for i in ones],
        rho2c,
        rho2s,
        [ETA[i] for i in ones],
    )
    alone = k[0] * d[0]
    assert float(alone.norm()) > float(joint[ones[0]].norm())
    # with one rho and c = s = 1: ||eps / A|| over all tensors together is rho
    rho = 0.3
    rho2 = torch.full((4,), rho**2, dtype=torch.float64)
    d, k = perturbation_direction(factors, params, grads, rho2, rho2, ETA)
    a = [_factor(f, w, e) for f, w, e in zip(factors, params, ETA)]
    total = sum(float(((k[i] * d[i]) / a[i]).pow(2).sum()) for i in range(4))
    assert math.sqrt(total) == pytest.approx(rho, rel=1e-12)


def test_scratch_is_used_for_the_elementwise_factor() -> None:
    factors = CASES["mixed2"]
    params, grads = _tensors(torch.float64)
    scratch = [torch.full_like(p, 7.0) for p in params]
    _, _, with_scratch = _eps(factors, params, grads, torch.float64, scratch)
    _, _, without = _eps(factors, params, grads, torch.float64)
    assert all(torch.equal(a, b) for a, b in zip(with_scratch, without))
    for f, s, p, e in zip(factors, scratch, params, ETA):
        if f is Factor.ELEMENTWISE:  # overwritten with |W| + eta
            torch.testing.assert_close(s, p.abs() + e, rtol=0, atol=0)
        else:
            assert torch.equal(s, torch.full_like(p, 7.0))


@pytest.mark.parametrize("factor", [Factor.ONE, Factor.ELEMENTWISE, Factor.LAYERWISE])
def test_zero_gradients_give_no_perturbation(factor: Factor) -> None:
    params, _ = _tensors(torch.float32)
    grads = [torch.zeros_like(p) for p in params]
    _, k, eps = _eps([factor] * 4, params, grads, torch.float32)
    assert bool(torch.isfinite(k).all())
    assert all(torch.equal(e, torch.zeros_like(e)) for e in eps)


def test_a_non_finite_gradient_gives_no_perturbation() -> None:
    params, grads = _tensors(torch.float32)
    grads[1][0] = float("inf")
    _, k, _ = _eps([Factor.ONE] * 4, params, grads, torch.float32)
    assert torch.equal(k, torch.zeros(4))


def test_adaptive_factor_has_no_closed_form() -> None:
    params, grads = _tensors(torch.float64)
    rho = torch.ones(4, dtype=torch.float64)
    with pytest.raises(ValueError) as err:
        perturbation_direction([Factor.ADAPTIVE] * 4, params, grads, rho, rho, ETA)
    assert str(err.value) == (
        "factor 'adaptive' has no closed-form ascent (LightSAM computes it; RWP draws its noise "
        "with gaussian())"
    )
    with pytest.raises(ValueError, match=r"^factor 'adaptive' has no closed-form ascent"):
        perturbation_direction([Factor.ONE, Factor.ADAPTIVE] * 2, params, grads, rho, rho, ETA)
    with pytest.raises(ValueError, match=r"^factor 'noise' has no closed-form ascent"):
        perturbation_direction([Factor.NOISE] * 4, params, grads, rho, rho, ETA)


def test_momentum_factor_is_the_one_factor_turned_around() -> None:
    """MSAM: the formula with A = 1 on the momentum, the scale negated (ascent along -m)."""
    params, grads = _tensors(torch.float64)
    rho2c = torch.tensor([0.01, 0.02, 0.01, 0.04], dtype=torch.float64)
    rho2s = torch.tensor([0.01, 0.01, 0.03, 0.04], dtype=torch.float64)
    d1, k1 = perturbation_direction([Factor.ONE] * 4, params, grads, rho2c, rho2s, ETA)
    dm, km = perturbation_direction([Factor.MOMENTUM] * 4, params, grads, rho2c, rho2s, ETA)
    assert all(a is b for a, b in zip(d1, dm, strict=True)) and torch.equal(km, -k1)
    _, kmix = perturbation_direction(
        [Factor.MOMENTUM, Factor.ONE] * 2, params, grads, rho2c, rho2s, ETA
    )
    assert torch.allclose(kmix, k1 * torch.tensor([-1.0, 1.0, -1.0, 1.0]), rtol=1e-15, atol=0)


def test_gaussian_draws_in_order_from_each_device_generator() -> None:
    tensors = [torch.zeros(3, 2), torch.zeros(4, dtype=torch.float64)]
    gen = {torch.device("cpu"): torch.Generator().manual_seed(3)}
    xi = gaussian(tensors, gen)
    ref = torch.Generator().manual_seed(3)
    assert torch.equal(xi[0], torch.randn(3, 2, generator=ref))
    assert torch.equal(xi[1], torch.randn(4, generator=ref, dtype=torch.float64))


# -- norms, grouping, safe division -----------------------------------------------------------


def _mixed_dtype_tensors() -> list[Tensor]:
    gen = torch.Generator().manual_seed(3)
    dtypes = [torch.float32, torch.float64, torch.float32, torch.float64, torch.float32]
    scales = [1.0, 10.0, 100.0, 1000.0, 0.01]  # a misplaced norm cannot go unnoticed
    return [
        (torch.randn(3 + i, 2, generator=gen, dtype=torch.float64) * s).to(dt)
        for i, (dt, s) in enumerate(zip(dtypes, scales))
    ]


@pytest.mark.parametrize("like", [torch.float64, torch.float32])
def test_norms_of_mixed_dtypes(like: torch.dtype) -> None:
    tensors = _mixed_dtype_tensors()
    got = norms(tensors, torch.zeros((), dtype=like))
    assert got.dtype == like and got.shape == (len(tensors),)
    want = torch.stack([torch.linalg.vector_norm(t).to(like) for t in tensors])
    rtol = 1e-6 if like == torch.float32 else 1e-12
    torch.testing.assert_close(got, want, rtol=rtol, atol=0.0)
    for t, n in zip(tensors, got):  # and against the float64 sum of squares
        ref = math.sqrt(sum(float(x) ** 2 for x in t.double().reshape(-1)))
        assert float(n) == pytest.approx(ref, rel=1e-6)


def test_norms_of_one_dtype_and_reduce() -> None:
    gen = torch.Generator().manual_seed(4)
    tensors = [torch.randn(4, 4, generator=gen) for _ in range(3)]
    got = norms(tensors, torch.zeros((), dtype=torch.float64))
    assert got.dtype == torch.float64
    torch.testing.assert_close(
        got, torch.stack([torch.linalg.vector_norm(t) for t in tensors]).double(), rtol=0, atol=0
    )
    # reduce maps squared norms to squared norms (FSDP: a sum over shards)
    quadrupled = norms(_mixed_dtype_tensors(), torch.zeros(()), reduce=lambda sq: 4.0 * sq)
    plain = norms(_mixed_dtype_tensors(), torch.zeros(()))
    torch.testing.assert_close(quadrupled, 2.0 * plain, rtol=1e-6, atol=0.0)


def test_by_device_and_dtype_groups_in_order_of_first_appearance() -> None:
    f32, f64, f16 = (torch.zeros(1, dtype=d) for d in (torch.float32, torch.float64, torch.float16))
    meta = torch.zeros(1, device="meta")
    assert by_device_and_dtype([f64, f32, f64, f16, f32, f32]) == [[0, 2], [1, 4, 5], [3]]
    assert by_device_and_dtype([f32, meta, f32, meta]) == [[0, 2], [1, 3]]
    assert by_device_and_dtype([f16]) == [[0]]
    assert by_device_and_dtype([]) == []


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_safe_divide_gives_zero_for_bad_denominators(dtype: torch.dtype) -> None:
    inf, nan = float("inf"), float("nan")
    num = torch.tensor([3.0, 5.0, 0.01, 5.0, 0.01, 0.0, 1e30], dtype=dtype)
    den = torch.tensor([4.0, inf, inf, nan, nan, 0.0, 1e-30], dtype=dtype)
    out = safe_divide(num, den)
    assert out.dtype == dtype
    assert out[:6].tolist() == [0.75, 0.0, 0.0, 0.0, 0.0, 0.0]
    # 1e30 / 1e-30 is 1e60 in float64; it overflows float32, and inf becomes 0
    assert float(out[6]) == (0.0 if dtype == torch.float32 else pytest.approx(1e60, rel=1e-15))
    nan_num = safe_divide(torch.tensor([float("nan")], dtype=dtype), torch.ones(1, dtype=dtype))
    assert nan_num.tolist() == [0.0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_safe_divide_gives_zero_for_a_zero_denominator_and_a_small_numerator(
    dtype: torch.dtype,
) -> None:
    out = safe_divide(torch.tensor([1.0, 0.01], dtype=dtype), torch.zeros(2, dtype=dtype))
    assert out.tolist() == [0.0, 0.0]


def test_a_tiny_gradient_gives_a_perturbation_of_norm_rho_or_none() -> None:
    rho2 = torch.tensor([0.1**2])
    g = torch.full((4,), 1e-25)
    d, k = perturbation_direction([Factor.ONE], [torch.ones(4)], [g], rho2, rho2, [0.0])
    assert float((k[0] * d[0]).norm()) <= 0.1 * (1 + 1e-6)
