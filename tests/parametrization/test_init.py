"""``mup2.parametrization.init``: PyTorch's default init rules, drawing from a rule, and reading the
init a freshly built tensor has."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch
from torch import nn

from mup2.parametrization.init import InitRule, Observed, default_init, draw_, observe

N = 1_000_000  # entries of the "large tensor" the moments are measured on
# standard error of the sample RMS relative to the std: sqrt(mu4/sigma^4 - 1) / (2 sqrt(n)),
# with mu4/sigma^4 = 9/5 (uniform) and 3 (normal)
REL_SE = {"uniform": math.sqrt(0.8) / 2, "normal": math.sqrt(2.0) / 2}


def _rms(x: torch.Tensor) -> float:
    return math.sqrt(float(x.double().pow(2).sum()) / x.numel())


# -- InitRule ---------------------------------------------------------------------------------


def test_scaled_multiplies_the_std_of_random_rules_only() -> None:
    assert InitRule("uniform", 0.5).scaled(0.25) == InitRule("uniform", 0.125)
    assert InitRule("normal", 2.0).scaled(3.0) == InitRule("normal", 6.0)
    assert InitRule("constant", 1.0).scaled(0.1) == InitRule("constant", 1.0)
    assert InitRule("keep").scaled(5.0) == InitRule("keep")


def test_describe() -> None:
    assert InitRule("keep").describe() == "keep"
    assert InitRule("constant", 1.0).describe() == "=1"
    assert InitRule("constant", 0.0).describe() == "=0"
    assert InitRule("uniform", 1 / math.sqrt(3 * 784)).describe() == "U(std 0.0206)"
    assert InitRule("normal", 0.02).describe() == "N(std 0.02)"


# -- default_init -----------------------------------------------------------------------------


def test_default_rules_of_known_modules() -> None:
    lin = nn.Linear(30, 20)
    assert default_init(lin, "weight", (20, 30), (20, 30)) == InitRule("uniform", 1 / math.sqrt(90))
    assert default_init(lin, "bias", (20,), (20, 30)) == InitRule("uniform", 1 / math.sqrt(90))
    assert default_init(lin, "bias", (20,), None) == InitRule("keep")  # no weight: no fan-in
    conv = nn.Conv2d(3, 8, 5)
    fan_in = 3 * 5 * 5
    assert default_init(conv, "weight", (8, 3, 5, 5), None) == InitRule(
        "uniform", 1 / math.sqrt(3 * fan_in)
    )
    assert default_init(conv, "bias", (8,), (8, 3, 5, 5)) == InitRule(
        "uniform", 1 / math.sqrt(3 * fan_in)
    )
    for norm in (nn.LayerNorm(8), nn.BatchNorm2d(8), nn.GroupNorm(2, 8)):
        assert default_init(norm, "weight", (8,), (8,)) == InitRule("constant", 1.0)
        assert default_init(norm, "bias", (8,), (8,)) == InitRule("constant", 0.0)
    assert default_init(nn.Embedding(50, 16), "weight", (50, 16), None) == InitRule("normal", 1.0)
    bil = nn.Bilinear(6, 7, 4)
    assert default_init(bil, "weight", (4, 6, 7), None) == InitRule("uniform", 1 / math.sqrt(18))
    assert default_init(bil, "bias", (4,), (4, 6, 7)) == InitRule("uniform", 1 / math.sqrt(18))
    mha = nn.MultiheadAttention(16, 2, bias=True, add_bias_kv=True)
    xavier_in = math.sqrt(2.0 / (16 + 48))  # in_proj_weight: 48 x 16
    assert default_init(mha, "in_proj_weight", (48, 16), None) == InitRule("uniform", xavier_in)
    assert default_init(mha, "in_proj_bias", (48,), None) == InitRule("constant", 0.0)
    # bias_k: (1, 1, 16): fan_in = 1 * 16, fan_out = 1 * 16
    assert default_init(mha, "bias_k", (1, 1, 16), None) == InitRule("normal", math.sqrt(2.0 / 32))
    assert default_init(nn.Module(), "weight", (3, 3), None) == InitRule("keep")
    assert default_init(lin, "scale", (1,), (20, 30)) == InitRule("keep")


FACTORIES: dict[str, tuple[Callable[[], nn.Module], str]] = {
    "linear.weight": (lambda: nn.Linear(512, 1024), "weight"),
    "linear.bias": (lambda: nn.Linear(512, 1024), "bias"),
    "conv.weight": (lambda: nn.Conv2d(16, 64, 3), "weight"),
    "embedding": (lambda: nn.Embedding(1000, 256), "weight"),
    "mha.in_proj_weight": (lambda: nn.MultiheadAttention(128, 4), "in_proj_weight"),
}


@pytest.mark.parametrize("case", list(FACTORIES))
def test_default_rules_describe_what_pytorch_draws(case: str) -> None:
    """The rule's std is the RMS of PyTorch's own init (a sample of n >= 1024 entries) and a
    uniform rule's bound sqrt(3) std is the largest value."""
    factory, local = FACTORIES[case]
    torch.manual_seed(0)
    module = factory()
    values = getattr(module, local).detach()
    weight = getattr(module, "weight", None)
    shape = None if weight is None else tuple(weight.shape)
    rule = default_init(module, local, tuple(values.shape), shape)
    assert rule.kind in ("uniform", "normal")
    n = values.numel()
    assert abs(_rms(values) / rule.value - 1.0) < 6 * REL_SE[rule.kind] / math.sqrt(n)
    if rule.kind == "uniform":
        bound = math.sqrt(3.0) * rule.value
        assert float(values.abs().max()) <= bound * (1 + 1e-6)
        assert float(values.abs().max()) >= bound * (1 - 20.0 / n)  # the max of n uniforms


# -- draw_ ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["uniform", "normal"])
def test_draw_gives_the_std_of_the_rule(kind: str) -> None:
    rule = InitRule(kind, 0.3)  # type: ignore[arg-type]
    p = torch.empty(1000, N // 1000)
    draw_(p, rule, torch.Generator().manual_seed(0))
    mean = float(p.double().mean())
    assert abs(mean) < 6 * rule.value / math.sqrt(N)
    assert abs(_rms(p) / rule.value - 1.0) < 6 * REL_SE[kind] / math.sqrt(N)
    if kind == "uniform":
        bound = math.sqrt(3.0) * rule.value
        assert float(p.abs().max()) <= bound * (1 + 1e-6)
        assert float(p.abs().max()) >= bound * (1 - 20.0 / N)
    else:  # the tails of a normal: P(|x| > 3 std) = 0.0027
        tail = float((p.abs() > 3 * rule.value).double().mean())
        p3 = math.erfc(3 / math.sqrt(2))
        assert abs(tail - p3) < 6 * math.sqrt(p3 * (1 - p3) / N)


@pytest.mark.parametrize("kind", ["uniform", "normal"])
def test_draw_is_determined_by_the_generator(kind: str) -> None:
    rule = InitRule(kind, 0.5)  # type: ignore[arg-type]
    a, b, c = torch.empty(64, 32), torch.empty(64, 32), torch.empty(64, 32)
    draw_(a, rule, torch.Generator().manual_seed(7))
    draw_(b, rule, torch.Generator().manual_seed(7))
    draw_(c, rule, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # None: the global generator
    torch.manual_seed(3)
    d = torch.empty(64, 32)
    draw_(d, rule, None)
    e = torch.empty(64, 32)
    draw_(e, rule, torch.Generator().manual_seed(3))
    assert torch.equal(d, e)
    # drawn in float32 on the CPU: a float64 tensor gets the same values
    f = torch.empty(64, 32, dtype=torch.float64)
    draw_(f, rule, torch.Generator().manual_seed(7))
    assert f.dtype == torch.float64 and torch.equal(f, a.double())


def test_draw_fills_in_place_and_keeps_the_storage() -> None:
    p = nn.Parameter(torch.randn(8, 4))
    ptr = p.data_ptr()
    draw_(p, InitRule("normal", 1.0), torch.Generator().manual_seed(0))
    assert p.data_ptr() == ptr and p.requires_grad and p.grad_fn is None
    draw_(p, InitRule("constant", 0.25), None)
    assert torch.equal(p.detach(), torch.full((8, 4), 0.25))
    before = torch.randn(5)
    kept = before.clone()
    draw_(kept, InitRule("keep"), torch.Generator().manual_seed(0))
    assert torch.equal(kept, before)
    # a view: only its entries change
    base = torch.zeros(4, 4)
    draw_(base[1], InitRule("constant", 2.0), None)
    assert torch.equal(base.sum(1), torch.tensor([0.0, 8.0, 0.0, 0.0]))


# -- observe ----------------------------------------------------------------------------------


def test_observe_recognises_pytorch_default_linear_init() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(64, 128)
    w_rule = default_init(lin, "weight", (128, 64), (128, 64))
    b_rule = default_init(lin, "bias", (128,), (128, 64))
    assert observe(lin.weight, w_rule) == Observed(w_rule, "default")
    assert observe(lin.bias, b_rule) == Observed(b_rule, "default")
    ln = nn.LayerNorm(16)
    one, zero = InitRule("constant", 1.0), InitRule("constant", 0.0)
    assert observe(ln.weight, one) == Observed(one, "default")
    assert observe(ln.bias, zero) == Observed(zero, "default")


def test_observe_describes_a_custom_normal_init_by_its_rms() -> None:
    torch.manual_seed(0)
    lin = nn.Linear(64, 128)
    nn.init.normal_(lin.weight, std=0.02)
    default = default_init(lin, "weight", (128, 64), (128, 64))
    got = observe(lin.weight, default)
    assert got.source == "model" and got.rule.kind == "normal"
    assert got.rule.value == pytest.approx(_rms(lin.weight.detach()), rel=1e-12)
    assert got.rule.value == pytest.approx(0.02, rel=6 * REL_SE["normal"] / math.sqrt(128 * 64))


def test_observe_other_distributions() -> None:
    torch.manual_seed(0)
    default = InitRule("uniform", 1 / math.sqrt(3 * 64))  # Linear(64, 128)'s
    wide = torch.empty(128, 64).uniform_(-0.5, 0.5)  # uniform, but 4x the default's std
    got = observe(wide, default)
    assert got.source == "model" and got.rule.kind == "uniform"
    assert got.rule.value == pytest.approx(_rms(wide), rel=1e-12)
    assert observe(torch.zeros(128, 64), default) == Observed(InitRule("constant", 0.0), "model")
    shifted = torch.randn(128, 64) * 0.1 + 1.0  # nonzero mean: no rule describes it
    assert observe(shifted, default) == Observed(InitRule("keep"), "keep")
    bad = torch.randn(128, 64)
    bad[0, 0] = float("nan")
    assert observe(bad, default) == Observed(InitRule("keep"), "keep")
    assert observe(torch.empty(0), default) == Observed(InitRule("keep"), "keep")
    # under 32 entries a bounded sample is still called normal
    few = torch.tensor([0.1, -0.1, 0.2, -0.2])
    got = observe(few, InitRule("keep"))
    assert got.source == "model" and got.rule.kind == "normal"
    assert got.rule.value == pytest.approx(_rms(few), rel=1e-12)


def test_observe_meta_tensors_fall_back_to_the_default() -> None:
    meta = torch.empty(128, 64, device="meta")
    rule = InitRule("uniform", 0.1)
    assert observe(meta, rule) == Observed(rule, "default")
    assert observe(meta, InitRule("keep")) == Observed(InitRule("keep"), "keep")
