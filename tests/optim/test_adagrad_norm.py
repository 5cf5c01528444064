"""``mup2.optim.adagrad_norm.AdaGradNorm`` against its formula, computed here in float64::

    v = eps0**2 + sum_t sum_W k_W ||g_W,t||**2      W -= lr_group * g_W / sqrt(v)

with ``k_W = m_out/m_in`` of the tensor's group when ``width_aware`` (1 otherwise) and L2 weight
decay added to the gradient (``g + wd * W``) before both.
"""

from __future__ import annotations

import io
import math
from typing import Any

import pytest
import torch

from mup2.optim.adagrad_norm import AdaGradNorm

# (shape, lr, m_in, m_out, weight_decay) of each param group: an input-like, a hidden-like and an
# output-like tensor at width multiplier 4, with their own LR and decay
GROUPS: list[tuple[tuple[int, ...], float, float, float, float]] = [
    ((6, 3), 0.3, 1.0, 4.0, 0.0),
    ((6, 6), 0.1, 4.0, 4.0, 0.01),
    ((2, 6), 0.05, 4.0, 1.0, 0.1),
]
EPS0 = 0.5


def _setup(dtype: torch.dtype) -> tuple[list[torch.Tensor], list[list[torch.Tensor]]]:
    """Initial values of each tensor and two steps of fixed gradients."""
    gen = torch.Generator().manual_seed(0)
    init = [torch.randn(shape, generator=gen, dtype=dtype) for shape, *_ in GROUPS]
    grads = [[torch.randn(shape, generator=gen, dtype=dtype) for shape, *_ in GROUPS] for _ in "ab"]
    return init, grads


def _optimizer(
    params: list[torch.nn.Parameter], width_aware: bool = True, **kw: Any
) -> AdaGradNorm:
    groups = [
        {"params": [p], "lr": lr, "m_in": m_in, "m_out": m_out, "weight_decay": wd}
        for p, (_, lr, m_in, m_out, wd) in zip(params, GROUPS)
    ]
    return AdaGradNorm(groups, eps0=EPS0, width_aware=width_aware, **kw)


def _reference(
    init: list[torch.Tensor], grads: list[list[torch.Tensor]], width_aware: bool
) -> tuple[list[list[torch.Tensor]], float]:
    """The parameters after each step and the final ``v``, in float64, one entry at a time."""
    w = [t.double().clone() for t in init]
    v = EPS0**2
    out = []
    for step in grads:
        g = [gi.double() + wd * wi for gi, wi, (*_, wd) in zip(step, w, GROUPS)]
        for gi, (_, _, m_in, m_out, _) in zip(g, GROUPS):
            k = m_out / m_in if width_aware else 1.0
            v += k * sum(float(x) ** 2 for x in gi.reshape(-1))
        w = [wi - lr * gi / math.sqrt(v) for wi, gi, (_, lr, *_) in zip(w, g, GROUPS)]
        out.append([wi.clone() for wi in w])
    return out, v


def _run(
    opt: AdaGradNorm, params: list[torch.nn.Parameter], grads: list[torch.Tensor]
) -> list[torch.Tensor]:
    for p, g in zip(params, grads):
        p.grad = g.clone()
    opt.step()
    return [p.detach().clone() for p in params]


@pytest.mark.parametrize("width_aware", [True, False])
@pytest.mark.parametrize(
    ("dtype", "rtol"), [(torch.float64, 1e-13), (torch.float32, 1e-5)], ids=["f64", "f32"]
)
def test_two_steps_follow_the_formula(width_aware: bool, dtype: torch.dtype, rtol: float) -> None:
    init, grads = _setup(dtype)
    params = [torch.nn.Parameter(t.clone()) for t in init]
    opt = _optimizer(params, width_aware)
    want, v = _reference(init, grads, width_aware)
    for step, expected in zip(grads, want):
        got = _run(opt, params, step)
        for g, e in zip(got, expected):
            assert g.dtype == dtype
            torch.testing.assert_close(g.double(), e, rtol=rtol, atol=0.0)
    # the accumulators are per tensor (in the parameter's dtype) and sum to v - eps0**2
    assert all(opt.state[p]["v"].dtype == dtype for p in params)
    total = sum(float(opt.state[p]["v"]) for p in params)
    assert total == pytest.approx(v - EPS0**2, rel=rtol)


def test_width_awareness_changes_the_step() -> None:
    init, grads = _setup(torch.float64)
    a = [torch.nn.Parameter(t.clone()) for t in init]
    b = [torch.nn.Parameter(t.clone()) for t in init]
    got_a = _run(_optimizer(a, True), a, grads[0])
    got_b = _run(_optimizer(b, False), b, grads[0])
    assert not torch.equal(got_a[0], got_b[0])


def test_plain_params_have_k_one_and_weight_decay_is_l2() -> None:
    """Without m_in/m_out (plain ``model.parameters()``) ``k = 1``: one shared v."""
    gen = torch.Generator().manual_seed(1)
    w0 = [torch.randn(4, 3, generator=gen).double(), torch.randn(5, generator=gen).double()]
    g = [torch.randn(4, 3, generator=gen).double(), torch.randn(5, generator=gen).double()]
    params = [torch.nn.Parameter(t.clone()) for t in w0]
    opt = AdaGradNorm(params, lr=0.2, eps0=1e-3, weight_decay=0.5)
    _run(opt, params, g)
    decayed = [gi + 0.5 * wi for gi, wi in zip(g, w0)]
    v = 1e-6 + sum(float(d.pow(2).sum()) for d in decayed)
    for p, wi, d in zip(params, w0, decayed):
        torch.testing.assert_close(p.detach(), wi - 0.2 * d / math.sqrt(v), rtol=1e-13, atol=0)


def test_params_without_gradient_are_left_alone() -> None:
    a, b = torch.nn.Parameter(torch.ones(3, dtype=torch.float64)), torch.nn.Parameter(torch.ones(2))
    opt = AdaGradNorm([a, b], lr=1.0, eps0=1.0)
    assert opt.step() is None  # no gradients at all: nothing to do
    a.grad = torch.tensor([3.0, 0.0, 4.0], dtype=torch.float64)
    assert opt.step(lambda: 1.5) == 1.5  # a closure's loss comes back
    # v = 1 + 25, only a moves
    torch.testing.assert_close(
        a.detach(), torch.tensor([1 - 3 / math.sqrt(26), 1.0, 1 - 4 / math.sqrt(26)]).double()
    )
    assert torch.equal(b.detach(), torch.ones(2)) and b not in opt.state


def test_groups_must_share_eps0() -> None:
    a, b, c = (torch.nn.Parameter(torch.ones(2)) for _ in range(3))
    with pytest.raises(ValueError) as err:
        groups: list[dict[str, Any]] = [{"params": [a]}, {"params": [b], "eps0": 1e-2}]
        AdaGradNorm(groups, eps0=1e-3)
    assert str(err.value) == (
        "eps0 = 0.01 differs from the first group's 0.001: the groups share one accumulator, "
        "which starts at eps0**2, so eps0 must be one number (pass it to AdaGradNorm)"
    )
    opt = AdaGradNorm([{"params": [a], "eps0": 1e-2}], eps0=1e-3)  # one group: its own eps0
    assert opt.param_groups[0]["eps0"] == 1e-2
    with pytest.raises(ValueError, match=r"^eps0 = 0.001 differs from the first group's 0.01"):
        opt.add_param_group({"params": [b], "eps0": 1e-3})
    assert len(opt.param_groups) == 1  # the refused group is not kept
    opt.add_param_group({"params": [b], "eps0": 1e-2})
    assert len(opt.param_groups) == 2
    with pytest.raises(ValueError, match=r"^eps0 = 0.001 differs"):
        opt.add_param_group({"params": [c]})  # the default: the constructor's eps0
    assert len(opt.param_groups) == 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": float("nan")}, "lr must be finite, got nan"),
        ({"lr": float("inf")}, "lr must be finite, got inf"),
        ({"lr": 0.0}, "lr must be > 0, got 0.0"),
        ({"lr": -0.1}, "lr must be > 0, got -0.1"),
        ({"eps0": float("nan")}, "eps0 must be finite, got nan"),
        ({"eps0": float("-inf")}, "eps0 must be finite, got -inf"),
        ({"eps0": 0.0}, "eps0 must be > 0, got 0.0"),
        ({"eps0": -1e-8}, "eps0 must be > 0, got -1e-08"),
        ({"weight_decay": float("inf")}, "weight_decay must be finite, got inf"),
    ],
)
def test_bad_hyperparameters_raise(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as err:
        AdaGradNorm([torch.nn.Parameter(torch.ones(2))], **kwargs)
    assert str(err.value) == message


def test_state_dict_round_trip_continues_bit_for_bit() -> None:
    init, grads = _setup(torch.float32)
    a = [torch.nn.Parameter(t.clone()) for t in init]
    opt_a = _optimizer(a)
    _run(opt_a, a, grads[0])
    buf = io.BytesIO()
    torch.save(opt_a.state_dict(), buf)
    b = [torch.nn.Parameter(p.detach().clone()) for p in a]
    opt_b = _optimizer(b)
    buf.seek(0)
    opt_b.load_state_dict(torch.load(buf, weights_only=True))
    assert all(torch.equal(opt_a.state[p]["v"], opt_b.state[q]["v"]) for p, q in zip(a, b))
    after_a, after_b = _run(opt_a, a, grads[1]), _run(opt_b, b, grads[1])
    assert all(torch.equal(x, y) for x, y in zip(after_a, after_b))
    # the state matters: a fresh optimizer (v from eps0**2 again) takes another step
    c = [torch.nn.Parameter(p.detach().clone()) for p in b]
    fresh = _run(_optimizer(c), c, grads[1])
    assert not torch.equal(fresh[0], after_b[0])


def test_a_refused_non_finite_eps0_group_is_not_kept() -> None:
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    opt = AdaGradNorm([a], eps0=1e-3)
    with pytest.raises(ValueError, match=r"^param group 1: eps0 must be finite, got nan$"):
        opt.add_param_group({"params": [b], "eps0": float("nan")})
    assert len(opt.param_groups) == 1
