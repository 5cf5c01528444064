"""Tied weights and weight layouts: roles independent of declaration order, the readout's 1/m
forward multiplier installed by mup2, layouts as a registry (HF Conv1D by name, lazily)."""

from __future__ import annotations

import copy
import io
import subprocess
import sys

import pytest
import torch
from torch import Tensor, nn

from mup2 import Parametrization, Role
from mup2.parametrization.shapes import FAN_AXES, infer_shapes, register_layout

from nets import TiedLM


def _uses(p: Parametrization) -> dict[str, tuple[str, float, float]]:
    """``{every name, aliases included: (role of that use, m_in, m_out)}``."""
    out = {}
    for name, spec in p.tensors.items():
        ts = spec.shape
        out[name] = ts.use_role(name).value
        for alias in ts.aliases:
            out[alias] = ts.use_role(alias).value
    return {n: (r, *_m(p, n)) for n, r in out.items()}


def _m(p: Parametrization, name: str) -> tuple[float, float]:
    for spec in p.tensors.values():
        if name in (spec.shape.name, *spec.shape.aliases):
            return spec.shape.m_in, spec.shape.m_out
    raise KeyError(name)


@pytest.mark.parametrize("scheme", ["mup-sgd", "mup-adam"])
def test_tied_roles_do_not_depend_on_declaration_order(scheme: str) -> None:
    ps = [
        Parametrization.infer(TiedLM(64, head_first=h), TiedLM(16, head_first=h), scheme)
        for h in (False, True)
    ]
    uses = [_uses(p) for p in ps]
    assert uses[0] == uses[1]
    assert uses[0]["embed.weight"][0] == "input" and uses[0]["head.weight"][0] == "output"
    for p in ps:  # the tensor itself: input-like (embedding keeps its role), LR as input-like
        spec = p.tensors["embed.weight"]  # named after its embedding use, in both orders
        assert spec.shape.role is Role.INPUT
        assert spec.lr_mult == (4.0 if scheme == "mup-sgd" else 1.0)
        assert p.forward_mults == {"head": 0.25}


def test_tied_readout_gets_a_forward_multiplier_that_survives() -> None:
    torch.manual_seed(0)
    model, plain = TiedLM(64), TiedLM(64)
    plain.load_state_dict(model.state_dict())
    p = Parametrization.infer(model, TiedLM(16))
    p.init_(model, seed=0)
    p.init_(model, seed=0)  # idempotent: one multiplier, not two
    plain.load_state_dict(model.state_dict())
    tokens = torch.randint(0, 40, (3, 5))
    assert torch.allclose(model(tokens), plain(tokens) * 0.25)
    assert len(model.head._forward_hooks) == 1
    assert set(model.state_dict()) == set(plain.state_dict())  # state_dict keys unchanged
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    again = TiedLM(64)
    again.load_state_dict(torch.load(buf))
    p.param_groups(again)  # param_groups installs it too (a model restored from a checkpoint)
    assert torch.allclose(again(tokens), model(tokens))
    assert torch.allclose(copy.deepcopy(model)(tokens), model(tokens))
    compiled = torch.compile(model, backend="eager")
    assert torch.allclose(compiled(tokens), model(tokens))
    report = p.report()
    assert "head" in report and "x0.25" in report and "forward" in report
    at_base = Parametrization.infer(TiedLM(16), TiedLM(16))
    assert at_base.forward_mults == {}  # every tensor scalar-like at base width: nothing to do


def test_base_that_lost_its_tie_is_accepted() -> None:
    """``Model(cfg).to("meta")`` unties; the base then has the alias as a tensor of its own."""
    base = TiedLM(16)
    base.head.weight = nn.Parameter(base.embed.weight.detach().clone())
    assert infer_shapes(TiedLM(64), base) == infer_shapes(TiedLM(64), TiedLM(16))
    untied = TiedLM(64)
    untied.head.weight = nn.Parameter(untied.embed.weight.detach().clone())
    shapes = infer_shapes(untied, TiedLM(16))  # and the other way round
    assert shapes["head.weight"].role is Role.OUTPUT


class Conv1D(nn.Module):
    """Stands in for ``transformers.pytorch_utils.Conv1D`` (weight ``(nx, nf)``)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.02)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x: Tensor) -> Tensor:
        return x @ self.weight + self.bias


Conv1D.__module__ = "transformers.pytorch_utils"


def test_conv1d_layout_is_known_by_name() -> None:
    def net(w: int) -> nn.Sequential:
        return nn.Sequential(Conv1D(w, 8), Conv1D(w, w), Conv1D(10, w))

    roles = {n: t.role for n, t in infer_shapes(net(64), net(16)).items()}
    assert roles == {
        "0.weight": Role.INPUT,
        "0.bias": Role.INPUT,
        "1.weight": Role.HIDDEN,
        "1.bias": Role.INPUT,
        "2.weight": Role.OUTPUT,
        "2.bias": Role.SCALAR,
    }
    assert "transformers.pytorch_utils.Conv1D" in FAN_AXES


def test_register_a_layout_of_your_own() -> None:
    class Transposed(nn.Module):
        def __init__(self, d_in: int, d_out: int) -> None:
            super().__init__()
            self.kernel = nn.Parameter(torch.zeros(d_in, d_out))

    def net(w: int) -> nn.Sequential:
        return nn.Sequential(Transposed(8, w), Transposed(w, 10))

    before = {n: t.role for n, t in infer_shapes(net(64), net(16)).items()}
    assert before == {"0.kernel": Role.OUTPUT, "1.kernel": Role.INPUT}  # wrong without a layout
    register_layout(Transposed, fan_out=1, fan_in=0, params=("kernel",))
    try:
        after = {n: t.role for n, t in infer_shapes(net(64), net(16)).items()}
    finally:
        FAN_AXES.pop(Transposed)
    assert after == {"0.kernel": Role.INPUT, "1.kernel": Role.OUTPUT}


def test_import_mup2_does_not_import_transformers() -> None:
    code = "import sys, mup2, mup2.coordcheck; assert 'transformers' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
