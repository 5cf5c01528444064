"""Every rule x scaling against a float64 reference written directly from the math note (§3, §4);
the readout-only rule against SAM restricted to the readout."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from mup2 import RULES, SAM, SCALINGS, Parametrization
from mup2.optim.rules import get_rule
from mup2.parametrization.shapes import role_overrides

from nets import mlp

ETA = 0.01


@pytest.fixture(autouse=True)
def _float64() -> Any:
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(torch.float32)


def factors(rule: str, scaling: str, role: str, r: float, m: float) -> tuple[float, float]:
    """(numerator c, denominator s) for one tensor, from the math note's section 4."""
    if scaling == "naive":
        return 1.0, 1.0
    if scaling == "global":
        return m**-0.5, 1.0
    if scaling == "mup2-coupled":
        return r, r * r / m
    if rule in ("sam", "sam-on", "sam-readout"):
        return r, r
    if rule == "asam":  # as measured by the coordinate check (docs/table1.md)
        k = 1.0 if role == "scalar" else m
        return k, k
    k = 1.0 / m if role == "hidden" else 1.0  # layerwise ASAM, likewise
    return k, k


def reference_eps(groups: list[dict[str, Any]], rule: str, scaling: str) -> dict[int, torch.Tensor]:
    """eps_W = rho_W^2 c_W A_W^2 g_W / sqrt(sum_V rho_V^2 s_V ||A_V g_V||^2), in plain loops."""
    terms = []
    for g in groups:
        rho = g["rho"] * g["rho_mult"]
        for p in g["params"]:
            if rho == 0 or p.grad is None or (rule == "sam-on" and not g["norm"]):
                continue
            if rule == "sam-readout" and g["role"] not in ("output", "scalar"):
                continue
            w, grad = p.detach(), p.grad.detach()
            if rule == "asam":  # under μP², the offset scales like the tensor's entries
                a = w.abs() + ETA * (g["weight_scale"] if scaling == "mup2" else 1.0)
            elif rule == "asam-layerwise":
                a = torch.full_like(w, math.sqrt(float((w * w).sum())) + ETA)
            else:
                a = torch.ones_like(w)
            c, s = factors(rule, scaling, g["role"], g["m_out"] / g["m_in"], g["width_mult"])
            terms.append((p, rho, c, s, a, grad))
    denom = math.sqrt(sum(rho**2 * s * float(((a * g) ** 2).sum()) for _, rho, _, s, a, g in terms))
    return {id(p): rho**2 * c * a * a * g / denom for p, rho, c, _, a, g in terms}


COMBOS = [
    (rule, scaling) for rule in RULES for scaling in SCALINGS if scaling in get_rule(rule).scalings
]
#: The tensors each rule perturbs in ``mlp(48, norm=True)`` (every one if not listed).
ONLY = {"sam-on": {"3.weight", "3.bias"}, "sam-readout": {"5.weight", "5.bias"}}


@pytest.mark.parametrize(("rule", "scaling"), COMBOS)
@pytest.mark.parametrize("restore", ["subtract", "copy", "swap"])
def test_perturbation_matches_float64_reference(rule: str, scaling: str, restore: str) -> None:
    torch.manual_seed(0)
    model, base = mlp(48, norm=True), mlp(12, norm=True)
    p = Parametrization.infer(model, base, "mup-sgd")
    p.init_(model, seed=1)
    groups = p.param_groups(model, lr=0.1)
    assert len(groups) >= 4
    for i, g in enumerate(groups):  # several param groups, several radii
        g["rho"] = 0.05 * (1 + i % 3)
    groups[1]["rho_mult"] = 2.0
    opt = SAM(groups, torch.optim.SGD, rho=0.05, rule=rule, scaling=scaling, restore=restore)  # type: ignore[arg-type]
    x, y = torch.randn(32, 12), torch.randint(0, 5, (32,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    before = {id(q): q.detach().clone() for q in model.parameters()}
    expected = reference_eps(opt.param_groups, rule, scaling)
    opt.first_step()
    moved = set()
    for name, q in model.named_parameters():
        eps = q.detach() - before[id(q)]
        ref = expected.get(id(q), torch.zeros_like(eps))
        assert torch.allclose(eps, ref, rtol=1e-9, atol=1e-15), (rule, scaling)
        if id(q) in expected:
            moved.add(name)
            assert eps.abs().max() > 0, name
        else:
            assert torch.equal(q.detach(), before[id(q)]), name
    # sam-on: the LayerNorm alone; sam-readout: the readout's weight and bias alone
    assert moved == ONLY.get(rule, {n for n, _ in model.named_parameters()})
    opt.unperturb()
    for q in model.parameters():
        if restore != "subtract":
            assert torch.equal(q.detach(), before[id(q)])
        else:
            assert torch.allclose(q.detach(), before[id(q)], rtol=0, atol=1e-15)


@pytest.mark.parametrize("rule", RULES)
def test_mup2_equals_plain_sam_at_base_width(rule: str) -> None:
    """At m = 1 every μP² factor is 1: the step equals SAM on plain parameters exactly (for the
    readout-only rule: plain SAM with ρ = 0 on every other tensor). The model is its own base,
    so its roles come from another width, as the trainer does for a rule that perturbs by role."""
    torch.manual_seed(0)
    model = mlp(16, norm=True)
    roles = role_overrides(model, mlp(32, norm=True))
    p = Parametrization.infer(model, mlp(16, norm=True), "mup-sgd", overrides=roles)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(8, 12), torch.randint(0, 5, (8,))
    coupled = "mup2-coupled" if "mup2-coupled" in get_rule(rule).scalings else "mup2"
    plain: list[dict[str, Any]] = [
        {"params": list(model[3].parameters()), "norm": True},
        {"params": [q for i in (0, 2, 5) for q in model[i].parameters()]},
    ]
    plain_rule = rule
    if rule == "sam-readout":  # plain groups carry no roles: restrict plain SAM by ρ instead
        others = [q for i in (0, 2, 3) for q in model[i].parameters()]
        plain = [{"params": list(model[5].parameters())}, {"params": others, "rho": 0.0}]
        plain_rule = "sam"
    finals = []
    for groups, scaling, rule_ in (
        (p.param_groups(model, lr=0.1), "mup2", rule),
        (p.param_groups(model, lr=0.1), coupled, rule),
        (plain, "naive", plain_rule),
    ):
        model.load_state_dict(state)
        opt = SAM(groups, torch.optim.SGD, lr=0.1, rho=0.1, rule=rule_, scaling=scaling)
        for _ in range(3):

            def closure(opt: SAM = opt) -> torch.Tensor:
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()
                return loss

            opt.step(closure)
        finals.append([q.detach().clone() for q in model.parameters()])
    for other in finals[1:]:
        for a, b in zip(finals[0], other, strict=True):
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("scheme", ["sp", "mup-sgd"])
@pytest.mark.parametrize("scaling", sorted(get_rule("sam-readout").scalings))
def test_readout_rule_is_sam_restricted_to_the_readout(scheme: str, scaling: str) -> None:
    """At 4x the base width, ``sam-readout`` under each scaling trains exactly as ``sam`` under
    that scaling with ρ = 0 on every tensor but the readout's weight and bias (float64, 5 steps,
    momentum and weight decay): the same perturbation and the same norm."""
    torch.manual_seed(0)
    model = mlp(48, norm=True)
    p = Parametrization.infer(model, mlp(12, norm=True), scheme)
    p.init_(model, seed=3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = torch.randn(32, 12), torch.randint(0, 5, (32,))
    finals, losses = [], []
    for rule in ("sam-readout", "sam"):
        model.load_state_dict(state)
        groups = p.param_groups(model, lr=0.1, weight_decay=1e-3)
        if rule == "sam":
            for g in groups:
                if g["role"] not in ("output", "scalar"):
                    g["rho"] = 0.0
        opt = SAM(groups, torch.optim.SGD, rho=0.2, rule=rule, scaling=scaling, momentum=0.9)
        seen = []
        for _ in range(5):

            def closure(opt: SAM = opt) -> torch.Tensor:
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()
                return loss

            seen.append(float(opt.step(closure)))  # type: ignore[arg-type]
        plan = opt.perturbation_plan()
        names = {id(q): n for n, q in model.named_parameters()}
        assert {names[id(q)] for q in plan.params} == {"5.weight", "5.bias"}
        finals.append([q.detach().clone() for q in model.parameters()])
        losses.append(seen)
    assert losses[0] == pytest.approx(losses[1], rel=1e-12, abs=0)
    for a, b in zip(*finals, strict=True):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-15)


def test_readout_rule_needs_roles() -> None:
    """Plain params carry no role (SAM would take them all as scalar-like): refused."""
    model = mlp(16)
    with pytest.raises(ValueError, match="rule 'sam-readout' perturbs tensors by their role"):
        SAM(model.parameters(), lr=0.1, rule="sam-readout")
    groups = Parametrization.infer(model, mlp(8), "mup-sgd").param_groups(model, lr=0.1)
    hidden = [g for g in groups if g["role"] in ("input", "hidden")]
    with pytest.raises(ValueError, match="perturbs only output and scalar-like tensors"):
        SAM([dict(g) for g in hidden], rule="sam-readout")
    opt = SAM(hidden, rule="sam")
    with pytest.raises(ValueError, match="a param group has no 'role'"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))], "rule": "sam-readout"})


def test_groups_with_their_own_rule_scaling_and_eta_share_one_norm() -> None:
    """Per-group ``rule``/``scaling``/``eta``: each tensor's factors are its group's, the norm is
    joint (the formula of docs/math.md §3 over all perturbed tensors)."""
    torch.manual_seed(0)
    model, base = mlp(48, norm=True), mlp(12, norm=True)
    p = Parametrization.infer(model, base, "mup-sgd")
    p.init_(model, seed=1)
    groups = p.param_groups(model, lr=0.1)
    mix = [("sam", "mup2", 0.01), ("asam", "mup2", 0.05), ("asam-layerwise", "global", 0.02)]
    for i, g in enumerate(groups):
        g["rule"], g["scaling"], g["eta"] = mix[i % len(mix)]
    opt = SAM(groups, torch.optim.SGD, rho=0.07)
    x, y = torch.randn(32, 12), torch.randint(0, 5, (32,))
    torch.nn.functional.cross_entropy(model(x), y).backward()
    terms = []
    for g in opt.param_groups:
        for q in g["params"]:
            w, grad = q.detach(), q.grad.detach()  # type: ignore[union-attr]
            if g["rule"] == "asam":
                a = w.abs() + g["eta"] * (g["weight_scale"] if g["scaling"] == "mup2" else 1.0)
            elif g["rule"] == "asam-layerwise":
                a = torch.full_like(w, math.sqrt(float((w * w).sum())) + g["eta"])
            else:
                a = torch.ones_like(w)
            c, s = factors(
                g["rule"], g["scaling"], g["role"], g["m_out"] / g["m_in"], g["width_mult"]
            )
            terms.append((q, c, s, a, grad))
    rho = 0.07
    denom = math.sqrt(sum(rho**2 * s * float(((a * gr) ** 2).sum()) for _, _, s, a, gr in terms))
    expected = {id(q): rho**2 * c * a * a * gr / denom for q, c, _, a, gr in terms}
    before = {id(q): q.detach().clone() for q in model.parameters()}
    opt.first_step()
    for q in model.parameters():
        eps = q.detach() - before[id(q)]
        assert torch.allclose(eps, expected[id(q)], rtol=1e-9, atol=1e-15)
